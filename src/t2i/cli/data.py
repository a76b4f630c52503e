"""`t2i data ...`: create datasets in the canonical format (render shapes, import image folders, MS-COCO
and CUB-200-2011), precompute their features, write shards, and download LAION-style metadata into shards."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from t2i.errors import T2IError

# Spelled out rather than imported: the data modules import torch, and building the parser must stay
# fast. tests/test_data_pack.py checks these match t2i.data.pack.TRANSFORMS, shapes.SPLITS and shapes.SHAPES,
# tests/test_data_cub.py that CUB_SPLITS matches t2i.data.cub.SPLITS.
PACK_TRANSFORMS = ("center-crop", "center-crop-wide", "none")
SHAPES_SPLITS = ("train", "test-seen", "test-heldout")
SHAPE_NAMES = ("circle", "square", "triangle", "diamond", "star", "cross")   # t2i.data.shapes.SHAPES
CUB_SPLITS = ("train", "test")
# coco and cub; --min_size 0 there keeps every image of the split that papers report on.
IMPORT_DEFAULTS = {"--width": 256, "--height": 256, "--transform": "center-crop", "--min_size": 0}
LAFITE_IDENTITY = "lafite-zip:ViT-B/32"  # t2i.data.lafite_zip.DEFAULT_IDENTITY (checked by its tests)
LAION_RESIZE_MODES = ("center_crop", "border")  # t2i.data.laion.RESIZE_MODES (checked by its tests)


def cmd_shapes(args: argparse.Namespace) -> int:
    """Render a shapes dataset."""
    from t2i.data.shapes import make_dataset

    if args.n < 1:
        raise T2IError(f"--n {args.n}: the number of images must be at least 1")
    if args.size < 16:
        raise T2IError(f"--size {args.size}: shapes need at least 16 pixels to stay recognisable")
    name = make_dataset(args.out, args.n, args.size, args.seed, args.split, overwrite=args.overwrite,
                        exclude_shape=args.exclude_shape)
    without = f", no {args.exclude_shape}" if args.exclude_shape else ""
    print(f"wrote {args.n} images ({name}, {args.split} split, seed {args.seed}{without}) to {args.out}")
    return 0


def _import_options(args: argparse.Namespace) -> dict:
    """The keyword arguments every importer (pack, coco, cub) takes from the shared options."""
    return {"width": args.width, "height": args.height, "transform": args.transform, "strict": args.strict,
            "subset": args.subset, "seed": args.seed, "overwrite": args.overwrite, "workers": args.workers,
            "png_level": args.png_level, "min_size": args.min_size}


def _print_report(report, dest: str) -> None:
    """The skipped files and totals (on stderr when something was skipped), then the report's path."""
    from t2i.data.pack import report_path

    print(report.summary(), file=sys.stderr if report.skipped else sys.stdout)
    print(f"report: {report_path(dest)}")


def cmd_pack(args: argparse.Namespace) -> int:
    """Import a folder of images and .txt captions."""
    from t2i.data.pack import pack

    _print_report(pack(args.source, args.dest, **_import_options(args), captions=not args.no_captions), args.dest)
    return 0


def cmd_coco(args: argparse.Namespace) -> int:
    """Import MS-COCO images with their captions JSON."""
    from t2i.data.coco import coco

    _print_report(coco(args.images, args.captions, args.dest, **_import_options(args)), args.dest)
    return 0


def cmd_cub(args: argparse.Namespace) -> int:
    """Import a CUB-200-2011 split in AttnGAN's layout, cropped around the bounding boxes."""
    from t2i.data.cub import cub

    _print_report(cub(args.root, args.dest, args.split, **_import_options(args)), args.dest)
    return 0


