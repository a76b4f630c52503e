"""`t2i generate "a red circle above a blue square"`: sample images from any text-to-image model."""

from __future__ import annotations

import argparse
from pathlib import Path

from t2i.cli import HelpFormatter
from t2i.cli.sampling import add_sampling_args, sampling_options
from t2i.errors import T2IError

MAX_IMAGES = 1024


def add_parser(sub) -> None:
    """Register `t2i generate`."""
    p = sub.add_parser(
        "generate", help="generate images from prompts",
        description="Generate images for one prompt (or a file of prompts). With no --model, uses the embedded "
                    "default: a LAFITE model trained by t2i on the shapes domain.",
        formatter_class=HelpFormatter)
    p.add_argument("prompt", nargs="?", help="the text prompt (quote it)")
    p.add_argument("--prompts", metavar="FILE", help="a UTF-8 text file with one prompt per line (instead of PROMPT)")
    p.add_argument("--model", metavar="RUN_OR_SNAPSHOT", help="run directory or snapshot (default: embedded model)")
    p.add_argument("--n", type=int, default=8, help="images per prompt")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image k uses seed + k")
    p.add_argument("--out", default="out.png", help="PNG grid: one row per prompt, --n columns")
    p.add_argument("--outdir", help="also write every image as its own PNG into this folder")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    add_sampling_args(p)
    p.set_defaults(func=run)


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts to render, validated (non-empty, UTF-8, a bounded number)."""
    if args.prompts and args.prompt:
        raise T2IError("give either a PROMPT or --prompts FILE, not both")
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise T2IError(f"prompts file {str(path)!r} does not exist")
        try:
            prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise T2IError(f"prompts file {str(path)!r} is not UTF-8 text; save it as UTF-8") from None
        if not prompts:
            raise T2IError(f"prompts file {str(path)!r} has no non-empty line")
    elif args.prompt is None:
        raise T2IError('no prompt given: t2i generate "a red circle above a blue square"')
    else:
        prompts = [args.prompt.strip()]
        if not prompts[0]:
            raise T2IError('the prompt is empty; describe the image, e.g. "a large red circle on the left"')
    if args.n < 1 or len(prompts) * args.n > MAX_IMAGES:
        raise T2IError(f"--n {args.n} x {len(prompts)} prompt(s) must be between 1 and {MAX_IMAGES} images")
    return prompts


def run(args: argparse.Namespace) -> int:
    prompts = read_prompts(args)
    import torch

    from t2i.models import load_pipeline
    from t2i.training.run import save_grid

    torch.set_grad_enabled(False)
    pipe = load_pipeline(args.model, args.device)
    all_prompts = [p for p in prompts for _ in range(args.n)]
    seeds = [args.seed + k for _ in prompts for k in range(args.n)]
    images = pipe(all_prompts, seeds, **sampling_options(args, pipe, args.device))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_grid(images, out, nrow=args.n)
    if args.outdir:
        from PIL import Image

        d = Path(args.outdir)
        d.mkdir(parents=True, exist_ok=True)
        for i, (img, seed) in enumerate(zip(images, seeds)):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{i // args.n:04d}-seed{seed}.png")
    print(f"wrote {out} ({len(prompts)} prompt(s) x {args.n} images, {pipe.resolution}px)")
    return 0
