"""Benchmark: does a CLIP know which attribute goes with which object? (shapes domain)

For two-object test scenes whose objects differ in colour, shape and size, the CLIP scores the scene's render
against its caption and against the same caption with one attribute swapped between the two objects ("a red
circle above a blue square" / "a blue circle above a red square"); the figure per attribute is how often the true
caption wins (0.5: chance, a bag of words). A text encoder that fails it cannot condition a generator on which
colour goes where: the LDM recipe on such a CLIP drew no more prompts right than with its own jointly trained
encoder (benchmarks/ldm_shapes.py).

    python benchmarks/clip_binding.py src/t2i/assets/default-lafite runs/00000-shapes64-clip-small

Measured (300 scenes; colour / shape / size): the default model's CLIP (200 kimg, en+ko, fp32) 1.000 / 1.000 /
1.000; `t2i train clip --langs en --kimg 60 --precision bf16`, seed 0 0.917 / 0.607 / 0.633, seed 1 0.940 / 0.653 /
0.467. The same with `--kimg 200` (its snapshots; seeds 0 / 1): at 82 kimg 0.977 / 0.567 / 0.543 and 0.863 / 0.713 /
0.523, at 123 kimg 0.993 / 0.807 / 0.537 and 0.773 / 0.900 / 0.927, at 164 and 200 kimg 1.000 / 1.000 / 1.000 on
both (886 s on one core beside the other seed). Binding comes late in a CLIP's training.

`--damsm RUN` scores an AttnGAN DAMSM by its word-level score and by its sentence cosine. benchmarks/attngan_shapes.py's
DAMSMs of 2026-12-02 (30 kimg), seeds 0 / 1, word-level 1.000 / 0.963 / 1.000 and 1.000 / 0.967 / 1.000, sentence
0.723 / 0.757 / 0.883 and 0.833 / 0.820 / 0.983; seed 0 with `--hard_negatives 1`: word-level 1.000 / 0.977 / 1.000,
sentence 0.887 / 0.827 / 0.940.
"""

from __future__ import annotations

import argparse
import dataclasses
import random

import torch
import torch.nn.functional as F

from t2i.clip import load_clip
from t2i.data import shapes
from t2i.data.transforms import to_model

ATTRIBUTES = ("colour", "shape", "size")


def scenes(n: int, seed: int) -> list:
    """n test-seen scenes of two objects that differ in every attribute."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        s = shapes.sample_scene(rng, "test-seen")
        if len(s.objects) == 2 and all(getattr(s.objects[0], k) != getattr(s.objects[1], k) for k in ATTRIBUTES):
            out.append(s)
    return out


def swapped(scene, attribute: str):
    """The scene with `attribute` exchanged between its two objects."""
    a, b = scene.objects
    return dataclasses.replace(scene, objects=[dataclasses.replace(a, **{attribute: getattr(b, attribute)}),
                                               dataclasses.replace(b, **{attribute: getattr(a, attribute)})])


@torch.no_grad()
def binding(clip, test: list) -> dict[str, float]:
    """Per attribute, the fraction of scenes whose render is closer to the true caption than to the swapped one."""
    image = F.normalize(clip.encode_image(to_model(shapes.render_tensor(test))), dim=-1)
    true = F.normalize(clip.encode_text([shapes.prompt(s) for s in test]), dim=-1)
    out = {}
    for k in ATTRIBUTES:
        swap = F.normalize(clip.encode_text([shapes.prompt(swapped(s, k)) for s in test]), dim=-1)
        out[k] = ((image * true).sum(-1) > (image * swap).sum(-1)).float().mean().item()
    return out


@torch.no_grad()
def damsm_binding(damsm, test: list) -> dict[str, float]:
    """`binding` for an AttnGAN DAMSM, by its word-level score R(Q, D) and by its sentence cosine."""
    from t2i.models.attngan.objective import DamsmWeights, word_scores

    w = DamsmWeights()
    regions, glob = damsm.image_encoder(to_model(shapes.render_tensor(test)))

    def scores(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        words, sentence, lengths = damsm.encode_text(captions)
        word = torch.stack([word_scores(words[i:i + 1], lengths[i:i + 1], regions[i:i + 1], w)[0][0, 0]
                            for i in range(len(captions))])
        return word, F.cosine_similarity(glob, sentence, dim=-1)

    true_word, true_sentence = scores([shapes.prompt(s) for s in test])
    out = {}
    for k in ATTRIBUTES:
        word, sentence = scores([shapes.prompt(swapped(s, k)) for s in test])
        out[f"{k} (word)"] = (true_word > word).float().mean().item()
        out[f"{k} (sentence)"] = (true_sentence > sentence).float().mean().item()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("clips", nargs="*", help="t2i CLIP runs or snapshots (or a default model folder)")
    p.add_argument("--damsm", nargs="*", default=[], help="AttnGAN DAMSM runs or snapshots (`t2i train damsm`)")
    p.add_argument("--n", type=int, default=300, help="test scenes")
    p.add_argument("--seed", type=int, default=0, help="seed of the scenes")
    args = p.parse_args()
    test = scenes(args.n, args.seed)
    for spec in args.clips:
        result = binding(load_clip(spec).eval(), test)
        print(f"{spec}: " + " / ".join(f"{k} {v:.3f}" for k, v in result.items()))
    for spec in args.damsm:
        from t2i.models.attngan.damsm import load_damsm

        result = damsm_binding(load_damsm(spec), test)
        print(f"{spec}: " + " / ".join(f"{k} {v:.3f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
