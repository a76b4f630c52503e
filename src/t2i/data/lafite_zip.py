"""`t2i data lafite`: import an original LAFITE dataset zip (images + CLIP features) into the canonical format.

LAFITE's dataset_tool.py writes `00000/img00000000.png`, ... and a dataset.json holding `labels`
([[file, label], ...] or null), `clip_img_features` ([[file, [512 floats]], ...]) and `clip_txt_features`
([[file, [[512 floats] per caption line]], ...]). It does not store the captions, but every entry of a t2i
dataset needs at least one (docs/ARCHITECTURE.md), and placeholder text would reach every trainer and metric
as if it were a real caption. So the captions come from exactly one source, the first present of:
`captions=DIR` (DIR/<member without extension>.txt), a `captions` entry of dataset.json ([[file, [str, ...]],
...] or {file: [str, ...]}), or `<member without extension>.txt` members of the zip. dataset_tool.py computed
one text feature per non-blank line of an image's .txt file, so caption i of an image is the text of its text
feature i; an image whose caption and text feature counts differ is skipped. A language-free zip (no captions
and no text features at all) becomes an image-only dataset (`"image_only": true`, no captions) with its image
features, what `t2i train lafite --mixing_prob 1` trains on; text features without any caption source are
refused with the way to give the captions.

Images are copied byte for byte when they are 8-bit RGB PNGs of the dataset's resolution (the most common image
size) and decoded and re-encoded otherwise (grayscale PNGs, JPEGs); images of another size are skipped. No
EXIF rotation: the features were computed on the stored pixels. The features go into the new dataset's feature
cache (`t2i.data.features`) under the given CLIP identity, where `t2i train lafite` with a CLIP of that identity
finds them instead of recomputing. The zip is only read.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from PIL import Image

from t2i.data.dataset import DatasetWriter, ImageTextDataset, encode_png, png_size
from t2i.data.features import Features, save_features
from t2i.data.pack import (
    CORRUPT,
    IMAGE_EXTENSIONS,
    NOT_UTF8,
    WRONG_SIZE,
    PackReport,
    Skipped,
    Unusable,
    check_dest,
    report_path,
)
from t2i.errors import T2IError
from t2i.io import write_json_atomic

DEFAULT_IDENTITY = "lafite-zip:ViT-B/32"
FEATURE_DIM = 512  # CLIP ViT-B/32, the CLIP of LAFITE's dataset_tool.py

# Skip reasons beyond pack's (CORRUPT, WRONG_SIZE, NOT_UTF8).
NO_IMAGE_FEATURE = "image without image feature"
NO_TEXT_FEATURES = "image without text features"
FEATURES_WITHOUT_IMAGE = "features without image"
WRONG_LENGTH = "wrong feature length"
BAD_FEATURE = "malformed feature"
DUPLICATE = "listed twice in the features"
NO_CAPTIONS = "image without captions"
CAPTIONS_WITHOUT_IMAGE = "captions without image"
CAPTION_COUNT = "caption count differs from text feature count"
LANGUAGE_FREE = "none (language-free zip: image-only dataset)"

_FIX = "pass a zip written by LAFITE's dataset_tool.py (images and a dataset.json with clip_img_features)"
_PNG_8BIT_RGB = (8, 2)  # IHDR bit depth and colour type of the PNGs the canonical format stores


@dataclass
class _Entry:
    """One image that has everything but a checked image: its captions, attributes and features."""

    file: str
    captions: list[str]
    attributes: dict
    image_feature: torch.Tensor  # (D,)
    text_features: torch.Tensor  # (len(captions), D)


def _clip(value, n: int = 80) -> str:
    """repr(value), cut to n characters for an error message."""
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _read_meta(zf: zipfile.ZipFile, path: Path) -> dict:
    """dataset.json of a LAFITE zip, checked to hold the two feature lists."""
    if "dataset.json" not in zf.NameToInfo:
        raise T2IError(f"{path} has no dataset.json, so it holds no CLIP features; {_FIX}, or import plain "
                       "images with captions by `t2i data pack`")
    try:
        meta = json.loads(zf.read("dataset.json").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise T2IError(f"{path}: dataset.json is not valid JSON ({e}); {_FIX}") from None
    if not isinstance(meta, dict):
        raise T2IError(f"{path}: dataset.json is a {type(meta).__name__}, not an object; {_FIX}")
    if meta.get("format") == "t2i-dataset":
        raise T2IError(f"{path} is already a t2i dataset; use it as it is (`t2i data features` computes its "
                       "CLIP features)")
    for key in ("clip_img_features", "clip_txt_features"):
        if not isinstance(meta.get(key), (list, dict)):
            raise T2IError(f"{path}: dataset.json has no {key} list (found {_clip(meta.get(key), 40)}); {_FIX}")
    return meta


def _pairs(meta: dict, key: str, path: Path) -> tuple[dict, set[str]]:
    """{file: value} of a [[file, value], ...] (or {file: value}) entry, and the files listed twice."""
    value = meta.get(key)
    if value is None:
        return {}, set()
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = value
    else:
        raise T2IError(f"{path}: dataset.json {key} is a {type(value).__name__}, not a list of [file, value] "
                       f"pairs; {_FIX}")
    out, twice = {}, set()
    for i, item in enumerate(items):
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)):
            raise T2IError(f"{path}: dataset.json {key}[{i}] = {_clip(item)} is not a [file, value] pair; {_FIX}")
        file = item[0].replace("\\", "/")  # dataset_tool.py on Windows wrote backslashes
        if file in out:
            twice.add(file)
        out[file] = item[1]
    return out, twice


def _vector(value, dim: int, what: str) -> torch.Tensor:
    """A (dim,) float32 feature from a JSON list; raises Unusable(reason, detail)."""
    if not isinstance(value, list):
        raise Unusable(BAD_FEATURE, f"{what} is a {type(value).__name__}, not a list of numbers")
    if len(value) != dim:
        raise Unusable(WRONG_LENGTH, f"{what} has {len(value)} values, expected {dim}")
    try:
        t = torch.tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise Unusable(BAD_FEATURE, f"{what} holds something other than numbers") from None
    if t.ndim != 1 or not torch.isfinite(t).all():
        raise Unusable(BAD_FEATURE, f"{what} holds nested lists, NaN or infinite values")
    return t


def _caption_lines(text: str) -> list[str]:
    """Non-blank stripped lines: the captions of a .txt file (one text feature each in dataset_tool.py)."""
    return [line.strip() for line in text.removeprefix("\ufeff").splitlines() if line.strip()]


def _txt_name(member: str) -> str:
    return os.path.splitext(member)[0] + ".txt"


def _read_text(data: bytes, file: str) -> list[str] | Skipped:
    """Captions of a caption file's bytes, or why they are unusable."""
    try:
        return _caption_lines(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        return Skipped(file, NOT_UTF8, f"invalid byte at offset {e.start}")


def is_language_free(meta: dict, path: Path) -> bool:
    """Whether a zip's dataset.json has no text feature at all (dataset_tool.py without captions)."""
    return not any(isinstance(v, list) and v for v in _pairs(meta, "clip_txt_features", path)[0].values())


def read_captions(zf: zipfile.ZipFile, meta: dict, images: list[str], captions_dir: Path | None,
                  path: Path) -> tuple[str, dict[str, list[str] | Skipped], list[Skipped]]:
    """(where the captions came from, {image: captions or why not}, captions without an image); the
    source is LANGUAGE_FREE, with no captions, for a zip without captions or text features."""
    if captions_dir is not None:
        found: dict[str, list[str] | Skipped] = {}
        for image in images:
            txt = captions_dir / _txt_name(image)
            if txt.is_file():
                found[image] = _read_text(txt.read_bytes(), str(txt))
        return f"folder {captions_dir}", found, []
    if meta.get("captions") is not None:
        pairs, twice = _pairs(meta, "captions", path)
        found = {}
        for image, value in pairs.items():
            if image in twice:
                found[image] = Skipped(image, NO_CAPTIONS, "listed twice in the captions entry")
            elif isinstance(value, str):
                found[image] = _caption_lines(value)
            elif isinstance(value, list) and all(isinstance(c, str) for c in value):
                found[image] = [c.strip() for c in value if c.strip()]
            else:
                found[image] = Skipped(image, NO_CAPTIONS, f"captions entry {_clip(value, 40)} is not a list "
                                                           "of strings")
        orphans = sorted(set(pairs) - set(images))
        return "dataset.json captions", found, [Skipped(f, CAPTIONS_WITHOUT_IMAGE, "in dataset.json captions")
                                                for f in orphans]
    texts = {n for n in zf.namelist() if n.lower().endswith(".txt")}
    if not texts:
        if is_language_free(meta, path):
            return LANGUAGE_FREE, {}, []
        raise T2IError(f"{path} has no captions (no 'captions' entry in dataset.json and no NAME.txt beside the "
                       "images) but has text features, and t2i does not invent captions for them. Pass the "
                       f"captions its text features were computed from with --captions DIR (DIR/{_txt_name(images[0])}"
                       ", one caption per line, in the order of the image's clip_txt_features)")
    found = {image: _read_text(zf.read(_txt_name(image)), _txt_name(image))
             for image in images if _txt_name(image) in texts}
    orphans = sorted(texts - {_txt_name(image) for image in images})
    return "NAME.txt members of the zip", found, [Skipped(f, CAPTIONS_WITHOUT_IMAGE, "no image of that name")
                                                  for f in orphans]


def match_features(meta: dict, images: list[str], captions: dict, dim: int, path: Path,
                   language_free: bool = False) -> tuple[list[_Entry], list[Skipped]]:
    """Pair each image with its image feature, text features, captions and label, in the images' order
    (`language_free`: image features only)."""
    img_feats, img_twice = _pairs(meta, "clip_img_features", path)
    txt_feats, txt_twice = _pairs(meta, "clip_txt_features", path)
    labels, _ = _pairs(meta, "labels", path)
    twice = img_twice | txt_twice
    skipped = [Skipped(f, FEATURES_WITHOUT_IMAGE, "no such image in the zip")
               for f in sorted((set(img_feats) | set(txt_feats)) - set(images))]
    entries = []
    for image in images:
        caps = captions.get(image)
        try:
            if image in twice:
                raise Unusable(DUPLICATE, "clip_img_features" if image in img_twice else "clip_txt_features")
            if image not in img_feats:
                raise Unusable(NO_IMAGE_FEATURE, "not in clip_img_features")
            image_feature = _vector(img_feats[image], dim, "image feature")
            if language_free:  # image features only; the dataset is image-only
                entries.append(_Entry(image, [], _attributes(image, labels), image_feature, torch.zeros(0, dim)))
                continue
            texts = txt_feats.get(image)
            if not isinstance(texts, list) or not texts:
                raise Unusable(NO_TEXT_FEATURES, "no list in clip_txt_features" if not isinstance(texts, list)
                               else "empty list in clip_txt_features (language-free image)")
            text_features = torch.stack([_vector(t, dim, f"text feature {j}") for j, t in enumerate(texts)])
            if isinstance(caps, Skipped):
                skipped.append(caps)
                continue
            if not caps:
                raise Unusable(NO_CAPTIONS, "no captions in the chosen caption source" if caps is None
                               else "only blank captions")
            if len(caps) != len(texts):
                raise Unusable(CAPTION_COUNT, f"{len(caps)} caption(s), {len(texts)} text feature(s)")
        except Unusable as e:
            skipped.append(Skipped(image, *e.args))
            continue
        entries.append(_Entry(image, caps, _attributes(image, labels), image_feature, text_features))
    return entries, skipped


def _attributes(image: str, labels: dict) -> dict:
    """An entry's attributes: its member name in the zip, and its label when the zip has labels."""
    return {"source": image, **({"label": labels[image]} if image in labels else {})}


def _header_size(zf: zipfile.ZipFile, member: str) -> tuple[int, int]:
    """(width, height) from an image's header; raises Unusable for an unreadable one."""
    try:
        with zf.open(member) as f:
            head = f.read(24)
            if head.startswith(b"\x89PNG"):
                return png_size(head)
            f.seek(0)
            with Image.open(f) as im:
                return im.size
    except Exception as e:  # decoders raise many types on malformed data
        raise Unusable(CORRUPT, f"{type(e).__name__}: {e}") from None


def choose_resolution(zf: zipfile.ZipFile, entries: list[_Entry]) -> tuple[tuple[int, int], list[_Entry],
                                                                              list[Skipped]]:
    """The most common image size (ties: the first in member order), the entries of that size, the rest."""
    sizes, skipped = {}, []
    for e in entries:
        try:
            sizes[e.file] = _header_size(zf, e.file)
        except Unusable as u:
            skipped.append(Skipped(e.file, *u.args))
    if not sizes:
        return (0, 0), [], skipped
    resolution = Counter(sizes.values()).most_common(1)[0][0]
    for e in entries:
        if e.file in sizes and sizes[e.file] != resolution:
            w, h = sizes[e.file]
            skipped.append(Skipped(e.file, WRONG_SIZE, f"{w}x{h}, expected {resolution[0]}x{resolution[1]} "
                                                       "(the most common size)"))
    return resolution, [e for e in entries if sizes.get(e.file) == resolution], skipped


def png_for_dataset(data: bytes, resolution: tuple[int, int]) -> bytes:
    """data itself if it is an intact 8-bit RGB PNG of resolution, else the image re-encoded as one."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()  # chunk CRCs: truncated or damaged files fail here
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception as e:
        raise Unusable(CORRUPT, f"{type(e).__name__}: {e}") from None
    if im.size != tuple(resolution):
        raise Unusable(WRONG_SIZE, f"{im.size[0]}x{im.size[1]}, expected {resolution[0]}x{resolution[1]}")
    if im.format == "PNG" and im.mode == "RGB" and tuple(data[24:26]) == _PNG_8BIT_RGB:
        return data
    return encode_png(im.convert("RGB"))


def _nothing_usable(report: PackReport, n_images: int) -> T2IError:
    """The error for an import that kept no image, with the skip counts."""
    by_reason = ", ".join(f"{n} {r}" for r, n in sorted(report.counts().items()))
    return T2IError(f"no usable image in {report.source} ({n_images} images; skipped: {by_reason}); every image "
                    "needs an image feature, text features, as many captions as text features, and the size of "
                    "the others")


def _check_arguments(source: Path, dest: Path, captions_dir: Path | None, clip_identity: str, feature_dim: int,
                     overwrite: bool) -> None:
    """Refuse a missing zip or captions folder, a dest that is a source or not empty, and bad options."""
    if not source.is_file():
        raise T2IError(f"LAFITE zip {source} does not exist (or is not a file); {_FIX}")
    if captions_dir is not None and not captions_dir.is_dir():
        raise T2IError(f"--captions {captions_dir} is not a folder; pass a folder holding NAME.txt for each "
                       "image member NAME.png of the zip")
    check_dest(dest, source, *([captions_dir] if captions_dir else []))
    if not clip_identity.strip():
        raise T2IError("--clip-identity is empty; give the identity of the CLIP that computed the features "
                       f"(default {DEFAULT_IDENTITY!r})")
    if feature_dim < 1:
        raise T2IError(f"--feature-dim {feature_dim} must be positive (512 for CLIP ViT-B/32)")
    DatasetWriter(dest, dest.stem, (1, 1), overwrite=overwrite)  # refuses a non-empty dest before any work


def lafite_zip(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    clip_identity: str = DEFAULT_IDENTITY,
    captions: str | os.PathLike | None = None,
    feature_dim: int = FEATURE_DIM,
    overwrite: bool = False,
    progress: bool = True,
) -> PackReport:
    """Import a LAFITE dataset zip into a canonical dataset at DEST and its features into DEST's feature
    cache under clip_identity; returns the report (also written to report.json)."""
    from tqdm import tqdm

    source, dest = Path(source), Path(dest)
    captions_dir = Path(captions) if captions is not None else None
    _check_arguments(source, dest, captions_dir, clip_identity, feature_dim, overwrite)
    try:
        zf = zipfile.ZipFile(source)
    except zipfile.BadZipFile as e:
        raise T2IError(f"{source} is not a valid zip file ({e}); {_FIX}") from None
    with zf:
        meta = _read_meta(zf, source)
        images = sorted(n for n in zf.namelist()
                        if not n.endswith("/") and PurePosixPath(n).suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise T2IError(f"{source} holds no images ({', '.join(IMAGE_EXTENSIONS)}); {_FIX}")
        caption_source, caps, skipped = read_captions(zf, meta, images, captions_dir, source)
        image_only = caption_source == LANGUAGE_FREE
        entries, more = match_features(meta, images, caps, feature_dim, source, image_only)
        skipped += more
        resolution, entries, more = choose_resolution(zf, entries)
        skipped += more
        report = PackReport(str(source), str(dest), resolution[0], resolution[1], "none", None, 0,
                            skipped=skipped, inputs={"captions": caption_source, "clip_identity": clip_identity})
        if not entries:
            raise _nothing_usable(report, len(images))
        kept = []
        with DatasetWriter(dest, dest.stem, resolution, overwrite=overwrite, image_only=image_only) as writer:
            for e in tqdm(entries, desc=f"importing {source.name}", unit="img", disable=not progress):
                try:
                    png = png_for_dataset(zf.read(e.file), resolution)
                except Unusable as u:
                    report.skipped.append(Skipped(e.file, *u.args))
                    continue
                writer.add_png(png, e.captions, e.attributes)
                kept.append(e)
            if not kept:
                raise _nothing_usable(report, len(images))
    report.kept = len(kept)
    counts = torch.tensor([0] + [len(e.captions) for e in kept])
    feats = Features(torch.stack([e.image_feature for e in kept]), torch.cat([e.text_features for e in kept]),
                     counts.cumsum(0))
    dataset = ImageTextDataset(dest)
    report.inputs["features"] = str(save_features(dataset, clip_identity, feats))
    write_json_atomic(report_path(dest), report.to_dict())
    return report
