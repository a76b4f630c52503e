"""`t2i train vqgan`: the DALL-E family's VQGAN first stage in the shared loop (phases G main, D main).

G main updates the autoencoder (encoder, codebook, decoder) with reconstruction + perceptual +
codebook/commitment losses and, after `--disc_start_kimg`, the adaptively weighted adversarial term;
it also runs the dead-code restart once per call. D main trains the patch discriminator (hinge) once
it has started. Images seen so far come with each batch (step x global batch, exactly the loop's own
count), so the delayed start survives `--resume`. Images come from a canonical dataset decoded into
memory, or are streamed from shards (`--data` a shard list; t2i.data.loader), captions unused.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch

from t2i.data.loader import data_name, load_images, step_batches, stream_batches
from t2i.data.transforms import mirror_batch, to_model, to_uint8
from t2i.errors import T2IError
from t2i.models.dalle.vqgan import PRESETS, VQGAN, PatchDiscriminator, VQGANConfig, code_usage
from t2i.models.dalle.vqgan_objective import VQGANLoss, VQGANLossWeights, load_perceptual
from t2i.models.resolution import check_requested
from t2i.models.resolution import fit_resolution as fit_side
from t2i.training.loop import Phase, warmup_cosine


@dataclass
class VQGANTrainConfig(VQGANLossWeights):
    """Options of `t2i train vqgan` (loss weights inherited from VQGANLossWeights)."""

    data: str = ""
    preset: str = "tiny"
    resolution: int = 0          # image side; 0 = the data's (recorded resolved in the run's config)
    perceptual: str = "none"     # none | lpips:/path/to/torchvision-vgg16.pth
    lr: float = 1e-4             # Adam, both phases (taming: 4.5e-6 x batch)
    lr_decay: bool = False       # cosine decay to 10% of --lr at --kimg (taming: constant)
    warmup_kimg: float = 0.0     # linear lr warm-up over this many kimg first (taming: none)
    mirror: bool = False         # random horizontal flips (off for layouts where left/right matters)
    crop: int = 0                # train on random crops of this side (0 = whole images)
    codebook_init: str = "uniform"  # uniform (taming) | data: codes start on the first batch's encoder outputs
    workers: int = 2             # DataLoader processes decoding streamed shards (the batches do not depend on it)


CONFIG = VQGANTrainConfig
PRESET_LOOP_DEFAULTS = {
    "tiny": {"batch": 16, "kimg": 200.0, "tick_kimg": 4.0, "snap": 10},
    "test": {"batch": 8, "kimg": 0.032, "tick_kimg": 0.016, "snap": 1},
    "paper": {"batch": 12, "kimg": 12000.0, "tick_kimg": 4.0, "snap": 50},
}


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of `t2i train vqgan`; each shows its default."""
    S = argparse.SUPPRESS
    defaults = VQGANTrainConfig()
    help_ = {
        "data": "dataset folder or zip (t2i format, decoded into memory), or shards to stream: a shards.json, a "
                "folder holding one, or several of these comma-separated (a large split is a list of shard lists)",
        "preset": f"network preset: {', '.join(PRESETS)}",
        "resolution": "image side the VQGAN is built for: a power of two giving at least 4 tokens a side that "
                      "the patch discriminator can score (" + ", ".join(f"{k}: {v.resolutions()[0]} up" for k, v
                                                                        in PRESETS.items()) + "); 0 = the "
                      "data's (the data must have it: images are never resized)",
        "perceptual": "perceptual loss: none, or lpips:/path/to/vgg16.pth (a torchvision vgg16 state_dict; "
                      "needs `pip install lpips`)",
        "lr": "Adam learning rate of the autoencoder and the discriminator",
        "lr_decay": "cosine-decay the learning rate to 10%% at --kimg (1/0); a fixed budget ends on a "
                    "settled model instead of a noisy one",
        "warmup_kimg": "raise the learning rate linearly from 0 over this many thousand images first; at a high "
                       "--lr, Adam's first full-size steps can collapse the encoder onto a few codes for good",
        "mirror": "random horizontal flips (1/0)",
        "codebook_init": "where a new model's codes start: uniform (taming's small uniform values) or data (on "
                         "random encoder outputs of the first batch; keeps a deep encoder from starting on one code)",
        "crop": "train on random square crops of this many pixels, a multiple of the downsampling factor "
                "(the model is convolutional, so it still encodes whole images); 0 = whole images",
        "workers": "DataLoader processes decoding shards when --data streams them (0 = in the training "
                   "process); the batches are the same for any number, so it may change on --resume",
        "beta": "commitment weight: ||z - sg[z_q]||^2 counts beta times",
        "codebook_weight": "weight of the codebook + commitment loss",
        "perceptual_weight": "weight of the LPIPS term (with --perceptual lpips:...)",
        "disc_weight": "factor on the adaptive weight of the adversarial term",
        "disc_start_kimg": "start the discriminator after this many thousand images (taming's ImageNet runs: "
                           "250k steps of batch 12, about 3000 kimg)",
        "restart_patience": "re-initialise codes unused for this many steps from encoder outputs (0 = never)",
    }
    for f in fields(VQGANTrainConfig):
        kind = (lambda s: bool(int(s))) if f.type in (bool, "bool") else type(getattr(defaults, f.name))
        extra = {"choices": sorted(PRESETS)} if f.name == "preset" else {}
        p.add_argument(f"--{f.name}", type=kind, default=S, required=f.name == "data",
                       help=f"{help_[f.name]} (default {getattr(defaults, f.name)!r})", **extra)


