"""The canonical image-text dataset: a folder or uncompressed zip of PNGs plus dataset.json.

`DatasetWriter` (in the torch-free `canonical.py`) writes one atomically; `ImageTextDataset` reads one as a torch Dataset. The format is
described in docs/ARCHITECTURE.md. `resolution` is (width, height), as PIL reports image sizes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

# The writer and the format's constants live in the torch-free `canonical` module; imported here too,
# so `from t2i.data.dataset import DatasetWriter, encode_png, ...` keeps working.
from t2i.data.canonical import (  # noqa: F401
    FORMAT,
    PNG_COMPRESS_LEVEL,
    VERSION,
    DatasetWriter,
    _check_captions,
    encode_png,
    is_zip_path,
    png_size,
)
from t2i.data.transforms import pil_to_tensor
from t2i.errors import T2IError


class ImageTextDataset(torch.utils.data.Dataset):
    """A canonical dataset (folder or zip) as a torch Dataset of uint8 images and captions (none in an
    `image_only` dataset, the language-free kind)."""

    def __init__(
        self,
        path: str | os.PathLike,
        transform: Callable[[Image.Image], Image.Image | torch.Tensor] | None = None,
        caption_lang: str = "en",
    ):
        self.path = Path(path)
        self.transform = transform
        self.caption_lang = caption_lang
        self.is_zip = self.path.is_file()
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None
        self._fingerprint: str | None = None
        raw = self._read_metadata()
        self._json_bytes = raw
        meta = _parse_metadata(raw, self.path)
        self.name: str = meta["name"]
        self.resolution: tuple[int, int] = (int(meta["resolution"][0]), int(meta["resolution"][1]))
        self.records: list[dict] = meta["images"]
        self.image_only: bool = meta["image_only"]
        self._caption_key = "captions" if caption_lang == "en" else f"captions_{caption_lang}"
        self._check_records()

    def _read_metadata(self) -> bytes:
        """dataset.json's bytes, with a T2IError that says what is wrong with the path."""
        if not self.path.exists():
            raise T2IError(f"dataset {self.path} does not exist; create one with `t2i data pack "
                           "SOURCE DEST` or `t2i data shapes --out DEST`")
        if self.is_zip:
            try:
                with zipfile.ZipFile(self.path) as zf:
                    self._members = {info.filename: info for info in zf.infolist()}
                    if "dataset.json" not in self._members:
                        raise T2IError(f"{self.path} has no dataset.json; it is not a t2i dataset "
                                       "(create one with `t2i data pack SOURCE DEST`)")
                    return zf.read("dataset.json")
            except zipfile.BadZipFile as e:
                raise T2IError(f"{self.path} is not a valid zip file ({e}); rebuild it with "
                               "`t2i data pack`") from None
        meta_path = self.path / "dataset.json"
        if not meta_path.is_file():
            raise T2IError(f"{self.path} has no dataset.json; it is not a t2i dataset (create one "
                           f"from images and .txt captions with `t2i data pack {self.path} DEST`)")
        return meta_path.read_bytes()

    def _check_records(self) -> None:
        """Fail early on entries whose image file is missing, on entries without captions (with
        captions, in an image-only dataset): a dataset is captioned or image-only, never a mix."""
        for i, record in enumerate(self.records):
            file = record.get("file") if isinstance(record, dict) else None
            if not isinstance(file, str):
                raise T2IError(f"{self.path}: entry {i} of dataset.json has no 'file'")
            if self.image_only:
                if any(record[k] for k in record if k == "captions" or k.startswith("captions_")):
                    raise T2IError(f"{self.path}: entry {i} ({file}) has captions, but dataset.json marks the "
                                   "dataset image_only; rebuild it with `t2i data pack` (with .txt captions for "
                                   "every image, or --no_captions for none)")
            elif not _valid_captions(record.get(self._caption_key)):
                langs = sorted(["en"] + [k[len("captions_"):] for k in record if k.startswith("captions_")])
                raise T2IError(f"{self.path}: entry {i} ({file}) has no {self._caption_key!r} "
                               f"(caption_lang={self.caption_lang!r}; languages it has: {langs}); "
                               "every entry of a captioned dataset needs a non-empty caption list (images "
                               "without captions go into an image-only dataset: `t2i data pack --no_captions`)")
            exists = file in self._members if self.is_zip else (self.path / file).is_file()
            if not exists:
                raise T2IError(f"{self.path}: image {file} listed in dataset.json (entry {i}) is "
                               "missing; rebuild the dataset with `t2i data pack`")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        image = self.read_image(i)
        if self.transform is not None:
            image = self.transform(image)
        if isinstance(image, Image.Image):
            image = pil_to_tensor(image)
        return {"image": image, "captions": list(record.get(self._caption_key, [])), "index": i,
                "attributes": record.get("attributes", {})}

    def require_captions(self, needed_by: str) -> None:
        """Raise a T2IError naming this dataset and the fix when it is image-only and `needed_by` needs captions."""
        if self.image_only:
            raise T2IError(f"dataset {str(self.path)!r} is image-only (no captions), but {needed_by} needs "
                           "captions; give a captioned dataset (`t2i data pack` with a NAME.txt beside each image)")

    def _zipfile(self) -> zipfile.ZipFile:
        """This process's zip handle, opened lazily (DataLoader workers fork and must not share it)."""
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._zip_pid = os.getpid()
        return self._zip

    def _read_bytes(self, file: str) -> bytes:
        """The raw bytes of one member file."""
        if self.is_zip:
            return self._zipfile().read(file)
        return (self.path / file).read_bytes()

    def read_image(self, i: int) -> Image.Image:
        """Image i as a PIL RGB image, checked against the dataset resolution."""
        file = self.records[i]["file"]
        image = Image.open(io.BytesIO(self._read_bytes(file)))
        if image.size != self.resolution:
            raise T2IError(f"{self.path}: image {file} is {image.size[0]}x{image.size[1]} but the "
                           f"dataset resolution is {self.resolution[0]}x{self.resolution[1]}; "
                           "rebuild the dataset with `t2i data pack`")
        return image.convert("RGB") if image.mode != "RGB" else image

    def fingerprint(self) -> str:
        """Hex sha256 over dataset.json and every image (zip members by CRC32 and size); cached."""
        if self._fingerprint is None:
            h = hashlib.sha256(self._json_bytes)
            for record in self.records:
                h.update(record["file"].encode("utf-8") + b"\0")
                if self.is_zip:
                    info = self._members[record["file"]]
                    h.update(struct.pack(">IQ", info.CRC, info.file_size))
                else:
                    h.update(hashlib.sha256((self.path / record["file"]).read_bytes()).digest())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __getstate__(self) -> dict:
        # Zip handles cannot be pickled (spawned DataLoader workers); each process reopens its own.
        state = self.__dict__.copy()
        state["_zip"] = None
        state["_zip_pid"] = None
        return state

    def __del__(self) -> None:
        if getattr(self, "_zip", None) is not None and self._zip_pid == os.getpid():
            self._zip.close()


