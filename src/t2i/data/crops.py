"""Centre crops of PIL images to an exact size: what the importers apply before writing a dataset.

Only PIL here (no torch), so `t2i data pack|coco|cub` and their worker processes start fast;
`transforms.py` re-exports both for everything else.
"""

from __future__ import annotations

from PIL import Image


def center_crop(img: Image.Image, width: int, height: int) -> Image.Image:
    """Crop the largest centred box with the aspect of width:height, then resize it (LANCZOS)."""
    w, h = img.size
    # Compare aspects with integers: w/h > width/height  <=>  w*height > h*width.
    if w * height > h * width:
        crop_w, crop_h = round(h * width / height), h
    else:
        crop_w, crop_h = w, round(w * height / width)
    left, top = (w - crop_w) // 2, (h - crop_h) // 2
    img = img.crop((left, top, left + crop_w, top + crop_h))
    return img.resize((width, height), Image.LANCZOS)


def center_crop_wide(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to `width` keeping the aspect, then crop (centred) or pad with black to `height`.

    The 'center-crop-wide' transform of the StyleGAN2-ADA / LAFITE dataset_tool, for wide photos
    whose full width should be kept. Unlike that tool, the result is exactly width x height: it
    neither letterboxes into a width x width canvas nor squashes the aspect, and short images are
    padded instead of skipped.
    """
    w, h = img.size
    scaled_h = max(1, round(width * h / w))
    img = img.resize((width, scaled_h), Image.LANCZOS)
    if scaled_h >= height:
        top = (scaled_h - height) // 2
        return img.crop((0, top, width, top + height))
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    canvas.paste(img, (0, (height - scaled_h) // 2))
    return canvas
