"""`t2i data cub`: import CUB-200-2011 in AttnGAN's layout, each bird cropped around its bounding box.

```
ROOT/CUB_200_2011/images/<class>/<img>.jpg
ROOT/CUB_200_2011/images.txt           "<id> <class>/<img>.jpg", one image a line
ROOT/CUB_200_2011/bounding_boxes.txt   "<id> <x> <y> <w> <h>", one image a line
ROOT/text/<class>/<img>.txt            10 captions, one a line (`text_c10/` in Reed et al.'s download)
ROOT/train/filenames.pickle            the split's "<class>/<img>" names, no extension (also test/)
```
The split's filenames.pickle gives the images and their order. It is read by an unpickler that only
builds plain lists of strings: a pickle that references any class or function is refused, never run.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path, PurePosixPath

from t2i.data.canonical import PNG_COMPRESS_LEVEL
from t2i.data.pack import (
    EMPTY_CAPTION,
    MISSING_IMAGE,
    NO_CAPTION,
    NOT_UTF8,
    Candidate,
    PackReport,
    Skipped,
    check_dest,
    check_size,
    read_captions,
    write_dataset,
)
from t2i.errors import T2IError

SPLITS = ("train", "test")
TEXT_FOLDERS = ("text", "text_c10")  # AttnGAN's birds.zip, Reed et al.'s cvpr2016_cub
LAYOUT = ("ROOT/CUB_200_2011/images/<class>/<img>.jpg, ROOT/CUB_200_2011/images.txt, "
          "ROOT/CUB_200_2011/bounding_boxes.txt, ROOT/text/<class>/<img>.txt (or text_c10/) and "
          "ROOT/train|test/filenames.pickle, as in AttnGAN's data/birds")
BOX_MARGIN = 0.75  # AttnGAN get_imgs: half-side r = int(0.75 * max(w, h)) around the box centre

# Skip reasons beyond pack's (MISSING_IMAGE, NO_CAPTION, EMPTY_CAPTION, NOT_UTF8, CORRUPT, BOX_OUTSIDE,
# TOO_SMALL).
NOT_LISTED = "image not in images.txt"
NO_BOX = "image without bounding box"

_CLASS = re.compile(r"(\d+)\.(.+)")  # "001.Black_footed_Albatross"


class _Refused(pickle.UnpicklingError):
    """A pickle that references a class or function."""


class _NamesUnpickler(pickle.Unpickler):
    """Builds plain data only: every class or function reference (the way pickles run code) is refused."""

    def find_class(self, module: str, name: str):
        raise _Refused(f"{module}.{name}")


def read_plain_pickle(path: Path, fix: str):
    """The plain data (lists, dicts, strings, numbers) in a Python 2 or 3 pickle, read without running anything
    from it: a pickle that refers to any class or function is an error ending with `fix`. Python 2 strings come
    back as bytes."""
    try:
        with open(path, "rb") as f:
            # encoding="bytes": a Python 2 str comes back as its raw bytes, for the caller to decode as UTF-8
            # (encoding="latin1" would garble non-ASCII UTF-8 names).
            return _NamesUnpickler(f, encoding="bytes").load()
    except _Refused as e:
        raise T2IError(f"{path} refers to the Python object {e}; t2i never runs code from a pickle, "
                       f"{fix}") from None
    except Exception as e:  # malformed pickles raise many types (EOFError, KeyError, ValueError, ...)
        raise T2IError(f"{path} is not a readable pickle ({type(e).__name__}: {e}); {fix}") from None


def read_name_list(path: Path) -> list[str]:
    """The list of names in a Python 2 or 3 pickle, read without running anything from it."""
    fix = f"recreate {path} as a pickled list of '<class>/<img>' strings"
    names = read_plain_pickle(path, fix)
    if not isinstance(names, (list, tuple)):
        raise T2IError(f"{path} holds a {type(names).__name__}, not a list of names; {fix}")
    decoded = []
    for i, name in enumerate(names):
        if isinstance(name, bytes):
            try:
                name = name.decode("utf-8")
            except UnicodeDecodeError:
                raise T2IError(f"{path}: entry {i} {name!r} is not UTF-8; {fix}") from None
        if not isinstance(name, str):
            raise T2IError(f"{path}: entry {i} is a {type(name).__name__}, not a name; {fix}")
        decoded.append(name)
    return decoded


def _require(path: Path, folder: bool = False) -> Path:
    """path itself, or a T2IError that names it and the expected layout."""
    if not (path.is_dir() if folder else path.is_file()):
        raise T2IError(f"{path} is missing: the CUB layout is {LAYOUT}")
    return path


def _text_folder(root: Path) -> Path:
    """ROOT/text, or ROOT/text_c10 where only that exists."""
    for name in TEXT_FOLDERS:
        if (root / name).is_dir():
            return root / name
    raise T2IError(f"{root / TEXT_FOLDERS[0]} is missing (and so is {root / TEXT_FOLDERS[1]}): the CUB "
                   f"layout is {LAYOUT}")


def read_table(path: Path, columns: int) -> dict[int, list[str]]:
    """id -> the other fields, for each line "<id> <field> ..." of a CUB table (images.txt, ...)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise T2IError(f"{path} is not UTF-8 text (invalid byte at offset {e.start}); restore the file "
                       "from CUB_200_2011.tgz") from None
    table = {}
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != columns or not fields[0].isdigit():
            raise T2IError(f"{path} line {n}: expected {columns} fields '<id> ...', got {line!r}; restore "
                           "the file from CUB_200_2011.tgz")
        table[int(fields[0])] = fields[1:]
    return table


