"""`t2i data ...`: create datasets in the canonical format (render shapes, pack image folders)."""

from __future__ import annotations

import argparse
import sys

from t2i.errors import T2IError

# Spelled out rather than imported: the data modules import torch, and building the parser must stay
# fast. tests/test_data_pack.py checks these match t2i.data.pack.TRANSFORMS and shapes.SPLITS.
PACK_TRANSFORMS = ("center-crop", "center-crop-wide", "none")
SHAPES_SPLITS = ("train", "test-seen", "test-heldout")


def cmd_shapes(args: argparse.Namespace) -> int:
    """Render a shapes dataset."""
    from t2i.data.shapes import make_dataset

    if args.n < 1:
        raise T2IError(f"--n {args.n}: the number of images must be at least 1")
    if args.size < 16:
        raise T2IError(f"--size {args.size}: shapes need at least 16 pixels to stay recognisable")
    name = make_dataset(args.out, args.n, args.size, args.seed, args.split, overwrite=args.overwrite)
    print(f"wrote {args.n} images ({name}, {args.split} split, seed {args.seed}) to {args.out}")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    """Import a folder of images and .txt captions."""
    from t2i.data.pack import pack, report_path

    report = pack(args.source, args.dest, args.width, args.height, args.transform, strict=args.strict,
                  subset=args.subset, seed=args.seed, overwrite=args.overwrite, workers=args.workers)
    print(report.summary(), file=sys.stderr if report.skipped else sys.stdout)
    print(f"report: {report_path(args.dest)}")
    return 0


def _add_shapes(sub) -> None:
    p = sub.add_parser("shapes", help="render the procedural shapes dataset (exactly scorable captions)")
    p.add_argument("--out", required=True, help="destination folder, or a path ending in .zip")
    p.add_argument("--n", type=int, default=10000, help="number of images (default: %(default)s)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--split", choices=SHAPES_SPLITS, default="train",
                   help="test-heldout scenes contain held-out (shape, colour) pairs (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    p.set_defaults(func=cmd_shapes)


def _add_pack(sub) -> None:
    p = sub.add_parser("pack", help="import a folder of images with NAME.txt captions",
                       description="Import SOURCE (recursively: NAME.png|jpg|jpeg|webp beside NAME.txt, "
                                   "one caption per line) into a dataset folder or .zip at DEST.")
    p.add_argument("source", help="folder of images and caption files (never modified)")
    p.add_argument("dest", help="destination folder, or a path ending in .zip")
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--transform", choices=PACK_TRANSFORMS, required=True,
                   help="center-crop: largest centred box, resized; center-crop-wide: fit the width, "
                        "crop or pad the height; none: images must already be WIDTH x HEIGHT")
    p.add_argument("--strict", action="store_true",
                   help="fail on the first unusable file instead of skipping it")
    p.add_argument("--subset", type=int, default=None, help="keep a seeded random subset of N images")
    p.add_argument("--seed", type=int, default=0, help="seed for --subset (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.set_defaults(func=cmd_pack)


def cmd_features(args: argparse.Namespace) -> int:
    """Precompute CLIP image and caption features beside a dataset (cached, content-keyed)."""
    from t2i.clip import load_clip
    from t2i.data.dataset import ImageTextDataset
    from t2i.data.features import features_path, load_or_compute_features

    dataset = ImageTextDataset(args.dataset, caption_lang=args.lang)
    clip = load_clip(args.clip, args.device)
    feats = load_or_compute_features(dataset, clip, args.lang, device=args.device)
    print(f"{len(feats.image)} image and {len(feats.text)} caption features ({clip.identity}) in "
          f"{features_path(dataset, clip, args.lang)}")
    return 0


def _add_features(sub) -> None:
    p = sub.add_parser("features", help="precompute CLIP image and caption features of a dataset",
                       description="Compute CLIP features once and store them beside the dataset, keyed by the "
                                   "dataset's content and the CLIP's weights (never reused when either changes).")
    p.add_argument("dataset", help="dataset folder or zip (t2i format)")
    p.add_argument("--clip", required=True, help="t2i CLIP run/snapshot, or ARCH:/path/to/weights (open_clip)")
    p.add_argument("--lang", default="en", help="caption language (en, ko, ...)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=cmd_features)


def add_parser(subparsers) -> None:
    """Register `t2i data` and its sub-commands."""
    parser = subparsers.add_parser("data", help="create datasets and features: shapes, pack, features")
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    _add_shapes(sub)
    _add_pack(sub)
    _add_features(sub)
