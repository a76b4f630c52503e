"""A dataset's images as VQGAN token ids, encoded once and cached beside the dataset.

The transformer trains on token ids, so images are encoded once per (dataset content, VQGAN weights,
crop settings), not at every step. Each image is tokenised under `augs` DALL-E crops (paper Listing 1,
seeded by image and crop index) so the augmentation survives the caching; a square dataset already at
the VQGAN's resolution has exactly one crop (the DALL-E crop is then the identity) and gets one. Larger
or non-square images are cropped down to the VQGAN's resolution; smaller ones are refused, never enlarged.
"""

from __future__ import annotations

import random

import torch
from safetensors.torch import load_file, save_file

from t2i.data.features import cache_path
from t2i.data.transforms import dalle_crop, pil_to_tensor, to_model
from t2i.io import atomic_path
from t2i.training.snapshot import weights_identity


def crops_needed(dataset, resolution: int, augs: int) -> int:
    """How many distinct DALL-E crops an image of this dataset has (1 when the crop is the identity)."""
    w, h = dataset.resolution
    if min(w, h) < resolution:  # `t2i train dalle` says so first, with the fix (trainer.check_image_size)
        raise ValueError(f"{w}x{h} images are smaller than the VQGAN's {resolution}x{resolution}")
    return 1 if w == h == resolution else max(1, augs)


@torch.no_grad()
def encode_dataset(dataset, vqgan, augs: int, batch: int = 64, device="cpu") -> torch.Tensor:
    """(N, augs, h * w) token ids of every image under `augs` seeded DALL-E crops (progress bar)."""
    from tqdm import tqdm

    R = vqgan.cfg.resolution
    jobs = [(i, a) for i in range(len(dataset)) for a in range(augs)]
    out = []
    for s in tqdm(range(0, len(jobs), batch), desc="image tokens", unit="batch", leave=False):
        crops = [pil_to_tensor(dalle_crop(dataset.read_image(i), R, random.Random(f"{i}-{a}")))
                 for i, a in jobs[s:s + batch]]
        ids = vqgan.encode(to_model(torch.stack(crops)).to(device))          # (b, h, w)
        out.append(ids.flatten(1).to(torch.int32).cpu())
    return torch.cat(out).view(len(dataset), augs, -1)


def load_or_encode_tokens(dataset, vqgan, augs: int, device="cpu", log=print) -> torch.Tensor:
    """Cached `encode_dataset` output as int64 (N, augs', h * w), keyed by content and VQGAN weights."""
    augs = crops_needed(dataset, vqgan.cfg.resolution, augs)
    identity = weights_identity(vqgan, "vqgan")
    path = cache_path(dataset, identity, f"dalle-crop-{augs}", prefix="tokens-")
    if path.is_file():
        tokens = load_file(path)["tokens"]
        if tokens.shape[:2] == (len(dataset), augs):
            return tokens.long()
    log(f"encoding {len(dataset)} images x {augs} crop(s) with {identity} -> {path}")
    tokens = encode_dataset(dataset, vqgan, augs, device=device)
    with atomic_path(path) as tmp:
        save_file({"tokens": tokens}, str(tmp), metadata={"dataset": dataset.fingerprint(), "vqgan": identity})
    return tokens.long()
