"""A minimal model family for testing the shared loop: linear regression on fixed random data.

Cheap enough to train hundreds of steps in a second, and it uses every hook of the Family protocol:
a stateful optimizer (SGD with momentum), an EMA module, per-step randomness from the loop's RNG
(input noise) and the loop's deterministic batches. Also imported by the torchrun worker script of
test_distributed.py.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from t2i.data.loader import step_batches
from t2i.training.loop import Phase


class LinearFamily:
    """y = <a, x> + b fitted by SGD; `shared_batches` gives rank r the r-th slice of one global batch."""

    name = "linear"

    def __init__(self, dim: int = 4, n: int = 64, lr: float = 0.05, noise: float = 0.1, samples: bool = True,
                 shared_batches: bool = False, lr_scale=None):
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x @ torch.randn(dim, generator=g) + 0.5
        self.net = nn.Linear(dim, 1)
        with torch.no_grad():
            self.net.weight.copy_(torch.randn(1, dim, generator=g))
            self.net.bias.zero_()
        self.net_ema = copy.deepcopy(self.net).requires_grad_(False)
        self.modules = {"net": self.net, "net_ema": self.net_ema}
        self.ema = {"net_ema": "net"}
        self.lr, self.noise, self.samples, self.shared_batches = lr, noise, samples, shared_batches
        self.lr_scale = lr_scale

    def phases(self) -> list[Phase]:
        opt = torch.optim.SGD(self.net.parameters(), lr=self.lr, momentum=0.9)
        self.opt = opt  # (tests inspect it after training)
        return [Phase("main", self.net, opt, lr_scale=self.lr_scale)]

    def _fetch(self, idx, g):
        return {"x": self.x[idx], "y": self.y[idx], "index": idx.tolist()}

    def batches(self, step, batch, rank, world, seed):
        if not self.shared_batches:
            return step_batches(len(self.x), self._fetch, step, batch, seed, rank)
        full = step_batches(len(self.x), self._fetch, step, batch * world, seed, 0)
        return ({"x": b["x"][rank * batch:(rank + 1) * batch], "y": b["y"][rank * batch:(rank + 1) * batch]}
                for b in full)

    def loss(self, phase, batch):
        x = batch["x"] + self.noise * torch.randn_like(batch["x"])  # drawn from the loop's per-step RNG
        loss = (self.net(x).squeeze(1) - batch["y"]).square().mean()
        return loss, {"Loss/mse": loss.detach()}

    def sample_images(self):
        if not self.samples:
            return None
        level = (self.net.weight.detach().abs().mean() * 50).clamp(0, 255).to(torch.uint8)
        return level.expand(4, 3, 8, 8).clone()

    def real_images(self):
        return torch.arange(4 * 3 * 8 * 8).reshape(4, 3, 8, 8).remainder(256).to(torch.uint8)

    def meta(self):
        return {"family": "linear", "config": {"lr": self.lr, "noise": self.noise}}
