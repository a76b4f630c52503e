"""Tests for `t2i data coco`: caption grouping, order, skips with reasons, malformed JSON, the CLI."""

import argparse
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from conftest import cli
from t2i.cli import build_parser
from t2i.data.coco import NO_CAPTIONS, UNKNOWN_IMAGE
from t2i.data.dataset import ImageTextDataset
from t2i.data.pack import CORRUPT, MISSING_IMAGE, TOO_SMALL

COLOURS = {9: (220, 40, 40), 25: (40, 200, 60), 34: (30, 60, 210)}


def _snapshot(root):
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _coco(root, year="2014", split="train"):
    """A COCO tree in the original layout: images/, annotations/captions_<split><year>.json.

    Images 25 and 9 (in that JSON order) are usable; 30 is missing on disk, 34 has no caption (only a
    blank one), 36 is corrupt; one annotation points at the unknown image 999.
    """
    folder = root / f"{split}{year}"
    folder.mkdir(parents=True)

    def name(i):
        return f"COCO_{split}{year}_{i:012d}.jpg" if year == "2014" else f"{i:012d}.jpg"

    for i, colour in COLOURS.items():
        Image.new("RGB", (64, 48) if i == 9 else (40, 60), colour).save(folder / name(i), quality=95)
    (folder / name(36)).write_bytes(b"\xff\xd8\xff not really a jpeg" * 8)
    images = [{"id": i, "file_name": name(i), "width": 64, "height": 48, "license": 1} for i in (25, 9, 30, 34, 36)]
    captions = [(9, "A man riding a horse. "), (25, "  A giraffe in a zoo."), (9, "Someone on a horse"),
                (999, "A caption for nothing."), (34, "   "), (9, "\tA horse and rider.\n"),
                (25, "Another giraffe."), (36, "A corrupt picture."), (30, "A missing picture.")]
    annotations = [{"id": 100 + k, "image_id": i, "caption": c} for k, (i, c) in enumerate(captions)]
    (root / "annotations").mkdir()
    path = root / "annotations" / f"captions_{split}{year}.json"
    path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations}))
    return folder, path, name


@pytest.mark.parametrize("workers", [1, 2])
def test_coco_2014_groups_captions_keeps_json_order_and_reports_skips(tmp_path, capsys, workers):
    images, captions, name = _coco(tmp_path / "coco")
    before = _snapshot(tmp_path / "coco")
    dest = tmp_path / "out"
    cli("data", "coco", "--images", images, "--captions", captions, dest, "--width", 32, "--height", 24,
        "--workers", workers)
    assert _snapshot(tmp_path / "coco") == before
    out = capsys.readouterr()
    assert "kept 2 images" in out.err and f"report: {dest / 'report.json'}" in out.out

    meta = json.loads((dest / "dataset.json").read_text())
    assert meta["resolution"] == [32, 24] and meta["name"] == "out"
    assert [r["captions"] for r in meta["images"]] == [
        ["A giraffe in a zoo.", "Another giraffe."],
        ["A man riding a horse.", "Someone on a horse", "A horse and rider."],
    ]
    assert [r["attributes"] for r in meta["images"]] == [{"coco_id": 25, "source": name(25)},
                                                         {"coco_id": 9, "source": name(9)}]
    ds = ImageTextDataset(dest)
    for i, coco_id in enumerate((25, 9)):
        image = ds[i]["image"]
        assert image.shape == (3, 24, 32)
        assert np.abs(image.float().mean((1, 2)).numpy() - COLOURS[coco_id]).max() < 4

    report = json.loads((dest / "report.json").read_text())
    assert report["kept"] == 2 and report["inputs"] == {"captions": str(captions)}
    assert report["skipped_by_reason"] == {UNKNOWN_IMAGE: 1, MISSING_IMAGE: 1, NO_CAPTIONS: 1, CORRUPT: 1}
    assert {s["file"]: s["reason"] for s in report["skipped_files"]} == {
        "annotations[3]": UNKNOWN_IMAGE, name(30): MISSING_IMAGE, name(34): NO_CAPTIONS, name(36): CORRUPT}


def test_coco_2017_layout_into_a_zip_with_a_subset(tmp_path):
    images, captions, name = _coco(tmp_path / "coco", year="2017", split="val")
    assert name(9) == "000000000009.jpg" and images.name == "val2017"
    dest = tmp_path / "val.zip"
    cli("data", "coco", "--images", images, "--captions", captions, dest, "--width", 16, "--height", 16,
        "--subset", 1, "--seed", 3, "--workers", 1)
    ds = ImageTextDataset(dest)
    assert len(ds) == 1 and ds.resolution == (16, 16)
    assert ds.records[0]["attributes"]["source"] in (name(25), name(9))
    report = json.loads((tmp_path / "val.zip.report.json").read_text())
    assert report["kept"] == 1 and report["subset"] == 1 and report["seed"] == 3


