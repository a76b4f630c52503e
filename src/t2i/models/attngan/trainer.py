"""`t2i train attngan --damsm RUN`: AttnGAN's multi-stage generator on the shared loop (phases D, then G).

The DAMSM of `--damsm` is frozen: its text encoder gives the sentence and word features G and D read, and its
image encoder scores the last stage's images for L_DAMSM. The stages' resolutions follow the data: the last is
the data's side, each earlier one half the next (the preset says how many). At every snapshot the run writes
the sample grid (8 seeds x 8 prompts, last stage), `stages-<kimg>.png` (every stage of the grid's prompts at
seed 0, one row per stage) and `attention-<kimg>.png` (the last attention stage's word maps for them).
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from t2i.data.loader import data_name, require_dataset, step_batches
from t2i.data.transforms import to_model, to_uint8
from t2i.errors import T2IError
from t2i.models.attngan.captions import CaptionedImages, batch_hard_negatives
from t2i.models.attngan.damsm import damsm_from_meta, load_damsm
from t2i.models.attngan.networks import (PRESETS, AttnGanConfig, Discriminators, Generator, WordCondition,
                                         attention_entropy, checkpointed)
from t2i.models.attngan.objective import (GAMMA_HELP, Contrastive, DamsmWeights, batch_negatives, d_stage_loss,
                                          damsm_loss, g_stage_loss, kl_loss, r1_penalty, same_caption)
from t2i.models.mode_seeking import mode_seeking
from t2i.training.loop import Phase
from t2i.training.run import grid_picks, save_grid


@dataclass
class AttnGanTrainConfig(DamsmWeights):
    """Options of `t2i train attngan` (the DAMSM gammas of L_DAMSM inherited from DamsmWeights)."""

    data: str = ""
    damsm: str = ""              # `t2i train damsm` run or snapshot (frozen)
    preset: str = "tiny"
    g_lr: float = 0.0002
    d_lr: float = 0.0002
    damsm_weight: float = 5.0    # lambda of L_DAMSM (AttnGAN: 5 on CUB, 50 on COCO)
    damsm_stages: str = "last"   # which stages' images L_DAMSM scores: last (AttnGAN) | all (each upsampled)
    kl_weight: float = 1.0       # weight of CA's KL term
    channel_attention: bool = False  # ControlGAN's word-level channel-wise attention beside the spatial one
    cond_norm: bool = False      # G's batch norms scaled and shifted per sample from (c, z)
    ca: bool = True              # conditioning augmentation (off: c = mu, no KL term)
    pos_attention: bool = False  # word attention's region queries also carry a learned position embedding
    attn_gamma: float = 0.0      # word attention's logits: 0 = AttnGAN's dot product; > 0 = this times the cosine
    init_channels: int = 0       # the first stage's channels at 4x4 (0 = the preset's rule)
    d_condition: str = ""        # how D's conditional logits read the sentence: concat | projection ("" = preset's)
    ms_weight: float = 0.0       # MSGAN's mode-seeking term on the last stage (two z of one caption must differ)
    ms_clip: float = 0.0         # saturate its per-pixel distance at this (0 = plain L1)
    class_mask: bool = True      # same-class pairs are not negatives in L_DAMSM (with attributes.class_id)
    hard_negatives: bool = False  # L_DAMSM also ranks each caption's word-swapped copy below the fake
    d_hard_negatives: bool = False  # D also rejects real images with their caption's word-swapped copy
    d_joint_batch: bool = False  # D's batch norms see reals and fakes in one batch (AttnGAN: apart)
    d_contrastive: float = 0.0   # weight of the contrastive D-feature/sentence term (LAFITE's itd; 0 = AttnGAN's)
    contrastive_temp: float = 0.5  # its InfoNCE temperature
    d_r1: float = 0.0            # R1 weight: d_r1 / 2 * ||grad_x D(real)||^2 per stage (0 = AttnGAN's: none)
    d_reg_interval: int = 4      # R1 every N steps (lazy regularisation, scaled by N)
    subset: int = 0              # train on the first N images only (0 = all)
    grad_checkpointing: bool = False  # recompute G's attention stages, D's image codes and the DAMSM image encoder


CONFIG = AttnGanTrainConfig
PRESET_LOOP_DEFAULTS = {
    "test": {"batch": 8, "kimg": 0.032, "tick_kimg": 0.016, "snap": 1, "ema_kimg": 0.01},
    "tiny": {"batch": 32, "kimg": 60.0, "tick_kimg": 4.0, "snap": 5, "ema_kimg": 1.0},
    # AttnGAN's CUB run: 600 epochs of 8855 images, batch 20; its G average (0.999 a step) halves every 14 kimg.
    "paper": {"batch": 20, "kimg": 5313.0, "tick_kimg": 10.0, "snap": 50, "ema_kimg": 14.0},
}
HELP = {
    "data": "training dataset folder or zip (t2i format, with captions); the last stage makes images of its side",
    "damsm": "the frozen DAMSM: a `t2i train damsm` run or snapshot (or AttnGAN's original encoders, converted "
             "with `t2i convert attngan`)",
    "preset": "network sizes and number of stages: test (2 stages), tiny (3 stages, shapes), paper (AttnGAN's CUB "
              "networks, 64/128/256)",
    "g_lr": "generator Adam learning rate (betas 0.5, 0.999)", "d_lr": "discriminators' Adam learning rate",
    "damsm_weight": "lambda of the DAMSM term in G's loss (AttnGAN: 5 for CUB, 50 for COCO)",
    "damsm_stages": "which stages' images the DAMSM term scores: last (AttnGAN's) or all (the earlier stages "
                    "upsampled to the last one's side, a sum over stages), so that the first stage, which lays out "
                    "the scene, gets the text's gradient directly",
    "kl_weight": "weight of conditioning augmentation's KL term",
    "channel_attention": "1/0: add ControlGAN's word-level channel-wise attention to each attention stage",
    "cond_norm": "1/0: conditional batch norm in G: after every batch norm of its stages, a per-sample scale and "
                 "shift computed from CA's code and z (BigGAN's conditional batch norm; DF-GAN's sentence affines), "
                 "zero-initialised, so the sentence and the noise reach every layer and not only the first (AttnGAN: 0)",
    "ca": "1/0: conditioning augmentation: G's sentence code is drawn from N(mu, sigma^2) with the KL term (AttnGAN: "
          "1); 0 takes c = mu, a deterministic code of the sentence, and drops the KL term",
    "pos_attention": "1/0: add a learned embedding of each region's position to the word attention's queries, so "
                     "that regions that look alike can still attend to different words (the upper object to the "
                     "words before 'above'); AttnGAN: 0, its queries are the features alone",
    "attn_gamma": "word attention's logits: 0 takes AttnGAN's dot product of region feature and projected word; a "
                  "value > 0 takes that value times their cosine (as the DAMSM's gamma1), which keeps the attention "
                  "from staying uniform when the dot products are small",
    "init_channels": "channels of the first stage at 4x4, halved at each upsampling (the last one to the stages' "
                     "width): 0 keeps AttnGAN's rule, gf x 2^upsamplings (the paper preset's 512; the tiny preset's "
                     "64, since its first stage is 16px); wider costs little, since those layers are small",
    "d_condition": "how each discriminator's conditional logit reads the sentence: concat (AttnGAN's jointConv, "
                   "the sentence tiled beside the 4x4 features; the paper and test presets) or projection (Miyato & "
                   "Koyama 2018: an inner product of the projected sentence with the pooled features; the tiny "
                   "preset). Default: the preset's",
    "ms_weight": "weight of MSGAN's mode-seeking term on the last stage: two latents z of one caption (same CA "
                 "noise) must give different images; AttnGAN's G otherwise learns to ignore z",
    "ms_clip": "saturate the mode-seeking distance of each pixel at this (images in [-1, 1]; 0 = plain L1), so that "
               "the term does not favour the pair of colours furthest apart",
    "class_mask": "1/0: same-class pairs are not negatives in the DAMSM term (needs attributes.class_id)",
    "hard_negatives": "1/0: the DAMSM term also ranks each fake against its caption with two interchangeable words "
                      "swapped (as `t2i train damsm --hard_negatives 1`), so G is told which attribute goes with "
                      "which object (AttnGAN: 0)",
    "d_hard_negatives": "1/0: each discriminator's mismatched pairs also hold every real image with its own caption "
                        "with two interchangeable words swapped (\"a red circle above a blue square\" -> \"a blue "
                        "circle above a red square\"), so D's conditional logit, and through it G, must check which "
                        "attribute goes with which object (AttnGAN: 0, only other images' captions)",
    "d_joint_batch": "1/0: each discriminator sees a step's real and fake images in one batch, so its batch norms "
                     "normalise both alike (in G's step too, beside the same reals); AttnGAN's run them as two "
                     "batches, where a fault that all fakes share is normalised away with the fake batch's mean",
    "d_contrastive": "weight of a contrastive term on every discriminator (LAFITE's itd, XMC-GAN's): InfoNCE "
                     "between each image's pooled D features and its projected sentence against the batch's other "
                     "sentences, on the real images in D's step and on the fakes in G's, so G is told which caption "
                     "of the batch its image must match, by a critic that keeps learning (AttnGAN: 0; needs "
                     "--d_condition projection)",
    "contrastive_temp": "temperature of that InfoNCE (LAFITE's 0.5)",
    "d_r1": "R1 gradient penalty weight (gamma): gamma / 2 x the squared gradient norm of each discriminator's "
            "unconditional + conditional logit at the real images (AttnGAN: 0, none; StyleGAN2's rule of thumb at "
            "64px and batch 16: 0.05)",
    "d_reg_interval": "apply R1 every N steps, scaled by N (lazy regularisation, StyleGAN2)",
    "subset": "train on the first N images only (0 = all)",
    "grad_checkpointing": "1/0: gradient checkpointing of G's attention stages, each D's image code and the frozen "
                          "DAMSM image encoder: their activations are recomputed in the backward pass, for less "
                          "memory at about a third more compute (the paper preset at 256px; see "
                          "benchmarks/attngan_memory.py)",
    **GAMMA_HELP,
}


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of `t2i train attngan`."""
    from t2i.models.first_stage.trainer import add_config_args

    add_config_args(p, AttnGanTrainConfig, HELP, PRESETS)


