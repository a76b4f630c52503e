"""Sampling options shared by `t2i generate` and `t2i eval`; each family's pipeline takes its own."""

from __future__ import annotations

import argparse

from t2i.errors import T2IError


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """Options of every family's sampler (a family ignores those that are not its own)."""
    g = p.add_argument_group("sampling (each family uses its own)")
    g.add_argument("--truncation", type=float, default=1.0, help="LAFITE: truncation psi (1 = none)")
    g.add_argument("--guidance", type=float, default=3.0, help="DALL-E: classifier-free guidance scale (1 = off)")
    g.add_argument("--top_k", type=int, default=0, help="DALL-E: sample among the k likeliest codes (0 = top 10%%)")
    g.add_argument("--top_p", type=float, default=1.0, help="DALL-E: nucleus sampling mass (1 = off)")
    g.add_argument("--temperature", type=float, default=1.0, help="DALL-E: softmax temperature")
    g.add_argument("--candidates", type=int, default=1,
                   help="DALL-E: sample N per image and keep the best by CLIP score (needs --rerank_clip)")
    g.add_argument("--rerank_clip", metavar="CLIP", help="DALL-E: CLIP that reranks the candidates "
                   "(a t2i CLIP run, or ARCH:/path for open_clip weights)")


def sampling_options(args: argparse.Namespace, pipe, device) -> dict:
    """The options `pipe` takes, from the parsed arguments (loads the rerank CLIP onto the pipeline)."""
    if args.candidates < 1 or args.candidates > 64:
        raise T2IError(f"--candidates {args.candidates} must be between 1 and 64")
    if args.candidates > 1 and "candidates" in pipe.options and not args.rerank_clip:
        raise T2IError("--candidates > 1 needs --rerank_clip CLIP to choose among them")
    if args.rerank_clip and "candidates" in pipe.options:
        from t2i.clip import load_clip

        pipe.clip = load_clip(args.rerank_clip, device)
    return {k: getattr(args, k) for k in pipe.options}
