"""`t2i train lafite`: LAFITE in the shared loop (phases G main, G reg, D main, D reg).

Data comes in two ways. A canonical dataset is decoded into memory with its CLIP features, computed once
and cached beside it. Shards (`--data` a shard list) are streamed, and the frozen CLIP encodes each batch
on the training device instead: its image features, and the features of one random caption per image when
real captions are used (`--mixing_prob` < 1). Image-only data (no captions) trains language-free only.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

from t2i.data.features import encode_captions
from t2i.data.loader import data_name, load_images, step_batches, stream_batches
from t2i.data.transforms import mirror_batch, to_model
from t2i.errors import T2IError
from t2i.models.lafite.networks import PRESETS, Discriminator, Generator, LafiteNetConfig
from t2i.models.lafite.objective import LafiteLoss, LossWeights, mix_conditions
from t2i.models.resolution import check_requested
from t2i.models.resolution import fit_resolution as fit_side
from t2i.text.vocab import dataset_vocabulary
from t2i.training.loop import Phase
from t2i.training.run import grid_picks


@dataclass
class LafiteConfig(LossWeights):
    """Options of `t2i train lafite` (loss weights inherited from LossWeights)."""

    data: str = ""
    clip: str = ""               # t2i CLIP run/snapshot, or ARCH:/path/to/weights for open_clip
    preset: str = "tiny"
    resolution: int = 0          # image side of G and D; 0 = the data's (recorded resolved in the run's config)
    z_dim: int = 0               # size of G's latent z; 0 = the preset's
    projection: bool = True      # D's projection term <D features, condition> in its logit
    pack: int = 1                # D also judges packs of this many samples jointly (PacGAN); 1 = off
    mapping_lr_mul: float = 0.0  # learning-rate multiplier of G's mapping MLP; 0 = the preset's (StyleGAN2's 0.01)
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
    workers: int = 2             # DataLoader processes decoding streamed shards (the batches do not depend on it)


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
        "data": "dataset folder or zip (t2i format, decoded into memory), or shards to stream: a shards.json, a "
                "folder holding one, or several of these comma-separated (a large split is a list of shard lists)",
        "clip": "CLIP for features: a `t2i train clip` run/snapshot, or ARCH:/path (open_clip weights)",
        "preset": f"network preset: {', '.join(PRESETS)}",
        "z_dim": "size of G's latent z, beside the condition's embedding in the mapping input (0 = the preset's: "
                 "tiny 64 against a 256-d condition embedding)",
        "projection": "1: D's logit adds the projection term <D features, condition>; 0: the condition reaches D only "
                      "through the itd loss",
        "mapping_lr_mul": "learning-rate multiplier of G's mapping MLP (z and the condition to w); 0 = the preset's, "
                          "StyleGAN2's 0.01, which keeps the mapping near its random start over a short run",
        "pack": "D also judges packs of this many samples together (PacGAN), so a generator that over-draws or "
                "drops one of the data's modes is penalised; 1 = off. The batch must be a multiple of it",
        "resolution": "image side G and D are built for, with the preset's channel rule: a power of two from 16 "
                      "up; 0 = the data's (the data must have it: images are never resized)",
        "lang": "caption language for real-text conditions (en, ko, ...)",
        "mixing_prob": "probability of a pseudo (language-free) condition per sample: 1 = language-free, 0 = supervised",
        "pseudo_noise": "noise level of pseudo text features (0.75 = paper's xi=3)",
        "text_noise": "noise level added to real caption features",
        "g_lr": "generator Adam learning rate", "d_lr": "discriminator Adam learning rate",
        "g_reg_interval": "path-length regulariser every N steps", "d_reg_interval": "R1 every N steps",
        "subset": "train on a deterministic subset of N images (0 = all)",
        "mirror": "random horizontal flips (1/0)",
        "workers": "DataLoader processes decoding shards when --data streams them (0 = in the training "
                   "process); the batches are the same for any number, so it may change on --resume",
        "gamma": "R1 weight", "itd": "weight of the D-feature/condition contrastive loss",
        "itd_g": "the generator's weight on that loss (its fakes' D features must name their condition); -1 = --itd",
        "itc": "weight of the CLIP(fake)/condition contrastive loss", "temp": "contrastive temperature",
        "pl_weight": "path-length regulariser weight (0 = off)",
        "itc_crop_min": "smallest crop (fraction of the side) of fakes fed to CLIP for itc",
        "ms_weight": "weight of MSGAN's mode-seeking term: two latents of one condition must give different "
                     "images (0 = off)",
        "ms_tau": "cap on the mode-seeking term's image/latent distance ratio: pairs that differ this much are "
                  "pushed no further (0 = no cap; the shapes data's two renders of one prompt: about 0.1)",
        "ms_pool": "side of the average-pooled images the mode-seeking distance is measured on, so only the coarse "
                   "layout is pushed apart (0 = full resolution)",
        "imle_weight": "weight of IMLE's coverage term: for each of a quarter of the batch's reals, the nearest of "
                       "--imle_k fakes of its caption (on images pooled to --imle_pool) is pulled towards it, so no "
                       "mode of the data is left without samples (0 = off)",
        "imle_k": "fakes drawn per real for the IMLE term",
        "imle_pool": "side of the average-pooled images the IMLE term compares (the layout and colours, not details)",
        "ms_clip": "saturate the mode-seeking distance of each pixel at this (images in [-1, 1]), so every pixel that "
                   "differs counts alike, however far its colours lie (0 = plain L1; the shapes backgrounds differ "
                   "by 0.09 to 0.21)",
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
    if cfg.workers < 0:
        raise T2IError(f"--workers {cfg.workers} must be >= 0 (0 decodes in the training process)")
    check_requested(cfg.resolution, PRESETS[cfg.preset].resolutions(), f"LAFITE preset {cfg.preset!r}")


def describe(cfg: LafiteConfig) -> str:
    """Run-directory description, e.g. shapes64-lafite-tiny."""
    return f"{data_name(cfg.data)}-lafite-{cfg.preset}"


def fit_resolution(size: tuple[int, int], net: LafiteNetConfig, cfg: LafiteConfig, from_snapshot: bool) -> int:
    """The image side G and D are built for (t2i.models.resolution: the snapshot's, --resolution, or the data's)."""
    return fit_side(size, cfg.data, cfg.resolution, net.resolutions(), f"LAFITE preset {cfg.preset!r}",
                    net.resolution if from_snapshot else None)


def check_data(image_only: list, cfg: LafiteConfig, streamed: bool, metrics: list[str]) -> None:
    """Reject data that does not fit the run (its resolution: `fit_resolution`): captions asked of
    image-only data, a data-reading metric on data it cannot read."""
    from t2i.metrics import DATASET_METRICS

    if image_only and cfg.mixing_prob < 1:
        raise T2IError(f"{', '.join(map(str, image_only))}: image-only data (no captions), but --mixing_prob "
                       f"{cfg.mixing_prob} trains on real captions for {1 - cfg.mixing_prob:.0%} of the images; "
                       "train language-free with --mixing_prob 1, or give captioned data")
    reading = [m for m in metrics if m in DATASET_METRICS]
    if reading and (streamed or image_only):
        kind = "shards" if streamed else "image-only"
        raise T2IError(f"--metrics {','.join(reading)} read the images and captions of a captioned canonical "
                       f"dataset, but --data {cfg.data} is {kind}; evaluate the snapshots afterwards with `t2i eval "
                       "RUN --data DATASET`, or train with --metrics shapes_accuracy")
    if streamed and cfg.subset:
        raise T2IError(f"--subset {cfg.subset} picks images of a dataset in memory; to train on a subset of shards, "
                       "write its shards (`t2i data pack --subset N`, then `t2i data shards`)")


def subset_indices(n: int, subset: int, seed: int = 0) -> torch.Tensor:
    """A deterministic subset of `subset` indices out of n (all when subset is 0 or >= n)."""
    if subset <= 0 or subset >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:subset].sort().values


class LafiteFamily:
    """Modules G, D, G_ema (EMA of G) and the frozen CLIP; data = images + CLIP features."""

    name = "lafite"

    def __init__(self, cfg: LafiteConfig, d, log, init=None, metrics: list[str] = ()):
        from t2i.data.shards import is_shard_spec
        from t2i.models.lafite.pipeline import load_condition_clip

        self.cfg, self.device = cfg, d.device
        self.vocab: list[str] = []  # the training captions' words, when every caption is known (_load_dataset)
        self.clip, self.clip_meta = load_condition_clip(cfg.clip, init, d.device)
        net = LafiteNetConfig(**init.meta["net"]) if init else copy.deepcopy(PRESETS[cfg.preset])
        if init and ((cfg.z_dim and cfg.z_dim != net.z_dim) or cfg.projection != net.projection
                     or cfg.pack != net.pack or (cfg.mapping_lr_mul and cfg.mapping_lr_mul != net.mapping_lr_mul)):
            raise T2IError(f"--z_dim {cfg.z_dim} / --projection {int(cfg.projection)} / --pack {cfg.pack} / "
                           f"--mapping_lr_mul {cfg.mapping_lr_mul} differ from the snapshot's networks (z_dim "
                           f"{net.z_dim}, projection {int(net.projection)}, pack {net.pack}, mapping_lr_mul "
                           f"{net.mapping_lr_mul}); drop them when resuming or fine-tuning")
        if cfg.pack < 1:
            raise T2IError(f"--pack {cfg.pack}: give 1 (off) or more samples per pack")
        if not init:
            net.z_dim, net.projection, net.pack = cfg.z_dim or net.z_dim, cfg.projection, cfg.pack
            net.mapping_lr_mul = cfg.mapping_lr_mul or net.mapping_lr_mul
        net.c_dim = self.clip.embed_dim
        self.from_snapshot, self.shards = init is not None, None
        if is_shard_spec(cfg.data):
            n = self._open_shards(net, list(metrics))
        else:
            n = self._load_dataset(net, list(metrics), log)
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
        source = (f"{n} images streamed from {len(self.shards.shards)} shards, CLIP features per batch"
                  if self.shards else f"{n} images")
        log(f"LAFITE {cfg.preset} at {net.resolution}x{net.resolution}: G {count(self.G):.2f}M, "
            f"D {count(self.D):.2f}M parameters; {source}; CLIP {self.clip.identity}; mixing_prob {cfg.mixing_prob}")
        log("sample grid prompts (columns): " + (" | ".join(self.grid_prompts) if self.grid_prompts else
            "none, the data has no captions: CLIP image features of 8 training images instead"))

    def _load_dataset(self, net: LafiteNetConfig, metrics: list[str], log) -> int:
        """Decode a canonical dataset and its (cached) CLIP features into memory; returns the image count."""
        from t2i.data.dataset import ImageTextDataset
        from t2i.data.features import load_or_compute_features

        cfg = self.cfg
        dataset = ImageTextDataset(cfg.data, caption_lang=cfg.lang)
        net.resolution = cfg.resolution = fit_resolution(dataset.resolution, net, cfg, self.from_snapshot)
        check_data([dataset.path] if dataset.image_only else [], cfg, False, metrics)
        feats = load_or_compute_features(dataset, self.clip, cfg.lang, device=self.device, log=log)
        keep = subset_indices(len(dataset), cfg.subset)
        self.images = load_images(dataset)[keep]
        self.img_fts = feats.image[keep]
        self.txt_fts, self.offsets = feats.text, feats.offsets
        self.keep = keep
        grid = grid_picks(len(keep))
        self.grid_reals = self.images[grid][:8]
        self.grid_prompts = [] if dataset.image_only else [dataset.records[int(i)]["captions"][0]
                                                           for i in keep[grid][:8]]
        self.vocab = [] if dataset.image_only else dataset_vocabulary(dataset, cfg.lang, keep.tolist())
        return len(keep)

    def _open_shards(self, net: LafiteNetConfig, metrics: list[str]) -> int:
        """Check the shard lists and read the first 64 samples (reals and sample grid); returns the image count."""
        from t2i.data.shards import first_samples, open_shard_set

        self.shards = open_shard_set(self.cfg.data)
        net.resolution = self.cfg.resolution = fit_resolution(self.shards.resolution, net, self.cfg,
                                                              self.from_snapshot)
        check_data(self.shards.image_only, self.cfg, True, metrics)
        self.images, captions = first_samples(self.cfg.data, 64)
        grid = grid_picks(len(self.images))
        self.grid_reals = self.images[grid][:8]
        self.grid_prompts = [caps[0] for caps in captions[grid][:8]] if all(captions[grid][:8]) else []
        return self.shards.samples

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
        cfg = self.cfg
        if self.shards is not None:
            return stream_batches(cfg.data, self._encode_batch, step, batch, seed, rank, world,
                                  self.shards.resolution, cfg.workers, cfg.lang)

        def fetch(idx, g):
            src = self.keep[idx]
            pick = torch.rand(len(idx), generator=g)  # caption choice, drawn even when language-free: the flips
            # after it keep the draws they had before image-only data existed (so do resumed runs)
            images = mirror_batch(self.images[idx], g) if cfg.mirror else self.images[idx]
            out = {"image": images, "img_fts": self.img_fts[idx]}
            if cfg.mixing_prob < 1:  # image-only data has no text features (and trains with mixing_prob 1)
                count = self.offsets[src + 1] - self.offsets[src]
                out["txt_fts"] = self.txt_fts[self.offsets[src] + (pick * count).long()]
            return out
        return step_batches(len(self.keep), fetch, step, batch, seed, rank)

    @torch.no_grad()
    def _encode_batch(self, item: dict, g: torch.Generator) -> dict:
        """A streamed batch with the frozen CLIP's features of its images and, unless language-free, of one
        random caption each: the features the in-memory path reads from its cache."""
        cfg, images = self.cfg, item["image"]
        pick = torch.rand(len(images), generator=g)
        out = {"img_fts": self.clip.encode_image(to_model(images.to(self.device))).float()}
        out["image"] = mirror_batch(images, g) if cfg.mirror else images
        if cfg.mixing_prob < 1:
            captions = item["captions"]
            if not all(captions):
                raise T2IError(f"a sample streamed from {cfg.data} has no {cfg.lang!r} caption; train language-free "
                               "with --mixing_prob 1, or choose a --lang that every sample has")
            out["txt_fts"] = encode_captions(self.clip, [caps[int(p * len(caps))] for caps, p in zip(captions, pick)])
        return out

    def loss(self, phase: Phase, batch: dict):
        dev = self.device
        txt_fts = batch["txt_fts"].to(dev) if "txt_fts" in batch else None  # absent when language-free
        c = mix_conditions(batch["img_fts"].to(dev), txt_fts, self.cfg.mixing_prob,
                           self.cfg.pseudo_noise, self.cfg.text_noise)
        if len(c) % self.net.pack:
            raise T2IError(f"D packs {self.net.pack} samples (--pack) but a step's batch on one process is {len(c)}: "
                           "make --batch / (processes x --accum) a multiple of --pack")
        z = torch.randn(len(c), self.net.z_dim, device=dev)
        real = to_model(batch["image"].to(dev)).contiguous(memory_format=torch.channels_last)
        if phase.name == "G_main":
            return self.objective.g_main(z, c, real)
        if phase.name == "G_reg":
            return self.objective.g_reg(z, c, phase.interval)
        if phase.name == "D_main":
            return self.objective.d_main(z, c, real)
        return self.objective.d_reg(c, real, phase.interval)

    @torch.no_grad()
    def sample_images(self) -> torch.Tensor:
        """8 seeds (rows) x 8 grid prompts (columns; CLIP image features of 8 reals without captions) from G_ema."""
        from t2i.data.transforms import to_uint8

        if self.grid_prompts:
            c = F.normalize(self.clip.encode_text(self.grid_prompts).float(), dim=-1)
        else:  # language-free data: CLIP image features stand in for text, as in training
            c = F.normalize(self.clip.encode_image(to_model(self.grid_reals.to(self.device))).float(), dim=-1)
        n = len(c)
        z = torch.randn(8, self.net.z_dim, generator=torch.Generator().manual_seed(0)).to(self.device)
        out = self.G_ema(z.repeat_interleave(n, 0), c.repeat(8, 1), noise="none")
        return to_uint8(out.cpu())

    def real_images(self) -> torch.Tensor:
        return self.images[:64]

    def meta(self) -> dict:
        meta = {"family": "lafite", "config": asdict(self.cfg), "net": self.net.to_dict(), "clip": self.clip_meta}
        # The words of the captions G was conditioned on, for `t2i generate`'s unknown-word warning. Only
        # _load_dataset sets it: a stream's first samples are not all its captions, and no vocabulary beats a
        # wrong one. A language-free G (mixing_prob 1) read no caption, whatever its CLIP read.
        if self.vocab and self.cfg.mixing_prob < 1:
            meta["vocab"] = self.vocab
        return meta


def build(cfg: LafiteConfig, loop, d, log, init=None) -> LafiteFamily:
    """The LAFITE family object for the shared loop."""
    return LafiteFamily(cfg, d, log, init, loop.metrics)
