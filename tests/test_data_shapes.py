"""Tests for the shapes domain: sampling splits, captions and their parser, rendering, targets."""

import json
import math
import random
from collections import Counter
from dataclasses import asdict

import numpy as np
import pytest
import torch

from t2i.cli import main
from t2i.data import shapes
from t2i.data.dataset import ImageTextDataset
from t2i.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    HELDOUT,
    SEEN,
    SHAPES,
    Scene,
    ShapeObject,
    captions,
    parse_prompt,
    prompt,
    render,
    sample_scene,
    scene_targets,
)


def _scenes(n, split, seed=0):
    rng = random.Random(seed)
    return [sample_scene(rng, split) for _ in range(n)]


def _combos(scene):
    return [(o.shape, o.colour) for o in scene.objects]


def test_heldout_covers_each_colour_once():
    assert len(HELDOUT) == 8 and len(set(HELDOUT)) == 8
    assert sorted(c for _, c in HELDOUT) == sorted(COLOURS)
    assert len(SEEN) == 40 and not set(SEEN) & set(HELDOUT)


def test_splits():
    train = _scenes(3000, "train")
    assert not any(c in HELDOUT for s in train for c in _combos(s))
    assert {c for s in train for c in _combos(s)} == set(SEEN)
    assert not any(c in HELDOUT for s in _scenes(1000, "test-seen") for c in _combos(s))
    heldout = _scenes(1000, "test-heldout")
    assert all(any(c in HELDOUT for c in _combos(s)) for s in heldout)
    assert {c for s in heldout for c in _combos(s) if c in HELDOUT} == set(HELDOUT)
    two = sum(len(s.objects) == 2 for s in train) / len(train)
    assert 0.45 < two < 0.55
    assert Counter(o.slot for s in train if len(s.objects) == 1 for o in s.objects).keys() == set(shapes.SLOTS)
    for s in train:
        if s.relation == "left of":
            assert [o.slot for o in s.objects] == ["left", "right"]
        elif s.relation == "above":
            assert [o.slot for o in s.objects] == ["top", "bottom"]
        else:
            assert len(s.objects) == 1
    assert _scenes(50, "train", seed=3) == _scenes(50, "train", seed=3)
    assert [s.to_dict() for s in _scenes(50, "all", 4)] == [s.to_dict() for s in _scenes(50, "all", 4)]


def test_scene_dict_round_trip_is_exact():
    for scene in _scenes(200, "all"):
        d = json.loads(json.dumps(scene.to_dict()))
        back = Scene.from_dict(d)
        assert back == scene and back.to_dict() == scene.to_dict()
        assert np.array_equal(np.asarray(render(back)), np.asarray(render(scene)))


def test_english_captions_round_trip_through_the_parser():
    scenes = _scenes(3000, "all", seed=1)
    seen_caption = {}
    for scene in scenes:
        caps = captions(scene)
        assert len(caps) >= 4 and len(set(caps)) == len(caps) and prompt(scene) == caps[0]
        for cap in caps:
            assert parse_prompt(cap) == scene, cap
            # Unambiguous: one caption never describes two different scenes.
            assert seen_caption.setdefault(cap, scene) == scene
            for o in scene.objects:
                assert o.shape in cap and o.colour in cap and o.size in cap
    assert parse_prompt("A large red circle on the left.") == Scene([ShapeObject("circle", "red", "large", "left")])
    assert parse_prompt("a small blue star below a large red circle") == Scene(
        [ShapeObject("circle", "red", "large", "top"), ShapeObject("star", "blue", "small", "bottom")], relation="above")
    for junk in ("a red circle on the left", "a large red circle", "a huge red circle on the left", "hello"):
        assert parse_prompt(junk) is None


def test_korean_captions():
    seen_caption = {}
    for scene in _scenes(2000, "all", seed=2):
        caps = captions(scene, "ko")
        assert len(caps) >= 2 and len(set(caps)) == len(caps)
        for cap in caps:
            assert seen_caption.setdefault(cap, scene) == scene  # unambiguous
            for o in scene.objects:
                assert shapes.SHAPES_KO[o.shape] in cap and shapes.COLOURS_KO[o.colour] in cap
                assert shapes.SIZES_KO[o.size] in cap
    one = Scene([ShapeObject("circle", "red", "large", "left")])
    assert captions(one, "ko")[0] == "왼쪽에 큰 빨간 원"
    assert "큰 빨간 원이 왼쪽에 있다" in captions(one, "ko")
    diamond = Scene([ShapeObject("diamond", "red", "small", "center")])
    assert "작은 빨간 마름모가 가운데에 있다" in captions(diamond, "ko")
    two = Scene([ShapeObject("circle", "red", "large", "top"), ShapeObject("star", "blue", "small", "bottom")],
                relation="above")
    assert captions(two, "ko")[0] == "작은 파란 별 위에 큰 빨간 원"


def test_backgrounds_contrast_with_every_object_colour():
    for bg in BACKGROUNDS.values():
        for colour in COLOURS.values():
            assert math.dist(bg, colour) > 90


def _foreground(image, background):
    return (np.abs(np.asarray(image).astype(int) - background).sum(-1) > 30)


