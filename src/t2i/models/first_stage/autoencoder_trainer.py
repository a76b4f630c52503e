"""`t2i train autoencoder`: the KL autoencoder first stage (latent diffusion, Rombach et al. 2022) on the
shared first-stage trainer.

The Gaussian bottleneck decodes a posterior sample and adds the KL to the unit Gaussian (weight 1e-6) to
the shared objective. A preset with `measure_scale` (tiny, test) gets its latent scale factor measured at
every snapshot: 1 / std of latent samples z ~ q(z|x) of up to 1000 training images, in closed form
(`sample_stats`; LDM's scale_by_std takes the std of one batch of samples), recorded in the snapshot's
`net.scale_factor`; paper256 keeps LDM's 0.18215.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from t2i.data.loader import data_name
from t2i.data.transforms import to_model, to_uint8
from t2i.models.first_stage import trainer as fs
from t2i.models.first_stage.autoencoder_kl import PRESETS, KLAutoencoder, KLConfig
from t2i.models.first_stage.objective import KLLoss, KLLossWeights
from t2i.models.first_stage.trainer import FirstStageFamily, FirstStageOptions


@dataclass
class AutoencoderTrainConfig(KLLossWeights, FirstStageOptions):
    """Options of `t2i train autoencoder` (the shared options, loss weights inherited from KLLossWeights)."""


CONFIG = AutoencoderTrainConfig
TITLE = "KL autoencoder"
PRESET_LOOP_DEFAULTS = {
    "tiny": {"batch": 16, "kimg": 100.0, "tick_kimg": 4.0, "snap": 10},
    "test": {"batch": 8, "kimg": 0.032, "tick_kimg": 0.016, "snap": 1},
    "paper256": {"batch": 12, "kimg": 12000.0, "tick_kimg": 4.0, "snap": 50},
}
HELP = {
    **fs.common_help(TITLE, PRESETS),
    "preset": "network preset: tiny (f4, 16x16x4 latents at 64px, scale factor measured on the data), test "
              "(f2, for tests), paper256 (LDM's KL-f8: 32x32x4 latents at 256px, scale factor 0.18215)",
    "disc_weight": "factor on the adaptive weight of the adversarial term (LDM's autoencoders: 0.5)",
    "kl_weight": "weight of KL(q(z|x) || N(0, I)), summed over the latent, against the reconstruction summed "
                 "over pixels (LDM: 1e-6; larger pulls the latents towards a unit Gaussian and blurs)",
}


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of `t2i train autoencoder`; each shows its default."""
    fs.add_config_args(p, AutoencoderTrainConfig, HELP, PRESETS)


def validate(cfg: AutoencoderTrainConfig) -> None:
    """Reject options that cannot work, before anything heavy runs."""
    fs.validate_options(cfg, PRESETS, TITLE, ("kl_weight",))


def describe(cfg: AutoencoderTrainConfig) -> str:
    """Run-directory description, e.g. shapes64-autoencoder-tiny."""
    return f"{data_name(cfg.data)}-autoencoder-{cfg.preset}"


def sample_stats(mean: torch.Tensor, logvar: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation over every element of latents z ~ N(mean, exp(logvar)), in closed form (no
    RNG): E z = E mean, Var z = Var(mean) + E exp(logvar) (law of total variance). The samples, not the
    means, are what a second stage sees; early in training the posterior's own spread is most of it."""
    m = mean.double()
    var = m.var(unbiased=False) + logvar.double().exp().mean()
    return float(m.mean()), float(var.sqrt())


@torch.no_grad()
def posteriors(model: KLAutoencoder, images: torch.Tensor, device, batch: int = 100, round_trips: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(mean, logvar) of q(z | x) for uint8 images (N, 3, H, W) and, with `round_trips`, the uint8 images decoded
    from the means (else None), all on the CPU."""
    was_training = model.training
    model.eval()
    means, logvars, recs = [], [], []
    for chunk in images.split(batch):
        mean, logvar = model.moments(to_model(chunk.to(device)))
        means.append(mean.float().cpu())
        logvars.append(logvar.float().cpu())
        if round_trips:
            recs.append(to_uint8(model.decode(mean).cpu()))
    model.train(was_training)
    return torch.cat(means), torch.cat(logvars), torch.cat(recs) if round_trips else None


class AutoencoderFamily(FirstStageFamily):
    """Modules `autoencoder` (diffusers' AutoencoderKL inside) and `D` (patch discriminator); data = images only."""

    name, title, presets, net_config = "autoencoder", TITLE, PRESETS, KLConfig

    def build_model(self, net: KLConfig) -> KLAutoencoder:
        return KLAutoencoder(net)

    def build_objective(self, perceptual) -> KLLoss:
        return KLLoss(self.model, self.D, perceptual, self.cfg)

    def describe_latents(self) -> str:
        net, side = self.net, self.net.latent_side
        scale = "measured at each snapshot" if net.measure_scale else net.scale_factor
        return f"{side}x{side}x{net.latent_channels} latents (scale factor {scale}); KL weight {self.cfg.kl_weight}"

    def meta(self) -> dict:
        """The snapshot's description; with measure_scale, the scale factor of the current weights first."""
        if self.net.measure_scale:
            mean, logvar, _ = posteriors(self.model, self.images[:1000], self.device)
            self.net.scale_factor = 1.0 / max(sample_stats(mean, logvar)[1], 1e-8)
        return super().meta()


def build(cfg: AutoencoderTrainConfig, loop, d, log, init=None) -> AutoencoderFamily:
    """The KL autoencoder family object for the shared loop."""
    return AutoencoderFamily(cfg, loop, d, log, init)


def load_autoencoder_snapshot(path, device="cpu") -> KLAutoencoder:
    """A frozen KL autoencoder from a `t2i train autoencoder` run or snapshot (its cfg.scale_factor as recorded)."""
    return fs.load_frozen(path, "autoencoder", lambda net: KLAutoencoder(KLConfig.from_dict(net)), device)


def reconstruction_metrics(model: KLAutoencoder, images: torch.Tensor, device) -> dict:
    """Mean per-image PSNR (dB, on uint8 pixels) of round trips through the posterior mean, the latent samples'
    mean and std over those images (`sample_stats`), the posterior's mean std and the recorded scale factor."""
    mean, logvar, rec = posteriors(model, images, device, round_trips=True)
    z_mean, z_std = sample_stats(mean, logvar)
    return {"psnr_db": float(fs.psnr_db(images, rec).mean()), "latent_mean": z_mean, "latent_std": z_std,
            "posterior_std": float((0.5 * logvar).exp().mean()), "scale_factor": model.cfg.scale_factor,
            "n": len(images)}


def evaluate(name: str, snapshot: Path, cfg: AutoencoderTrainConfig, device) -> dict:
    """Metrics of a KL autoencoder snapshot: `psnr` (reconstruction PSNR and latent statistics over up to
    1000 training images, the first ones of shards); `shapes_recon` (shapes-oracle accuracy of round trips
    of fresh scenes)."""
    return fs.evaluate_first_stage(name, snapshot, cfg, device, TITLE, load_autoencoder_snapshot,
                                   lambda model, images: reconstruction_metrics(model, images, device))
