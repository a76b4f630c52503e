"""Benchmark: image import throughput of `t2i data pack` and `t2i data coco` against the original
LAFITE / StyleGAN2-ADA `dataset_tool.py` approach, on the same generated photos, in one run.

The baseline does what dataset_tool.py does per image, in one process: PIL decode at full size,
convert to RGB, centre crop to the short side, LANCZOS resize, PNG encode (compress_level 0), write to
an uncompressed zip. t2i is run through its real CLI (process start-up included) with its defaults:
all cores, JPEG draft decoding, and both PNG level 0 (dataset_tool.py's) and t2i's default 1.

    python benchmarks/import_throughput.py --workdir /tmp/t2i-import --n 2000

Source photos are COCO-like (640x480 JPEG, quality 90, textured content) and generated once in the
work directory. Nothing here is a test: the numbers depend on the machine and are reported.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from common import T2I, sh



def make_sources(work: Path, n: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """`pack/` (NAME.jpg + NAME.txt) and a COCO 2014 layout (`train2014/`, captions JSON) of n photos."""
    pack, coco = work / "src-pack", work / "src-coco"
    done = work / "sources.json"
    if done.exists() and json.loads(done.read_text()) == {"n": n, "seed": seed}:
        return pack, coco / "train2014", coco / "captions_train2014.json"
    shutil.rmtree(pack, ignore_errors=True)
    shutil.rmtree(coco, ignore_errors=True)
    pack.mkdir(parents=True)
    (coco / "train2014").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    images, annotations = [], []
    for i in range(n):
        # Smooth colour fields plus noise: JPEG decode and resize cost like a photo's, not a flat image's.
        f = rng.uniform(0.005, 0.03, size=(3, 2))
        base = np.stack([127 + 100 * np.sin(xx * f[c, 0] + yy * f[c, 1] + rng.uniform(0, 6)) for c in range(3)], -1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        name = f"COCO_train2014_{i:012d}.jpg"
        Image.fromarray(pixels).save(coco / "train2014" / name, quality=90)
        (pack / f"img{i:06d}.jpg").hardlink_to(coco / "train2014" / name)
        captions = [f"photo {i} caption {k}" for k in range(5)]
        (pack / f"img{i:06d}.txt").write_text("\n".join(captions) + "\n")
        images.append({"id": i, "file_name": name, "width": 640, "height": 480})
        annotations += [{"id": i * 5 + k, "image_id": i, "caption": c} for k, c in enumerate(captions)]
    (coco / "captions_train2014.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    done.write_text(json.dumps({"n": n, "seed": seed}))
    return pack, coco / "train2014", coco / "captions_train2014.json"


def dataset_tool_baseline(source: Path, dest: Path, size: int) -> int:
    """dataset_tool.py's per-image work in one process: decode, centre crop, LANCZOS resize, PNG level 0,
    into an uncompressed zip. Returns the number of images written."""
    files = sorted(source.glob("*.jpg"))
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as zf:
        for idx, path in enumerate(files):
            img = Image.open(path).convert("RGB")
            w, h = img.size
            s = min(w, h)
            img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            img = img.resize((size, size), Image.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, format="png", compress_level=0, optimize=False)
            zf.writestr(f"{idx // 1000:05d}/img{idx:08d}.png", buf.getvalue())
        zf.writestr("dataset.json", json.dumps({"labels": None}))
    return len(files)


def timed(fn, repeats: int) -> float:
    """Median wall time of `repeats` runs of fn()."""
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/t2i-import", help="where sources and outputs go")
    p.add_argument("--n", type=int, default=2000, help="source photos (640x480 JPEG)")
    p.add_argument("--size", type=int, default=256, help="output side in pixels")
    p.add_argument("--repeats", type=int, default=3, help="runs per method; the median is reported")
    args = p.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    pack_src, coco_images, coco_json = make_sources(work, args.n)
    size = ["--width", args.size, "--height", args.size, "--transform", "center-crop"]
    out = work / "out"

    def fresh(name: str) -> Path:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        return out / name

    pack_cmd = T2I + ["data", "pack", pack_src]
    coco_cmd = T2I + ["data", "coco", "--images", coco_images, "--captions", coco_json]
    rows = [("dataset_tool.py approach (1 process)",
             timed(lambda: dataset_tool_baseline(pack_src, fresh("baseline.zip"), args.size), args.repeats))]
    # --png_level 0 writes what dataset_tool.py writes (stored PNGs); t2i's default level 1 trades
    # encoding time for files about a third smaller on photos.
    for name, cmd in (("t2i data pack", pack_cmd), ("t2i data coco", coco_cmd)):
        for level in (0, 1):
            rows.append((f"{name} --png_level {level}",
                         timed(lambda: sh(cmd + [fresh(f"{level}.zip"), *size, "--png_level", level]),
                               args.repeats)))
    shutil.rmtree(out, ignore_errors=True)
    base = rows[0][1]
    print(f"{args.n} photos 640x480 -> {args.size}x{args.size}, {os.cpu_count()} cores, median of {args.repeats}")
    print(f"{'method':<38} {'wall s':>7} {'images/s':>9} {'vs baseline':>11}")
    for name, wall in rows:
        print(f"{name:<38} {wall:>7.2f} {args.n / wall:>9.1f} {base / wall:>10.2f}x")


if __name__ == "__main__":
    main()
