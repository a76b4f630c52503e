"""`t2i train oracle`: the shapes attribute classifier, trained in the shared loop on fresh renders.

Every batch is rendered on the fly from (seed, step), over all (shape, colour) combinations (the
held-out ones included), so the oracle never overfits a fixed set and judges every composition.
Besides the named attributes it reads what no caption names (background, each object's offset and scale),
so metrics can see how samples spread where the prompt is silent. The shipped oracle
(t2i/assets/shapes-oracle) is reproduced with (see README, "Shipped weights"):
    t2i train oracle --kimg 300 --batch 64
"""

from __future__ import annotations

import argparse
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from t2i.errors import T2IError
from t2i.metrics.oracle import (
    HEADS,
    UNNAMED,
    OracleConfig,
    ShapesOracle,
    oracle_loss,
    predict,
    render_batch,
    score,
    unnamed_accuracy,
)
from t2i.training.loop import Phase, step_seed

DEFAULT_ORACLE = Path(__file__).resolve().parent.parent / "assets" / "shapes-oracle"


@dataclass
class OracleTrainConfig:
    """Options of `t2i train oracle`."""

    size: int = 64               # render size of training images
    lr: float = 2e-3


CONFIG = OracleTrainConfig
LOOP_DEFAULTS = {"batch": 64, "kimg": 300.0, "tick_kimg": 10.0, "snap": 10}


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of `t2i train oracle`."""
    p.add_argument("--size", type=int, default=argparse.SUPPRESS, help="render size (default 64)")
    p.add_argument("--lr", type=float, default=argparse.SUPPRESS, help="Adam learning rate (default 2e-3)")


def describe(cfg: OracleTrainConfig) -> str:
    """Run-directory description, e.g. shapes64-oracle."""
    return f"shapes{cfg.size}-oracle"


class OracleFamily:
    """One phase: per-slot cross-entropy on freshly rendered scenes."""

    name = "oracle"

    def __init__(self, cfg: OracleTrainConfig, d, log, init=None):
        self.cfg, self.device = cfg, d.device
        arch = OracleConfig.from_dict(init.meta["oracle"]) if init else OracleConfig(resolution=cfg.size, unnamed=True)
        self.oracle = ShapesOracle(arch).to(d.device)
        self.modules, self.ema = {"oracle": self.oracle}, {}
        log(f"shapes oracle: {sum(p.numel() for p in self.oracle.parameters()) / 1e6:.2f}M parameters")

    def phases(self) -> list[Phase]:
        opt = torch.optim.Adam(self.oracle.parameters(), lr=self.cfg.lr)
        return [Phase("oracle", self.oracle, opt)]

    def batches(self, step, batch, rank, world, seed):
        while True:
            images, targets, _ = render_batch(batch, random.Random(step_seed(seed, step, rank)), self.cfg.size)
            yield {"image": images, **targets}
            step += 1

    def loss(self, phase, batch):
        self.oracle.train()
        out = self.oracle(batch["image"].to(self.device))
        targets = {k: batch[k].to(self.device) for k in [*HEADS, *UNNAMED]}
        loss = oracle_loss({k: v.float() for k, v in out.items()}, targets)
        acc = (out["shape"].argmax(-1) == targets["shape"]).all(1).float().mean()
        return loss, {"Loss/oracle": loss.detach(), "Oracle/batch_shape_acc": acc}

    def sample_images(self):
        return None

    def real_images(self):
        images, _, _ = render_batch(64, random.Random(0), self.cfg.size)
        return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)

    def meta(self) -> dict:
        return {"family": "oracle", "config": asdict(self.cfg), "oracle": self.oracle.config.to_dict()}


def build(cfg: OracleTrainConfig, loop, d, log, init=None) -> OracleFamily:
    """The oracle family object for the shared loop."""
    return OracleFamily(cfg, d, log, init)


def load_oracle(path: str | Path | None = None, device="cpu") -> ShapesOracle:
    """The shapes oracle of a run/snapshot (default: the one shipped with t2i), in eval mode."""
    from t2i.training.snapshot import load_snapshot

    path = DEFAULT_ORACLE if path is None else path
    if not Path(path).exists():
        raise T2IError(f"shapes oracle {str(path)!r} is missing; train one with `t2i train oracle` and pass its run")
    snap = load_snapshot(path, family="oracle")
    oracle = ShapesOracle(OracleConfig.from_dict(snap.meta["oracle"]))
    oracle.load_state_dict(snap.state_dict("oracle"))
    return oracle.to(device).eval().requires_grad_(False)


@torch.no_grad()
def oracle_self_accuracy(oracle: ShapesOracle, n: int = 1000, seed: int = 12345, size: int = 64,
                         device="cpu", through=None, split: str | None = None) -> dict:
    """The oracle's accuracy on n freshly rendered scenes (all combinations, or one split's).

    `through` maps the rendered batch (B, 3, size, size) in [-1, 1] to the images the oracle judges,
    e.g. a VQGAN round trip: the accuracy then says how much of each scene survives it.
    """
    rng, preds, scenes = random.Random(seed), [], []
    for s in range(0, n, 250):
        images, _, sc = render_batch(min(250, n - s), rng, size, split)
        images = images.to(device)
        preds += predict(oracle(images if through is None else through(images).clamp(-1, 1)))
        scenes += sc
    result = score(preds, scenes)
    if oracle.config.unnamed:
        result |= {f"unnamed_{k}": v for k, v in unnamed_accuracy(preds, scenes).items()}
    return result


def evaluate(name: str, snapshot: Path, cfg: OracleTrainConfig, device) -> dict:
    """`accuracy`: the oracle's accuracy on 1000 fresh renders (named attributes, and the unnamed ones)."""
    if name != "accuracy":
        raise T2IError(f"metric {name!r} is not available while training the oracle; use accuracy")
    return oracle_self_accuracy(load_oracle(snapshot, device), size=cfg.size, device=device)
