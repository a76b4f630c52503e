"""Sampling options shared by `t2i generate` and `t2i eval`; each family's pipeline takes its own."""

from __future__ import annotations

import argparse

from t2i.errors import T2IError


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """Options of every family's sampler (a family ignores those that are not its own)."""
    g = p.add_argument_group("sampling (each family uses its own)")
    g.add_argument("--truncation", type=float, default=None,
                   help="LAFITE: truncation psi, 1 = none (default: the model's own, 1 unless it records one)")
    g.add_argument("--guidance", "--scale", dest="guidance", type=float, default=None,
                   help="DALL-E, LDM: classifier-free guidance scale, 1 = off (default: DALL-E 3, LDM 7.5; "
                        "--scale is the CompVis spelling)")
    g.add_argument("--top_k", type=int, default=0, help="DALL-E: sample among the k likeliest codes (0 = top 10%%)")
    g.add_argument("--top_p", type=float, default=1.0, help="DALL-E: nucleus sampling mass (1 = off)")
    g.add_argument("--temperature", type=float, default=1.0, help="DALL-E: softmax temperature")
    g.add_argument("--candidates", type=int, default=1,
                   help="DALL-E: sample N per image and keep the best by CLIP score (needs --rerank_clip)")
    g.add_argument("--sampler", choices=["ddim", "plms", "dpm++"], default=None,
                   help="LDM: DDIM, PLMS (diffusers' PNDM with skip_prk_steps) or DPM-Solver++ (2nd order) (default ddim)")
    g.add_argument("--steps", "--ddim_steps", dest="steps", type=int, default=None,
                   help="LDM: sampler steps (default 50; --ddim_steps is the CompVis spelling)")
    g.add_argument("--eta", "--ddim_eta", dest="eta", type=float, default=None,
                   help="LDM: DDIM's eta, 0 = deterministic DDIM, 1 = DDPM-like (default 0; --ddim_eta is the CompVis "
                        "spelling)")
    g.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="LDM: bf16 runs the text encoder, UNet and decoder under bf16 autocast (less memory, faster "
                        "on GPUs and AMX CPUs; the sampler's own arithmetic stays fp32) (default fp32)")
    g.add_argument("--embeds", action="append", default=[], metavar="FILE",
                   help="a textual-inversion embedding (`t2i invert`'s learned_embeds.safetensors or its run "
                        "folder) learned on this model; its placeholder word then works in prompts (repeatable)")
    g.add_argument("--aligner", metavar="RUN",
                   help="a `t2i train aligner` run trained on this model: prompts in its language (Korean) go "
                        "through its multilingual sentence encoder and aligner instead of the model's text encoder")
    g.add_argument("--rerank_clip", metavar="CLIP", help="DALL-E: CLIP that reranks the candidates "
                   "(a t2i CLIP run, or ARCH:/path for open_clip weights)")


def sampling_options(args: argparse.Namespace, pipe, device) -> dict:
    """The options `pipe` takes, from the parsed arguments (loads the rerank CLIP onto the pipeline)."""
    if args.candidates < 1 or args.candidates > 64:
        raise T2IError(f"--candidates {args.candidates} must be between 1 and 64")
    from t2i.concepts import equip

    equip(pipe, device, getattr(args, "embeds", None) or (), getattr(args, "aligner", None),
          getattr(args, "lang", "auto"), args.rerank_clip, args.candidates)
    # An option not given takes the pipeline's own default (guidance: DALL-E 3, LDM 7.5).
    return {k: default if getattr(args, k, None) is None else getattr(args, k) for k, default in pipe.options.items()}
