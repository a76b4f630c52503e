"""Tests for `t2i data lafite`: a zip in the layout of LAFITE's dataset_tool.py, imported through the real CLI."""

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import cli
from t2i.cli import data as cli_data
from t2i.data import lafite_zip as lz
from t2i.data.dataset import ImageTextDataset
from t2i.data.features import features_path, load_or_compute_features
from t2i.data.pack import CORRUPT, WRONG_SIZE

DIM = 512


def _png(seed: int, size=(16, 16), mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _feature(rng, dim=DIM) -> list[float]:
    return rng.standard_normal(dim).astype(np.float32).tolist()  # exact in float32, as CLIP's fp16 output is


def _name(i: int) -> str:
    return f"{i // 100000:05d}/img{i:08d}.png"  # dataset_tool.py's archive names


def build_zip(path, n=4, captions="txt", labels=True, images=None, meta_edit=None, extra=None, seed=0):
    """A LAFITE zip: n images, features per image, captions per `captions` ("txt" members, "json" entry,
    or None: language-free, no captions and no text features); returns (images bytes, dataset.json dict)."""
    rng = np.random.default_rng(seed)
    images = images or {_name(i): _png(i, mode="L" if i == 1 else "RGB") for i in range(n)}
    meta = {"labels": [[f, k] for k, f in enumerate(images)] if labels else None,
            "clip_img_features": [[f, _feature(rng)] for f in images],
            "clip_txt_features": [[f, [_feature(rng) for _ in range(1 + k % 2)] if captions else []]
                                  for k, f in enumerate(images)]}
    texts = {f: [f"caption {k}", f"another caption {k}"][: 1 + k % 2] for k, f in enumerate(images)}
    if captions == "json":
        meta["captions"] = [[f, caps] for f, caps in texts.items()]
    if meta_edit:
        meta_edit(meta)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for f, data in images.items():
            zf.writestr(f, data)
            if captions == "txt":
                zf.writestr(f[:-4] + ".txt", "\n".join(texts[f]) + "\n\n")
        for f, data in (extra or {}).items():
            zf.writestr(f, data)
        if meta is not None:
            zf.writestr("dataset.json", json.dumps(meta))
    return images, meta


def _state(path):
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


class CachedOnlyClip:
    """A CLIP that only has an identity: any attempt to compute features fails the test."""

    def __init__(self, identity):
        self.identity = identity

    def encode_image(self, images):
        raise AssertionError("features were recomputed instead of read from the cache")

    encode_text = encode_image


def test_cli_import_keeps_pngs_writes_captions_features_and_report(tmp_path, capsys):
    src, dest = tmp_path / "coco_lafite.zip", tmp_path / "out"
    images, meta = build_zip(src)
    before = _state(src)
    cli("data", "lafite", src, dest, "--clip-identity", "open_clip:ViT-B-32-quickgelu:0123456789abcdef")
    out = capsys.readouterr().out
    assert _state(src) == before  # the zip is only read

    ds = ImageTextDataset(dest)
    assert len(ds) == 4 and ds.resolution == (16, 16) and ds.name == "out"
    assert [r["attributes"] for r in ds.records] == [{"source": f, "label": k} for k, f in enumerate(images)]
    assert [r["captions"] for r in ds.records] == [["caption 0"], ["caption 1", "another caption 1"],
                                                   ["caption 2"], ["caption 3", "another caption 3"]]
    for k, f in enumerate(images):
        stored = (dest / ds.records[k]["file"]).read_bytes()
        if k == 1:  # grayscale PNG: re-encoded as RGB with the same pixels
            gray = np.asarray(Image.open(io.BytesIO(images[f])))
            assert torch.equal(ds[k]["image"], torch.from_numpy(np.stack([gray] * 3)))
        else:  # RGB PNGs of the dataset's size are copied byte for byte
            assert stored == images[f]

    identity = "open_clip:ViT-B-32-quickgelu:0123456789abcdef"
    path = features_path(ds, identity)
    assert path.parent == tmp_path / "out.features" and str(path) in out
    t = load_file(path)
    img = torch.tensor([v for _, v in meta["clip_img_features"]])
    txt = torch.tensor([v for _, vs in meta["clip_txt_features"] for v in vs])
    assert torch.equal(t["image"], img) and torch.equal(t["text"], txt)
    assert t["offsets"].tolist() == [0, 1, 3, 4, 6]
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"dataset": ds.fingerprint(), "clip": identity, "lang": "en"}
    # What `t2i train lafite` calls: a CLIP of the same identity reads them, nothing is recomputed.
    feats = load_or_compute_features(ds, CachedOnlyClip(identity))
    assert torch.equal(feats.image, img) and torch.equal(feats.text, txt)

    report = json.loads((dest / "report.json").read_text())
    assert report["kept"] == 4 and report["skipped_files"] == [] and report["width"] == 16
    assert report["inputs"] == {"captions": "NAME.txt members of the zip", "clip_identity": identity,
                                "features": str(path)}


