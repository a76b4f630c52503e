"""The paper preset from `t2i data cub` output with no manual step, on a CUB-like fixture (3 classes, 10 captions
per image, bounding boxes): `t2i data cub` -> `t2i train damsm` -> `t2i train attngan` -> `t2i eval`."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from PIL import Image

from conftest import cli

CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
COLOURS = {"001": ("black", (20, 20, 20)), "002": ("white", (240, 240, 240)), "003": ("brown", (120, 70, 30))}
PARTS = ["wings", "beak", "belly", "crown", "tail", "breast", "feet", "eyes", "head", "back"]


def cub_fixture(root: Path, per_class: int = 4, test_per_class: int = 1) -> Path:
    """CUB_200_2011/{images/, images.txt, bounding_boxes.txt}, text/<class>/<img>.txt, train|test/filenames.pickle."""
    lines, boxes, train, test = [], [], [], []
    k = 0
    for c in CLASSES:
        colour, rgb = COLOURS[c[:3]]
        for j in range(per_class + test_per_class):
            k += 1
            name = f"{c}/{c[4:]}_{k:04d}_{k}"
            path = root / "CUB_200_2011" / "images" / f"{name}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            image = Image.new("RGB", (96, 80), (90, 140, 200))
            image.paste(Image.new("RGB", (30 + 4 * j, 24), rgb), (20 + 3 * j, 24))
            image.save(path, quality=95)
            lines.append(f"{k} {name}.jpg")
            boxes.append(f"{k} {20 + 3 * j}.0 24.0 {30 + 4 * j}.0 24.0")
            text = root / "text" / f"{name}.txt"
            text.parent.mkdir(parents=True, exist_ok=True)
            text.write_text("".join(f"this {colour} bird has {'small' if j % 2 else 'large'} {PARTS[m]} and a "
                                    f"{PARTS[(m + k) % 10]} number {k}\n" for m in range(10)))
            (test if j >= per_class else train).append(name)
    (root / "CUB_200_2011" / "images.txt").write_text("\n".join(lines) + "\n")
    (root / "CUB_200_2011" / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    for split, names in (("train", train), ("test", test)):
        (root / split).mkdir()
        (root / split / "filenames.pickle").write_bytes(pickle.dumps(names, protocol=2))
    return root


def test_cub_to_paper_attngan_end_to_end(tmp_path, one_thread):
    root = cub_fixture(tmp_path / "birds")
    size = ["--width", 64, "--height", 64]
    cli("data", "cub", root, tmp_path / "train", "--split", "train", *size)
    cli("data", "cub", root, tmp_path / "test", "--split", "test", *size)
    cli("train", "damsm", "--data", tmp_path / "train", "--test_data", tmp_path / "test", "--preset", "paper",
        "--inception", "none", "--kimg", 0.008, "--batch", 4, "--tick_kimg", 0.008, "--metrics", "r_at_1",
        "--outdir", tmp_path / "runs")
    (damsm,) = (tmp_path / "runs").glob("*-damsm-paper")
    log = (damsm / "log.txt").read_text()
    assert "class ids: 3 classes" in log and "random weights" in log
    assert (damsm / "attention-000008.png").is_file()
    assert json.loads((damsm / "metric-r_at_1.jsonl").read_text())["results"]["split"] == "test"
    cli("train", "attngan", "--data", tmp_path / "train", "--damsm", damsm, "--preset", "paper", "--kimg", 0.004,
        "--batch", 4, "--tick_kimg", 0.004, "--outdir", tmp_path / "runs")
    (run,) = (tmp_path / "runs").glob("*-attngan-paper")
    assert "stages 16/32/64" in (run / "log.txt").read_text()
    cli("eval", run, "--data", tmp_path / "train", "--metrics", "r_precision_damsm", "--n", 4, "--out", tmp_path / "ev")
    result = json.loads((tmp_path / "ev" / "metric-r_precision_damsm.jsonl").read_text())["results"]
    assert result["n"] == 4