def _valid_captions(caps) -> bool:
    """Whether a record's caption list is a non-empty list of strings."""
    return isinstance(caps, list) and bool(caps) and all(isinstance(c, str) for c in caps)


def _parse_metadata(raw: bytes, path: Path) -> dict:
    """Parse and validate dataset.json, with a T2IError naming the problem."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise T2IError(f"{path}: dataset.json is not valid JSON ({e}); rebuild the dataset with "
                       "`t2i data pack`") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise T2IError(f"{path}: dataset.json is not a {FORMAT!r} file (format="
                       f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != VERSION:
        raise T2IError(f"{path}: dataset.json version {meta.get('version')!r} is not supported "
                       f"(this t2i reads version {VERSION}); rebuild it with this t2i")
    res = meta.get("resolution")
    if not (isinstance(res, list) and len(res) == 2 and all(isinstance(v, int) and v > 0 for v in res)):
        raise T2IError(f"{path}: dataset.json resolution {res!r} must be [width, height]")
    if not isinstance(meta.get("images"), list):
        raise T2IError(f"{path}: dataset.json has no 'images' list")
    if not isinstance(meta.setdefault("image_only", False), bool):
        raise T2IError(f"{path}: dataset.json image_only {meta['image_only']!r} must be true or false")
    meta.setdefault("name", path.stem)
    return meta


def captions_by_image(dataset: ImageTextDataset, langs: str = "en", n: int | None = None) -> list[list[str]]:
    """Per image (the first n), its captions in every language of the comma-separated `langs`
    ("en" = `captions`, "ko" = `captions_ko`, ...), languages in the order given."""
    keys = ["captions" if lang.strip() == "en" else f"captions_{lang.strip()}" for lang in langs.split(",")
            if lang.strip()]
    if not keys:
        raise T2IError(f"no caption language in {langs!r}; give e.g. en or en,ko")
    n = len(dataset) if n is None else n
    return [[c for k in keys for c in dataset.records[i].get(k, [])] for i in range(n)]


def collate(batch: list[dict]) -> dict:
    """Collate ImageTextDataset items: stacked images, and plain lists for captions and attributes."""
    return {
        "image": torch.stack([item["image"] for item in batch]),
        "captions": [item["captions"] for item in batch],
        "index": torch.tensor([item["index"] for item in batch]),
        "attributes": [item["attributes"] for item in batch],
    }
