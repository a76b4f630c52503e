"""The patch discriminator both first stages train against, and the image sides it lets them train at.

PatchGAN (pix2pix, Isola et al. 2017) as taming-transformers' NLayerDiscriminator, which LDM's KL
autoencoders reuse unchanged: layer names `main.N` follow taming's `loss.discriminator.main.N`.
"""

from __future__ import annotations

import torch
from torch import nn

# Fewest latent positions per image side a first stage is built for: a 4x4 grid is still a layout to model.
MIN_LATENT_SIDE = 4


class FirstStageSides:
    """Image sides a first stage trains at, mixed into its config dataclass (which defines `factor`,
    the encoder's downsampling, and `disc_layers`)."""

    factor: int
    disc_layers: int

    @property
    def min_side(self) -> int:
        """Smallest image (or crop) side the patch discriminator scores: its disc_layers stride-2 and two
        stride-1 4x4 convolutions (padding 1) leave no patch below 3 * 2 ** disc_layers pixels."""
        return 3 * 2 ** self.disc_layers

    def resolutions(self, up_to: int = 4096) -> list[int]:
        """The image sides t2i trains at: powers of two with at least MIN_LATENT_SIDE latents a side that the
        patch discriminator can score, up to `up_to` (the networks are convolutional: no upper bound)."""
        low = max(self.factor * MIN_LATENT_SIDE, self.min_side)
        return [2 ** i for i in range(int(up_to).bit_length()) if low <= 2 ** i <= up_to]


class PatchDiscriminator(nn.Module):
    """NLayerDiscriminator-style PatchGAN: (B, 3, R, R) -> logits (B, 1, h', w'), one per patch.

    conv4x4/2 + lrelu, then (disc_layers - 1) x [conv4x4/2, norm, lrelu], one conv4x4/1 + norm + lrelu,
    and a conv4x4/1 to one channel; channels double per layer up to 8 x disc_ndf. `cfg` is a first stage's
    config (VQGANConfig, KLConfig): in_channels, disc_ndf, disc_layers, disc_norm and norm_groups.
    """

    def __init__(self, cfg):
        super().__init__()
        if cfg.disc_norm not in ("batch", "group"):
            raise ValueError(f"disc_norm {cfg.disc_norm!r} must be 'batch' or 'group'")
        ndf = cfg.disc_ndf

        def norm(c):
            if cfg.disc_norm == "batch":
                return nn.BatchNorm2d(c)
            return nn.GroupNorm(min(cfg.norm_groups, c), c, eps=1e-6, affine=True)

        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, cfg.disc_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < cfg.disc_layers else 1
            # No bias before a norm layer, whose shift replaces it.
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False), norm(ndf * mult),
                       nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():   # pix2pix initialisation, as taming's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)