def validate(cfg: VQGANTrainConfig) -> None:
    """Reject options that cannot work, before anything heavy runs."""
    if cfg.preset not in PRESETS:
        raise T2IError(f"unknown VQGAN preset {cfg.preset!r}; choose from {sorted(PRESETS)}")
    if not cfg.data:
        raise T2IError("--data is required: a dataset folder or zip in t2i format")
    if cfg.perceptual != "none" and not cfg.perceptual.startswith("lpips:"):
        raise T2IError(f"--perceptual {cfg.perceptual!r}: use 'none' or 'lpips:/path/to/vgg16.pth'")
    for name in ("beta", "codebook_weight", "perceptual_weight", "disc_weight", "disc_start_kimg",
                 "restart_patience", "crop", "workers", "warmup_kimg"):
        if getattr(cfg, name) < 0:
            raise T2IError(f"--{name} {getattr(cfg, name)} must be >= 0")
    if cfg.lr <= 0:
        raise T2IError(f"--lr {cfg.lr} must be > 0")
    if cfg.codebook_init not in ("uniform", "data"):
        raise T2IError(f"--codebook_init {cfg.codebook_init!r}: choose uniform or data")
    sizes = PRESETS[cfg.preset].resolutions(up_to=max(cfg.resolution, 4096))
    check_requested(cfg.resolution, sizes, f"VQGAN preset {cfg.preset!r}", open_ended=True)


def describe(cfg: VQGANTrainConfig) -> str:
    """Run-directory description, e.g. shapes64-vqgan-tiny."""
    return f"{data_name(cfg.data)}-vqgan-{cfg.preset}"


def fit_resolution(size: tuple[int, int], net: VQGANConfig, cfg: VQGANTrainConfig, from_snapshot: bool) -> int:
    """The image side the VQGAN is built for (t2i.models.resolution: the snapshot's, --resolution, or the
    data's, a dataset's or a ShardSet's)."""
    sizes = net.resolutions(up_to=max(4096, 2 * size[0], 2 * size[1]))
    return fit_side(size, cfg.data, cfg.resolution, sizes, f"VQGAN preset {cfg.preset!r}",
                    net.resolution if from_snapshot else None, open_ended=True)


def check_crop(net: VQGANConfig, cfg: VQGANTrainConfig, kimg: float) -> None:
    """A --crop must fit in the images, be a multiple of the downsampling factor and, when the
    discriminator starts within the run's `kimg`, be a patch it can score."""
    crop, f = cfg.crop, net.factor
    if crop and (crop > net.resolution or crop % f):
        raise T2IError(f"--crop {crop} must be at most {net.resolution} and a multiple of {f} "
                       f"(the VQGAN's downsampling factor), e.g. --crop {max(f, net.resolution // 2)}")
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