def test_default_identity_and_zip_destination(tmp_path):
    src = tmp_path / "l.zip"
    build_zip(src, captions="json", labels=False)
    cli("data", "lafite", src, tmp_path / "d.zip")
    ds = ImageTextDataset(tmp_path / "d.zip")
    assert ds.records[3]["captions"] == ["caption 3", "another caption 3"]
    assert ds.records[0]["attributes"] == {"source": _name(0)}  # labels null: no label attribute
    assert features_path(ds, lz.DEFAULT_IDENTITY).is_file()
    assert (tmp_path / "d.zip.report.json").is_file()
    assert cli_data.LAFITE_IDENTITY == lz.DEFAULT_IDENTITY


def test_skips_are_counted_and_kept_features_stay_aligned(tmp_path):
    n = 9
    images = {_name(i): _png(i) for i in range(n)}
    images[_name(6)] = _png(6, size=(8, 8))  # another size
    images[_name(7)] = images[_name(7)][:60]  # truncated

    def edit(meta):
        img, txt = dict(meta["clip_img_features"]), dict(meta["clip_txt_features"])
        del img[_name(1)]  # image without image feature
        img[_name(2)] = img[_name(2)][:511]  # wrong image feature length
        txt[_name(3)] = [txt[_name(3)][0] + [0.5]]  # wrong text feature length
        txt[_name(4)] = txt[_name(4)] + [txt[_name(4)][0]]  # 2 text features for 1 caption
        img["00000/gone.png"] = img[_name(0)]  # features without image
        meta["clip_img_features"], meta["clip_txt_features"] = list(img.items()), list(txt.items())

    src = tmp_path / "bad.zip"
    _, meta = build_zip(src, images=images, meta_edit=edit, extra={"00000/orphan.txt": "no image"})
    report = lz.lafite_zip(src, tmp_path / "out", progress=False)
    skipped = {s.file: s.reason for s in report.skipped}
    assert skipped == {_name(1): lz.NO_IMAGE_FEATURE, _name(2): lz.WRONG_LENGTH, _name(3): lz.WRONG_LENGTH,
                       _name(4): lz.CAPTION_COUNT, "00000/gone.png": lz.FEATURES_WITHOUT_IMAGE,
                       _name(6): WRONG_SIZE, _name(7): CORRUPT, "00000/orphan.txt": lz.CAPTIONS_WITHOUT_IMAGE}
    detail = {s.file: s.detail for s in report.skipped}
    assert detail[_name(2)] == "image feature has 511 values, expected 512"
    assert detail[_name(4)] == "1 caption(s), 2 text feature(s)"
    assert report.kept == 3

    ds = ImageTextDataset(tmp_path / "out")
    kept = [r["attributes"]["source"] for r in ds.records]
    assert kept == [_name(0), _name(5), _name(8)]
    t = load_file(features_path(ds, lz.DEFAULT_IDENTITY))
    img, txt = dict(meta["clip_img_features"]), dict(meta["clip_txt_features"])
    assert torch.equal(t["image"], torch.tensor([img[f] for f in kept]))
    assert torch.equal(t["text"], torch.tensor([v for f in kept for v in txt[f]]))
    assert t["offsets"].tolist() == [0, 1, 3, 4]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["skipped_by_reason"][lz.WRONG_LENGTH] == 2 and len(saved["skipped_files"]) == 8


def test_language_free_zip_becomes_an_image_only_dataset_with_its_image_features(tmp_path):
    free = tmp_path / "free.zip"
    images, meta = build_zip(free, captions=None)  # language-free: no captions, empty text feature lists
    before = _state(free)
    cli("data", "lafite", free, tmp_path / "out")
    assert _state(free) == before
    ds = ImageTextDataset(tmp_path / "out")
    assert ds.image_only and len(ds) == 4 and all(ds[i]["captions"] == [] for i in range(4))
    assert [ds.records[i]["attributes"] for i in range(4)] == [{"source": f, "label": k} for k, f in enumerate(images)]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["kept"] == 4 and report["inputs"]["captions"] == lz.LANGUAGE_FREE
    feats = load_or_compute_features(ds, CachedOnlyClip(lz.DEFAULT_IDENTITY))   # read from the cache
    assert torch.equal(feats.image, torch.tensor([f for _, f in meta["clip_img_features"]]))
    assert feats.text.shape == (0, DIM) and feats.offsets.tolist() == [0] * 5


