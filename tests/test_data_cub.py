"""Tests for `t2i data cub`: AttnGAN's layout and crop, safe filenames.pickle reading, skips, the CLI."""

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import cli
from t2i.cli import data as cli_data
from t2i.data import cub as cub_module
from t2i.data.cub import NO_BOX, NOT_LISTED, attngan_box, read_name_list
from t2i.data.dataset import ImageTextDataset
from t2i.data.pack import CORRUPT, MISSING_IMAGE, NO_CAPTION, TOO_SMALL, load_image
from t2i.data.transforms import center_crop
from t2i.errors import T2IError

ALBATROSS, LAYSAN = "001.Black_footed_Albatross", "002.Laysan_Albatross"
RED, BLUE, GREEN, YELLOW = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0)
# id -> (image path under images/, bounding box x y w h or None)
IMAGES = {
    1: (f"{ALBATROSS}/Black_Footed_Albatross_0001_1.png", (30, 20, 20, 16)),  # crop (25, 13, 55, 43)
    2: (f"{ALBATROSS}/Black_Footed_Albatross_0002_2.png", (2, 4, 40, 20)),  # crop clipped to (0, 0, 52, 44)
    3: (f"{LAYSAN}/Laysan_Albatross_0003_3.jpg", (5, 5, 30, 30)),  # the test split
    4: (f"{LAYSAN}/Laysan_Albatross_0004_4.jpg", (5, 5, 30, 30)),  # no caption file
    5: (f"{LAYSAN}/Laysan_Albatross_0005_5.jpg", None),  # no line in bounding_boxes.txt
    6: (f"{LAYSAN}/Laysan_Albatross_0006_6.jpg", (5, 5, 30, 30)),  # missing on disk
    7: (f"{LAYSAN}/Laysan_Albatross_0007_7.jpg", (5, 5, 30, 30)),  # corrupt
}
TRAIN = [IMAGES[i][0][:-4] for i in (2, 1, 4, 5, 6, 7)] + ["003.Sooty_Albatross/Sooty_Albatross_0008_8"]
TEST = [IMAGES[3][0][:-4]]


def _snapshot(root):
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _py2_pickle(names: list[str], protocol: int) -> bytes:
    """The bytes Python 2's pickle writes for a list of (byte) str: STRING or SHORT_BINSTRING opcodes."""
    raw = [n.encode() for n in names]
    if protocol == 0:
        return b"(lp0\n" + b"".join(b"S'%s'\np%d\na" % (n, i + 1) for i, n in enumerate(raw)) + b"."
    return b"\x80\x02]q\x00(" + b"".join(b"U" + bytes([len(n)]) + n for n in raw) + b"e."


def _crop_image() -> Image.Image:
    """100x80 red, the expected crop (25, 13, 55, 43) blue on top and green below its middle row 28."""
    array = np.full((80, 100, 3), RED, np.uint8)
    array[13:28, 25:55] = BLUE
    array[28:43, 25:55] = GREEN
    return Image.fromarray(array)


def _clipped_image() -> Image.Image:
    """64x48 red; the clipped crop (0, 0, 52, 44) green, except yellow strips that the centre crop
    of that 52x44 box to 44x44 (columns 4..48) removes."""
    array = np.full((48, 64, 3), RED, np.uint8)
    array[:44, :52] = GREEN
    array[:44, :4] = YELLOW
    array[:44, 48:52] = YELLOW
    return Image.fromarray(array)


def _cub(root: Path, text_folder: str = "text") -> Path:
    """A CUB tree in AttnGAN's layout (see IMAGES), train/filenames.pickle as Python 2 writes it."""
    images = root / "CUB_200_2011" / "images"
    for i, (file, _) in IMAGES.items():
        path = images / file
        path.parent.mkdir(parents=True, exist_ok=True)
        if i == 1:
            _crop_image().save(path)
        elif i == 2:
            _clipped_image().save(path)
        elif i == 7:
            path.write_bytes(b"\xff\xd8\xff truncated")
        elif i != 6:
            Image.new("RGB", (50, 40), (20 * i, 100, 150)).save(path, quality=95)
        if i != 4:
            text = root / text_folder / f"{file[:-4]}.txt"
            text.parent.mkdir(parents=True, exist_ok=True)
            text.write_text("".join(f"bird {i} caption {k}\n" + ("\n" if k == 4 else "") for k in range(10)))
    (root / "CUB_200_2011" / "images.txt").write_text("".join(f"{i} {f}\n" for i, (f, _) in IMAGES.items()))
    (root / "CUB_200_2011" / "bounding_boxes.txt").write_text(
        "".join(f"{i} {' '.join(f'{v:.1f}' for v in box)}\n" for i, (_, box) in IMAGES.items() if box))
    for split, names in (("train", TRAIN), ("test", TEST)):
        (root / split).mkdir()
        (root / split / "filenames.pickle").write_bytes(_py2_pickle(names, 2))
    return root