def millions(module: torch.nn.Module) -> float:
    """Parameter count in millions."""
    return sum(p.numel() for p in module.parameters()) / 1e6


class VQGANFamily:
    """Modules `vqgan` (encoder, codebook, decoder) and `D` (patch discriminator); data = images only."""

    name = "vqgan"

    def __init__(self, cfg: VQGANTrainConfig, loop, d, log, init=None):
        from t2i.data.dataset import ImageTextDataset
        from t2i.data.shards import first_samples, is_shard_spec, open_shard_set

        self.cfg, self.loop, self.device = cfg, loop, d.device
        self.net = VQGANConfig.from_dict(init.meta["net"]) if init else copy.deepcopy(PRESETS[cfg.preset])
        self.shards = open_shard_set(cfg.data) if is_shard_spec(cfg.data) else None
        source = self.shards or ImageTextDataset(cfg.data)  # captions unused: image-only data works too
        self.net.resolution = cfg.resolution = fit_resolution(source.resolution, self.net, cfg, init is not None)
        check_crop(self.net, cfg, loop.kimg)
        if self.shards is not None:  # streamed; the first 64 images give the reals and reconstruction grids
            self.images = first_samples(cfg.data, 64)[0]
            count = f"{self.shards.samples} images streamed from {len(self.shards.shards)} shards"
        else:
            self.images = load_images(source)
            count = f"{len(self.images)} images"
        self.vqgan = VQGAN(self.net).to(d.device)
        self.data_init = init is None and cfg.codebook_init == "data"
        self.D = PatchDiscriminator(self.net).to(d.device)
        self.modules = {"vqgan": self.vqgan, "D": self.D}
        self.ema = {}
        self.objective = VQGANLoss(self.vqgan, self.D, load_perceptual(cfg.perceptual, d.device), cfg)
        side = self.net.token_side
        log(f"VQGAN {cfg.preset}: {millions(self.vqgan):.2f}M parameters (D {millions(self.D):.2f}M); "
            f"{count} at {self.net.resolution}px -> {side}x{side} tokens of "
            f"{self.net.n_embed} codes; perceptual {cfg.perceptual}; D starts at {cfg.disc_start_kimg} kimg")

    def phases(self) -> list[Phase]:
        def adam(module):
            return torch.optim.Adam(module.parameters(), lr=self.cfg.lr, betas=(0.5, 0.9))  # taming's betas

        schedule = lr_schedule(self.cfg, self.loop)
        return [Phase("G_main", self.vqgan, adam(self.vqgan), lr_scale=schedule),
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
            if self.data_init:  # once, before the first step of a new model (never on resume or fine-tune)
                with torch.no_grad():
                    self.vqgan.quantize.init_codebook(self.vqgan.encode_latents(x))
                self.data_init = False
            return self.objective.g_main(x, batch["nimg"])
        return self.objective.d_main(x, batch["nimg"])

    @torch.no_grad()
    def sample_images(self) -> torch.Tensor:
        """Rows alternate 8 originals and their 8 reconstructions (4 pairs of rows), uint8."""
        n = min(32, len(self.images))
        step = max(1, len(self.images) // n)
        real = self.images[::step][:n]
        was_training = self.vqgan.training
        self.vqgan.eval()   # (dropout off; the quantizer's usage counters only move in restart_dead_codes)
        rec = to_uint8(self.vqgan.decode_ids(self.vqgan.encode(to_model(real.to(self.device)))).cpu())
        self.vqgan.train(was_training)
        rows = [t for i in range(0, n, 8) for t in (real[i:i + 8], rec[i:i + 8])]
        return torch.cat(rows)

    def real_images(self) -> torch.Tensor:
        return self.images[:64]

    def meta(self) -> dict:
        return {"family": "vqgan", "config": asdict(self.cfg), "net": self.net.to_dict()}


def lr_schedule(cfg: VQGANTrainConfig, loop) -> Callable[[int], float] | None:
    """Both phases' lr factor by images seen: --warmup_kimg linear warm-up, then constant or, with
    --lr_decay, cosine decay to 10% at --kimg; None when neither is asked for (taming's constant lr)."""
    if not cfg.lr_decay and cfg.warmup_kimg <= 0:
        return None
    return warmup_cosine(cfg.warmup_kimg * 1000, loop.kimg * 1000, loop.batch, floor=0.1 if cfg.lr_decay else 1.0)


def build(cfg: VQGANTrainConfig, loop, d, log, init=None) -> VQGANFamily:
    """The VQGAN family object for the shared loop."""
    return VQGANFamily(cfg, loop, d, log, init)


def load_vqgan_snapshot(path, device="cpu") -> VQGAN:
    """A frozen VQGAN from a `t2i train vqgan` run or snapshot."""
    from t2i.training.snapshot import load_snapshot

    snap = load_snapshot(path, family="vqgan")
    model = VQGAN(VQGANConfig.from_dict(snap.meta["net"]))
    model.load_state_dict(snap.state_dict("vqgan"))
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def reconstruction_metrics(vqgan: VQGAN, images: torch.Tensor, device, batch: int = 50) -> dict:
    """Mean per-image PSNR (dB, on uint8 pixels) of reconstructions, and codebook usage over all tokens."""
    psnr, ids = [], []
    for i in range(0, len(images), batch):
        real = images[i:i + batch]
        x = to_model(real.to(device))
        tokens = vqgan.encode(x)
        rec = to_uint8(vqgan.decode_ids(tokens).cpu())
        mse = (rec.float() - real.float()).square().mean([1, 2, 3]).clamp(min=1e-10)
        psnr.append(10 * torch.log10(255.0 ** 2 / mse))
        ids.append(tokens.cpu())
    usage = code_usage(torch.cat(ids), vqgan.cfg.n_embed)
    used = int(usage["VQ/used_codes"])
    return {"psnr_db": float(torch.cat(psnr).mean()), "used_codes": used,
            "usage": used / vqgan.cfg.n_embed, "perplexity": float(usage["VQ/perplexity"]), "n": len(images)}


def shapes_recon_accuracy(vqgan: VQGAN, n: int = 500, device="cpu", oracle=None) -> dict:
    """Shapes-oracle accuracy of VQGAN round trips of fresh scenes, per split (seen and held-out
    compositions): what the first stage keeps of each scene, so a DALL-E run's accuracy is read
    against this ceiling."""
    from t2i.metrics.oracle_trainer import load_oracle, oracle_self_accuracy

    oracle = oracle or load_oracle(None, device)
    result = {}
    for split, key in (("test-seen", "seen"), ("test-heldout", "heldout")):
        acc = oracle_self_accuracy(oracle, n=n, size=vqgan.cfg.resolution, device=device, split=split,
                                   through=lambda x: vqgan.decode_ids(vqgan.encode(x)))
        result.update({f"{key}_{k}": v for k, v in acc.items() if k not in ("images", "objects")})
    return result | {"n": n}


VQGAN_METRICS = ("psnr", "shapes_recon")


def evaluate(name: str, snapshot: Path, cfg: VQGANTrainConfig, device) -> dict:
    """Metrics of a VQGAN snapshot: `psnr` (reconstruction PSNR and codebook usage over up to 1000
    training images, the first ones of shards); `shapes_recon` (shapes-oracle accuracy of round trips of
    fresh scenes)."""
    from t2i.data.dataset import ImageTextDataset
    from t2i.data.shards import first_samples, is_shard_spec

    if name not in VQGAN_METRICS:
        raise T2IError(f"metric {name!r} is not available while training a VQGAN; use {', '.join(VQGAN_METRICS)}")
    vqgan = load_vqgan_snapshot(snapshot, device)
    if name == "shapes_recon":
        return shapes_recon_accuracy(vqgan, device=device)
    if is_shard_spec(cfg.data):
        images = first_samples(cfg.data, 1000)[0]
    else:
        dataset = ImageTextDataset(cfg.data)
        images = load_images(dataset, min(len(dataset), 1000))
    return reconstruction_metrics(vqgan, images, device)