def test_caption_less_zips_with_text_features_are_refused_with_the_way_out(tmp_path, cli_error):
    free = tmp_path / "free.zip"
    build_zip(free, captions=None)

    # Text features without their captions: the captions can be given as a folder.
    bare = tmp_path / "bare.zip"
    build_zip(bare, captions="txt")
    with zipfile.ZipFile(bare) as zf:
        members = {n: zf.read(n) for n in zf.namelist() if not n.endswith(".txt")}
    with zipfile.ZipFile(bare, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    message = cli_error("data", "lafite", bare, tmp_path / "out")
    assert "--captions DIR" in message and "DIR/00000/img00000000.txt" in message and "does not invent" in message
    assert not (tmp_path / "out").exists()

    # A folder of captions does not make a language-free zip importable: it has no text features to store.
    caps = tmp_path / "caps" / "00000"
    caps.mkdir(parents=True)
    for i in range(4):
        (caps / f"img{i:08d}.txt").write_text(f"given caption {i}\n")
    message = cli_error("data", "lafite", free, tmp_path / "out", "--captions", tmp_path / "caps")
    assert "no usable image" in message and f"4 {lz.NO_TEXT_FEATURES}" in message


def test_captions_folder_replaces_the_zips_captions(tmp_path):
    src = tmp_path / "l.zip"
    build_zip(src, n=2)
    caps = tmp_path / "caps" / "00000"
    caps.mkdir(parents=True)
    (caps / "img00000000.txt").write_text("from the folder\n")
    report = lz.lafite_zip(src, tmp_path / "out", captions=tmp_path / "caps", progress=False)
    assert report.inputs["captions"] == f"folder {tmp_path / 'caps'}"
    assert [(s.file, s.reason) for s in report.skipped] == [(_name(1), lz.NO_CAPTIONS)]
    assert ImageTextDataset(tmp_path / "out").records[0]["captions"] == ["from the folder"]


@pytest.mark.parametrize("case, expected", [
    ("no dataset.json", "has no dataset.json"),
    ("no features", "has no clip_img_features list"),
    ("not json", "dataset.json is not valid JSON"),
    ("bad pair", "clip_img_features[0] = 'x' is not a [file, value] pair"),
    ("not a zip", "is not a valid zip file"),
    ("missing", "does not exist"),
])
def test_malformed_zips_give_clear_errors(tmp_path, cli_error, case, expected):
    src = tmp_path / "l.zip"
    if case == "not a zip":
        src.write_bytes(b"not a zip at all")
    elif case != "missing":
        build_zip(src)
        with zipfile.ZipFile(src) as zf:
            members = {n: zf.read(n) for n in zf.namelist() if n != "dataset.json"}
            meta = json.loads(zf.read("dataset.json"))
        text = {"no dataset.json": None, "not json": "{oops",
                "no features": json.dumps({"labels": None}),
                "bad pair": json.dumps({**meta, "clip_img_features": ["x"]})}[case]
        with zipfile.ZipFile(src, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
            if text is not None:
                zf.writestr("dataset.json", text)
    assert expected in cli_error("data", "lafite", src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_destination_needs_overwrite(tmp_path, cli_error):
    src = tmp_path / "l.zip"
    build_zip(src, n=2)
    cli("data", "lafite", src, tmp_path / "out")
    assert "--overwrite" in cli_error("data", "lafite", src, tmp_path / "out")
    cli("data", "lafite", src, tmp_path / "out", "--overwrite")
    assert "inside the source" in cli_error("data", "lafite", src, src)


def _option_help(name: str) -> dict:
    """{option dest: help} of `t2i data NAME`."""
    import argparse

    from t2i.cli import build_parser

    def choices(parser):
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return {a.dest: a.help for a in choices(choices(build_parser("data"))["data"])[name]._actions}


def test_every_option_has_help():
    helps = _option_help("lafite")
    assert len(helps) >= 4 and all(helps.values()), [dest for dest, text in helps.items() if not text]
