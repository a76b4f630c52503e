"""`t2i train vqgan`: the VQGAN first stage (DALL-E's image tokens) on the shared first-stage trainer.

The vector-quantised bottleneck adds the codebook/commitment loss and the dead-code restart (run once per
G step) to the shared objective, and optionally starts the codes on the first batch's encoder outputs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from t2i.data.loader import data_name
from t2i.data.transforms import to_model, to_uint8
from t2i.errors import T2IError
from t2i.models.first_stage import trainer as fs
from t2i.models.first_stage.objective import VQGANLoss, VQGANLossWeights
from t2i.models.first_stage.trainer import FirstStageFamily, FirstStageOptions
from t2i.models.first_stage.vqgan import PRESETS, VQGAN, VQGANConfig, code_usage
from t2i.training.loop import Phase


@dataclass
class VQGANTrainConfig(VQGANLossWeights, FirstStageOptions):
    """Options of `t2i train vqgan` (the shared options, loss weights inherited from VQGANLossWeights)."""

    codebook_init: str = "uniform"  # uniform (taming) | data: codes start on the first batch's encoder outputs


CONFIG = VQGANTrainConfig
PRESET_LOOP_DEFAULTS = {
    "tiny": {"batch": 16, "kimg": 200.0, "tick_kimg": 4.0, "snap": 10},
    "test": {"batch": 8, "kimg": 0.032, "tick_kimg": 0.016, "snap": 1},
    "paper": {"batch": 12, "kimg": 12000.0, "tick_kimg": 4.0, "snap": 50},
}
HELP = {
    **fs.common_help("VQGAN", PRESETS),
    "preset": f"network preset: {', '.join(PRESETS)}",
    "codebook_init": "where a new model's codes start: uniform (taming's small uniform values) or data (on "
                     "random encoder outputs of the first batch; keeps a deep encoder from starting on one code)",
    "beta": "commitment weight: ||z - sg[z_q]||^2 counts beta times",
    "codebook_weight": "weight of the codebook + commitment loss",
    "restart_patience": "re-initialise codes unused for this many steps from encoder outputs (0 = never)",
}


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of `t2i train vqgan`; each shows its default."""
    fs.add_config_args(p, VQGANTrainConfig, HELP, PRESETS)


def validate(cfg: VQGANTrainConfig) -> None:
    """Reject options that cannot work, before anything heavy runs."""
    fs.validate_options(cfg, PRESETS, "VQGAN", ("beta", "codebook_weight", "restart_patience"))
    if cfg.codebook_init not in ("uniform", "data"):
        raise T2IError(f"--codebook_init {cfg.codebook_init!r}: choose uniform or data")


def describe(cfg: VQGANTrainConfig) -> str:
    """Run-directory description, e.g. shapes64-vqgan-tiny."""
    return f"{data_name(cfg.data)}-vqgan-{cfg.preset}"


class VQGANFamily(FirstStageFamily):
    """Modules `vqgan` (encoder, codebook, decoder) and `D` (patch discriminator); data = images only."""

    name, title, presets, net_config = "vqgan", "VQGAN", PRESETS, VQGANConfig

    def __init__(self, cfg: VQGANTrainConfig, loop, d, log, init=None):
        super().__init__(cfg, loop, d, log, init)
        self.data_init = init is None and cfg.codebook_init == "data"

    def build_model(self, net: VQGANConfig) -> VQGAN:
        return VQGAN(net)

    def build_objective(self, perceptual) -> VQGANLoss:
        return VQGANLoss(self.model, self.D, perceptual, self.cfg)

    def describe_latents(self) -> str:
        side = self.net.token_side
        return f"{side}x{side} tokens of {self.net.n_embed} codes"

    def loss(self, phase: Phase, batch: dict):
        if phase.name == "G_main" and self.data_init:  # once, before the first step of a new model (never on resume)
            with torch.no_grad():
                x = to_model(batch["image"].to(self.device))
                self.model.quantize.init_codebook(self.model.encode_latents(x))
            self.data_init = False
        return super().loss(phase, batch)


def build(cfg: VQGANTrainConfig, loop, d, log, init=None) -> VQGANFamily:
    """The VQGAN family object for the shared loop."""
    return VQGANFamily(cfg, loop, d, log, init)


def load_vqgan_snapshot(path, device="cpu") -> VQGAN:
    """A frozen VQGAN from a `t2i train vqgan` run or snapshot."""
    return fs.load_frozen(path, "vqgan", lambda net: VQGAN(VQGANConfig.from_dict(net)), device)


@torch.no_grad()
def reconstruction_metrics(vqgan: VQGAN, images: torch.Tensor, device, batch: int = 50) -> dict:
    """Mean per-image PSNR (dB, on uint8 pixels) of reconstructions, and codebook usage over all tokens."""
    psnr, ids = [], []
    for real in images.split(batch):
        tokens = vqgan.encode(to_model(real.to(device)))
        psnr.append(fs.psnr_db(real, to_uint8(vqgan.decode_ids(tokens).cpu())))
        ids.append(tokens.cpu())
    usage = code_usage(torch.cat(ids), vqgan.cfg.n_embed)
    used = int(usage["VQ/used_codes"])
    return {"psnr_db": float(torch.cat(psnr).mean()), "used_codes": used,
            "usage": used / vqgan.cfg.n_embed, "perplexity": float(usage["VQ/perplexity"]), "n": len(images)}


def evaluate(name: str, snapshot: Path, cfg: VQGANTrainConfig, device) -> dict:
    """Metrics of a VQGAN snapshot: `psnr` (reconstruction PSNR and codebook usage over up to 1000
    training images, the first ones of shards); `shapes_recon` (shapes-oracle accuracy of round trips of
    fresh scenes)."""
    return fs.evaluate_first_stage(name, snapshot, cfg, device, "VQGAN", load_vqgan_snapshot,
                                   lambda model, images: reconstruction_metrics(model, images, device))
