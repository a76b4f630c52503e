"""A dataset's images encoded by a first stage, once, and cached beside the dataset: the VQGAN's token ids
(what DALL-E trains on) and the KL autoencoder's posteriors (what latent diffusion trains on).

A second stage trains on encodings, so images are encoded once per (dataset content, first-stage weights,
crop settings), not at every step: the file is keyed by the dataset's fingerprint, the model's weights
identity and the crops, so a rebuilt dataset or retrained autoencoder never reuses a stale file. Each
image is encoded under `augs` DALL-E crops (paper Listing 1, seeded by image and crop index) so the
augmentation survives the caching; a square dataset already at the model's resolution has exactly one
crop (the DALL-E crop is then the identity) and gets one. Larger or non-square images are cropped down to
the model's resolution; smaller ones are refused, never enlarged.
"""

from __future__ import annotations

import random
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from t2i.data.features import cache_path
from t2i.data.transforms import dalle_crop, pil_to_tensor, to_model
from t2i.io import atomic_path
from t2i.training.snapshot import weights_identity

# Images in [-1, 1] (b, 3, R, R) -> named per-image tensors (b, ...).
Encoder = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def crops_needed(dataset, resolution: int, augs: int) -> int:
    """How many distinct DALL-E crops an image of this dataset has (1 when the crop is the identity)."""
    w, h = dataset.resolution
    if min(w, h) < resolution:  # the trainers say so first, with the fix (e.g. dalle's check_image_size)
        raise ValueError(f"{w}x{h} images are smaller than the first stage's {resolution}x{resolution}")
    return 1 if w == h == resolution else max(1, augs)


@torch.no_grad()
def encode_dataset(dataset, encode: Encoder, resolution: int, augs: int, batch: int = 64, desc: str = "encoding"
                   ) -> dict[str, torch.Tensor]:
    """`encode` of every image under `augs` seeded DALL-E crops: each named tensor (N, augs, ...) (progress bar)."""
    from tqdm import tqdm

    jobs = [(i, a) for i in range(len(dataset)) for a in range(augs)]
    out: dict[str, list[torch.Tensor]] = {}
    for s in tqdm(range(0, len(jobs), batch), desc=desc, unit="batch", leave=False):
        crops = [pil_to_tensor(dalle_crop(dataset.read_image(i), resolution, random.Random(f"{i}-{a}")))
                 for i, a in jobs[s:s + batch]]
        for name, value in encode(to_model(torch.stack(crops))).items():
            out.setdefault(name, []).append(value.cpu())
    # Contiguous, as a file read back is: an encoder's channels-last output would otherwise train the second stage
    # on other kernels (other floating-point results) on the run that encodes than on one that reads the cache.
    return {name: torch.cat(parts).contiguous().view(len(dataset), augs, *parts[0].shape[1:])
            for name, parts in out.items()}


def load_or_encode(dataset, model: torch.nn.Module, kind: str, what: str, encode: Encoder, augs: int,
                   log: Callable[[str], None] = print) -> dict[str, torch.Tensor]:
    """Cached `encode_dataset` output, keyed by dataset content, `weights_identity(model, kind)` and the crops;
    `what` ("tokens", "latents") names the file and the progress bar."""
    augs = crops_needed(dataset, model.cfg.resolution, augs)
    identity = weights_identity(model, kind)
    path = cache_path(dataset, identity, f"dalle-crop-{augs}", prefix=f"{what}-")
    if path.is_file():
        cached = load_file(path)
        if cached and all(v.shape[:2] == (len(dataset), augs) for v in cached.values()):
            return cached
    log(f"encoding {len(dataset)} images x {augs} crop(s) with {identity} -> {path}")
    encoded = encode_dataset(dataset, encode, model.cfg.resolution, augs, desc=what)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in encoded.items()}, str(tmp),
                  metadata={"dataset": dataset.fingerprint(), kind: identity})
    return encoded


def load_or_encode_tokens(dataset, vqgan, augs: int, device="cpu", log=print) -> torch.Tensor:
    """A dataset's VQGAN token ids as int64 (N, augs', h * w), cached (int32 on disk)."""
    def encode(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"tokens": vqgan.encode(x.to(device)).flatten(1).to(torch.int32)}

    return load_or_encode(dataset, vqgan, "vqgan", "tokens", encode, augs, log)["tokens"].long()


def load_or_encode_latents(dataset, autoencoder, augs: int = 1, device="cpu", log=print
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset's KL-autoencoder posteriors: (mean, logvar), each float32 (N, augs', C, h, w), unscaled
    (multiply samples by the autoencoder's cfg.scale_factor).

    Both moments, not the mean alone: LDM trains its UNet on a fresh sample z = mean + exp(logvar / 2) * eps
    of each image's posterior at every step, as its first stage was trained to decode; the mean alone would
    make the cache a different, deterministic training set. The second moment doubles a small file.
    """
    def encode(x: torch.Tensor) -> dict[str, torch.Tensor]:
        mean, logvar = autoencoder.moments(x.to(device))
        return {"mean": mean.float(), "logvar": logvar.float()}

    cached = load_or_encode(dataset, autoencoder, "autoencoder", "latents", encode, augs, log)
    return cached["mean"], cached["logvar"]
