"""CLIP models t2i can load: its own small CLIP (snapshots of `t2i train clip`) or open_clip weights."""

from __future__ import annotations

from pathlib import Path

import torch

from t2i.errors import T2IError


def load_clip(spec: str, device: str | torch.device = "cpu"):
    """Load a CLIP from a t2i CLIP run/snapshot path, or `ARCH:/path/to/weights` for open_clip."""
    spec = str(spec)
    path = Path(spec)
    if path.exists():
        from t2i.clip.trainer import load_clip_snapshot

        return load_clip_snapshot(path, device)
    if ":" in spec:
        arch, weights = spec.split(":", 1)
        from t2i.clip.openclip import load_open_clip

        return load_open_clip(arch, weights, device)
    raise T2IError(
        f"CLIP {spec!r} not found: give a t2i CLIP run or snapshot directory (from `t2i train clip`), "
        "or ARCH:/path/to/weights for OpenAI/OpenCLIP weights, e.g. ViT-B-32:/models/ViT-B-32.safetensors. "
        "Nothing is downloaded."
    )
