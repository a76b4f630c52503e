"""`t2i train lafite`: LAFITE in the shared loop (phases G main, G reg, D main, D reg)."""

from __future__ import annotations

import argparse
import copy
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from t2i.data.loader import load_images, step_batches
from t2i.data.transforms import to_model
from t2i.errors import T2IError
from t2i.models.lafite.networks import PRESETS, Discriminator, Generator, LafiteNetConfig
from t2i.models.lafite.objective import LafiteLoss, LossWeights, mix_conditions
from t2i.training.loop import Phase


@dataclass
class LafiteConfig(LossWeights):
    """Options of `t2i train lafite` (loss weights inherited from LossWeights)."""

    data: str = ""
    clip: str = ""               # t2i CLIP run/snapshot, or ARCH:/path/to/weights for open_clip
    preset: str = "tiny"
    lang: str = "en"             # caption language of the real-text condition
    mixing_prob: float = 1.0     # 1.0 = language-free (pseudo text features), 0.0 = fully supervised
    pseudo_noise: float = 0.75   # noise level of pseudo text features (paper: xi = 3)
    text_noise: float = 0.1      # noise level on real caption features
    g_lr: float = 0.0025
    d_lr: float = 0.0025
    g_reg_interval: int = 4
    d_reg_interval: int = 16
    subset: int = 0              # train on a deterministic subset of N images (fine-tuning recipe)
    mirror: bool = False         # random horizontal flips (off for layouts where left/right matters)


CONFIG = LafiteConfig
PRESET_LOOP_DEFAULTS = {
    "tiny": {"batch": 32, "kimg": 200.0, "tick_kimg": 4.0, "snap": 10, "ema_kimg": 2.0},
    "test": {"batch": 8, "kimg": 0.032, "tick_kimg": 0.016, "snap": 1, "ema_kimg": 0.01},
    "paper256": {"batch": 16, "kimg": 25000.0, "tick_kimg": 4.0, "snap": 50, "ema_kimg": 10.0},
}


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of `t2i train lafite`; each defaults to the preset's value."""
    S = argparse.SUPPRESS
    defaults = LafiteConfig()
    help_ = {
        "data": "dataset folder or zip (t2i format)",
        "clip": "CLIP for features: a `t2i train clip` run/snapshot, or ARCH:/path (open_clip weights)",
        "preset": f"network preset: {', '.join(PRESETS)}",
        "lang": "caption language for real-text conditions (en, ko, ...)",
        "mixing_prob": "probability of a pseudo (language-free) condition per sample: 1 = language-free, 0 = supervised",
        "pseudo_noise": "noise level of pseudo text features (0.75 = paper's xi=3)",
        "text_noise": "noise level added to real caption features",
        "g_lr": "generator Adam learning rate", "d_lr": "discriminator Adam learning rate",
        "g_reg_interval": "path-length regulariser every N steps", "d_reg_interval": "R1 every N steps",
        "subset": "train on a deterministic subset of N images (0 = all)",
        "mirror": "random horizontal flips (1/0)",
        "gamma": "R1 weight", "itd": "weight of the D-feature/condition contrastive loss",
        "itc": "weight of the CLIP(fake)/condition contrastive loss", "temp": "contrastive temperature",
        "pl_weight": "path-length regulariser weight (0 = off)",
        "itc_crop_min": "smallest crop (fraction of the side) of fakes fed to CLIP for itc",
    }
    for f in fields(LafiteConfig):
        kind = (lambda s: bool(int(s))) if f.type in (bool, "bool") else type(getattr(defaults, f.name))
        p.add_argument(f"--{f.name}", type=kind, default=S, required=f.name == "data",
                       help=f"{help_[f.name]} (default {getattr(defaults, f.name)!r})")


def validate(cfg: LafiteConfig) -> None:
    """Reject options that cannot work, before anything heavy runs."""
    if cfg.preset not in PRESETS:
        raise T2IError(f"unknown LAFITE preset {cfg.preset!r}; choose from {sorted(PRESETS)}")
    if not cfg.clip:
        raise T2IError("--clip is required: a `t2i train clip` run directory, or ARCH:/path/to/weights")
    if not 0.0 <= cfg.mixing_prob <= 1.0:
        raise T2IError(f"--mixing_prob {cfg.mixing_prob} must be in [0, 1]")


def describe(cfg: LafiteConfig) -> str:
    """Run-directory description, e.g. shapes64-lafite-tiny."""
    return f"{Path(cfg.data.rstrip('/')).stem}-lafite-{cfg.preset}"


def subset_indices(n: int, subset: int, seed: int = 0) -> torch.Tensor:
    """A deterministic subset of `subset` indices out of n (all when subset is 0 or >= n)."""
    if subset <= 0 or subset >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:subset].sort().values