def read_boxes(path: Path) -> dict[int, tuple[int, int, int, int]]:
    """id -> (x, y, w, h) of bounding_boxes.txt, truncated to integers as AttnGAN's astype(int)."""
    boxes = {}
    for image_id, fields in read_table(path, 5).items():
        try:
            boxes[image_id] = tuple(int(float(v)) for v in fields)
        except ValueError:
            raise T2IError(f"{path}: the box of image {image_id}, {' '.join(fields)}, is not four "
                           "numbers; restore the file from CUB_200_2011.tgz") from None
    return boxes


def attngan_box(x: int, y: int, w: int, h: int) -> tuple[int, int, int, int]:
    """AttnGAN's crop (left, top, right, bottom): a square of side 2r, r = int(0.75 max(w, h)),
    centred on the box; load_image clips it to the image."""
    r = int(max(w, h) * BOX_MARGIN)
    cx, cy = int((2 * x + w) / 2), int((2 * y + h) / 2)
    return cx - r, cy - r, cx + r, cy + r


def _parse_name(name: str, i: int, names_path: Path) -> tuple[int, str]:
    """(class id, class name) of a "<NNN.class>/<img>" entry of filenames.pickle."""
    parts = PurePosixPath(name).parts
    match = _CLASS.fullmatch(parts[0]) if len(parts) == 2 and ".." not in parts else None
    if match is None:
        raise T2IError(f"{names_path}: entry {i} {name!r} is not '<NNN.class>/<img>' (e.g. "
                       "'001.Black_footed_Albatross/Black_Footed_Albatross_0046_18')")
    return int(match[1]), match[2]


def scan_cub(root: Path, split: str) -> tuple[list[Candidate], list[Skipped]]:
    """The split's images in filenames.pickle order, with captions, class and crop box; and the skips."""
    cub = _require(root / "CUB_200_2011", folder=True)
    image_dir = _require(cub / "images", folder=True)
    images_txt, boxes_txt = _require(cub / "images.txt"), _require(cub / "bounding_boxes.txt")
    text_dir = _text_folder(root)
    names_path = _require(root / split / "filenames.pickle")
    names = read_name_list(names_path)
    listed = {os.path.splitext(fields[0])[0]: (image_id, fields[0])
              for image_id, fields in read_table(images_txt, 2).items()}
    boxes = read_boxes(boxes_txt)
    candidates, skipped = [], []
    for i, name in enumerate(names):
        class_id, class_name = _parse_name(name, i, names_path)
        if name not in listed:
            skipped.append(Skipped(name, NOT_LISTED, f"{images_txt} has no line for {name}.jpg"))
            continue
        image_id, file = listed[name]
        caption_file = text_dir / f"{name}.txt"
        if image_id not in boxes:
            skipped.append(Skipped(file, NO_BOX, f"{boxes_txt} has no line for image {image_id}"))
        elif not (image_dir / file).is_file():
            skipped.append(Skipped(file, MISSING_IMAGE, f"expected {image_dir / file}"))
        elif not caption_file.is_file():
            skipped.append(Skipped(file, NO_CAPTION, f"expected {caption_file}"))
        else:
            try:
                captions = read_captions(caption_file)
            except UnicodeDecodeError as e:
                skipped.append(Skipped(file, NOT_UTF8, f"{caption_file}: invalid byte at offset {e.start}"))
                continue
            if not captions:
                skipped.append(Skipped(file, EMPTY_CAPTION, f"{caption_file} has no non-blank line"))
                continue
            attributes = {"class_id": class_id, "class": class_name, "source": file}
            candidates.append(Candidate(file, captions, attributes, attngan_box(*boxes[image_id])))
    return candidates, skipped


def cub(
    root: str | os.PathLike,
    dest: str | os.PathLike,
    split: str,
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
    """Import the train or test split of CUB-200-2011 (AttnGAN layout under ROOT) into DEST; birds whose
    crop (clipped to the image) has a shorter side below min_size are skipped (0, the default, keeps all)."""
    root, dest = Path(root), Path(dest)
    if split not in SPLITS:
        raise T2IError(f"--split {split!r} is not one of {', '.join(SPLITS)}")
    if not root.is_dir():
        raise T2IError(f"CUB root {root} does not exist (or is not a folder); pass the folder holding "
                       f"CUB_200_2011/, text/, train/ and test/ (the layout is {LAYOUT})")
    check_dest(dest, root)
    check_size(width, height, transform, png_level, min_size)
    report = PackReport(str(root), str(dest), width, height, transform, subset, seed, inputs={"split": split},
                        png_level=png_level, min_size=min_size)
    candidates, report.skipped = scan_cub(root, split)
    hint = (f"every name in {root / split / 'filenames.pickle'} needs its image in images.txt and "
            "bounding_boxes.txt, and a caption file text/<name>.txt")
    return write_dataset(root / "CUB_200_2011" / "images", candidates, report, hint, strict=strict,
                         overwrite=overwrite, workers=workers, progress=progress)
