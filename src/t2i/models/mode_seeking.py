"""MSGAN's mode-seeking term, shared by the GAN families (LAFITE, AttnGAN): a generator that ignores its noise
draws one image per condition, which no accuracy figure sees; this term makes two latents of one condition
differ."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mode_seeking(G, img: torch.Tensor, z: torch.Tensor, c: torch.Tensor, tau: float = 0.0, pool: int = 0,
                 clip: float = 0.0, eps: float = 1e-5) -> torch.Tensor:
    """MSGAN's mode-seeking term (Mao et al. 2019, Eq. 3): for the first half of the batch, a second latent z2
    of the same condition; maximise mean|G(z1, c) - G(z2, c)| / mean|z1 - z2| by minimising its inverse.
    `G(z2, c[:n])` gives the images of the first n conditions; `c` is whatever G reads (a family whose condition
    is not one tensor passes row indices and a G that looks them up).

    tau > 0 caps the ratio (as DSGAN, Yang et al. 2019, caps theirs): images that already differ that much
    get no further push. pool > 0 measures the distance on images average-pooled to pool x pool, so that
    only their coarse layout (background, placement) is pushed apart, not the details a prompt names.

    clip > 0 saturates each pixel's distance (mean |a - b| over its channels) at clip. The plain L1 rewards two
    images more the further apart their colours lie, so it prefers the pair of backgrounds (or objects' places)
    that is furthest apart, and starves a colour in the middle; saturated, every change of a pixel counts alike
    once it exceeds clip."""
    n = max(1, len(z) // 2)
    z2 = torch.randn_like(z[:n])
    a, b = img[:n], G(z2, c[:n])
    if pool:
        a, b = F.adaptive_avg_pool2d(a, pool), F.adaptive_avg_pool2d(b, pool)
    d = (a - b).abs().float().mean(1)                                          # (n, H, W) per pixel
    if clip > 0:
        d = d.clamp(max=clip)
    ratio = d.mean() / (z[:n] - z2).abs().float().mean()
    if tau > 0:
        ratio = ratio.clamp(max=tau)
    return 1.0 / (ratio + eps)