class LafiteFamily:
    """Modules G, D, G_ema (EMA of G) and the frozen CLIP; data = images + CLIP features."""

    name = "lafite"

    def __init__(self, cfg: LafiteConfig, d, log, init=None):
        from t2i.data.dataset import ImageTextDataset
        from t2i.data.features import load_or_compute_features
        from t2i.models.lafite.pipeline import load_condition_clip

        self.cfg, self.device = cfg, d.device
        self.clip, self.clip_meta = load_condition_clip(cfg.clip, init, d.device)
        net = LafiteNetConfig(**init.meta["net"]) if init else copy.deepcopy(PRESETS[cfg.preset])
        net.c_dim = self.clip.embed_dim
        dataset = ImageTextDataset(cfg.data, caption_lang=cfg.lang)
        if dataset.resolution[0] != net.resolution or dataset.resolution[1] != net.resolution:
            raise T2IError(f"dataset {cfg.data!r} is {dataset.resolution[0]}x{dataset.resolution[1]} but preset "
                           f"{cfg.preset!r} generates {net.resolution}x{net.resolution}; repack the data with "
                           f"`t2i data pack --width {net.resolution} --height {net.resolution}` or pick another preset")
        feats = load_or_compute_features(dataset, self.clip, cfg.lang, device=d.device, log=log)
        keep = subset_indices(len(dataset), cfg.subset)
        self.images = load_images(dataset)[keep]
        self.img_fts = feats.image[keep]
        self.txt_fts, self.offsets = feats.text, feats.offsets
        self.keep = keep
        self.grid_prompts = [dataset.records[int(i)]["captions"][0] for i in keep[:: max(1, len(keep) // 8)][:8]]
        self.net = net
        # channels_last: oneDNN's convolutions are ~25% faster on CPU with it (and so are cuDNN's on GPU).
        self.G = Generator(net).to(d.device, memory_format=torch.channels_last)
        self.D = Discriminator(net).to(d.device, memory_format=torch.channels_last)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.modules = {"G": self.G, "D": self.D, "G_ema": self.G_ema}
        if self.clip_meta["kind"] == "t2i":  # small enough to travel inside every snapshot
            self.modules["clip"] = self.clip
        self.ema = {"G_ema": "G"}
        self.objective = LafiteLoss(self.G, self.D, self.clip, cfg)
        count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
        log(f"LAFITE {cfg.preset}: G {count(self.G):.2f}M, D {count(self.D):.2f}M parameters; "
            f"{len(keep)} images; CLIP {self.clip.identity}; mixing_prob {cfg.mixing_prob}")
        log("sample grid prompts (columns): " + " | ".join(self.grid_prompts))

    def phases(self) -> list[Phase]:
        def adam(module, lr, interval):
            ratio = interval / (interval + 1) if interval else 1.0  # lazy regularisation (StyleGAN2 Appendix B)
            return torch.optim.Adam(module.parameters(), lr=lr * ratio, betas=(0.0, 0.99 ** ratio), eps=1e-8)

        cfg = self.cfg
        g_int = cfg.g_reg_interval if cfg.pl_weight > 0 else 0
        d_int = cfg.d_reg_interval if cfg.gamma > 0 else 0
        g_opt, d_opt = adam(self.G, cfg.g_lr, g_int), adam(self.D, cfg.d_lr, d_int)
        phases = [Phase("G_main", self.G, g_opt)]
        if g_int:
            phases.append(Phase("G_reg", self.G, g_opt, g_int))
        phases.append(Phase("D_main", self.D, d_opt))
        if d_int:
            phases.append(Phase("D_reg", self.D, d_opt, d_int))
        return phases

    def batches(self, step, batch, rank, world, seed):
        def fetch(idx, g):
            src = self.keep[idx]
            count = self.offsets[src + 1] - self.offsets[src]
            j = self.offsets[src] + (torch.rand(len(idx), generator=g) * count).long()
            images = self.images[idx]
            if self.cfg.mirror:
                flip = torch.rand(len(idx), generator=g) < 0.5
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            return {"image": images, "img_fts": self.img_fts[idx], "txt_fts": self.txt_fts[j]}
        return step_batches(len(self.keep), fetch, step, batch, seed, rank)

    def loss(self, phase: Phase, batch: dict):
        dev = self.device
        c = mix_conditions(batch["img_fts"].to(dev), batch["txt_fts"].to(dev), self.cfg.mixing_prob,
                           self.cfg.pseudo_noise, self.cfg.text_noise)
        z = torch.randn(len(c), self.net.z_dim, device=dev)
        real = to_model(batch["image"].to(dev)).contiguous(memory_format=torch.channels_last)
        if phase.name == "G_main":
            return self.objective.g_main(z, c)
        if phase.name == "G_reg":
            return self.objective.g_reg(z, c, phase.interval)
        if phase.name == "D_main":
            return self.objective.d_main(z, c, real)
        return self.objective.d_reg(c, real, phase.interval)

    @torch.no_grad()
    def sample_images(self) -> torch.Tensor:
        """8 seeds (rows) x 8 grid prompts (columns) from G_ema."""
        from t2i.data.transforms import to_uint8

        c = F.normalize(self.clip.encode_text(self.grid_prompts).float(), dim=-1)
        n = len(self.grid_prompts)
        z = torch.randn(8, self.net.z_dim, generator=torch.Generator().manual_seed(0)).to(self.device)
        out = self.G_ema(z.repeat_interleave(n, 0), c.repeat(8, 1), noise="none")
        return to_uint8(out.cpu())

    def real_images(self) -> torch.Tensor:
        return self.images[:64]

    def meta(self) -> dict:
        return {"family": "lafite", "config": asdict(self.cfg), "net": self.net.to_dict(), "clip": self.clip_meta}


def build(cfg: LafiteConfig, loop, d, log, init=None) -> LafiteFamily:
    """The LAFITE family object for the shared loop."""
    return LafiteFamily(cfg, d, log, init)


def evaluate(name: str, snapshot: Path, cfg: LafiteConfig, device) -> dict:
    """A metric of a snapshot during training (same code as `t2i eval`)."""
    from t2i.metrics.evaluate import evaluate_metric

    return evaluate_metric(name, snapshot, data=cfg.data, device=device)
