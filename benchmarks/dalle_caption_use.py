"""Diagnostic: how much a DALL-E run on the shapes domain uses each word of its caption.

For single-object scenes rendered fresh, it scores the VQGAN tokens of each image under the true caption
and under the same caption with one attribute changed (shape, colour, size, position). The extra negative
log-likelihood (nats per image) says how much the transformer's image predictions depend on that word; a
word it ignores costs nothing to change. Sampling cannot get an attribute right that the model does not
condition on, so this separates "the model ignores the word" from "sampling loses it".

    python benchmarks/dalle_caption_use.py runs/00001-shapes64-dalle-tiny --n 64
"""

from __future__ import annotations

import argparse
import random

import torch
import torch.nn.functional as F

from t2i.data.shapes import COLOUR_NAMES, POSITIONS_EN, SHAPES, ShapeObject, render, sample_scene
from t2i.data.transforms import pil_to_tensor, to_model
from t2i.models.dalle.pipeline import DallePipeline
from t2i.training.snapshot import load_snapshot

NEXT_SLOT = {"center": "left", "left": "right", "right": "top", "top": "bottom", "bottom": "center"}


def caption(o: ShapeObject) -> str:
    """The plainest English template for a lone object."""
    return f"a {o.size} {o.colour} {o.shape} {POSITIONS_EN[o.slot]}"


def changed(o: ShapeObject, attribute: str) -> ShapeObject:
    """The object with one attribute moved to another value."""
    return ShapeObject(
        shape=SHAPES[(SHAPES.index(o.shape) + 1) % len(SHAPES)] if attribute == "shape" else o.shape,
        colour=COLOUR_NAMES[(COLOUR_NAMES.index(o.colour) + 1) % len(COLOUR_NAMES)] if attribute == "colour"
        else o.colour,
        size=("small" if o.size == "large" else "large") if attribute == "size" else o.size,
        slot=NEXT_SLOT[o.slot] if attribute == "position" else o.slot)


@torch.no_grad()
def image_nll(pipe: DallePipeline, captions: list[str], ids: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood (B,) of image tokens ids (B, n) given captions, teacher-forced."""
    m = pipe.model
    seq = m.sequence(pipe.text_ids(captions), ids[:, :-1])
    logits = m.image_logits(m.hidden(seq)[:, m.cfg.text_len:])           # (B, n, image_vocab)
    return F.cross_entropy(logits.float().transpose(1, 2), ids, reduction="none").sum(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a `t2i train dalle` run or snapshot trained on shapes")
    p.add_argument("--n", type=int, default=64, help="scenes scored")
    p.add_argument("--seed", type=int, default=0, help="scene sampling seed")
    args = p.parse_args()

    pipe = DallePipeline.from_snapshot(load_snapshot(args.run, "dalle"))
    rng, scenes = random.Random(args.seed), []
    while len(scenes) < args.n:
        scene = sample_scene(rng, "train")
        if len(scene.objects) == 1:
            scenes.append(scene)
    x = to_model(torch.stack([pil_to_tensor(render(s, pipe.resolution)) for s in scenes]))
    ids = pipe.vqgan.encode(x).flatten(1)                                  # (n, h * w)
    base = image_nll(pipe, [caption(s.objects[0]) for s in scenes], ids)
    print(f"{args.n} single-object scenes; image tokens under the true caption: {base.mean():.1f} nats/image")
    print(f"{'word changed':<13} {'extra nats/image':>16} {'true caption likelier':>22}")
    for attribute in ("shape", "colour", "size", "position"):
        alt = image_nll(pipe, [caption(changed(s.objects[0], attribute)) for s in scenes], ids)
        print(f"{attribute:<13} {(alt - base).mean():>16.1f} {(alt > base).float().mean():>22.0%}")


if __name__ == "__main__":
    main()
