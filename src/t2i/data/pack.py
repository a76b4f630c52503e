"""`t2i data pack`: import a folder of images with .txt captions into the canonical dataset format.

SOURCE holds `name.png|jpg|jpeg|webp` beside `name.txt` (one caption per line), in any sub-folder;
with `--no_captions` it holds images only and becomes an image-only dataset (language-free data).
Unusable files are skipped with a reason (or, with strict, stop the import), among them images too small
to scale up to the target (`--min_size`); decoding, cropping and PNG encoding run in a process pool;
nothing in SOURCE is ever written.

The back half, `write_dataset` (candidates -> skip report -> order-preserving pool -> DatasetWriter),
is shared by every importer: pack scans a folder, `t2i.data.coco` and `t2i.data.cub` read the
datasets' own annotation files, and all three hand it a list of `Candidate`s.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from t2i.data.canonical import PNG_COMPRESS_LEVEL, DatasetWriter, encode_png, is_zip_path
from t2i.io import write_json_atomic
from t2i.data.crops import center_crop, center_crop_wide
from t2i.errors import T2IError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
TRANSFORMS = ("center-crop", "center-crop-wide", "none")
EXIF_ORIENTATION = 0x0112

# Skip reasons: the report counts files by these.
NO_CAPTION = "image without caption file"
NO_IMAGE = "caption file without image"
EMPTY_CAPTION = "empty caption file"
NOT_UTF8 = "caption file not UTF-8"
SHARED_CAPTION = "several images share one caption file"
CORRUPT = "corrupt or truncated image"
WRONG_SIZE = "wrong size for --transform none"
MISSING_IMAGE = "image listed but missing on disk"  # coco, cub: annotations name a file that is absent
BOX_OUTSIDE = "crop box outside the image"  # cub: a bounding box that misses the image
TOO_SMALL = "smaller than --min_size"  # the region scaled to the target has a shorter side below min_size


class Unusable(ValueError):
    """An image that cannot go into the dataset; args are (reason, detail)."""


@dataclass
class Skipped:
    """One file left out of the dataset, and why."""

    file: str  # relative to SOURCE
    reason: str  # one of the reason constants above
    detail: str = ""


@dataclass
class Candidate:
    """An image to import, not yet decoded: its file, captions, attributes and optional crop box."""

    file: str  # relative to the image root (SOURCE for pack); named in the report
    captions: list[str]
    attributes: dict | None = None
    box: tuple[int, int, int, int] | None = None  # (left, top, right, bottom), see load_image


@dataclass
class PackReport:
    """What an import (pack, coco, cub) kept and skipped; written as report.json."""

    source: str
    dest: str
    width: int
    height: int
    transform: str
    subset: int | None
    seed: int
    kept: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # beyond source: COCO captions file, CUB split
    png_level: int = PNG_COMPRESS_LEVEL  # zlib level of the written PNGs
    image_only: bool = False  # images without captions (`t2i data pack --no_captions`)
    min_size: int = 0  # regions whose shorter side is below this were skipped (TOO_SMALL); 0 keeps all

    def counts(self) -> dict[str, int]:
        """Number of skipped files per reason."""
        return dict(Counter(s.reason for s in self.skipped))

    def to_dict(self) -> dict:
        """A JSON-ready dict, with the per-reason counts first."""
        d = asdict(self)
        if not d["inputs"]:
            del d["inputs"]
        d["skipped_by_reason"] = self.counts()
        d["skipped_files"] = d.pop("skipped")
        return d

    def summary(self, max_files: int = 20) -> str:
        """Human-readable lines: the first skipped files, then the totals."""
        lines = [f"skipped {s.file}: {s.reason}" + (f" ({s.detail})" if s.detail else "")
                 for s in self.skipped[:max_files]]
        if len(self.skipped) > max_files:
            lines.append(f"... and {len(self.skipped) - max_files} more skipped files (see the report)")
        by_reason = ", ".join(f"{n} {r}" for r, n in sorted(self.counts().items()))
        lines.append(f"kept {self.kept} images in {self.dest}; skipped {len(self.skipped)}"
                     + (f" ({by_reason})" if by_reason else ""))
        return "\n".join(lines)


def report_path(dest: str | os.PathLike) -> Path:
    """Where the report goes: inside a folder dataset, beside a zip (DEST.report.json)."""
    dest = Path(dest)
    return Path(str(dest) + ".report.json") if is_zip_path(dest) else dest / "report.json"


def read_captions(path: Path) -> list[str]:
    """Non-blank, stripped lines of a caption file; raises UnicodeDecodeError if not UTF-8."""
    text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    return [line.strip() for line in text.splitlines() if line.strip()]


def scan_source(source: Path, captions: bool = True) -> tuple[list[Candidate], list[Skipped]]:
    """Pair images with caption files under source (recursively, sorted), checking the captions; with
    captions False, every image without its caption (.txt files are ignored)."""
    images: dict[str, list[str]] = {}  # stem (relative, no extension) -> image files
    texts: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(source).as_posix()
            stem, ext = os.path.splitext(rel)
            if ext.lower() in IMAGE_EXTENSIONS:
                images.setdefault(stem, []).append(rel)
            elif ext.lower() == ".txt":
                texts[stem] = rel
    if not captions:
        files = sorted(f for group in images.values() for f in group)
        return [Candidate(f, [], {"source": f}) for f in files], []
    candidates, skipped = [], []
    for stem in sorted(set(images) | set(texts)):
        files, text = sorted(images.get(stem, [])), texts.get(stem)
        if text is None:
            skipped += [Skipped(f, NO_CAPTION, f"expected {stem}.txt") for f in files]
        elif not files:
            skipped.append(Skipped(text, NO_IMAGE, f"expected {stem}.png/.jpg/.jpeg/.webp"))
        elif len(files) > 1:
            skipped += [Skipped(f, SHARED_CAPTION, f"{', '.join(files)} all match {text}") for f in files]
        else:
            try:
                caps = read_captions(source / text)
            except UnicodeDecodeError as e:
                skipped.append(Skipped(text, NOT_UTF8, f"invalid byte at offset {e.start}"))
                continue
            if not caps:
                skipped.append(Skipped(text, EMPTY_CAPTION, "no non-blank line"))
            else:
                candidates.append(Candidate(files[0], caps, {"source": files[0]}))
    return candidates, skipped


def _draft_size(size: tuple[int, int], width: int, height: int, transform: str,
                rotated: bool) -> tuple[int, int]:
    """The smallest decoded size from which the transform still samples down to width x height."""
    w, h = size[::-1] if rotated else size
    k = width / w if transform == "center-crop-wide" else max(width / w, height / h)
    need = (math.ceil(w * k), math.ceil(h * k))
    return need[::-1] if rotated else need


def _crop_box(im: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """im cropped to box (left, top, right, bottom) clipped to the image; Unusable if nothing is left."""
    w, h = im.size
    left, top, right, bottom = max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])
    if right <= left or bottom <= top:
        raise Unusable(BOX_OUTSIDE, f"box {tuple(box)} does not overlap the {w}x{h} image")
    return im.crop((left, top, right, bottom))


def load_image(path: Path | bytes, width: int, height: int, transform: str,
               box: tuple[int, int, int, int] | None = None, min_size: int = 0) -> Image.Image:
    """Decode (verify, then fully load), crop to box, orient and transform one image (a file, or its
    bytes) to width x height RGB.

    box is (left, top, right, bottom) in stored pixels (before EXIF orientation, as AttnGAN reads CUB
    boxes), clipped to the image. The region that gets scaled (the clipped box, else the whole image)
    must have a shorter side of at least min_size pixels; transform "none" checks the exact size instead.
    Raises Unusable(reason, detail) for an unusable image.
    """
    def open_image():
        return Image.open(io.BytesIO(path) if isinstance(path, bytes) else path)

    try:
        with open_image() as im:
            im.verify()  # structural checks (PNG chunk CRCs etc.) without decoding
        with open_image() as im:
            stored = im.size  # before draft() decodes a JPEG smaller
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
            rotated = orientation in (5, 6, 7, 8)  # EXIF: stored sideways, shown rotated 90 degrees
            if transform != "none" and box is None:
                # JPEGs decode at 1/2, 1/4 or 1/8 scale in the DCT when that still leaves at least
                # the target resolution: large photos decode several times faster (a no-op otherwise).
                # Not with a box: its coordinates are full-scale (CUB photos are ~500px anyway).
                im.draft("RGB", _draft_size(im.size, width, height, transform, rotated))
            im.load()  # decodes every pixel: truncated files fail here
            image = _crop_box(im, box) if box is not None else im
            image = ImageOps.exif_transpose(image) if orientation != 1 else image  # as viewers show it
            image = image.convert("RGB") if image.mode != "RGB" else image
    except Unusable:
        raise
    except Exception as e:  # decoders raise many types on malformed data (OSError, SyntaxError, ...)
        # PIL names an in-memory file by its address; without it, equal failures read the same in a report.
        detail = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the image bytes", str(e))
        raise Unusable(CORRUPT, f"{type(e).__name__}: {detail}") from None
    # The region the transform scales, as shown; without a box, its stored size (draft() may have decoded
    # it smaller, though never below the target). Rotation swaps the sides, not the shorter one.
    w, h = image.size if box is not None else (stored[::-1] if rotated else stored)
    if transform != "none" and min(w, h) < min_size:
        raise Unusable(TOO_SMALL, f"{w}x{h} < {min_size}")
    if transform == "center-crop":
        return center_crop(image, width, height)
    if transform == "center-crop-wide":
        return center_crop_wide(image, width, height)
    if image.size != (width, height):
        raise Unusable(WRONG_SIZE, f"{image.size[0]}x{image.size[1]}, expected {width}x{height}")
    return image


def _encode_task(task: tuple) -> tuple[bytes | None, str, str]:
    """Pool worker: (path, width, height, transform, box, min_size, png_level) to (PNG bytes, "", "") or
    (None, reason, detail)."""
    path, width, height, transform, box, min_size, png_level = task
    try:
        return encode_png(load_image(Path(path), width, height, transform, box, min_size), png_level), "", ""
    except Unusable as e:
        return None, e.args[0], e.args[1]


def default_workers() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _strict_error(s: Skipped) -> T2IError:
    return T2IError(f"{s.file}: {s.reason}" + (f" ({s.detail})" if s.detail else "")
                    + "; fix or remove the file, or drop --strict to skip such files")


def check_dest(dest: Path, *sources: Path) -> None:
    """Reject a dest that is a source, lies inside one, or contains one (--overwrite would delete it)."""
    dst = dest.resolve()
    for source in sources:
        src = source.resolve()
        if dst == src or src in dst.parents:
            raise T2IError(f"destination {dest} is inside the source {source}; t2i never writes into the "
                           "source, choose a destination outside it")
        if dst in src.parents:
            raise T2IError(f"destination {dest} contains the source {source}; writing it would replace "
                           "the source, choose a destination outside it")


def default_min_size(width: int, height: int) -> int:
    """`t2i data pack`'s default --min_size: half the target's shorter side."""
    return min(width, height) // 2


def check_size(width: int, height: int, transform: str, png_level: int = PNG_COMPRESS_LEVEL,
               min_size: int = 0) -> None:
    """Reject non-positive sizes, unknown transforms, PNG levels outside zlib's 0-9, a negative min_size,
    and a min_size that --transform none (images exactly width x height) would skip every image for."""
    if width < 1 or height < 1:
        raise T2IError(f"--width {width} --height {height}: both must be positive")
    if not 0 <= png_level <= 9:
        raise T2IError(f"--png_level {png_level} must be in 0-9 (0: stored, fastest to write; 9: smallest)")
    if transform not in TRANSFORMS:
        raise T2IError(f"unknown transform {transform!r}; choose one of {', '.join(TRANSFORMS)}")
    if min_size < 0:
        raise T2IError(f"--min_size {min_size} must be at least 0 (0 keeps images of any size)")
    if transform == "none" and min_size > min(width, height):
        raise T2IError(f"--min_size {min_size} with --transform none would skip every image: they must be "
                       f"exactly {width}x{height} already; lower --min_size to {min(width, height)} or less, "
                       "or choose a cropping transform")


def _check_paths(source: Path, dest: Path, width: int, height: int, transform: str, png_level: int,
                 min_size: int) -> None:
    """Reject a missing source, a dest inside the source, and bad sizes or transforms."""
    if not source.is_dir():
        raise T2IError(f"source folder {source} does not exist (or is not a folder); pass a folder of "
                       "images with .txt caption files")
    check_dest(dest, source)
    check_size(width, height, transform, png_level, min_size)


def _choose_subset(candidates: list[Candidate], subset: int | None, seed: int) -> list[Candidate]:
    """A seeded subset of the (sorted) candidates, in their original order."""
    if subset is None:
        return candidates
    if not 0 < subset <= len(candidates):
        raise T2IError(f"--subset {subset} must be between 1 and the {len(candidates)} images that have "
                       "usable captions")
    keep = sorted(random.Random(seed).sample(range(len(candidates)), subset))
    return [candidates[i] for i in keep]


def write_dataset(
    root: Path,
    candidates: list[Candidate],
    report: PackReport,
    hint: str,
    strict: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> PackReport:
    """Decode the candidates (files under root) into a dataset at report.dest, in their order, and
    write the report; report.skipped already holds what the scan skipped, hint says how to get usable
    pairs when none is left."""
    from tqdm import tqdm

    dest, width, height, transform = Path(report.dest), report.width, report.height, report.transform
    if strict and report.skipped:
        raise _strict_error(report.skipped[0])
    candidates = _choose_subset(candidates, report.subset, report.seed)
    tasks = [(str(root / c.file), width, height, transform, c.box, report.min_size, report.png_level)
             for c in candidates]
    workers = workers or default_workers()
    with DatasetWriter(dest, dest.stem, (width, height), overwrite=overwrite,
                       image_only=report.image_only) as writer:
        # Order-preserving pool: the dataset's order is the candidates' order, whatever the timing.
        pool = multiprocessing.Pool(workers) if workers > 1 else None
        try:
            results = pool.imap(_encode_task, tasks, chunksize=8) if pool else map(_encode_task, tasks)
            bar = tqdm(results, total=len(tasks), desc=f"packing {dest.name}", unit="img",
                       disable=not progress)
            for candidate, (png, reason, detail) in zip(candidates, bar):
                if png is None:
                    report.skipped.append(Skipped(candidate.file, reason, detail))
                    if strict:
                        raise _strict_error(report.skipped[-1])
                    continue
                writer.add_png(png, candidate.captions, candidate.attributes)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        report.kept = len(writer.records)
        if report.kept == 0:
            what = "images" if report.image_only else "image and caption pairs"
            small = report.counts().get(TOO_SMALL, 0)
            if small:
                too_small = f"{small} smaller than --min_size {report.min_size} (lower it, or 0 keeps every size)"
                hint = too_small if small == len(report.skipped) else f"{too_small}; {hint}"
            raise T2IError(f"no usable {what} in {report.source} ({len(report.skipped)} files skipped); {hint}")
    write_json_atomic(report_path(dest), report.to_dict())
    return report


def pack(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    width: int,
    height: int,
    transform: str = "center-crop",
    strict: bool = False,
    subset: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
    png_level: int = PNG_COMPRESS_LEVEL,
    captions: bool = True,
    min_size: int | None = None,
) -> PackReport:
    """Import SOURCE into a canonical dataset at DEST (folder or .zip); returns the report. With captions
    False the dataset is image-only: every image, no caption files read. Images whose shorter side is
    below min_size (None: half the target's shorter side; 0: keep all) are skipped, not upscaled."""
    source, dest = Path(source), Path(dest)
    min_size = default_min_size(width, height) if min_size is None else min_size
    _check_paths(source, dest, width, height, transform, png_level, min_size)
    report = PackReport(str(source), str(dest), width, height, transform, subset, seed, png_level=png_level,
                        image_only=not captions, min_size=min_size)
    candidates, report.skipped = scan_source(source, captions)
    hint = ("SOURCE needs .png/.jpg/.jpeg/.webp images" if not captions else
            "each image needs a NAME.txt beside it with one caption per line (or pass --no_captions for an "
            "image-only dataset)")
    return write_dataset(source, candidates, report, hint, strict=strict, overwrite=overwrite, workers=workers,
                         progress=progress)