@pytest.fixture
def birds(tmp_path) -> Path:
    return _cub(tmp_path / "birds")


def test_cub_train_split_crops_keeps_pickle_order_and_reports_skips(tmp_path, birds, capsys):
    before = _snapshot(birds)
    dest = tmp_path / "train"
    cli("data", "cub", birds, dest, "--split", "train", "--width", 30, "--height", 30, "--workers", 2)
    assert _snapshot(birds) == before
    assert "kept 2 images" in capsys.readouterr().err

    meta = json.loads((dest / "dataset.json").read_text())
    assert meta["resolution"] == [30, 30]
    assert [r["attributes"] for r in meta["images"]] == [
        {"class_id": 1, "class": "Black_footed_Albatross", "source": IMAGES[i][0]} for i in (2, 1)]
    assert [r["captions"] for r in meta["images"]] == [[f"bird {i} caption {k}" for k in range(10)] for i in (2, 1)]

    ds = ImageTextDataset(dest)
    clipped, crop = (ds[i]["image"].permute(1, 2, 0).numpy().astype(int) for i in (0, 1))
    # The 30x30 square around box 1 is the output pixel for pixel: blue rows 0..14, green 15..29.
    assert (crop == np.asarray(_crop_image())[13:43, 25:55]).all()
    # Box 2's square, clipped to 52x44 and centre-cropped to 44x44, holds only green.
    assert np.abs(clipped - GREEN).max() <= 2

    report = json.loads((dest / "report.json").read_text())
    assert report["kept"] == 2 and report["inputs"] == {"split": "train"}
    assert report["skipped_by_reason"] == {NO_CAPTION: 1, NO_BOX: 1, MISSING_IMAGE: 1, CORRUPT: 1, NOT_LISTED: 1}
    assert {s["file"]: s["reason"] for s in report["skipped_files"]} == {
        IMAGES[4][0]: NO_CAPTION, IMAGES[5][0]: NO_BOX, IMAGES[6][0]: MISSING_IMAGE, IMAGES[7][0]: CORRUPT,
        TRAIN[-1]: NOT_LISTED}
    assert "text/002.Laysan_Albatross/Laysan_Albatross_0004_4.txt" in report["skipped_files"][0]["detail"]


def test_cub_test_split_and_text_c10_into_a_zip(tmp_path):
    root = _cub(tmp_path / "birds", text_folder="text_c10")
    cli("data", "cub", root, tmp_path / "test.zip", "--split", "test", "--width", 16, "--height", 8,
        "--transform", "center-crop-wide", "--workers", 1)
    ds = ImageTextDataset(tmp_path / "test.zip")
    assert len(ds) == 1 and ds[0]["image"].shape == (3, 8, 16)
    assert ds.records[0]["attributes"] == {"class_id": 2, "class": "Laysan_Albatross", "source": IMAGES[3][0]}
    assert json.loads((tmp_path / "test.zip.report.json").read_text())["skipped_files"] == []


def test_cub_min_size_counts_the_crop_not_the_photo(tmp_path, birds):
    """Bird 1's 100x80 photo is big, its 30x30 crop is not; bird 2's clipped crop is 52x44."""
    cli("data", "cub", birds, tmp_path / "out", "--split", "train", "--width", 30, "--height", 30, "--workers", 1,
        "--min_size", 40)
    assert [r["attributes"]["source"] for r in ImageTextDataset(tmp_path / "out").records] == [IMAGES[2][0]]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["min_size"] == 40 and report["skipped_by_reason"][TOO_SMALL] == 1
    assert {"file": IMAGES[1][0], "reason": TOO_SMALL, "detail": "30x30 < 40"} in report["skipped_files"]


