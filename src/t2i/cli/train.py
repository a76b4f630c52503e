"""`t2i train <family>`: every family trains through the same loop and run-directory layout."""

from __future__ import annotations

import argparse
import importlib

from t2i.cli import HelpFormatter
from t2i.training.launch import TRAINABLE, add_loop_args

HELP = {
    "aligner": "train an aligner that maps prompts in another language (Korean), through a frozen multilingual "
               "sentence encoder, into a trained model's English conditioning (--model RUN --data PAIRS --lang ko)",
    "attngan": "train AttnGAN's multi-stage generator with word attention, one discriminator per stage, on a frozen "
               "DAMSM (--damsm RUN)",
    "autoencoder": "train a KL autoencoder (latent diffusion's first stage: Gaussian latents, L1 + LPIPS + KL + "
                   "patch-GAN; diffusers' AutoencoderKL)",
    "bpe": "train a byte-level BPE tokenizer (with BPE-dropout) on a dataset's captions",
    "damsm": "train AttnGAN's DAMSM: a bi-LSTM text encoder and an image encoder (regions + global) matched word by "
             "word with attention; writes attention maps at every snapshot",
    "dalle": "train the DALL-E transformer over BPE text tokens and VQGAN image tokens (--vqgan RUN)",
    "clip": "train t2i's small CLIP (image + text encoders, contrastive) on a dataset",
    "lafite": "train LAFITE (StyleGAN2-style generator conditioned on CLIP features)",
    "ldm": "train latent diffusion: a text-conditioned UNet (diffusers' UNet2DConditionModel) and a BERT-like text "
           "encoder, jointly, on a KL autoencoder's latents (--autoencoder RUN)",
    "oracle": "train the shapes attribute classifier used by the shapes_accuracy metric",
    "vqgan": "train a VQGAN image tokenizer (DALL-E first stage: codebook + patch-GAN, taming layout)",
}


def add_parser(sub) -> None:
    """Register `t2i train ...`."""
    p = sub.add_parser("train", help="train a model (" + ", ".join(sorted(HELP)) + ")",
                       description="Train a model with the shared loop. Runs go to runs/NNNNN-<data>-<family>-<preset>/.")
    fam = p.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for name in TRAINABLE:
        if name not in HELP:   # a family with a command of its own (`t2i invert`)
            continue
        fp = fam.add_parser(name, help=HELP[name], description=HELP[name],
                            formatter_class=HelpFormatter)
        mod = importlib.import_module(TRAINABLE[name])
        mod.add_args(fp)
        add_loop_args(fp, mod)
        fp.set_defaults(func=_run, family=name)
    from t2i.text import train as bpe

    bp = fam.add_parser("bpe", help=HELP["bpe"], description=HELP["bpe"] + ". " + bpe.__doc__.split("\n\n")[1],
                        formatter_class=HelpFormatter)
    bpe.add_args(bp)
    bp.set_defaults(func=bpe.run, family="bpe")


def _run(args: argparse.Namespace) -> int:
    from t2i.training.launch import run_training

    return run_training(args.family, args)
