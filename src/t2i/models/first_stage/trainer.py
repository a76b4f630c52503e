"""The first-stage trainer shared by `t2i train vqgan` and `t2i train autoencoder`: one family on the
shared loop (phases G main, D main) whose subclasses say which autoencoder and bottleneck it trains.

G main updates the autoencoder with the first-stage objective (`objective.py`: reconstruction +
perceptual + the bottleneck's term and, after `--disc_start_kimg`, the adaptively weighted adversarial
term). D main trains the patch discriminator (hinge) once it has started. Images seen so far come with each
batch (step x global batch, exactly the loop's own count), so the delayed start survives `--resume`.
Images come from a canonical dataset decoded into memory, or are streamed from shards (`--data` a shard
list; t2i.data.loader), captions unused. Both report the PSNR and the shapes-oracle accuracy of round trips
(`--metrics psnr,shapes_recon`).
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from t2i.data.loader import load_images, step_batches, stream_batches
from t2i.data.transforms import mirror_batch, to_model, to_uint8
from t2i.errors import T2IError
from t2i.models.first_stage.discriminator import PatchDiscriminator
from t2i.models.first_stage.objective import FirstStageLoss, load_perceptual
from t2i.models.resolution import check_requested
from t2i.models.resolution import fit_resolution as fit_side
from t2i.training.loop import Phase, warmup_cosine


@dataclass
class FirstStageOptions:
    """Options both first stages take (each family's config adds its loss weights and its own)."""

    data: str = ""
    preset: str = "tiny"
    resolution: int = 0          # image side; 0 = the data's (recorded resolved in the run's config)
    perceptual: str = "none"     # none | lpips:/path/to/torchvision-vgg16.pth
    lr: float = 1e-4             # Adam, both phases (taming: 4.5e-6 x batch)
    lr_decay: bool = False       # cosine decay to 10% of --lr at --kimg (taming: constant)
    warmup_kimg: float = 0.0     # linear lr warm-up over this many kimg first (taming: none)
    mirror: bool = False         # random horizontal flips (off for layouts where left/right matters)
    crop: int = 0                # train on random crops of this side (0 = whole images)
    workers: int = 2             # DataLoader processes decoding streamed shards (the batches do not depend on it)


def common_help(title: str, presets: dict) -> dict[str, str]:
    """--help of the shared options; `title` names the autoencoder ("VQGAN")."""
    return {
        "data": "dataset folder or zip (t2i format, decoded into memory), or shards to stream: a shards.json, a "
                "folder holding one, or several of these comma-separated (a large split is a list of shard lists)",
        "resolution": f"image side the {title} is built for: a power of two giving at least 4 latents a side that "
                      "the patch discriminator can score (" + ", ".join(f"{k}: {v.resolutions()[0]} up" for k, v
                                                                        in presets.items()) + "); 0 = the "
                      "data's (the data must have it: images are never resized)",
        "perceptual": "perceptual loss: none, or lpips:/path/to/vgg16.pth (a torchvision vgg16 state_dict; "
                      "needs `pip install lpips`)",
        "lr": f"Adam learning rate of the {title} and the discriminator",
        "lr_decay": "cosine-decay the learning rate to 10%% at --kimg (1/0); a fixed budget ends on a "
                    "settled model instead of a noisy one",
        "warmup_kimg": "raise the learning rate linearly from 0 over this many thousand images first; at a high "
                       "--lr, Adam's first full-size steps can wreck a fresh encoder (a VQGAN's collapses onto a "
                       "few codes for good)",
        "mirror": "random horizontal flips (1/0)",
        "crop": "train on random square crops of this many pixels, a multiple of the downsampling factor "
                "(the model is convolutional, so it still encodes whole images); 0 = whole images",
        "workers": "DataLoader processes decoding shards when --data streams them (0 = in the training "
                   "process); the batches are the same for any number, so it may change on --resume",
        "perceptual_weight": "weight of the LPIPS term (with --perceptual lpips:...)",
        "disc_weight": "factor on the adaptive weight of the adversarial term",
        "disc_start_kimg": "start the discriminator after this many thousand images (taming's ImageNet runs: "
                           "250k steps of batch 12, about 3000 kimg)",
    }


def add_config_args(p: argparse.ArgumentParser, config_cls, help_: dict[str, str], presets: dict) -> None:
    """One option per field of `config_cls`, each with its help and default; --data is required."""
    S = argparse.SUPPRESS
    defaults = config_cls()
    for f in fields(config_cls):
        kind = (lambda s: bool(int(s))) if f.type in (bool, "bool") else type(getattr(defaults, f.name))
        extra = {"choices": sorted(presets)} if f.name == "preset" else {}
        p.add_argument(f"--{f.name}", type=kind, default=S, required=f.name == "data",
                       help=f"{help_[f.name]} (default {getattr(defaults, f.name)!r})", **extra)


def validate_options(cfg, presets: dict, title: str, nonnegative: tuple[str, ...]) -> None:
    """Reject shared options that cannot work, before anything heavy runs; `nonnegative` adds the family's."""
    if cfg.preset not in presets:
        raise T2IError(f"unknown {title} preset {cfg.preset!r}; choose from {sorted(presets)}")
    if not cfg.data:
        raise T2IError("--data is required: a dataset folder or zip in t2i format")
    if cfg.perceptual != "none" and not cfg.perceptual.startswith("lpips:"):
        raise T2IError(f"--perceptual {cfg.perceptual!r}: use 'none' or 'lpips:/path/to/vgg16.pth'")
    for name in ("perceptual_weight", "disc_weight", "disc_start_kimg", "crop", "workers", "warmup_kimg",
                 *nonnegative):
        if getattr(cfg, name) < 0:
            raise T2IError(f"--{name} {getattr(cfg, name)} must be >= 0")
    if cfg.lr <= 0:
        raise T2IError(f"--lr {cfg.lr} must be > 0")
    sizes = presets[cfg.preset].resolutions(up_to=max(cfg.resolution, 4096))
    check_requested(cfg.resolution, sizes, f"{title} preset {cfg.preset!r}", open_ended=True)


def fit_resolution(size: tuple[int, int], net, cfg, from_snapshot: bool, title: str) -> int:
    """The image side the autoencoder is built for (t2i.models.resolution: the snapshot's, --resolution, or
    the data's, a dataset's or a ShardSet's)."""
    sizes = net.resolutions(up_to=max(4096, 2 * size[0], 2 * size[1]))
    return fit_side(size, cfg.data, cfg.resolution, sizes, f"{title} preset {cfg.preset!r}",
                    net.resolution if from_snapshot else None, open_ended=True)


def check_crop(net, cfg, kimg: float, title: str) -> None:
    """A --crop must fit in the images, be a multiple of the downsampling factor and, when the
    discriminator starts within the run's `kimg`, be a patch it can score."""
    crop, f = cfg.crop, net.factor
    if crop and (crop > net.resolution or crop % f):
        raise T2IError(f"--crop {crop} must be at most {net.resolution} and a multiple of {f} "
                       f"(the {title}'s downsampling factor), e.g. --crop {max(f, net.resolution // 2)}")
    if crop and crop < net.min_side and cfg.disc_start_kimg < kimg:
        least = -(-net.min_side // f) * f
        raise T2IError(f"--crop {crop} is smaller than the {net.min_side} px the patch discriminator scores, and it "
                       f"starts at --disc_start_kimg {cfg.disc_start_kimg}, within --kimg {kimg}: crop at least "
                       f"{least}, or start the discriminator later")


def random_crops(images: torch.Tensor, side: int, g: torch.Generator) -> torch.Tensor:
    """One random side x side crop per image of (B, C, H, W), offsets drawn from g."""
    B, _, H, W = images.shape
    ys = torch.randint(H - side + 1, (B,), generator=g).tolist()
    xs = torch.randint(W - side + 1, (B,), generator=g).tolist()
    return torch.stack([im[:, y:y + side, x:x + side] for im, y, x in zip(images, ys, xs)])


def millions(module: nn.Module) -> float:
    """Parameter count in millions."""
    return sum(p.numel() for p in module.parameters()) / 1e6


def lr_schedule(cfg: FirstStageOptions, loop) -> Callable[[int], float] | None:
    """Both phases' lr factor by images seen: --warmup_kimg linear warm-up, then constant or, with
    --lr_decay, cosine decay to 10% at --kimg; None when neither is asked for (taming's constant lr)."""
    if not cfg.lr_decay and cfg.warmup_kimg <= 0:
        return None
    return warmup_cosine(cfg.warmup_kimg * 1000, loop.kimg * 1000, loop.batch, floor=0.1 if cfg.lr_decay else 1.0)


class FirstStageFamily:
    """Modules `<name>` (the autoencoder) and `D` (patch discriminator); data = images only.

    A subclass names the family (`name`, `title`), its net presets and config class, and builds the
    autoencoder (`build_model`, with `reconstruct(x)` and `last_layer()`) and its objective (`build_objective`).
    """

    name: str                 # family, and the autoencoder's module in snapshots
    title: str                # in messages: "VQGAN"
    presets: dict
    net_config: type          # VQGANConfig, KLConfig

    def __init__(self, cfg, loop, d, log, init=None):
        from t2i.data.dataset import ImageTextDataset
        from t2i.data.shards import first_samples, is_shard_spec, open_shard_set

        self.cfg, self.loop, self.device = cfg, loop, d.device
        self.net = self.net_config.from_dict(init.meta["net"]) if init else copy.deepcopy(self.presets[cfg.preset])
        self.shards = open_shard_set(cfg.data) if is_shard_spec(cfg.data) else None
        source = self.shards or ImageTextDataset(cfg.data)  # captions unused: image-only data works too
        self.net.resolution = cfg.resolution = fit_resolution(source.resolution, self.net, cfg, init is not None,
                                                              self.title)
        check_crop(self.net, cfg, loop.kimg, self.title)
        if self.shards is not None:  # streamed; the first 64 images give the reals and reconstruction grids
            self.images = first_samples(cfg.data, 64)[0]
            self.count = f"{self.shards.samples} images streamed from {len(self.shards.shards)} shards"
        else:
            self.images = load_images(source)
            self.count = f"{len(self.images)} images"
        self.model = self.build_model(self.net).to(d.device)
        self.D = PatchDiscriminator(self.net).to(d.device)
        self.modules = {self.name: self.model, "D": self.D}
        self.ema = {}
        self.objective = self.build_objective(load_perceptual(cfg.perceptual, d.device))
        log(f"{self.title} {cfg.preset}: {millions(self.model):.2f}M parameters (D {millions(self.D):.2f}M); "
            f"{self.count} at {self.net.resolution}px -> {self.describe_latents()}; perceptual {cfg.perceptual}; "
            f"D starts at {cfg.disc_start_kimg} kimg")

    def build_model(self, net) -> nn.Module:
        raise NotImplementedError

    def build_objective(self, perceptual: nn.Module | None) -> FirstStageLoss:
        raise NotImplementedError

    def describe_latents(self) -> str:
        """What an image becomes, for the log: "16x16 tokens of 64 codes"."""
        raise NotImplementedError

    def phases(self) -> list[Phase]:
        def adam(module):
            return torch.optim.Adam(module.parameters(), lr=self.cfg.lr, betas=(0.5, 0.9))  # taming's and LDM's betas

        schedule = lr_schedule(self.cfg, self.loop)
        return [Phase("G_main", self.model, adam(self.model), lr_scale=schedule),
                Phase("D_main", self.D, adam(self.D), lr_scale=schedule)]

    def augment(self, images: torch.Tensor, g: torch.Generator) -> dict:
        """--mirror and --crop of one batch (uint8 (B, 3, H, W)), drawn from the step's generator."""
        if self.cfg.mirror:
            images = mirror_batch(images, g)
        if self.cfg.crop:
            images = random_crops(images, self.cfg.crop, g)
        return {"image": images}

    def batches(self, step, batch, rank, world, seed):
        cfg = self.cfg
        if self.shards is not None:
            source = stream_batches(cfg.data, lambda item, g: self.augment(item["image"], g), step, batch, seed,
                                    rank, world, self.shards.resolution, cfg.workers)
        else:
            source = step_batches(len(self.images), lambda idx, g: self.augment(self.images[idx], g), step, batch,
                                  seed, rank)
        # Images shown before step k: k x the global batch, the loop's own count (split_batch passes
        # the int unchanged to every micro-batch).
        for k, b in enumerate(source, start=step):
            yield {**b, "nimg": k * batch * world}

    def loss(self, phase: Phase, batch: dict):
        x = to_model(batch["image"].to(self.device))
        if phase.name == "G_main":
            return self.objective.g_main(x, batch["nimg"])
        return self.objective.d_main(x, batch["nimg"])

    @torch.no_grad()
    def sample_images(self) -> torch.Tensor:
        """Rows alternate 8 originals and their 8 reconstructions (4 pairs of rows), uint8."""
        n = min(32, len(self.images))
        step = max(1, len(self.images) // n)
        real = self.images[::step][:n]
        was_training = self.model.training
        self.model.eval()   # (dropout off; the quantizer's usage counters only move in restart_dead_codes)
        rec = to_uint8(self.model.reconstruct(to_model(real.to(self.device))).cpu())
        self.model.train(was_training)
        rows = [t for i in range(0, n, 8) for t in (real[i:i + 8], rec[i:i + 8])]
        return torch.cat(rows)

    def real_images(self) -> torch.Tensor:
        return self.images[:64]

    def meta(self) -> dict:
        return {"family": self.name, "config": asdict(self.cfg), "net": self.net.to_dict()}


# ----------------------------------------------------------------------------------------------
# Loading and metrics.

def load_frozen(path, family: str, build: Callable[[dict], nn.Module], device="cpu") -> nn.Module:
    """A frozen first stage from a `t2i train <family>` run or snapshot: `build(net_dict)`, then its weights.
    A snapshot of another family is refused with the command that makes the right one."""
    from t2i.training.snapshot import load_snapshot

    snap = load_snapshot(path)
    if snap.family != family:
        raise T2IError(f"{str(snap.path)!r} is a {snap.family!r} snapshot, but a {family!r} model is needed here: "
                       f"give a `t2i train {family}` run or snapshot")
    model = build(snap.meta["net"])
    model.load_state_dict(snap.state_dict(family))
    return model.to(device).eval().requires_grad_(False)


def psnr_db(real: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of uint8 reconstructions rec against uint8 images real, both (N, 3, H, W)."""
    mse = (rec.float() - real.float()).square().mean([1, 2, 3]).clamp(min=1e-10)
    return 10 * torch.log10(255.0 ** 2 / mse)


def shapes_recon_accuracy(model: nn.Module, n: int = 500, device="cpu", oracle=None) -> dict:
    """Shapes-oracle accuracy of round trips (`model.reconstruct`) of fresh scenes, per split (seen and
    held-out compositions): what the first stage keeps of each scene, so a second stage's accuracy is read
    against this ceiling."""
    from t2i.metrics.oracle_trainer import load_oracle, oracle_self_accuracy

    oracle = oracle or load_oracle(None, device)
    result = {}
    for split, key in (("test-seen", "seen"), ("test-heldout", "heldout")):
        acc = oracle_self_accuracy(oracle, n=n, size=model.cfg.resolution, device=device, split=split,
                                   through=model.reconstruct)
        result.update({f"{key}_{k}": v for k, v in acc.items() if k not in ("images", "objects")})
    return result | {"n": n}


METRICS = ("psnr", "shapes_recon")


def metric_images(data: str, n: int = 1000) -> torch.Tensor:
    """Up to n training images (uint8) for the `psnr` metric: a dataset's first, or the first of shards."""
    from t2i.data.dataset import ImageTextDataset
    from t2i.data.shards import first_samples, is_shard_spec

    if is_shard_spec(data):
        return first_samples(data, n)[0]
    dataset = ImageTextDataset(data)
    return load_images(dataset, min(len(dataset), n))


def evaluate_first_stage(name: str, snapshot: Path, cfg, device, title: str, load: Callable,
                         psnr: Callable[[nn.Module, torch.Tensor], dict]) -> dict:
    """Metrics of a first-stage snapshot: `psnr` (`psnr(model, images)` over up to 1000 training images, the
    first ones of shards); `shapes_recon` (shapes-oracle accuracy of round trips of fresh scenes)."""
    if name not in METRICS:
        raise T2IError(f"metric {name!r} is not available while training a {title}; use {', '.join(METRICS)}")
    model = load(snapshot, device)
    if name == "shapes_recon":
        return shapes_recon_accuracy(model, device=device)
    return psnr(model, metric_images(cfg.data))
