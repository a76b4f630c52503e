"""Precomputed CLIP features of a dataset's images and captions (what LAFITE trains on).

Stored beside the dataset in `<dataset>.features/<key>.safetensors`, where key hashes the dataset's
content fingerprint, the CLIP's identity and the caption language: a rebuilt dataset or another CLIP
never reuses stale features (the original keyed its caches by name, a known source of wrong results).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from t2i.data.transforms import to_model
from t2i.errors import T2IError
from t2i.io import atomic_path


@dataclass
class Features:
    """image: (N, D); text: (M, D) for all captions; offsets: (N + 1,) caption ranges per image."""

    image: torch.Tensor
    text: torch.Tensor
    offsets: torch.Tensor

    def caption_range(self, i: int) -> tuple[int, int]:
        return int(self.offsets[i]), int(self.offsets[i + 1])


def cache_path(dataset, *key: str, prefix: str = "") -> Path:
    """`<dataset>.features/<prefix><hash>.safetensors`, the hash over the dataset's content
    fingerprint and `key` (the identity of whatever computed the file, its options)."""
    digest = hashlib.sha256("|".join((dataset.fingerprint(), *key)).encode()).hexdigest()[:24]
    return Path(str(dataset.path).rstrip("/") + ".features") / f"{prefix}{digest}.safetensors"


def features_path(dataset, clip, lang: str = "en") -> Path:
    """Where the features of (dataset content, CLIP weights, caption language) are cached; `clip` is a
    CLIP model or its identity string."""
    return cache_path(dataset, clip if isinstance(clip, str) else clip.identity, lang)


def save_features(dataset, identity: str, feats: Features, lang: str = "en") -> Path:
    """Store features in the cache of (dataset, CLIP identity, lang), atomically; returns the file."""
    path = features_path(dataset, identity, lang)
    with atomic_path(path) as tmp:
        save_file({"image": feats.image, "text": feats.text, "offsets": feats.offsets}, str(tmp),
                  metadata={"dataset": dataset.fingerprint(), "clip": identity, "lang": lang})
    return path


def encode_caption(clip, text: str) -> torch.Tensor:
    """(D,) feature of one caption; a caption too long for the CLIP is split on '.' and ',' and the
    pieces' features averaged (as LAFITE does)."""
    try:
        return clip.encode_text([text])[0]
    except T2IError:
        pieces = [p.strip() for p in text.replace(",", ".").split(".") if p.strip()]
        if len(pieces) <= 1:
            raise
        return torch.stack([encode_caption(clip, p) for p in pieces]).mean(0)


def encode_captions(clip, captions: list[str]) -> torch.Tensor:
    """(N, D) float features of captions, in one batch unless one is too long for the CLIP (then one by one,
    long ones split as `encode_caption` does)."""
    try:
        return clip.encode_text(captions).float()
    except T2IError:
        return torch.stack([encode_caption(clip, c) for c in captions]).float()


@torch.no_grad()
def compute_features(dataset, clip, lang: str = "en", batch: int = 256, device="cpu") -> Features:
    """Encode every image and caption of `dataset` with `clip` (with a progress bar); an image-only dataset
    gets image features and an empty (0, D) text tensor."""
    from tqdm import tqdm

    img_feats, txt_feats, offsets = [], [], [0]
    n = len(dataset)
    for start in tqdm(range(0, n, batch), desc="clip features", unit="batch", leave=False):
        items = [dataset[i] for i in range(start, min(start + batch, n))]
        images = to_model(torch.stack([it["image"] for it in items])).to(device)
        img_feats.append(clip.encode_image(images).float().cpu())
        caps = [c for it in items for c in it["captions"]]
        if caps:
            txt_feats.append(encode_captions(clip, caps).cpu())
        for it in items:
            offsets.append(offsets[-1] + len(it["captions"]))
    image = torch.cat(img_feats)
    text = torch.cat(txt_feats) if txt_feats else image.new_zeros(0, image.shape[1])
    return Features(image, text, torch.tensor(offsets, dtype=torch.long))


def load_or_compute_features(dataset, clip, lang: str = "en", device="cpu", log=print) -> Features:
    """Cached features for (dataset, clip, lang); computed and stored atomically on first use."""
    path = features_path(dataset, clip, lang)
    if path.is_file():
        t = load_file(path)
        if len(t["image"]) == len(dataset):
            return Features(t["image"], t["text"], t["offsets"])
    log(f"computing CLIP features of {len(dataset)} images with {clip.identity} -> {path}")
    feats = compute_features(dataset, clip, lang, device=device)
    save_features(dataset, clip.identity, feats, lang)
    return feats
