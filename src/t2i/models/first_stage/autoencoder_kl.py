"""The KL autoencoder first stage of latent diffusion (Rombach et al. 2022, arXiv 2112.10752, Sec. 3.1 and
App. G): architecture only, no losses.

The network is diffusers' `AutoencoderKL` (the CompVis/Stable Diffusion VAE: ResNet levels, middle
self-attention, `quant_conv` to 2 x latent_channels moments), configured by t2i presets. The encoder
maps an image (B, 3, H, W) in [-1, 1] to the mean and log-variance of a diagonal Gaussian posterior
q(z | x) over latents (B, latent_channels, H / f, W / f), f = 2 ** (len(block_out_channels) - 1); the
decoder maps a latent back to an image. A second stage works on latents multiplied by `scale_factor`
(unit variance; LDM Sec. 4.3.2). The loss (reconstruction, perceptual, KL, adversarial) and the
posterior's sampling live in `objective.py`; the patch discriminator in `discriminator.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from t2i.models.first_stage.discriminator import FirstStageSides


@dataclass
class KLConfig(FirstStageSides):
    """Architecture of the KL autoencoder (diffusers' AutoencoderKL arguments) and of its patch
    discriminator; round-trips to JSON."""

    resolution: int = 256            # image side (`t2i train autoencoder`: the data's, any of `resolutions()`)
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)   # one level each; f = 2 ** (len - 1)
    layers_per_block: int = 2        # ResNet blocks per encoder level (the decoder has one more)
    latent_channels: int = 4
    norm_groups: int = 32            # GroupNorm groups (diffusers' norm_num_groups)
    mid_attention: bool = True       # self-attention in the middle blocks, at the latent grid
    # z_model = scale_factor * z: the second stage sees latents of about unit variance. With
    # measure_scale, `t2i train autoencoder` sets it to 1 / std of the training data's latents at every
    # snapshot (LDM's scale_by_std) and the value here is a placeholder until then.
    scale_factor: float = 0.18215
    measure_scale: bool = False
    disc_ndf: int = 64               # discriminator channels of the first layer
    disc_layers: int = 3             # stride-2 convolutions of the discriminator
    disc_norm: str = "batch"         # batch | group

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)

    @property
    def factor(self) -> int:
        """Downsampling factor f: an H x W image becomes an H/f x W/f latent."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def latent_side(self) -> int:
        """Latent positions per side for an image of `resolution` pixels."""
        return self.resolution // self.factor

    def to_dict(self) -> dict:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> KLConfig:
        return cls(**d)


PRESETS: dict[str, KLConfig] = {
    # CPU: 64px shapes, f4 -> 16x16x4 latents (a small object keeps about 4x4 positions, as in the tiny VQGAN);
    # 32, 64, 64 channels, one block a level, 0.95M parameters. The tiny VQGAN's 16, 32, 64 (0.7M) was not
    # seed-robust: at 72 kimg of benchmarks/ldm_shapes.py's recipe seed 1 sat on a plateau (L1 near 0.11 from 8 to
    # 30 kimg) and its round trips kept 54% / 47% of scenes (seed 0: 95% / 98%); these widths reach 99.4% / 98.8%,
    # 99.6% / 99.8% and 99.8% / 99.6% on seeds 0, 1, 2 (see that benchmark). Its latents' scale is measured on
    # the data, not fixed: a small network's latent variance depends on its training, and 0.18215 belongs to the
    # KL-f8 below.
    "tiny": KLConfig(resolution=64, block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=4,
                     norm_groups=8, scale_factor=1.0, measure_scale=True, disc_ndf=16, disc_layers=3),
    # Smallest possible, for unit tests: 16px, f2 -> 8x8x4 latents.
    "test": KLConfig(resolution=16, block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
                     norm_groups=4, scale_factor=1.0, measure_scale=True, disc_ndf=8, disc_layers=2),
    # LDM's KL-f8 (CompVis first_stage_models/kl-f8, Stable Diffusion's VAE): ch 128, ch_mult 1,2,4,4, 2 res
    # blocks, 4 latent channels (256px -> 32x32x4), scale factor 0.18215; the discriminator of its config.
    "paper256": KLConfig(resolution=256, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                         latent_channels=4, norm_groups=32, scale_factor=0.18215),
}


class KLAutoencoder(nn.Module):
    """Images <-> diagonal Gaussian posteriors over latents; `vae` is diffusers' AutoencoderKL."""

    def __init__(self, cfg: KLConfig):
        super().__init__()
        from diffusers import AutoencoderKL   # a few seconds to import: only where the network is built

        self.cfg = cfg
        levels = len(cfg.block_out_channels)
        self.vae = AutoencoderKL(
            in_channels=cfg.in_channels, out_channels=cfg.out_channels,
            down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
            latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_groups, sample_size=cfg.resolution,
            scaling_factor=cfg.scale_factor, mid_block_add_attention=cfg.mid_attention)

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of q(z | x), each (B, latent_channels, R/f, R/f), for images x in [-1, 1];
        logvar clamped to [-30, 20] as CompVis and diffusers do."""
        posterior = self.vae.encode(x).latent_dist
        return posterior.mean, posterior.logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in about [-1, 1] from unscaled latents z (B, latent_channels, h, w)."""
        return self.vae.decode(z).sample

    def last_layer(self) -> torch.Tensor:
        """The decoder's output convolution, where the adversarial term's adaptive weight is measured."""
        return self.vae.decoder.conv_out.weight

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Posterior means (B, latent_channels, h, w) of images in [-1, 1], unscaled."""
        return self.moments(images)[0]

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Round trip images -> posterior mean -> images, all in [-1, 1]."""
        return self.decode(self.encode(images))