def _add_shapes(sub) -> None:
    p = sub.add_parser("shapes", help="render the procedural shapes dataset (exactly scorable captions)")
    p.add_argument("--out", required=True, help="destination folder, or a path ending in .zip")
    p.add_argument("--n", type=int, default=10000, help="number of images (default: %(default)s)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--split", choices=SHAPES_SPLITS, default="train",
                   help="test-heldout scenes contain held-out (shape, colour) pairs (default: %(default)s)")
    p.add_argument("--exclude_shape", choices=SHAPE_NAMES, default=None,
                   help="leave this shape out of every scene: data for a model that never sees it (the hard case "
                        "of textual inversion)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    p.set_defaults(func=cmd_shapes)


def _add_import_options(p, defaults: dict | None) -> None:
    """Size, transform, skipping and parallelism options shared by pack, coco and cub; with defaults
    None, --width, --height and --transform are required and --min_size is half the smaller side."""
    def sized(option: str, help: str, **kw) -> None:
        if defaults is None:
            p.add_argument(option, required=True, help=help, **kw)
        else:
            p.add_argument(option, default=defaults[option], help=help + " (default: %(default)s)", **kw)

    sized("--width", "image width in pixels", type=int)
    sized("--height", "image height in pixels", type=int)
    sized("--transform", "center-crop: largest centred box, resized; center-crop-wide: fit the width, crop "
          "or pad the height; none: images must already be WIDTH x HEIGHT", choices=PACK_TRANSFORMS)
    min_size = "half the smaller of WIDTH and HEIGHT" if defaults is None else defaults["--min_size"]
    p.add_argument("--min_size", type=int, default=None if defaults is None else defaults["--min_size"],
                   metavar="PIXELS", help="skip images whose smaller side (cub: of the bounding-box crop) is below "
                   "PIXELS rather than upscale them; 0 keeps every size; --transform none checks the exact size "
                   f"instead (default: {min_size})")
    p.add_argument("--strict", action="store_true",
                   help="fail on the first unusable file instead of skipping it")
    p.add_argument("--subset", type=int, default=None, help="keep a seeded random subset of N images")
    p.add_argument("--seed", type=int, default=0, help="seed for --subset (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--png_level", type=int, default=1,
                   help="zlib level of the stored PNGs: 0 writes fastest (as dataset_tool.py), 9 smallest; "
                        "1 is about 3x faster than 6 for about 10%% larger files (default: %(default)s)")


def _add_pack(sub) -> None:
    p = sub.add_parser("pack", help="import a folder of images with NAME.txt captions",
                       description="Import SOURCE (recursively: NAME.png|jpg|jpeg|webp beside NAME.txt, "
                                   "one caption per line; with --no_captions images alone) into a dataset "
                                   "folder or .zip at DEST.")
    p.add_argument("source", help="folder of images and caption files (never modified)")
    p.add_argument("dest", help="destination folder, or a path ending in .zip")
    p.add_argument("--no_captions", action="store_true",
                   help="import images without captions (any .txt files are ignored): an image-only dataset, "
                        "marked so in dataset.json, for language-free training (`t2i train lafite --mixing_prob 1`)")
    _add_import_options(p, defaults=None)
    p.set_defaults(func=cmd_pack)


def _add_coco(sub) -> None:
    p = sub.add_parser("coco", help="import MS-COCO images with a captions_*.json file",
                       description="Import MS-COCO (2014 or 2017 layout) into a dataset folder or .zip at "
                                   "DEST: each image with its ~5 captions and attributes {coco_id, source}, "
                                   "in the order of the JSON's images list.")
    p.add_argument("dest", help="destination folder, or a path ending in .zip")
    p.add_argument("--images", required=True,
                   help="folder of the COCO images, e.g. train2014/ or val2017/ (never modified)")
    p.add_argument("--captions", required=True,
                   help="the captions JSON, e.g. annotations/captions_train2014.json (never modified)")
    _add_import_options(p, IMPORT_DEFAULTS)
    p.set_defaults(func=cmd_coco)


def _add_cub(sub) -> None:
    p = sub.add_parser("cub", help="import a CUB-200-2011 split in AttnGAN's layout",
                       description="Import the train or test split of CUB-200-2011 from AttnGAN's layout "
                                   "(ROOT/CUB_200_2011/{images/,images.txt,bounding_boxes.txt}, ROOT/text/ "
                                   "or text_c10/, ROOT/train|test/filenames.pickle): each bird cropped to a "
                                   "square of 1.5x the larger side of its bounding box, with its captions "
                                   "and attributes {class_id, class, source}.")
    p.add_argument("root", help="folder holding CUB_200_2011/, text/, train/ and test/ (never modified)")
    p.add_argument("dest", help="destination folder, or a path ending in .zip")
    p.add_argument("--split", choices=CUB_SPLITS, required=True,
                   help="which filenames.pickle gives the images and their order")
    _add_import_options(p, IMPORT_DEFAULTS)
    p.set_defaults(func=cmd_cub)


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


def cmd_lafite(args: argparse.Namespace) -> int:
    """Import an original LAFITE dataset zip with its CLIP features."""
    from t2i.data.lafite_zip import lafite_zip

    report = lafite_zip(args.zip, args.dest, args.clip_identity, args.captions, args.feature_dim, args.overwrite)
    _print_report(report, args.dest)
    print(f"CLIP features ({args.clip_identity}, captions from {report.inputs['captions']}): "
          f"{report.inputs['features']}")
    return 0


def _add_lafite(sub) -> None:
    p = sub.add_parser("lafite", help="import an original LAFITE dataset zip with its CLIP features",
                       description="Import a zip written by LAFITE's dataset_tool.py (images and a dataset.json "
                                   "with clip_img_features and clip_txt_features) into a dataset at DEST, and its "
                                   "features into DEST's feature cache, so that `t2i train lafite` with a CLIP of "
                                   "the same identity uses them without recomputing. Captions come from --captions "
                                   "DIR, else a 'captions' entry of dataset.json, else NAME.txt members of the zip; "
                                   "a language-free zip (no captions, no text features) becomes an image-only "
                                   "dataset for `t2i train lafite --mixing_prob 1`. "
                                   "Images without features, features without images and features of the wrong "
                                   "length are skipped and reported. The zip is never modified.")
    p.add_argument("zip", help="the LAFITE dataset zip (only read)")
    p.add_argument("dest", help="destination folder, or a path ending in .zip")
    p.add_argument("--clip-identity", default=LAFITE_IDENTITY,
                   help="identity of the CLIP that computed the zip's features, the key of the feature cache; "
                        "give the identity of the CLIP you will train with (`t2i train lafite` logs it as "
                        "'CLIP <identity>'; for open_clip weights it is open_clip:ARCH:<first 16 hex digits of "
                        "the weights file's sha256>) (default: %(default)s)")
    p.add_argument("--captions", default=None, metavar="DIR",
                   help="folder of captions: DIR/<image member without extension>.txt, one caption per line in "
                        "the order of the image's clip_txt_features (default: captions from the zip)")
    p.add_argument("--feature-dim", type=int, default=512,
                   help="length of every CLIP feature; others are skipped (default: %(default)s, ViT-B/32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    p.set_defaults(func=cmd_lafite)


def cmd_shards(args: argparse.Namespace) -> int:
    """Write a dataset as webdataset tar shards plus shards.json."""
    from t2i.data.shards import MANIFEST, write_shards

    m = write_shards(args.dataset, args.outdir, args.shard_size, overwrite=args.overwrite)
    print(f"{m['samples']} samples in {len(m['shards'])} shards of up to {m['shard_size']} ({m['written']} "
          f"written, {m['kept']} already complete); shard list: {Path(args.outdir) / MANIFEST}")
    return 0


def _add_shards(sub) -> None:
    p = sub.add_parser("shards", help="write a dataset as webdataset tar shards for streaming at scale",
                       description="Write DATASET as OUTDIR/shard-000000.tar, ... (each sample KEY.png with the "
                                   "dataset's PNG bytes and KEY.json with its captions and attributes) and "
                                   "OUTDIR/shards.json (the shard list that `t2i train lafite|vqgan --data` streams). "
                                   "Shards are written atomically; a rerun keeps complete shards and rewrites "
                                   "missing or damaged ones.")
    p.add_argument("dataset", help="dataset folder or zip (t2i format)")
    p.add_argument("outdir", help="folder for the shards and shards.json")
    p.add_argument("--shard_size", "--shard-size", type=int, required=True, metavar="N",
                   help="samples per shard (the last shard holds the rest)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace shards that OUTDIR holds of another dataset or shard size")
    p.set_defaults(func=cmd_shards)


def cmd_laion(args: argparse.Namespace) -> int:
    """Filter LAION metadata, download it with img2dataset and write t2i shards."""
    from t2i.data.laion import DownloadOptions, Filters, laion, shards_path
    from t2i.data.pack import default_workers, report_path

    filters = Filters(args.min_size, args.min_similarity, args.min_caption_words, args.max_caption_chars)
    options = DownloadOptions(args.image_size, args.resize_mode, args.shard_size,
                              args.processes if args.processes is not None else default_workers(), args.threads,
                              args.timeout, args.retries)
    columns = {"url": args.url_col, "caption": args.caption_col, "width": args.width_col,
               "height": args.height_col, "similarity": args.similarity_col}
    report = laion(args.parquet, args.dest, filters, options, columns, args.img2dataset, args.overwrite)
    print(report.summary(), file=sys.stderr if sum(report.failed.values()) else sys.stdout)
    print(f"shard list: {shards_path(args.dest)}\nreport: {report_path(args.dest)}")
    return 0


def _add_laion(sub) -> None:
    p = sub.add_parser("laion", help="download LAION-style metadata (parquet) with img2dataset into shards",
                       description="Filter the rows of LAION-style metadata parquet files (url, caption, width, "
                                   "height, similarity columns; LAION's URL/TEXT/WIDTH/HEIGHT spellings are found "
                                   "in any case), download the rest with img2dataset into DEST/downloads/ and "
                                   "convert them into t2i shards: DEST/shards/shard-NNNNNN.tar and "
                                   "DEST/shards/shards.json, which `t2i.data.shards.ShardStream` reads. "
                                   "DEST/report.json counts the rows read, filtered out (url, size, similarity, "
                                   "caption), downloaded and kept, and the failures (missing: HTTP errors; "
                                   "corrupt: undecodable; slow: timed out; other). Rerunning the same command "
                                   "resumes: finished download shards are not fetched again and complete t2i "
                                   "shards are kept. The parquet files are never modified. img2dataset needs "
                                   "its own environment (it pins webdataset<0.3): python3.11 -m venv "
                                   "~/.venvs/img2dataset && ~/.venvs/img2dataset/bin/pip install img2dataset.")
    p.add_argument("parquet", nargs="+", help="LAION metadata parquet files, read in order (never modified)")
    p.add_argument("dest", help="folder for work/filtered.parquet, downloads/, shards/ and report.json")
    p.add_argument("--img2dataset", default=None, metavar="PATH",
                   help="the img2dataset executable (default: $T2I_IMG2DATASET, else img2dataset on PATH)")
    for role, spelled in (("url", "url, image_url"), ("caption", "caption, text, alt_text"),
                          ("width", "width, original_width"), ("height", "height, original_height"),
                          ("similarity", "similarity, clip_similarity")):
        p.add_argument(f"--{role}_col", f"--{role}-col", default=None, metavar="NAME",
                       help=f"name of the {role} column, exactly as spelled in the files (default: the first of "
                            f"{spelled} present, in any case)")
    p.add_argument("--min_size", "--min-size", type=int, default=0, metavar="PIXELS",
                   help="drop rows whose smaller side (per WIDTH and HEIGHT) is below PIXELS, or unknown; 0 keeps "
                        "all sizes (default: %(default)s)")
    p.add_argument("--min_similarity", "--min-similarity", type=float, default=None, metavar="S",
                   help="drop rows whose CLIP similarity is below S, or unknown; LAION-400M used 0.3 with "
                        "ViT-B/32 (default: no similarity filter)")
    p.add_argument("--min_caption_words", "--min-caption-words", type=int, default=1, metavar="N",
                   help="drop rows whose caption has fewer than N words; empty captions are always dropped "
                        "(default: %(default)s)")
    p.add_argument("--max_caption_chars", "--max-caption-chars", type=int, default=0, metavar="N",
                   help="drop rows whose caption is longer than N characters; 0: no limit (default: %(default)s)")
    p.add_argument("--image_size", "--image-size", type=int, default=256, metavar="PIXELS",
                   help="side of the square images img2dataset resizes to (default: %(default)s)")
    p.add_argument("--resize_mode", "--resize-mode", choices=LAION_RESIZE_MODES, default="center_crop",
                   help="center_crop: resize the smaller side to IMAGE_SIZE and crop the centre; border: fit the "
                        "larger side and pad (default: %(default)s)")
    p.add_argument("--shard_size", "--shard-size", type=int, default=10000, metavar="N",
                   help="selected rows per download shard; each gives one t2i shard of its usable images "
                        "(default: %(default)s)")
    p.add_argument("--processes", type=int, default=None, metavar="N",
                   help="img2dataset download processes, then processes converting the downloads into t2i "
                        "shards (default: all cores)")
    p.add_argument("--threads", type=int, default=64, metavar="N",
                   help="download threads per process (default: %(default)s)")
    p.add_argument("--timeout", type=int, default=10, metavar="SECONDS",
                   help="give up on a URL (counted as slow) after this many seconds (default: %(default)s)")
    p.add_argument("--retries", type=int, default=0, metavar="N",
                   help="extra attempts at a failed URL within one run (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="download anew when DEST holds downloads or shards of another selection (other files, "
                        "filters, --image_size, --resize_mode or --shard_size)")
    p.set_defaults(func=cmd_laion)


def add_parser(subparsers) -> None:
    """Register `t2i data` and its sub-commands."""
    parser = subparsers.add_parser("data", help="create datasets and features: shapes, pack, coco, cub, lafite, "
                                                "features, shards, laion")
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    _add_shapes(sub)
    _add_pack(sub)
    _add_coco(sub)
    _add_cub(sub)
    _add_lafite(sub)
    _add_features(sub)
    _add_shards(sub)
    _add_laion(sub)
