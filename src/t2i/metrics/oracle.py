"""The shapes oracle: a small CNN that reads back each slot's shape, colour and size from an image.

It is the exact scorer behind the `shapes_accuracy` metric: a generated image is run through the
oracle and its per-slot predictions are compared with the scene parsed from the prompt (`score`).
The network is trained by the shared training loop on fresh renders over all (shape, colour)
combinations, held-out ones included (`render_batch`), so it can judge compositional generalisation.
Measured recipe: batch 64, Adam lr 3e-3 with cosine decay, 4000 steps (~10 min on one CPU core)
reach 100% all-attribute accuracy on 2000 fresh scenes and 2000 held-out-combination scenes.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from t2i.data import shapes
from t2i.data.transforms import to_model

N_SLOTS = len(shapes.SLOTS)
N_SHAPE_CLASSES = len(shapes.SHAPES) + 1  # class 0 = empty slot
HEADS = {"shape": N_SHAPE_CLASSES, "colour": len(shapes.COLOUR_NAMES), "size": len(shapes.SIZES)}


@dataclass
class OracleConfig:
    """Architecture of the shapes oracle."""

    resolution: int = 64  # inputs of any size are resized to this
    channels: tuple[int, ...] = (16, 32, 64)  # one stage each: stride-2 conv + conv
    hidden: int = 256

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self) | {"channels": list(self.channels)}

    @classmethod
    def from_dict(cls, d: dict) -> OracleConfig:
        """Inverse of to_dict."""
        return cls(**(d | {"channels": tuple(d["channels"])}))


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class ShapesOracle(nn.Module):
    """CNN from an image (B, 3, H, W) in [-1, 1] to per-slot logits for shape, colour and size.

    It has batch norm: call `.eval()` before scoring.
    """

    def __init__(self, config: OracleConfig | None = None):
        super().__init__()
        config = config or OracleConfig()
        self.config = config
        layers, c_in = [], 3
        for c in config.channels:
            layers += [_conv(c_in, c, 2), _conv(c, c, 1)]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = config.resolution // 2 ** len(config.channels)
        # Flatten, not pool: which slot an object occupies is where it is in the feature map.
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, config.hidden), nn.ReLU())
        self.heads = nn.ModuleDict({k: nn.Linear(config.hidden, N_SLOTS * n) for k, n in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        r = self.config.resolution
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        h = self.fc(self.features(x))
        return {k: head(h).view(-1, N_SLOTS, HEADS[k]) for k, head in self.heads.items()}  # (B, 5, n)


def oracle_loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over the three heads of the per-slot cross-entropy (empty slots ignore colour and size)."""
    return sum(F.cross_entropy(outputs[k].flatten(0, 1), targets[k].flatten(),
                               ignore_index=shapes.IGNORE_INDEX) for k in HEADS)


def predict(outputs: dict[str, torch.Tensor]) -> list[dict]:
    """Per image, a scene-like dict {"objects": [...]} of the slots predicted non-empty."""
    best = {k: v.argmax(-1).cpu() for k, v in outputs.items()}  # (B, 5) each
    predictions = []
    for b in range(best["shape"].shape[0]):
        objects = []
        for k, slot in enumerate(shapes.SLOTS):
            s = int(best["shape"][b, k])
            if s == 0:
                continue
            objects.append({"shape": shapes.SHAPES[s - 1],
                            "colour": shapes.COLOUR_NAMES[int(best["colour"][b, k])],
                            "size": shapes.SIZES[int(best["size"][b, k])], "slot": slot})
        predictions.append({"objects": objects})
    return predictions


def score(predictions: list[dict], scenes: list) -> dict[str, float]:
    """Accuracy of predictions against the prompts' scenes (Scene objects or their dicts).

    shape / colour / size / position are fractions of the prompt's objects whose slot holds a
    predicted object (position) with that attribute right; `all` is the fraction of images with
    every object fully right and every other slot predicted empty.
    """
    if len(predictions) != len(scenes):
        raise ValueError(f"{len(predictions)} predictions for {len(scenes)} scenes")
    hits = {"shape": 0, "colour": 0, "size": 0, "position": 0}
    n_objects = n_all = 0
    for pred, scene in zip(predictions, scenes):
        if isinstance(scene, dict):
            scene = shapes.Scene.from_dict(scene)
        by_slot = {o["slot"]: o for o in pred["objects"]}
        image_right = len(by_slot) == len(scene.objects)
        for obj in scene.objects:
            p = by_slot.get(obj.slot)
            n_objects += 1
            if p is None:
                image_right = False
                continue
            hits["position"] += 1
            for k in ("shape", "colour", "size"):
                right = p[k] == getattr(obj, k)
                hits[k] += right
                image_right &= right
        n_all += image_right
    n_images = max(len(scenes), 1)
    return {k: v / max(n_objects, 1) for k, v in hits.items()} | {
        "all": n_all / n_images, "images": len(scenes), "objects": n_objects}


def render_batch(batch_size: int, rng: random.Random, size: int = 64, split: str | None = None):
    """Fresh random scenes rendered as (images float [-1, 1] (B, 3, S, S), targets, scenes).

    split=None draws over all (shape, colour) combinations, the held-out ones included.
    """
    scenes = [shapes.sample_scene(rng, split or "all") for _ in range(batch_size)]
    pixels = np.stack([np.asarray(shapes.render(s, size)) for s in scenes])  # (B, S, S, 3)
    images = to_model(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous())
    targets = [shapes.scene_targets(s) for s in scenes]
    return images, {k: torch.stack([t[k] for t in targets]) for k in HEADS}, scenes
