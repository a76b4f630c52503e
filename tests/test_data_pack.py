"""Tests for `t2i data pack`: pairing, skipping with reasons, strict mode, subsets, the CLI."""

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from t2i.cli import data as cli_data
from t2i.cli import main
from t2i.data import pack as pack_module
from t2i.data import shapes
from t2i.data.dataset import ImageTextDataset
from t2i.data.pack import (
    CORRUPT,
    EMPTY_CAPTION,
    NO_CAPTION,
    NO_IMAGE,
    NOT_UTF8,
    SHARED_CAPTION,
    TOO_SMALL,
    WRONG_SIZE,
    pack,
)
from t2i.errors import T2IError


def _jpeg(seed: int, size=(48, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    array = np.repeat(np.repeat(rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8), 8, 0), 8, 1)
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _good_source(root, n=4):
    """n valid pairs in nested folders (a/ and b/), mixed formats."""
    for i in range(n):
        folder = root / ("a" if i % 2 == 0 else "b/c")
        folder.mkdir(parents=True, exist_ok=True)
        if i == 1:
            Image.open(io.BytesIO(_jpeg(i))).save(folder / f"img{i}.png")
            name = f"img{i}.png"
        elif i == 3:
            Image.open(io.BytesIO(_jpeg(i))).convert("RGBA").save(folder / f"img{i}.webp")
            name = f"img{i}.webp"
        else:
            (folder / f"img{i}.jpg").write_bytes(_jpeg(i))
            name = f"img{i}.jpg"
        (folder / f"img{i}.txt").write_text(f"caption {i}\n\n  second {i}  \n", encoding="utf-8")
        yield f"{folder.relative_to(root).as_posix()}/{name}"


BAD_FILES = {
    CORRUPT: ("bad/random.jpg", "bad/random.txt"),
    NO_CAPTION: ("bad/lonely.jpg", None),
    NO_IMAGE: (None, "bad/orphan.txt"),
    EMPTY_CAPTION: ("bad/empty.jpg", "bad/empty.txt"),
    NOT_UTF8: ("bad/latin.jpg", "bad/latin.txt"),
}


def _add_bad(root, reason):
    image, text = BAD_FILES[reason]
    (root / "bad").mkdir(exist_ok=True)
    if image is not None:
        (root / image).write_bytes(b"\x00garbage" * 20 if reason == CORRUPT else _jpeg(9))
    if text is not None:
        content = {EMPTY_CAPTION: b"\n  \n", NOT_UTF8: "caf\xe9".encode("latin-1")}.get(reason, b"ok caption")
        (root / text).write_bytes(content)
    return image if reason in (CORRUPT, NO_CAPTION) else text  # the file the report names


def _snapshot(root):
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def messy(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    good = list(_good_source(src))
    for reason in BAD_FILES:
        _add_bad(src, reason)
    data = _jpeg(5)
    (src / "bad" / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (src / "bad" / "trunc.txt").write_text("truncated")
    (src / "bad" / "dup.jpg").write_bytes(_jpeg(6))
    (src / "bad" / "dup.png").write_bytes(_jpeg(6))
    (src / "bad" / "dup.txt").write_text("two images")
    (src / "notes.md").write_text("ignored")
    return src, good


@pytest.mark.parametrize("workers", [1, 2])
def test_pack_keeps_good_skips_bad_and_never_touches_source(tmp_path, messy, workers):
    src, good = messy
    before = _snapshot(src)
    report = pack(src, tmp_path / "out", 32, 24, "center-crop", workers=workers, progress=False)
    assert _snapshot(src) == before
    assert report.kept == 4
    assert report.counts() == {CORRUPT: 2, NO_CAPTION: 1, NO_IMAGE: 1, EMPTY_CAPTION: 1, NOT_UTF8: 1,
                               SHARED_CAPTION: 2}
    skipped = {s.file: s.reason for s in report.skipped}
    assert skipped["bad/trunc.jpg"] == CORRUPT and skipped["bad/random.jpg"] == CORRUPT
    assert skipped["bad/latin.txt"] == NOT_UTF8 and skipped["bad/orphan.txt"] == NO_IMAGE
    ds = ImageTextDataset(tmp_path / "out")
    assert len(ds) == 4 and ds.resolution == (32, 24) and ds.name == "out"
    assert [r["attributes"]["source"] for r in ds.records] == sorted(good)
    by_source = {r["attributes"]["source"]: r["captions"] for r in ds.records}
    assert by_source["a/img0.jpg"] == ["caption 0", "second 0"]
    assert ds[3]["image"].shape == (3, 24, 32)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["kept"] == 4 and saved["skipped_by_reason"][CORRUPT] == 2
    assert {s["file"] for s in saved["skipped_files"]} == set(skipped)


def test_workers_give_identical_zip_and_report_beside_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    list(_good_source(src, n=20))
    pack(src, tmp_path / "one" / "d.zip", 16, 16, "center-crop-wide", workers=1, progress=False)
    pack(src, tmp_path / "two" / "d.zip", 16, 16, "center-crop-wide", workers=2, progress=False)
    one, two = ImageTextDataset(tmp_path / "one" / "d.zip"), ImageTextDataset(tmp_path / "two" / "d.zip")
    assert one.fingerprint() == two.fingerprint() and len(one) == 20
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["d.zip", "d.zip.report.json"]


def test_png_level_changes_file_size_never_pixels(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    list(_good_source(src, n=6))
    sizes, pixels = {}, {}
    for level in (0, 1, 9):
        dest = tmp_path / f"l{level}.zip"
        assert main(["data", "pack", str(src), str(dest), "--width", "32", "--height", "32",
                     "--transform", "center-crop", "--png_level", str(level)]) == 0
        d = ImageTextDataset(dest)
        sizes[level] = dest.stat().st_size
        pixels[level] = [d[i]["image"] for i in range(len(d))]
        assert json.loads((tmp_path / f"l{level}.zip.report.json").read_text())["png_level"] == level
    assert sizes[0] > sizes[1] >= sizes[9]
    assert all((a == b).all() and (a == c).all() for a, b, c in zip(pixels[0], pixels[1], pixels[9]))
    assert main(["data", "pack", str(src), str(tmp_path / "bad"), "--width", "32", "--height", "32",
                 "--transform", "center-crop", "--png_level", "10"]) == 2
    assert "--png_level 10 must be in 0-9" in capsys.readouterr().err


@pytest.mark.parametrize("reason", list(BAD_FILES) + ["truncated"])
def test_strict_fails_on_each_bad_input(tmp_path, reason):
    src = tmp_path / "src"
    src.mkdir()
    list(_good_source(src, n=2))
    if reason == "truncated":
        data = _jpeg(5)
        (src / "trunc.jpg").write_bytes(data[: len(data) // 2])
        (src / "trunc.txt").write_text("truncated")
        name, reason = "trunc.jpg", CORRUPT
    else:
        name = _add_bad(src, reason)
    with pytest.raises(T2IError, match=f"{name}: {reason}.*drop --strict"):
        pack(src, tmp_path / "out", 16, 16, "center-crop", strict=True, progress=False)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]
    report = pack(src, tmp_path / "out", 16, 16, "center-crop", progress=False)
    assert report.kept == 2 and report.counts() == {reason: 1}


def test_transform_none_requires_exact_size(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "right.jpg").write_bytes(_jpeg(0, (48, 32)))
    (src / "right.txt").write_text("right")
    (src / "wrong.jpg").write_bytes(_jpeg(1, (32, 32)))
    (src / "wrong.txt").write_text("wrong")
    report = pack(src, tmp_path / "out", 48, 32, "none", progress=False)
    assert report.kept == 1
    assert [(s.file, s.reason, s.detail) for s in report.skipped] == [("wrong.jpg", WRONG_SIZE, "32x32, expected 48x32")]
    with pytest.raises(T2IError, match="wrong.jpg: wrong size"):
        pack(src, tmp_path / "strict", 48, 32, "none", strict=True, progress=False)


def test_subset_is_deterministic(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    list(_good_source(src, n=12))

    def sources(dest, seed):
        pack(src, tmp_path / dest, 16, 16, "center-crop", subset=5, seed=seed, progress=False)
        return [r["attributes"]["source"] for r in ImageTextDataset(tmp_path / dest).records]

    first = sources("a", 1)
    assert len(first) == 5 and first == sorted(first)
    assert sources("b", 1) == first and sources("c", 2) != first
    with pytest.raises(T2IError, match="--subset 13 must be between 1 and the 12"):
        pack(src, tmp_path / "d", 16, 16, "center-crop", subset=13, progress=False)


def test_bad_arguments(tmp_path):
    with pytest.raises(T2IError, match="does not exist"):
        pack(tmp_path / "nope", tmp_path / "out", 16, 16, "center-crop", progress=False)
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(T2IError, match="inside the source"):
        pack(src, src / "out", 16, 16, "center-crop", progress=False)
    (src / "only.txt").write_text("no image")
    with pytest.raises(T2IError, match="no usable image and caption pairs"):
        pack(src, tmp_path / "out", 16, 16, "center-crop", progress=False)
    assert not (tmp_path / "out").exists()
    list(_good_source(src, n=1))
    pack(src, tmp_path / "out", 16, 16, "center-crop", progress=False)
    with pytest.raises(T2IError, match="--overwrite"):
        pack(src, tmp_path / "out", 16, 16, "center-crop", progress=False)


def test_cli_constants_match_the_library():
    assert cli_data.PACK_TRANSFORMS == pack_module.TRANSFORMS
    assert cli_data.SHAPES_SPLITS == shapes.SPLITS[:3]
    assert cli_data.SHAPE_NAMES == shapes.SHAPES


def test_cli_pack(tmp_path, messy, capsys):
    src, _ = messy
    dest = tmp_path / "out.zip"
    args = ["data", "pack", str(src), str(dest), "--width", "32", "--height", "32", "--transform", "center-crop"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "kept 4 images" in captured.err and "skipped bad/random.jpg: corrupt" in captured.err
    assert "out.zip.report.json" in captured.out
    assert len(ImageTextDataset(dest)) == 4
    assert main(args + ["--overwrite", "--strict"]) == 2
    assert "drop --strict" in capsys.readouterr().err
    assert len(ImageTextDataset(dest)) == 4  # the failed run left the old dataset in place


def test_exif_orientation_is_applied(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    image = Image.new("RGB", (48, 32), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 8, 32))  # blue band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate it 90 degrees clockwise
    image.save(src / "photo.jpg", exif=exif, quality=95)
    (src / "photo.txt").write_text("a rotated photo")
    report = pack(src, tmp_path / "out", 32, 48, "none", progress=False)
    assert report.kept == 1  # 48x32 as stored, 32x48 as shown
    shown = ImageTextDataset(tmp_path / "out")[0]["image"]
    assert shown[2, :4].float().mean() > 200 and shown[0, -4:].float().mean() > 200  # blue on top, red below


@pytest.mark.parametrize("transform", ["center-crop", "center-crop-wide"])
def test_reduced_jpeg_decoding_matches_full_decoding(tmp_path, transform):
    from t2i.data.pack import load_image
    from t2i.data.transforms import center_crop, center_crop_wide

    y, x = np.mgrid[0:600, 0:1000]
    array = np.stack([x * 255 // 1000, y * 255 // 600, (x + y) % 256], -1).astype(np.uint8)
    Image.fromarray(array).save(tmp_path / "big.jpg", quality=95)
    fast = np.asarray(load_image(tmp_path / "big.jpg", 64, 48, transform)).astype(int)
    crop = center_crop if transform == "center-crop" else center_crop_wide
    full = np.asarray(crop(Image.open(tmp_path / "big.jpg").convert("RGB"), 64, 48)).astype(int)
    assert fast.shape == full.shape == (48, 64, 3)
    assert np.abs(fast - full)[..., :2].mean() < 2  # the smooth channels agree to within 2 levels


def _sized_source(root, sizes: dict[str, tuple[int, int]]):
    """root/NAME.png of each size, with NAME.txt beside it."""
    root.mkdir()
    for i, (name, size) in enumerate(sizes.items()):
        Image.new("RGB", size, (40 * i, 100, 200)).save(root / f"{name}.png")
        (root / f"{name}.txt").write_text(f"a {size[0]}x{size[1]} picture\n")
    return root


def test_min_size_skips_tiny_images_instead_of_upscaling_them(tmp_path, capsys):
    src = _sized_source(tmp_path / "src", {"dot": (1, 1), "photo": (100, 100)})
    before = _snapshot(src)
    size = ["--width", "64", "--height", "64", "--transform", "center-crop"]
    assert main(["data", "pack", str(src), str(tmp_path / "out"), *size]) == 0
    err = capsys.readouterr().err
    assert "skipped dot.png: smaller than --min_size (1x1 < 32)" in err
    assert "kept 1 images" in err and "skipped 1 (1 smaller than --min_size)" in err
    assert [r["attributes"]["source"] for r in ImageTextDataset(tmp_path / "out").records] == ["photo.png"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["min_size"] == 32 and saved["kept"] == 1 and saved["skipped_by_reason"] == {TOO_SMALL: 1}
    assert saved["skipped_files"] == [{"file": "dot.png", "reason": TOO_SMALL, "detail": "1x1 < 32"}]

    assert main(["data", "pack", str(src), str(tmp_path / "all"), *size, "--min_size", "0"]) == 0
    assert len(ImageTextDataset(tmp_path / "all")) == 2
    saved = json.loads((tmp_path / "all" / "report.json").read_text())
    assert saved["min_size"] == 0 and saved["skipped_files"] == []
    assert _snapshot(src) == before


@pytest.mark.parametrize("width, height, kept, skipped", [
    (256, 256, ["s128", "w300x128"], {"s127": "127x127 < 128", "w300x127": "300x127 < 128"}),
    (256, 128, ["s127", "s128", "w300x127", "w300x128"], {}),  # half of the shorter side: 64
])
def test_default_min_size_is_half_the_shorter_target_side(tmp_path, width, height, kept, skipped):
    src = _sized_source(tmp_path / "src", {"s127": (127, 127), "s128": (128, 128), "w300x127": (300, 127),
                                           "w300x128": (300, 128)})
    report = pack(src, tmp_path / "out", width, height, "center-crop-wide", progress=False)
    assert report.min_size == min(width, height) // 2
    assert [r["attributes"]["source"] for r in ImageTextDataset(tmp_path / "out").records] == [
        f"{name}.png" for name in kept]
    assert {s.file: s.detail for s in report.skipped} == {f"{name}.png": d for name, d in skipped.items()}


def test_min_size_counts_the_stored_size_not_the_reduced_jpeg_decode(tmp_path):
    """A 400x300 JPEG packed at 32x32 decodes at 1/8 scale; --min_size 300 must still see 300, not 38."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.jpg").write_bytes(_jpeg(0, (400, 304)))
    (src / "big.txt").write_text("a big photo")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the shorter side is the same, shown as the width
    Image.open(io.BytesIO(_jpeg(1, (296, 400)))).save(src / "turned.jpg", exif=exif, quality=90)
    (src / "turned.txt").write_text("a rotated photo")
    report = pack(src, tmp_path / "out", 32, 32, "center-crop", min_size=300, progress=False)
    assert report.kept == 1 and [(s.file, s.detail) for s in report.skipped] == [("turned.jpg", "400x296 < 300")]


def test_too_small_under_strict_and_when_nothing_else_is_left(tmp_path):
    src = _sized_source(tmp_path / "src", {"dot": (1, 1), "photo": (100, 100)})
    with pytest.raises(T2IError, match=r"dot.png: smaller than --min_size \(1x1 < 32\).*drop --strict"):
        pack(src, tmp_path / "out", 64, 64, "center-crop", strict=True, progress=False)
    assert not (tmp_path / "out").exists()
    assert pack(src, tmp_path / "out", 64, 64, "center-crop", strict=True, min_size=0, progress=False).kept == 2
    with pytest.raises(T2IError, match=r"no usable image and caption pairs in .*src \(2 files skipped\); 2 smaller "
                                       r"than --min_size 128 \(lower it, or 0 keeps every size\)$"):
        pack(src, tmp_path / "none", 256, 256, "center-crop", progress=False)
    (src / "photo.png").unlink()  # photo.txt is left without its image
    with pytest.raises(T2IError, match=r"\(2 files skipped\); 1 smaller than --min_size 32 \(lower it, or 0 keeps "
                                       r"every size\); each image needs a NAME.txt"):
        pack(src, tmp_path / "none", 64, 64, "center-crop", progress=False)


def test_min_size_with_transform_none_and_bad_values(tmp_path):
    src = _sized_source(tmp_path / "src", {"dot": (1, 1), "exact": (48, 32)})
    report = pack(src, tmp_path / "out", 48, 32, "none", progress=False)  # exact size is the stricter rule
    assert report.kept == 1 and report.counts() == {WRONG_SIZE: 1} and report.min_size == 16
    assert pack(src, tmp_path / "out32", 48, 32, "none", min_size=32, progress=False).kept == 1
    with pytest.raises(T2IError, match="--min_size 33 with --transform none would skip every image: they must "
                                       "be exactly 48x32 already; lower --min_size to 32"):
        pack(src, tmp_path / "x", 48, 32, "none", min_size=33, progress=False)
    with pytest.raises(T2IError, match="--min_size -1 must be at least 0"):
        pack(src, tmp_path / "x", 48, 32, "center-crop", min_size=-1, progress=False)
    assert not (tmp_path / "x").exists()


def test_pack_and_laion_keep_their_own_min_size():
    from t2i.cli import build_parser

    parser = build_parser("data")
    pack_args = parser.parse_args(["data", "pack", "s", "d", "--width", "8", "--height", "8", "--transform", "none"])
    assert pack_args.min_size is None  # resolved to half the target side by pack()
    assert parser.parse_args(["data", "laion", "m.parquet", "d"]).min_size == 0
    assert parser.parse_args(["data", "coco", "d", "--images", "i", "--captions", "c"]).min_size == 0
