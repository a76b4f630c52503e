"""Tests for t2i.data.transforms: range conversions, centre crops, the DALL-E crop, mirroring."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.data.transforms import (
    center_crop,
    center_crop_wide,
    dalle_crop,
    mirror,
    pil_to_tensor,
    tensor_to_pil,
    to_model,
    to_uint8,
)


def _x_gradient(width: int, height: int) -> Image.Image:
    """An RGB image whose red channel is the column index (width <= 256)."""
    row = np.arange(width, dtype=np.uint8)
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[..., 0] = row
    return Image.fromarray(array, "RGB")


def test_to_model_to_uint8_round_trip_every_value():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 256).expand(3, 2, 256)
    y = to_model(x)
    assert y.dtype == torch.float32
    assert y.min() == -1.0 and y.max() == 1.0
    assert torch.equal(to_uint8(y), x)


def test_to_uint8_rounds_and_clamps():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0, 1.4 / 127.5 - 1])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255, 1]  # 127.5 rounds to even: 128


def test_to_model_rejects_float():
    with pytest.raises(TypeError, match="uint8"):
        to_model(torch.zeros(3, 4, 4))


def test_pil_tensor_round_trip():
    img = _x_gradient(20, 10)
    t = pil_to_tensor(img)
    assert t.shape == (3, 10, 20) and t.dtype == torch.uint8
    assert np.array_equal(np.asarray(tensor_to_pil(t)), np.asarray(img))


def test_center_crop_takes_centred_box_of_target_aspect():
    # 120 wide, 40 tall -> square target: the crop is columns 40..79.
    out = center_crop(_x_gradient(120, 40), 40, 40)
    assert out.size == (40, 40)
    red = np.asarray(out)[..., 0].astype(int)
    assert abs(red[0, 0] - 40) <= 1 and abs(red[0, -1] - 79) <= 1
    # Tall image to a wide target keeps the full width.
    tall = _x_gradient(60, 200)
    out = center_crop(tall, 30, 20)
    assert out.size == (30, 20)
    red = np.asarray(out)[..., 0].astype(int)
    assert red[0, 0] <= 2 and red[0, -1] >= 57


def test_center_crop_wide_crops_tall_and_pads_short():
    # 200x100 -> width 100 gives 100x50, cropped to the centred 40 rows.
    img = Image.new("RGB", (200, 100), (200, 10, 10))
    out = center_crop_wide(img, 100, 40)
    assert out.size == (100, 40)
    assert (np.asarray(out) == [200, 10, 10]).all()
    # 200x50 -> 100x25, padded with black to 40 rows: 7 black rows on top, 8 below.
    out = np.asarray(center_crop_wide(Image.new("RGB", (200, 50), (255, 255, 255)), 100, 40))
    assert out.shape == (40, 100, 3)
    assert (out[:7] == 0).all() and (out[32:] == 0).all() and (out[8:31] == 255).all()


def test_dalle_crop_offsets_sizes_and_determinism():
    img = _x_gradient(200, 40)  # s = 40, long-side slack 160: offsets in [60, 100]
    lows, highs = [], []
    for seed in range(200):
        out = dalle_crop(img, 32, random.Random(seed))
        assert out.size == (32, 32)
        red = np.asarray(out)[..., 0].astype(int)
        lows.append(red.min())
        highs.append(red.max())
    # The crop never leaves the band [60, 140) of the long side (+-2 for LANCZOS ringing) ...
    assert min(lows) >= 58 and max(highs) <= 141
    # ... and the offset spans the whole allowed range.
    assert min(lows) <= 63 and max(highs) >= 136
    a = dalle_crop(img, 32, random.Random(5))
    b = dalle_crop(img, 32, random.Random(5))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert np.array_equal(np.asarray(dalle_crop(img, 32, g1)), np.asarray(dalle_crop(img, 32, g2)))


def test_dalle_crop_resize_range_and_small_images():
    # Square 100 px, target 64: t is in [64, 72], so the crop covers 64..72 of 100 source columns * 64/t.
    img = _x_gradient(100, 100)
    spans = {int(np.ptp(np.asarray(dalle_crop(img, 64, random.Random(s)))[0, :, 0].astype(int)))
             for s in range(100)}
    assert min(spans) >= 87 - 2 and max(spans) <= 99 + 1  # 63*100/72 .. 63*100/64
    assert dalle_crop(_x_gradient(20, 10), 32, random.Random(0)).size == (32, 32)


def test_mirror_flips_half_the_time_pil_and_tensor():
    img = _x_gradient(10, 4)
    rng = random.Random(0)
    flips = sum(np.asarray(mirror(img, rng))[0, 0, 0] == 9 for _ in range(400))
    assert 150 < flips < 250
    t = pil_to_tensor(img)
    g = torch.Generator().manual_seed(0)
    outs = [mirror(t, g) for _ in range(50)]
    assert all(torch.equal(o, t) or torch.equal(o, t.flip(-1)) for o in outs)
    assert any(torch.equal(o, t.flip(-1)) for o in outs) and any(torch.equal(o, t) for o in outs)