def test_crop_matches_attngan_get_imgs(tmp_path):
    """load_image with attngan_box equals AttnGAN's crop (datasets.py get_imgs, restated with numpy)."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(tmp_path / "noise.png")
    image = Image.open(tmp_path / "noise.png").convert("RGB")
    for bbox in ([10, 12, 30, 20], [0, 0, 80, 60], [70, 50, 9, 9], [33, 1, 7, 41]):
        r = int(np.maximum(bbox[2], bbox[3]) * 0.75)
        center_x, center_y = int((2 * bbox[0] + bbox[2]) / 2), int((2 * bbox[1] + bbox[3]) / 2)
        y1, y2 = np.maximum(0, center_y - r), np.minimum(60, center_y + r)
        x1, x2 = np.maximum(0, center_x - r), np.minimum(80, center_x + r)
        expected = center_crop(image.crop([x1, y1, x2, y2]), 24, 24)
        ours = load_image(tmp_path / "noise.png", 24, 24, "center-crop", attngan_box(*bbox))
        assert (np.asarray(ours) == np.asarray(expected)).all(), bbox


NAMES = ["001.Black_footed_Albatross/Black_Footed_Albatross_0046_18", "200.Common_Yellowthroat/Common_0001_1"]


@pytest.mark.parametrize("writer", ["py3 str protocol 2", "py2 str protocol 2", "py2 str protocol 0",
                                    "py3 bytes protocol 3", "py3 str protocol 5"])
def test_read_name_list_accepts_python2_and_3_pickles(tmp_path, writer):
    data = {"py3 str protocol 2": lambda: pickle.dumps(NAMES, protocol=2),
            "py2 str protocol 2": lambda: _py2_pickle(NAMES, 2),
            "py2 str protocol 0": lambda: _py2_pickle(NAMES, 0),
            "py3 bytes protocol 3": lambda: pickle.dumps([n.encode() for n in NAMES], protocol=3),
            "py3 str protocol 5": lambda: pickle.dumps(NAMES, protocol=5)}[writer]()
    (tmp_path / "filenames.pickle").write_bytes(data)
    assert read_name_list(tmp_path / "filenames.pickle") == NAMES


def test_bytes_pickle_imports_like_str(tmp_path, birds):
    (birds / "train" / "filenames.pickle").write_bytes(pickle.dumps([n.encode() for n in TRAIN], protocol=3))
    cli("data", "cub", birds, tmp_path / "out", "--split", "train", "--width", 8, "--height", 8, "--workers", 1)
    assert [r["attributes"]["source"] for r in ImageTextDataset(tmp_path / "out").records] == [
        IMAGES[2][0], IMAGES[1][0]]


def test_pickles_that_reference_code_are_refused_not_run(tmp_path, birds, cli_error):
    marker = tmp_path / "pwned"
    names = birds / "train" / "filenames.pickle"
    names.write_bytes(b"cos\nsystem\n(S'touch %s'\ntR." % str(marker).encode())
    msg = cli_error("data", "cub", birds, tmp_path / "out", "--split", "train")
    assert msg.startswith(f"{names} refers to the Python object os.system; t2i never runs code from a pickle")
    assert not marker.exists() and not (tmp_path / "out").exists()
    names.write_bytes(pickle.dumps([Path("a/b")], protocol=4))  # any class, however harmless
    assert "refers to the Python object pathlib." in cli_error("data", "cub", birds, tmp_path / "out", "--split",
                                                              "train")
    # Python 3 bytes at protocol 2 are rebuilt by calling _codecs.encode: refused too.
    names.write_bytes(pickle.dumps([b"a/b"], protocol=2))
    with pytest.raises(T2IError, match="refers to the Python object _codecs.encode"):
        read_name_list(names)


@pytest.mark.parametrize("content, expected", [
    (b"not a pickle", "is not a readable pickle"),
    (pickle.dumps({"a": 1}), "holds a dict, not a list of names"),
    (pickle.dumps(["a/b", 3]), "entry 1 is a int, not a name"),
    (pickle.dumps(["no_class_folder"]), "entry 0 'no_class_folder' is not '<NNN.class>/<img>'"),
])
def test_malformed_filenames_pickle(tmp_path, birds, cli_error, content, expected):
    (birds / "train" / "filenames.pickle").write_bytes(content)
    msg = cli_error("data", "cub", birds, tmp_path / "out", "--split", "train")
    assert str(birds / "train" / "filenames.pickle") in msg and expected in msg, msg


@pytest.mark.parametrize("missing", ["CUB_200_2011/bounding_boxes.txt", "CUB_200_2011/images.txt",
                                     "CUB_200_2011/images", "test/filenames.pickle", "text"])
def test_missing_layout_parts_name_the_expected_path(tmp_path, birds, cli_error, missing):
    path = birds / missing
    if path.is_dir():
        path.rename(birds / "elsewhere")
    else:
        path.unlink()
    msg = cli_error("data", "cub", birds, tmp_path / "out", "--split", "test")
    assert msg.startswith(f"{path} is missing") and "the CUB layout is ROOT/CUB_200_2011/images/" in msg, msg
    if missing == "text":
        assert f"(and so is {birds / 'text_c10'})" in msg


def test_bad_tables_and_arguments(tmp_path, birds, cli_error):
    out = tmp_path / "out"
    assert cli_error("data", "cub", tmp_path / "nope", out, "--split", "train").startswith(
        f"CUB root {tmp_path / 'nope'} does not exist")
    assert "is inside the source" in cli_error("data", "cub", birds, birds / "out", "--split", "train")
    boxes = birds / "CUB_200_2011" / "bounding_boxes.txt"
    boxes.write_text(boxes.read_text() + "8 1.0 2.0 3.0\n")
    msg = cli_error("data", "cub", birds, out, "--split", "train")
    assert msg.startswith(f"{boxes} line 7: expected 5 fields '<id> ...', got '8 1.0 2.0 3.0'")
    msg = cli_error("data", "cub", birds, out, "--split", "test", "--strict", "--width", 0)
    assert msg.strip() == "--width 0 --height 256: both must be positive"
    assert not out.exists()


def test_cli_constants_match_the_library():
    assert cli_data.CUB_SPLITS == cub_module.SPLITS
