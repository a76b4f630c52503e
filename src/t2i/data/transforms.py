"""Image conversions and crops: uint8 <-> model range, centre crops, the DALL-E crop, mirroring.

Tensor images are `uint8` `(3, H, W)` (or `(B, 3, H, W)`) on disk and from datasets and `float32` in
`[-1, 1]` inside models. Crops work on PIL images, before conversion to tensors.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image

from t2i.data.crops import center_crop, center_crop_wide  # noqa: F401  (part of this module's API)

RandomSource = random.Random | torch.Generator


def to_model(x: torch.Tensor) -> torch.Tensor:
    """Map a uint8 image tensor to float32 in [-1, 1]."""
    if x.dtype != torch.uint8:
        raise TypeError(f"to_model expects a uint8 tensor, got {x.dtype}")
    return x.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Map a float image tensor in [-1, 1] to uint8, rounding and clamping out-of-range values."""
    return ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """A PIL RGB image as a uint8 tensor (3, H, W)."""
    array = np.asarray(img.convert("RGB") if img.mode != "RGB" else img)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """A uint8 tensor (3, H, W) as a PIL RGB image."""
    if x.dtype != torch.uint8 or x.ndim != 3 or x.shape[0] != 3:
        raise TypeError(f"tensor_to_pil expects a uint8 (3, H, W) tensor, got {x.dtype} {tuple(x.shape)}")
    return Image.fromarray(x.permute(1, 2, 0).contiguous().numpy(), "RGB")


def _randint(rng: RandomSource, low: int, high: int) -> int:
    """A uniform integer in [low, high] from either kind of random source."""
    if isinstance(rng, torch.Generator):
        return int(torch.randint(low, high + 1, (), generator=rng))
    return rng.randint(low, high)


def _random(rng: RandomSource) -> float:
    """A uniform float in [0, 1) from either kind of random source."""
    if isinstance(rng, torch.Generator):
        return float(torch.rand((), generator=rng))
    return rng.random()


def dalle_crop(img: Image.Image, target: int, rng: RandomSource) -> Image.Image:
    """The DALL-E training crop (paper Listing 1, as in the prototype) to a target x target square.

    A square of side s = min(h, w) is cut at an offset uniform in [3(L-s)/8, 5(L-s)/8] along the long
    side L, resized to t uniform in [target, min(s, 9/8 target)], and randomly cropped to target.
    Images smaller than target are resized up to exactly target (t = target).
    """
    w, h = img.size
    s = min(w, h)
    offset = _randint(rng, math.ceil(3 * (max(w, h) - s) / 8), (5 * (max(w, h) - s)) // 8)
    box = (offset, 0, offset + s, s) if w > h else (0, offset, s, offset + s)
    t = _randint(rng, target, max(target, min(s, (9 * target) // 8)))
    img = img.crop(box).resize((t, t), Image.LANCZOS)
    x, y = _randint(rng, 0, t - target), _randint(rng, 0, t - target)
    return img.crop((x, y, x + target, y + target))


def mirror(img: Image.Image | torch.Tensor, rng: RandomSource) -> Image.Image | torch.Tensor:
    """Flip horizontally with probability 0.5 (a PIL image or a tensor whose last dim is width)."""
    if _random(rng) >= 0.5:
        return img
    if isinstance(img, torch.Tensor):
        return img.flip(-1)
    return img.transpose(Image.FLIP_LEFT_RIGHT)


def mirror_batch(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Flip each image of (B, C, H, W) horizontally with probability 0.5 (one draw per image from g)."""
    flip = torch.rand(len(images), generator=g) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)
