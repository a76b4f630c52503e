"""Writing the canonical image-text dataset (a folder or uncompressed zip of PNGs plus dataset.json).

Kept free of torch, unlike `dataset.py` (whose reader is a torch Dataset), so the importers and their
worker processes start without paying torch's import (over a second on a small machine).
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

from PIL import Image

from t2i.errors import T2IError
from t2i.io import remove, replace_atomic, temp_sibling

FORMAT = "t2i-dataset"
VERSION = 1
# PNG zlib level: 1 is ~3x faster to encode than PIL's default 6 for ~10% larger files; encoding is
# the main cost of writing a dataset, and the zip is uncompressed anyway.
PNG_COMPRESS_LEVEL = 1
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_zip_path(path: str | os.PathLike) -> bool:
    """Whether a dataset path names a zip archive (by its suffix)."""
    return str(path).lower().endswith(".zip")


def encode_png(image: Image.Image, level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """Encode an image as PNG bytes at zlib `level` (0: stored, fastest; 9: smallest)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from a PNG's IHDR header, without decoding it."""
    if len(data) < 24 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    return struct.unpack(">II", data[16:24])


def _dest_is_empty(dest: Path) -> bool:
    """Whether dest is absent, an empty folder or an empty file (so writing it loses nothing)."""
    if not dest.exists():
        return True
    if dest.is_dir():
        return not any(dest.iterdir())
    return dest.stat().st_size == 0


class DatasetWriter:
    """Context manager that writes a dataset to a folder or `.zip`, atomically, on successful exit.

    Everything goes into a temporary sibling (`<dest>.tmp-XXXX`) that replaces dest at the end; on
    an exception the temporary is removed and an existing dest is left untouched. An `image_only`
    dataset (language-free training data) holds images without captions: every record has
    `captions: []` and dataset.json says `"image_only": true`; any other dataset needs captions on every image.
    """

    def __init__(
        self,
        dest: str | os.PathLike,
        name: str,
        resolution: tuple[int, int],
        overwrite: bool = False,
        image_only: bool = False,
    ):
        self.dest = Path(dest)
        self.name = name
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.overwrite = overwrite
        self.image_only = image_only
        self.records: list[dict] = []
        self._tmp: Path | None = None
        self._zip: zipfile.ZipFile | None = None
        if not overwrite and not _dest_is_empty(self.dest):
            raise T2IError(f"{self.dest} already exists and is not empty; pass --overwrite "
                           "(overwrite=True) to replace it, or choose another destination")

    def __enter__(self) -> DatasetWriter:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_sibling(self.dest, directory=not is_zip_path(self.dest))
        if is_zip_path(self.dest):
            self._zip = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_STORED)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish()
        finally:
            if self._zip is not None:
                self._zip.close()
                self._zip = None
            if self._tmp is not None:
                remove(self._tmp)
                self._tmp = None

    def add(
        self,
        image: Image.Image,
        captions: list[str],
        attributes: dict | None = None,
        captions_by_lang: dict[str, list[str]] | None = None,
    ) -> str:
        """Add one RGB image of size `resolution` with its captions; returns its file name."""
        if image.mode != "RGB":
            raise T2IError(f"image mode {image.mode!r} is not RGB; convert it with image.convert('RGB')")
        self._check_size(image.size)
        return self.add_png(encode_png(image), captions, attributes, captions_by_lang)

    def add_png(
        self,
        png: bytes,
        captions: list[str],
        attributes: dict | None = None,
        captions_by_lang: dict[str, list[str]] | None = None,
    ) -> str:
        """Add an already encoded RGB PNG (e.g. from a worker process); returns its file name."""
        if self._tmp is None:
            raise RuntimeError("DatasetWriter.add outside its `with` block")
        self._check_size(png_size(png))
        record: dict[str, Any] = {"file": f"{len(self.records):08d}.png"}
        if self.image_only:
            if captions or captions_by_lang:
                raise T2IError(f"an image-only dataset takes no captions, got {captions!r}; write a captioned "
                               "dataset instead (image_only=False, without `t2i data pack --no_captions`)")
            record["captions"] = []
        else:
            record["captions"] = _check_captions(captions, "captions")
            for lang, caps in (captions_by_lang or {}).items():
                record[f"captions_{lang}"] = _check_captions(caps, f"captions_{lang}")
        if attributes is not None:
            record["attributes"] = attributes
        if self._zip is not None:
            self._zip.writestr(record["file"], png)
        else:
            (self._tmp / record["file"]).write_bytes(png)
        self.records.append(record)
        return record["file"]

    def _check_size(self, size: tuple[int, int]) -> None:
        """Reject an image whose (width, height) is not the dataset resolution."""
        if tuple(size) != self.resolution:
            raise T2IError(f"image size {size[0]}x{size[1]} differs from the dataset resolution "
                           f"{self.resolution[0]}x{self.resolution[1]}; resize or crop it first")

    def _finish(self) -> None:
        """Write dataset.json and move the temporary into place."""
        data = _dump_metadata(self.name, self.resolution, self.records, self.image_only).encode("utf-8")
        if self._zip is not None:
            self._zip.writestr("dataset.json", data)
            self._zip.close()
            self._zip = None
        else:
            (self._tmp / "dataset.json").write_bytes(data)
        replace_atomic(self._tmp, self.dest)
        self._tmp = None


def _dump_metadata(name: str, resolution: tuple[int, int], records: list[dict], image_only: bool = False) -> str:
    """dataset.json text with one image entry per line: compact, yet readable and diffable."""
    head = {"format": FORMAT, "version": VERSION, "name": name, "resolution": list(resolution)}
    if image_only:  # only then: a captioned dataset's bytes, and so its fingerprint, stay as they were
        head["image_only"] = True
    head = json.dumps(head, ensure_ascii=False)
    entries = ",\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    return head[:-1] + ', "images": [\n' + entries + "\n]}\n"


def _check_captions(captions: list[str], field: str) -> list[str]:
    """Validate a caption list: a non-empty list of non-empty strings."""
    valid = not isinstance(captions, str) and all(isinstance(c, str) and c.strip() for c in captions)
    if not captions or not valid:
        raise T2IError(f"{field} must be a non-empty list of non-empty strings, got {captions!r} (images without "
                       "captions go into an image-only dataset: `t2i data pack --no_captions`)")
    return list(captions)