@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_render_draws_antialiased_objects_inside_their_slot(shape):
    size = 64
    for slot in shapes.SLOTS:
        for obj_size in shapes.SIZES:
            for dx, dy, scale in ((-0.03, -0.03, 1.1), (0.03, 0.03, 1.1), (0.0, 0.0, 0.9)):
                obj = ShapeObject(shape, "red", obj_size, slot, dx, dy, scale)
                image = render(Scene([obj], "grey"), size)
                assert image.size == (size, size) and image.mode == "RGB"
                ys, xs = np.nonzero(_foreground(image, BACKGROUNDS["grey"]))
                cx, cy = (xs.mean() + 0.5) / size, (ys.mean() + 0.5) / size
                # The nearest slot centre is the object's own: its position is unambiguous.
                nearest = min(shapes.SLOTS, key=lambda s: math.dist((cx, cy), shapes.SLOT_CENTRES[s]))
                assert nearest == slot
                if slot in ("left", "right"):
                    assert (xs < size // 2).all() if slot == "left" else (xs >= size // 2).all()
                if slot in ("top", "bottom"):
                    assert (ys < size // 2).all() if slot == "top" else (ys >= size // 2).all()
    array = np.asarray(render(Scene([ShapeObject(shape, "red", "large", "center")], "grey"), size))
    assert tuple(array[32, 32]) == COLOURS["red"]
    assert tuple(array[0, 0]) == BACKGROUNDS["grey"]
    jittered = render(Scene([ShapeObject(shape, "red", "large", "center", 0.0123, -0.0071, 1.05)], "grey"))
    edge = {tuple(p) for p in np.asarray(jittered).reshape(-1, 3)} - {COLOURS["red"], BACKGROUNDS["grey"]}
    assert len(edge) > 3  # antialiased edges have intermediate colours


def test_small_and_large_never_overlap_in_extent():
    for shape in shapes.SHAPES:
        def extent(size, scale):
            image = render(Scene([ShapeObject(shape, "white", size, "center", scale=scale)], "grey"), 128)
            ys, xs = np.nonzero(_foreground(image, BACKGROUNDS["grey"]))
            return max(np.ptp(xs), np.ptp(ys))
        assert extent("small", 1.1) + 4 < extent("large", 0.9)


def test_render_is_deterministic_and_any_size():
    scene = _scenes(1, "all", seed=7)[0]
    assert np.array_equal(np.asarray(render(scene)), np.asarray(render(scene)))
    assert render(scene, 32).size == (32, 32) and render(scene, 128).size == (128, 128)


def test_scene_targets():
    scene = Scene([ShapeObject("star", "blue", "small", "left"), ShapeObject("circle", "black", "large", "right")],
                  relation="left of")
    t = scene_targets(scene)
    assert t["shape"].tolist() == [0, 5, 1, 0, 0]
    assert t["colour"].tolist() == [-100, 2, 7, -100, -100]
    assert t["size"].tolist() == [-100, 0, 1, -100, -100]
    assert all(v.dtype == torch.long for v in t.values())


def test_make_dataset_is_deterministic(tmp_path):
    a = shapes.make_dataset(tmp_path / "a.zip", 30, 32, seed=5, progress=False)
    shapes.make_dataset(tmp_path / "b", 30, 32, seed=5, progress=False)
    shapes.make_dataset(tmp_path / "c", 30, 32, seed=6, progress=False)
    assert a == "shapes32"
    da, db, dc = (ImageTextDataset(tmp_path / p) for p in ("a.zip", "b", "c"))
    assert da.records == db.records and da.records != dc.records
    for i in range(30):
        assert torch.equal(da[i]["image"], db[i]["image"])
        scene = Scene.from_dict(da[i]["attributes"])
        assert da[i]["captions"] == captions(scene)
        assert da.records[i]["captions_ko"] == captions(scene, "ko")
        assert np.array_equal(np.asarray(render(scene, 32)), da[i]["image"].permute(1, 2, 0).numpy())
    # The split is part of the seed: the same seed gives other scenes for test-seen.
    shapes.make_dataset(tmp_path / "t", 30, 32, seed=5, split="test-seen", progress=False)
    assert ImageTextDataset(tmp_path / "t").records != db.records


def test_cli_shapes(tmp_path, capsys):
    out = tmp_path / "held.zip"
    args = ["data", "shapes", "--out", str(out), "--n", "12", "--size", "32", "--seed", "1",
            "--split", "test-heldout"]
    assert main(args) == 0
    ds = ImageTextDataset(out)
    assert len(ds) == 12 and ds.resolution == (32, 32) and ds.name == "shapes32-test-heldout"
    assert all(any(c in HELDOUT for c in _combos(Scene.from_dict(r["attributes"]))) for r in ds.records)
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert main(["data", "shapes", "--out", str(tmp_path / "x"), "--n", "0"]) == 2
    assert not (tmp_path / "x").exists()


def test_exclude_shape_keeps_a_shape_out_of_every_split(tmp_path):
    for split in ("train", "test-heldout"):
        out = tmp_path / split
        assert main(["data", "shapes", "--out", str(out), "--n", "200", "--size", "16", "--split", split,
                     "--exclude_shape", "star"]) == 0
        scenes = [Scene.from_dict(r["attributes"]) for r in ImageTextDataset(out).records]
        assert not [o for s in scenes for o in s.objects if o.shape == "star"]
        assert {o.shape for s in scenes for o in s.objects} == set(SHAPES) - {"star"}
    with pytest.raises(SystemExit):   # argparse names the choices
        main(["data", "shapes", "--out", str(tmp_path / "y"), "--n", "2", "--exclude_shape", "hexagon"])


def test_shape_object_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown colour 'pink'"):
        ShapeObject("circle", "pink", "small", "left")
    assert asdict(ShapeObject("circle", "red", "small", "left"))["scale"] == 1.0
