"""`t2i data coco`: import MS-COCO images and captions into the canonical dataset format.

The captions file (`annotations/captions_train2014.json`, `captions_val2017.json`, ...) lists `images`
(id, file_name, width, height) and `annotations` (image_id, caption). Each image keeps its captions
(about 5; stripped, in annotation order) and the attributes {"coco_id", "source"}; the dataset follows
the order of the `images` list. The 2014 layout (COCO_train2014_000000000009.jpg) and the 2017 one
(000000000009.jpg) differ only in file_name, which always comes from the JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

from t2i.data.canonical import PNG_COMPRESS_LEVEL
from t2i.data.pack import (
    MISSING_IMAGE,
    Candidate,
    PackReport,
    Skipped,
    check_dest,
    check_size,
    write_dataset,
)
from t2i.errors import T2IError

# Skip reasons beyond pack's (MISSING_IMAGE, CORRUPT, TOO_SMALL).
NO_CAPTIONS = "image with no caption"
UNKNOWN_IMAGE = "caption for an unknown image id"

_FIX = "pass a COCO captions file such as annotations/captions_train2014.json or captions_val2017.json"


def _is_int(value) -> bool:
    """Whether a JSON value is an integer (True and False are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _clip(value, n: int = 80) -> str:
    """repr(value), cut to n characters for an error message."""
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def read_captions_json(path: Path) -> tuple[list[dict], list[dict]]:
    """The validated `images` and `annotations` lists of a COCO captions file."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise T2IError(f"{path} is not valid JSON ({e}); {_FIX}") from None
    if not isinstance(data, dict) or not {"images", "annotations"} <= data.keys():
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise T2IError(f"{path} has no 'images' and 'annotations' keys (found: {keys}); {_FIX}")
    images, annotations = data["images"], data["annotations"]
    for key, value in (("images", images), ("annotations", annotations)):
        if not isinstance(value, list):
            raise T2IError(f"{path}: '{key}' is a {type(value).__name__}, not a list; {_FIX}")
    seen: dict[int, int] = {}
    for i, image in enumerate(images):
        if not (isinstance(image, dict) and _is_int(image.get("id")) and isinstance(image.get("file_name"), str)):
            raise T2IError(f"{path}: images[{i}] = {_clip(image)} needs an integer 'id' and a string "
                           f"'file_name'; {_FIX}")
        name = PurePosixPath(image["file_name"])
        if not image["file_name"] or name.is_absolute() or ".." in name.parts:
            raise T2IError(f"{path}: images[{i}] file_name {image['file_name']!r} must be a plain path "
                           f"relative to the images folder; {_FIX}")
        if seen.setdefault(image["id"], i) != i:
            raise T2IError(f"{path}: images[{i}] repeats id {image['id']} of images[{seen[image['id']]}]; "
                           "each image id must appear once")
    for i, ann in enumerate(annotations):
        if not (isinstance(ann, dict) and _is_int(ann.get("image_id")) and isinstance(ann.get("caption"), str)):
            raise T2IError(f"{path}: annotations[{i}] = {_clip(ann)} needs an integer 'image_id' and a "
                           f"string 'caption' (an instances_*.json or person_keypoints_*.json has no "
                           f"captions); {_FIX}")
    return images, annotations


def scan_coco(images_dir: Path, captions_path: Path) -> tuple[list[Candidate], list[Skipped]]:
    """Group the captions per image, in the `images` order, skipping what cannot be imported."""
    images, annotations = read_captions_json(captions_path)
    captions: dict[int, list[str]] = {image["id"]: [] for image in images}
    skipped = []
    for i, ann in enumerate(annotations):
        if ann["image_id"] not in captions:
            skipped.append(Skipped(f"annotations[{i}]", UNKNOWN_IMAGE,
                                   f"image_id {ann['image_id']} is not in 'images'"))
        elif ann["caption"].strip():
            captions[ann["image_id"]].append(ann["caption"].strip())
    candidates = []
    for image in images:
        file, caps = image["file_name"], captions[image["id"]]
        if not (images_dir / file).is_file():
            skipped.append(Skipped(file, MISSING_IMAGE, f"expected {images_dir / file}"))
        elif not caps:
            skipped.append(Skipped(file, NO_CAPTIONS, f"no non-blank caption has image_id {image['id']}"))
        else:
            candidates.append(Candidate(file, caps, {"coco_id": image["id"], "source": file}))
    return candidates, skipped


def coco(
    images: str | os.PathLike,
    captions: str | os.PathLike,
    dest: str | os.PathLike,
    width: int = 256,
    height: int = 256,
    transform: str = "center-crop",
    strict: bool = False,
    subset: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
    png_level: int = PNG_COMPRESS_LEVEL,
    min_size: int = 0,
) -> PackReport:
    """Import COCO images (a train2014/ or val2017/ folder) with their captions JSON into DEST; images
    whose shorter side is below min_size are skipped (0, the default, keeps the whole split)."""
    images, captions, dest = Path(images), Path(captions), Path(dest)
    if not images.is_dir():
        raise T2IError(f"--images {images} does not exist (or is not a folder); pass the folder holding "
                       "the COCO images, e.g. train2014/ or val2017/")
    if not captions.is_file():
        raise T2IError(f"--captions {captions} does not exist; {_FIX}")
    check_dest(dest, images, captions)
    check_size(width, height, transform, png_level, min_size)
    report = PackReport(str(images), str(dest), width, height, transform, subset, seed,
                        inputs={"captions": str(captions)}, png_level=png_level, min_size=min_size)
    candidates, report.skipped = scan_coco(images, captions)
    hint = f"check that --images {images} is the folder holding the file_name entries of {captions}"
    return write_dataset(images, candidates, report, hint, strict=strict, overwrite=overwrite,
                         workers=workers, progress=progress)
