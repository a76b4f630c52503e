"""`t2i generate "a red circle above a blue square"`: sample images from any text-to-image model.

Images are made `--batch` at a time over the (prompt, seed) pairs, prompt by prompt, and with `--outdir`
each is written as soon as it exists, so tens of thousands of images (for an external FID tool) take the
memory of one batch. Only the grid (`--out`) holds its images until the end, so it is written unasked only
while small.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from t2i.cli import HelpFormatter
from t2i.cli.sampling import add_sampling_args, sampling_options
from t2i.errors import T2IError

if TYPE_CHECKING:
    import torch

MAX_IMAGES = 1_000_000  # a sanity check on one call (a typo's extra zeros), not a memory limit
GRID_MAX = 4096         # images in one grid, which is assembled in memory
GRID_AUTO = 256         # with --outdir, the grid is written without --out up to this many images
DEFAULT_GRID = "out.png"
ATTENTION_MAX = 64      # rows of the --attention picture


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
    p.add_argument("--n", "--n_samples", dest="n", type=int, default=8,
                   help="images per prompt (--n_samples is the CompVis spelling)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image k uses seed + k")
    p.add_argument("--out", help=f"PNG grid, one row per prompt and --n columns, at most {GRID_MAX} images "
                   f"(default: {DEFAULT_GRID}; with --outdir, only for at most {GRID_AUTO} images)")
    p.add_argument("--outdir", help="write every image into this folder as it is made, as NNNN-seedSEED.png "
                   f"(NNNN: the prompt's number from 0000); up to {MAX_IMAGES:,} images, in constant memory")
    p.add_argument("--batch", type=int, default=64, help="images per forward pass")
    p.add_argument("--attention", metavar="OUT.png", help="AttnGAN: also write each image's word attention maps "
                   f"(the last attention stage), a row per image, for the first {ATTENTION_MAX} images")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--lang", default="auto", help="with --aligner: the prompts' language; auto = each prompt's, "
                   "from its script (Hangul is Korean, Latin script the model's own English), a language code "
                   "(e.g. ko) = every prompt's")
    add_sampling_args(p)
    p.set_defaults(func=run)


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts to render, validated (non-empty, UTF-8, a bounded number of images)."""
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
        raise T2IError(f"--n {args.n} x {len(prompts)} prompt(s) must be between 1 and {MAX_IMAGES:,} images")
    if args.batch < 1:
        raise T2IError(f"--batch {args.batch} must be at least 1")
    return prompts


def grid_path(args: argparse.Namespace, count: int) -> Path | None:
    """Where the grid goes: --out; else out.png, unless --outdir gets more than GRID_AUTO images."""
    if args.out is None and args.outdir and count > GRID_AUTO:
        return None
    if count > GRID_MAX:
        fix = ("drop --out: --outdir writes every image" if args.outdir else
               "write the images one file each with --outdir DIR")
        raise T2IError(f"{count} images are too many for one grid (it is built in memory; at most {GRID_MAX}); {fix}")
    return Path(args.out or DEFAULT_GRID)


def image_name_format(prompts: int, n: int, seed: int) -> str:
    """The file name of (prompt index, seed), e.g. `0003-seed0042.png`: both zero-padded to the width of their
    largest value (4 digits at least for the prompt) so a run's files sort in the order they were made."""
    seed_width = len(str(max(abs(seed), abs(seed + n - 1))))
    return f"{{0:0{max(4, len(str(prompts - 1)))}d}}-seed{{1:0{seed_width}d}}.png"


def image_batches(pipe, prompts: list[str], n: int, seed: int, batch: int,
                  options: dict) -> Iterator[tuple[list[int], list[int], torch.Tensor]]:
    """(prompt indices, seeds, uint8 images (B, 3, R, R)) of the pairs (prompt i, seed + k), k < n, in that
    order, `batch` pairs a time: one pipeline call each, made only when the previous batch is consumed."""
    pairs = ((i, seed + k) for i in range(len(prompts)) for k in range(n))
    while chunk := list(itertools.islice(pairs, batch)):
        index, seeds = (list(t) for t in zip(*chunk))
        yield index, seeds, pipe([prompts[i] for i in index], seeds, batch=batch, **options)


def write_png(image: torch.Tensor, path: Path) -> None:
    """Write one uint8 (3, H, W) image as a PNG, atomically (a killed run leaves no truncated file)."""
    from PIL import Image

    from t2i.io import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp, format="PNG")


def run(args: argparse.Namespace) -> int:
    prompts = read_prompts(args)
    from t2i.io import prepare_output
    from t2i.text.vocab import vocabulary_warning

    count = len(prompts) * args.n
    grid = grid_path(args, count)
    outdir = prepare_output(args.outdir, "the image folder --outdir", directory=True) if args.outdir else None
    if grid is not None:
        prepare_output(grid, "the grid --out")
    if args.attention:
        prepare_output(args.attention, "the attention picture --attention")
    import torch
    from tqdm import tqdm

    from t2i.models import load_pipeline
    from t2i.training.run import save_grid

    torch.set_grad_enabled(False)
    pipe = load_pipeline(args.model, args.device)
    options = sampling_options(args, pipe, args.device)
    pipe.check_prompts(prompts, **options)  # a prompt the model cannot read fails now, not at its batch
    if args.attention and not hasattr(pipe, "attention_picture"):
        raise T2IError(f"--attention: {pipe.family} models have no word attention maps; only AttnGAN models do")
    vocab = pipe.meta.get("vocab")
    if isinstance(vocab, list) and args.embeds:   # the placeholders of --embeds are words it knows now
        from t2i.concepts.textside import text_side

        vocab = vocab + list(text_side(pipe).get_tokenizer().expansions)
    if warning := vocabulary_warning(pipe.text_prompts(prompts), vocab):   # an aligner's prompts are not its words
        print(warning, file=sys.stderr)
    name = image_name_format(len(prompts), args.n, args.seed)
    kept = []  # the grid's images, only when there is a grid
    with tqdm(total=count, desc="generating", unit="img", disable=count <= args.batch) as bar:
        for index, seeds, images in image_batches(pipe, prompts, args.n, args.seed, args.batch, options):
            if outdir is not None:
                for i, seed, image in zip(index, seeds, images):
                    write_png(image, outdir / name.format(i, seed))
            if grid is not None:
                kept.append(images)
            bar.update(len(images))
    if grid is not None:
        save_grid(torch.cat(kept), grid, nrow=args.n)
    wrote = ([str(grid)] if grid is not None else []) + ([f"{count} images into {outdir}/"] if outdir else [])
    if args.attention:
        pairs = [(p, args.seed + k) for p in prompts for k in range(args.n)][:ATTENTION_MAX]
        pipe.attention_picture([p for p, _ in pairs], [s for _, s in pairs]).save(args.attention)
        wrote.append(f"the attention maps {args.attention}")
    note = "" if grid is not None else f"; no grid for over {GRID_AUTO} images unless --out asks for one"
    print(f"wrote {' and '.join(wrote)} ({len(prompts)} prompt(s) x {args.n} images, {pipe.resolution}px){note}")
    return 0
