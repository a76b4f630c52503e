"""CLIP-based text-image agreement: CLIP score and R-precision, for any model with the ClipModel interface."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from t2i.data.transforms import to_model
from t2i.errors import T2IError


def _as_clip_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float [-1, 1]; float images are taken as [-1, 1] and clamped to it."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise T2IError(f"Expected images shaped (N, 3, H, W), got {tuple(images.shape)}.")
    if images.dtype == torch.uint8:
        return to_model(images)
    if not images.is_floating_point():
        raise T2IError(f"Expected uint8 or float images, got {images.dtype}.")
    # Raw generator outputs overshoot [-1, 1] a little and are clamped, as to_uint8 does when saving
    # them; values beyond 2 mean a [0, 255] float image, which CLIP would misread.
    if images.abs().max().item() > 2:
        raise T2IError(
            f"Float images must lie in [-1, 1], these reach {images.abs().max().item():.3g}; pass uint8 "
            f"images or convert with t2i.data.transforms.to_model."
        )
    return images.clamp(-1, 1)


def _embed_images(clip, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N, D) unit-norm float32 image embeddings on the CPU, computed batch_size images at a time."""
    chunks = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            batch = _as_clip_input(images[start : start + batch_size])
            chunks.append(F.normalize(clip.encode_image(batch).float(), dim=-1).cpu())
    return torch.cat(chunks)


def _embed_texts(clip, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    """(N, D) unit-norm float32 text embeddings on the CPU, computed batch_size texts at a time."""
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            chunks.append(F.normalize(clip.encode_text(batch).float(), dim=-1).cpu())
    return torch.cat(chunks)


def clip_score(clip, images: torch.Tensor, texts: Sequence[str], batch_size: int = 64) -> float:
    """Mean over pairs of 100 * max(cos(image, text), 0); images uint8 or float [-1, 1], (N, 3, H, W)."""
    if len(texts) != images.shape[0] or len(texts) == 0:
        raise T2IError(
            f"clip_score needs one text per image and at least one pair, got {images.shape[0]} images "
            f"and {len(texts)} texts."
        )
    cos = (_embed_images(clip, images, batch_size) * _embed_texts(clip, texts, batch_size)).sum(-1)
    return float((100 * cos.clamp(min=0)).double().mean())


def _draw_candidates(
    true_captions: Sequence[str], caption_pool: Sequence[str], n_negatives: int, seed: int
) -> tuple[list[str], np.ndarray]:
    """Texts to embed and an (N, 1 + n_negatives) index into them: the true caption first, then negatives."""
    # Distinct strings only, so no image is ranked against a copy of its own caption or a doubled negative.
    texts = list(dict.fromkeys(caption_pool))
    n_pool = len(texts)
    index = {text: i for i, text in enumerate(texts)}
    for caption in true_captions:
        if caption not in index:
            index[caption] = len(texts)
            texts.append(caption)
    rng = np.random.default_rng(seed)
    rows = np.empty((len(true_captions), 1 + n_negatives), dtype=np.int64)
    for row, caption in zip(rows, true_captions):
        t = index[caption]
        in_pool = t < n_pool
        if n_pool - in_pool < n_negatives:
            raise T2IError(
                f"R-precision needs {n_negatives} captions other than {caption!r:.60} in the caption pool, "
                f"which holds {n_pool - in_pool}; give a larger pool or lower n_negatives."
            )
        negatives = rng.choice(n_pool - in_pool, size=n_negatives, replace=False)
        if in_pool:
            negatives[negatives >= t] += 1  # skip the true caption's own slot
        row[0], row[1:] = t, negatives
    return texts, rows


def r_precision(
    clip,
    images: torch.Tensor,
    true_captions: Sequence[str],
    caption_pool: Sequence[str],
    n_negatives: int = 99,
    seed: int = 0,
    batch_size: int = 64,
) -> float:
    """Top-1 accuracy of each image's true caption ranked by CLIP among itself and n_negatives pool captions."""
    if len(true_captions) != images.shape[0] or len(true_captions) == 0:
        raise T2IError(
            f"r_precision needs one true caption per image and at least one image, got {images.shape[0]} "
            f"images and {len(true_captions)} captions."
        )
    if n_negatives < 1:
        raise T2IError(f"n_negatives must be at least 1, got {n_negatives}.")
    texts, candidates = _draw_candidates(true_captions, caption_pool, n_negatives, seed)
    image_emb = _embed_images(clip, images, batch_size)  # (N, D)
    text_emb = _embed_texts(clip, texts, batch_size)  # (T, D)
    candidates = torch.from_numpy(candidates)
    hits = 0
    for start in range(0, len(candidates), batch_size):
        rows = candidates[start : start + batch_size]  # (b, 1 + n_negatives)
        sims = torch.einsum("bkd,bd->bk", text_emb[rows], image_emb[start : start + batch_size])
        # Strictly above every negative: a tie (e.g. a degenerate CLIP) does not count as a hit.
        hits += int((sims[:, 0] > sims[:, 1:].max(dim=1).values).sum())
    return hits / len(candidates)