def validate(cfg: AttnGanTrainConfig) -> None:
    """Reject options that cannot work, before anything heavy runs."""
    if cfg.preset not in PRESETS:
        raise T2IError(f"unknown AttnGAN preset {cfg.preset!r}; choose from {sorted(PRESETS)}")
    if not cfg.data or not cfg.damsm:
        raise T2IError("t2i train attngan needs --data DATASET and --damsm RUN (train one with `t2i train damsm`)")
    require_dataset(cfg.data, "t2i train attngan")
    if cfg.d_condition not in ("", "concat", "projection"):
        raise T2IError(f"--d_condition {cfg.d_condition!r}: choose concat or projection (or leave it to the preset)")
    if cfg.damsm_stages not in ("last", "all"):
        raise T2IError(f"--damsm_stages {cfg.damsm_stages!r}: choose last or all")
    if cfg.g_lr <= 0 or cfg.d_lr <= 0 or min(cfg.damsm_weight, cfg.kl_weight, cfg.ms_weight, cfg.ms_clip,
                                               cfg.attn_gamma, cfg.init_channels, cfg.d_contrastive, cfg.d_r1) < 0:
        raise T2IError(f"--g_lr {cfg.g_lr}, --d_lr {cfg.d_lr}, --damsm_weight {cfg.damsm_weight}, --kl_weight "
                       f"{cfg.kl_weight}, --ms_weight {cfg.ms_weight}, --ms_clip {cfg.ms_clip}, --attn_gamma "
                       f"{cfg.attn_gamma}, --init_channels {cfg.init_channels}, --d_contrastive {cfg.d_contrastive}, "
                       f"--d_r1 {cfg.d_r1}: learning rates must be positive, the rest non-negative")
    if cfg.contrastive_temp <= 0 or cfg.d_reg_interval < 1:
        raise T2IError(f"--contrastive_temp {cfg.contrastive_temp}, --d_reg_interval {cfg.d_reg_interval}: give a "
                       "positive temperature and an interval of at least 1")


