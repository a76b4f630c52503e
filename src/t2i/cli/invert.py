"""`t2i invert`: learn a new word from a few images of a concept (textual inversion), on the shared loop."""

from __future__ import annotations

import argparse

from t2i.cli import HelpFormatter

DESCRIPTION = ("Textual inversion: teach a trained model a new word (--placeholder) from 3-5 images of a concept "
               "(--images DIR). Only the word's embedding trains; the model is frozen and every other embedding "
               "row stays exactly as it was. The run directory gets learned_embeds.safetensors (Hugging Face's "
               "layout) and learned_embeds.json; use them with `t2i generate \"a photo of a *\" --model RUN "
               "--embeds RUN_DIR`.")


# Steps by the base model's family when neither --steps nor --kimg is given (else 500 at batch 4). LDM's diffusion
# loss moves the word slowly: on shapes (benchmarks/invert_shapes.py) the word still drew blobs at 1000 steps and
# stars from about 2000; the textual-inversion paper trains 5000. LAFITE's word was learned in 500 (95.5% stars);
# DALL-E's and AttnGAN's are not measured on shapes yet.
FAMILY_STEPS = {"ldm": 5000}


def add_parser(sub) -> None:
    from t2i.concepts import invert
    from t2i.training.launch import add_loop_args

    p = sub.add_parser("invert", help="learn a new word from a few images of a concept (textual inversion)",
                       description=DESCRIPTION, formatter_class=HelpFormatter)
    invert.add_args(p)
    p.add_argument("--steps", type=int, default=argparse.SUPPRESS,
                   help="optimizer steps (sets --kimg to steps x batch / 1000; default 500, for an LDM 5000)")
    add_loop_args(p, invert)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from t2i.concepts.invert import LOOP_DEFAULTS
    from t2i.errors import T2IError
    from t2i.training.launch import run_training
    from t2i.training.run import run_family

    family = run_family(Path(getattr(args, "model", "")))
    if not hasattr(args, "steps") and not hasattr(args, "kimg") and family in FAMILY_STEPS:
        args.steps = FAMILY_STEPS[family]
    if hasattr(args, "steps"):
        if args.steps < 1:
            raise T2IError(f"--steps {args.steps} must be at least 1")
        args.kimg = args.steps * getattr(args, "batch", LOOP_DEFAULTS["batch"]) / 1000
        del args.steps
    return run_training("invert", args)
