"""`t2i eval MODEL --data DATASET --metrics fid,clip_score,r_precision,shapes_accuracy`."""

from __future__ import annotations

import argparse
from pathlib import Path

from t2i.cli import HelpFormatter
from t2i.cli.sampling import add_sampling_args, sampling_options
from t2i.errors import T2IError


def add_parser(sub) -> None:
    """Register `t2i eval`."""
    p = sub.add_parser(
        "eval", help="evaluate a model (FID, precision/recall, seed diversity, CLIP score, R-precision, shapes accuracy)",
        description="Evaluate a text-to-image model. Results are printed as a table and appended to "
                    "metric-<name>.jsonl in the model's run directory (or --out).",
        formatter_class=HelpFormatter)
    p.add_argument("model", nargs="?", help="run directory or snapshot (default: the embedded model)")
    p.add_argument("--data", help="dataset (t2i format): its images and captions for fid, inception_score, "
                   "precision_recall, clip_score, r_precision(_damsm) and seed_diversity (on shapes, seed_diversity "
                   "and shapes_accuracy need none)")
    p.add_argument("--metrics", default="shapes_accuracy",
                   help="comma-separated: fid, inception_score (IS, 10 splits; needs --inception), precision_recall "
                        "(improved precision/recall, k=3, on FID's features), "
                        "seed_diversity (how one prompt's images differ across seeds, beside real images of one "
                        "prompt), clip_score, r_precision, r_precision_damsm (AttnGAN's: DAMSM sentence features), "
                        "shapes_accuracy (oracle accuracy on shapes prompts)")
    p.add_argument("--n", type=int, default=1000, help="generated images per metric (per split for shapes_accuracy)")
    p.add_argument("--clip", help="CLIP for clip_score/r_precision: t2i CLIP run, or ARCH:/path (default: the model's)")
    p.add_argument("--damsm", help="DAMSM for r_precision_damsm: a `t2i train damsm` run (default: an AttnGAN "
                   "model's own)")
    p.add_argument("--inception", help="Inception FID weights (pt_inception-2015-12-05-6726825d.pth) for real data")
    p.add_argument("--oracle", help="shapes oracle run/snapshot (default: the shipped one)")
    p.add_argument("--lpips", metavar="VGG16_WEIGHTS", help="seed_diversity also in LPIPS: a torchvision vgg16 "
                   "state_dict (the lpips package ships the rest; nothing is downloaded)")
    p.add_argument("--seeds_per_prompt", type=int, default=4, help="seed_diversity: seeds of each prompt (its "
                   "prompts: --n / this)")
    p.add_argument("--seed", type=int, default=0, help="seed of prompts and latents")
    p.add_argument("--batch", type=int, default=64, help="generation / feature batch size")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", help="directory for metric-<name>.jsonl (default: the model's run directory)")
    p.add_argument("--concept", metavar="PLACEHOLDER=SHAPE",
                   help="shapes_accuracy of a learned word (with --embeds): prompts write the placeholder for the "
                        "shape, e.g. '*=star' scores \"a large red * on the left\" as a large red star on the left")
    p.add_argument("--lang", default="en", help="shapes_accuracy: the language its prompts are written in (en or "
                   "ko); with --aligner, prompts in the aligner's language go through it")
    add_sampling_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from t2i.evaluate import METRICS, EvalOptions, evaluate_metric

    names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise T2IError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    if args.lang not in ("en", "ko"):
        raise T2IError(f"--lang {args.lang!r}: shapes prompts are written in en or ko")
    if not 1 <= args.n <= 100_000:
        raise T2IError(f"--n {args.n} must be between 1 and 100000")
    import torch

    from t2i.io import prepare_output
    from t2i.models import DEFAULT_MODEL, load_pipeline
    from t2i.training.run import RunLog
    from t2i.training.snapshot import resolve_snapshot

    snapshot = resolve_snapshot(args.model) if args.model else DEFAULT_MODEL
    out = Path(args.out) if args.out else (snapshot.parent if args.model else Path("."))
    prepare_output(out, "the results folder (--out)", directory=True)  # before any image is generated
    pipe = load_pipeline(snapshot, args.device)
    opts = EvalOptions(data=args.data, n=args.n, clip=args.clip, damsm=args.damsm, inception=args.inception,
                       oracle=args.oracle,
                       lpips=args.lpips, seeds_per_prompt=args.seeds_per_prompt, seed=args.seed, batch=args.batch,
                       sampling=sampling_options(args, pipe, args.device), concept=args.concept,
                       lang=args.lang)
    log = RunLog(out, tensorboard=False, log_file=False)
    kimg = float(pipe.meta.get("kimg", 0.0))
    rows = []
    for name in names:
        result = evaluate_metric(name, pipe, opts, device=torch.device(args.device))
        log.metric(name, kimg, snapshot.name, result)
        rows += [(name, k, v) for k, v in result.items()]
    width = max(len(f"{m}/{k}") for m, k, _ in rows)
    print(f"{'metric':<{width}}  value")
    for m, k, v in rows:
        print(f"{m + '/' + k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{m + '/' + k:<{width}}  {v}")
    print(f"appended to {out}/metric-<name>.jsonl")
    log.close()
    return 0