def test_coco_min_size_skips_small_images_and_defaults_to_keeping_all(tmp_path):
    images, captions, name = _coco(tmp_path / "coco")
    cli("data", "coco", "--images", images, "--captions", captions, tmp_path / "all", "--width", 32, "--height", 24,
        "--workers", 1)
    report = json.loads((tmp_path / "all" / "report.json").read_text())
    assert report["kept"] == 2 and report["min_size"] == 0 and TOO_SMALL not in report["skipped_by_reason"]
    cli("data", "coco", "--images", images, "--captions", captions, tmp_path / "big", "--width", 32, "--height", 24,
        "--workers", 1, "--min_size", 45)
    assert [r["attributes"]["coco_id"] for r in ImageTextDataset(tmp_path / "big").records] == [9]  # 64x48
    report = json.loads((tmp_path / "big" / "report.json").read_text())
    assert report["min_size"] == 45 and report["skipped_by_reason"][TOO_SMALL] == 1
    assert {"file": name(25), "reason": TOO_SMALL, "detail": "40x60 < 45"} in report["skipped_files"]


def test_coco_strict_stops_at_the_first_skip(tmp_path, cli_error):
    images, captions, _ = _coco(tmp_path / "coco")
    msg = cli_error("data", "coco", "--images", images, "--captions", captions, tmp_path / "out", "--strict")
    assert msg.startswith("annotations[3]: caption for an unknown image id (image_id 999") and "drop --strict" in msg
    assert not (tmp_path / "out").exists()


# Malformed captions files: variant -> (content, expected message fragment).
MALFORMED = {
    "not json": (b"{'images': [", "is not valid JSON"),
    "a list": ([], "has no 'images' and 'annotations' keys (found: list)"),
    "no annotations": ({"images": []}, "has no 'images' and 'annotations' keys (found: ['images'])"),
    "annotations not a list": ({"images": [], "annotations": {}}, "'annotations' is a dict, not a list"),
    "image without file_name": ({"images": [{"id": 1}], "annotations": []},
                                "images[0] = {'id': 1} needs an integer 'id' and a string 'file_name'"),
    "string id": ({"images": [{"id": "1", "file_name": "a.jpg"}], "annotations": []}, "needs an integer 'id'"),
    "escaping file_name": ({"images": [{"id": 1, "file_name": "../a.jpg"}], "annotations": []},
                           "file_name '../a.jpg' must be a plain path relative to the images folder"),
    "repeated id": ({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}],
                     "annotations": []}, "images[1] repeats id 1 of images[0]"),
    "instances file": ({"images": [{"id": 1, "file_name": "a.jpg"}],
                        "annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1], "category_id": 3}]},
                       "annotations[0] = {'image_id': 1, 'bbox': [0, 0, 1, 1], 'category_id': 3} needs an "
                       "integer 'image_id' and a string 'caption'"),
}


@pytest.mark.parametrize("variant", list(MALFORMED))
def test_malformed_captions_json_is_a_clear_error(tmp_path, cli_error, variant):
    images, captions, _ = _coco(tmp_path / "coco")
    content, expected = MALFORMED[variant]
    captions.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    msg = cli_error("data", "coco", "--images", images, "--captions", captions, tmp_path / "out")
    assert str(captions) in msg and expected in msg, msg
    assert not (tmp_path / "out").exists()


def test_bad_paths_are_clear_errors(tmp_path, cli_error):
    images, captions, _ = _coco(tmp_path / "coco")
    out = tmp_path / "out"
    assert cli_error("data", "coco", "--images", tmp_path / "nope", "--captions", captions, out).startswith(
        f"--images {tmp_path / 'nope'} does not exist")
    assert cli_error("data", "coco", "--images", images, "--captions", tmp_path / "c.json", out).startswith(
        f"--captions {tmp_path / 'c.json'} does not exist")
    assert "is inside the source" in cli_error("data", "coco", "--images", images, "--captions", captions,
                                               images / "out")
    # The annotations folder holds the captions file: --overwrite there would delete it.
    assert "contains the source" in cli_error("data", "coco", "--images", images, "--captions", captions,
                                              captions.parent, "--overwrite")
    for file in images.iterdir():
        file.unlink()
    msg = cli_error("data", "coco", "--images", images, "--captions", captions, out)
    assert msg.startswith("no usable image and caption pairs") and "check that --images" in msg
    assert captions.is_file() and not out.exists()


def _subcommand(name: str) -> argparse.ArgumentParser:
    """The parser of `t2i data NAME`."""
    def choices(parser):
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return choices(choices(build_parser("data"))["data"])[name]


@pytest.mark.parametrize("name", ["coco", "cub", "pack"])
def test_every_import_option_has_help(name):
    actions = _subcommand(name)._actions
    assert actions and all(a.help for a in actions), [a.dest for a in actions if not a.help]