def describe(cfg: AttnGanTrainConfig) -> str:
    """Run-directory description, e.g. shapes64-attngan-tiny."""
    return f"{data_name(cfg.data)}-attngan-{cfg.preset}"


def stage_resolutions(preset: AttnGanConfig, side: int, data: str) -> list[int]:
    """The preset's number of stages, ending at the data's side."""
    n = len(preset.resolutions)
    out = [side // 2 ** (n - 1 - k) for k in range(n)]
    if side & (side - 1) or out[0] < 8 or side > 256:
        raise T2IError(f"{data} has {side}px images; AttnGAN's {n} stages need a power of two from {8 * 2 ** (n - 1)} "
                       "to 256 (`t2i data pack --size` makes one)")
    return out


class AttnGanFamily:
    """Modules G, G_ema, D (one per stage) and the frozen DAMSM; phases D then G, as AttnGAN steps them."""

    name = "attngan"

    def __init__(self, cfg: AttnGanTrainConfig, d, log, init=None):
        self.cfg, self.device = cfg, d.device
        self.damsm = (damsm_from_meta(init.meta["damsm"], init.state_dict("damsm"), d.device) if init is not None
                      else load_damsm(cfg.damsm, d.device))
        self.data = CaptionedImages(cfg.data, cfg.subset, "t2i train attngan", log, cfg.class_mask)
        self.data.keep_known(self.damsm.vocab)
        if cfg.hard_negatives or cfg.d_hard_negatives:
            self.data.use_hard_negatives(log)
        if init is not None:
            net = AttnGanConfig(**init.meta["net"])
        else:
            preset = PRESETS[cfg.preset]
            net = replace(preset, resolutions=stage_resolutions(preset, self.data.dataset.resolution[0], cfg.data),
                          embed_dim=self.damsm.arch.embed_dim, channel_attention=cfg.channel_attention,
                          cond_norm=cfg.cond_norm, ca=cfg.ca,
                          pos_attention=cfg.pos_attention, attn_gamma=cfg.attn_gamma,
                          init_channels=cfg.init_channels or preset.init_channels,
                          d_condition=cfg.d_condition or preset.d_condition)
        if cfg.d_contrastive and net.d_condition != "projection":
            raise T2IError(f"--d_contrastive {cfg.d_contrastive} reads the projection discriminator's features; "
                           f"this run's D reads the sentence by {net.d_condition}: add --d_condition projection")
        if net.resolutions[-1] != self.data.dataset.resolution[0]:
            raise T2IError(f"{cfg.data} has {self.data.dataset.resolution[0]}px images, the snapshot's G makes "
                           f"{net.resolutions[-1]}px; fine-tune on data of its size")
        self.net = net
        self.G = Generator(net).to(d.device)
        self.D = Discriminators(net).to(d.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.G.grad_checkpointing = cfg.grad_checkpointing
        for stage in self.D.stages:
            stage.grad_checkpointing = cfg.grad_checkpointing
        self.modules = {"G": self.G, "D": self.D, "G_ema": self.G_ema, "damsm": self.damsm}
        self.ema = {"G_ema": "G"}
        grid = grid_picks(self.data.n)
        self.grid_prompts = [caps[0] for caps in self.data.captions[grid][:8]]
        count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
        log(f"AttnGAN {cfg.preset}: stages {'/'.join(map(str, net.resolutions))}, G {count(self.G):.2f}M, D "
            f"{count(self.D):.2f}M parameters; {self.data.n} images; DAMSM vocabulary {len(self.damsm.vocab)} words, "
            f"{self.damsm.words} words per caption")
        log("sample grid prompts (columns): " + " | ".join(self.grid_prompts))

    def phases(self) -> list[Phase]:
        adam = lambda m, lr: torch.optim.Adam(m.parameters(), lr=lr, betas=(0.5, 0.999))  # noqa: E731
        d_opt = adam(self.D, self.cfg.d_lr)
        reg = [Phase("D_reg", self.D, d_opt, self.cfg.d_reg_interval)] if self.cfg.d_r1 > 0 else []
        return [Phase("D", self.D, d_opt), *reg, Phase("G", self.G, adam(self.G, self.cfg.g_lr))]

    def contrastive(self, ids: torch.Tensor) -> Contrastive | None:
        """The contrastive D term of a batch with these encoded captions (None when off)."""
        if not self.cfg.d_contrastive:
            return None
        return Contrastive(self.cfg.d_contrastive, self.cfg.contrastive_temp, same_caption(ids.to(self.device)))

    def batches(self, step, batch, rank, world, seed):
        fetch = lambda idx, g: self.data.fetch(idx, g, self.damsm.vocab, self.damsm.words)  # noqa: E731
        return step_batches(self.data.n, fetch, step, batch, seed, rank)

    @torch.no_grad()
    def condition(self, ids: torch.Tensor, lengths: torch.Tensor) -> WordCondition:
        """The frozen DAMSM text encoder's features of a batch of captions."""
        words, sentence = self.damsm.text_encoder(ids.to(self.device), lengths.to(self.device))
        return WordCondition(sentence, words, lengths.to(self.device))

    def stage_reals(self, batch: dict) -> list[torch.Tensor]:
        """The batch's real images at each stage's side (area-downsampled), in [-1, 1]."""
        real = to_model(batch["image"].to(self.device))
        return [real if r == real.shape[-1] else F.interpolate(real, size=(r, r), mode="area")
                for r in self.net.resolutions]

    def loss(self, phase: Phase, batch: dict):
        cond = self.condition(batch["ids"], batch["lengths"])
        if phase.name == "D_reg":
            penalty = sum(r1_penalty(D, r, cond.sentence) for D, r in zip(self.D.stages, self.stage_reals(batch)))
            return penalty * (self.cfg.d_r1 / 2) * phase.interval, {"Loss/D_r1": penalty.detach()}
        z = torch.randn(len(cond.sentence), self.net.z_dim, device=self.device)
        if phase.name == "D":
            with torch.no_grad():
                fakes = self.G(z, cond).images
            ids = batch["ids"]
            wrong = (ids[:-1] != ids[1:]).any(-1).float().to(self.device)    # mismatched pairs (k, k + 1)
            hard = None
            if self.cfg.d_hard_negatives:
                negatives = batch_hard_negatives(batch, self.damsm.text_encoder, self.device)
                hard = (negatives.sentence, negatives.valid)
            total, stats, term = 0.0, {}, self.contrastive(ids)
            for k, (D, fake, r) in enumerate(zip(self.D.stages, fakes, self.stage_reals(batch))):
                loss, parts = d_stage_loss(D, r, fake, cond.sentence, wrong, hard, self.cfg.d_joint_batch, term)
                total = total + loss
                stats |= {f"D{k}/{name}": v for name, v in parts.items()}
            return total, {"Loss/D": total.detach(), **stats}
        eps = torch.randn(len(z), self.net.c_dim, device=self.device)     # CA's noise, drawn here for the ms term
        out = self.G(z, cond, eps)
        reals = self.stage_reals(batch) if self.cfg.d_joint_batch else [None] * len(out.images)
        term = self.contrastive(batch["ids"])
        adv = sum(g_stage_loss(D, fake, cond.sentence, r, term) for D, fake, r in zip(self.D.stages, out.images, reals))
        masked = batch_negatives(batch["ids"].to(self.device), batch.get("class_id"))
        with torch.no_grad():
            negatives = batch_hard_negatives(batch, self.damsm.text_encoder, self.device) if self.cfg.hard_negatives \
                else None
        side = out.images[-1].shape[-2:]
        match = 0.0
        for img in out.images if self.cfg.damsm_stages == "all" else out.images[-1:]:
            img = img if img.shape[-2:] == side else F.interpolate(img, size=side, mode="bilinear", align_corners=False)
            regions, glob = checkpointed(self.damsm.image_encoder, img, enabled=self.cfg.grad_checkpointing)
            term, parts = damsm_loss(cond.words, cond.sentence, cond.lengths, regions, glob, self.cfg, masked,
                                     negatives)
            match = match + term        # parts: the last stage's (the loop ends on it)
        kl = kl_loss(out.mu, out.logvar) if self.G.cfg.ca else torch.zeros((), device=self.device)
        total = adv + self.cfg.damsm_weight * match + self.cfg.kl_weight * kl
        stats = {"Loss/G_adv": adv.detach(), "Loss/G_damsm": match.detach(), "Loss/G_kl": kl.detach(),
                 "Damsm/fake_top1": parts["Damsm/batch_top1"]}
        if out.attention:      # 1.00: every region reads the caption's mean word (the attention does nothing)
            stats["G/attention_entropy"] = attention_entropy(out.attention[-1].detach(), cond.lengths)
        if "Damsm/beats_hard_negative" in parts:
            stats["Damsm/fake_beats_hard_negative"] = parts["Damsm/beats_hard_negative"]
        if self.cfg.ms_weight > 0:
            def second(z2: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:   # G's last stage for those captions
                return self.G(z2, WordCondition(*(t[rows] for t in cond)), eps[rows]).images[-1]

            rows = torch.arange(len(z), device=self.device)
            ms = mode_seeking(second, out.images[-1], z, rows, clip=self.cfg.ms_clip)
            total = total + self.cfg.ms_weight * ms
            stats["Loss/G_ms"] = ms.detach()
        return total, stats

    @torch.no_grad()
    def _grid(self, seeds: int):
        """G_ema's output for the grid prompts (columns) x seeds (rows), and the prompts' words and lengths."""
        ids, lengths = self.damsm.vocab.encode(self.grid_prompts, self.damsm.words)
        cond = self.condition(ids, lengths)
        n = len(self.grid_prompts)
        g = torch.Generator().manual_seed(0)
        z = torch.randn(seeds, self.net.z_dim, generator=g).repeat_interleave(n, 0).to(self.device)
        eps = torch.randn(seeds, self.net.c_dim, generator=g).repeat_interleave(n, 0).to(self.device)
        rep = WordCondition(*(t.repeat(seeds, *[1] * (t.dim() - 1)) for t in cond))
        return self.G_ema(z, rep, eps), ids, lengths

    def sample_images(self) -> torch.Tensor:
        """8 seeds (rows) x 8 grid prompts (columns), the last stage of G_ema."""
        out, _, _ = self._grid(8)
        return to_uint8(out.images[-1].float().cpu())

    def on_snapshot(self, path) -> None:
        """stages-<kimg>.png (a row per stage) and attention-<kimg>.png beside the snapshot."""
        from t2i.models.attngan.maps import attention_rows

        out, ids, lengths = self._grid(1)
        side = self.net.resolutions[-1]
        rows = [F.interpolate(img.float(), size=(side, side), mode="nearest") for img in out.images]
        kimg = path.name.split("-")[-1]
        save_grid(to_uint8(torch.cat(rows).cpu()), path.parent / f"stages-{kimg}.png", nrow=len(self.grid_prompts))
        if out.attention:
            last = out.attention[-1].float().cpu()
            words = [self.damsm.vocab.decode(ids[k], int(lengths[k])) for k in range(len(ids))]
            maps = [last[k, :int(lengths[k])] for k in range(len(ids))]
            attention_rows(to_uint8(out.images[-1].float().cpu()), words, maps).save(
                path.parent / f"attention-{kimg}.png")

    def real_images(self) -> torch.Tensor:
        return self.data.images[:64]

    def meta(self) -> dict:
        return {"family": "attngan", "config": asdict(self.cfg), "net": self.net.to_dict(),
                "damsm": self.damsm.meta(), "vocab": sorted(self.damsm.vocab.words[1:])}


def build(cfg: AttnGanTrainConfig, loop, d, log, init=None) -> AttnGanFamily:
    """The AttnGAN family object for the shared loop."""
    return AttnGanFamily(cfg, d, log, init)
