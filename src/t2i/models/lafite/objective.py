"""LAFITE's objective: conditions from CLIP features, GAN losses, R1, path length, itd and itc.

References are to the LAFITE paper (arXiv 2111.13792) and StyleGAN2 (arXiv 1912.04958).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from t2i.clip.loss import info_nce
from t2i.models.mode_seeking import mode_seeking


def unit_noise_like(f: torch.Tensor) -> torch.Tensor:
    """e = n / ||n||, n ~ N(0, I), one per row."""
    return F.normalize(torch.randn_like(f), dim=-1)


def pseudo_text_features(img_fts: torch.Tensor, noise: float = 0.75) -> torch.Tensor:
    """Language-free pseudo text feature: normalize((1 - noise) * normalize(f) + noise * e).

    With noise 0.75 this is the paper's h' = h + xi * e * ||h|| / ||e|| with xi = 3 (Sec. 3.2),
    i.e. cos(f', f) ~ 0.32, about the image-text cosine of a real CLIP.
    """
    return F.normalize((1 - noise) * F.normalize(img_fts, dim=-1) + noise * unit_noise_like(img_fts), dim=-1)


def perturbed_text_features(txt_fts: torch.Tensor, noise: float = 0.1) -> torch.Tensor:
    """Ground-truth caption feature with a little noise: normalize(0.9 * t + 0.1 * e)."""
    return F.normalize((1 - noise) * F.normalize(txt_fts, dim=-1) + noise * unit_noise_like(txt_fts), dim=-1)


def mix_conditions(img_fts: torch.Tensor, txt_fts: torch.Tensor, mixing_prob: float,
                   pseudo_noise: float = 0.75, text_noise: float = 0.1) -> torch.Tensor:
    """Per sample: pseudo text feature with probability mixing_prob, else the real caption feature."""
    use_pseudo = (torch.rand(len(img_fts), device=img_fts.device) < mixing_prob)[:, None]
    if mixing_prob >= 1.0:
        return pseudo_text_features(img_fts, pseudo_noise)
    if mixing_prob <= 0.0:
        return perturbed_text_features(txt_fts, text_noise)
    return torch.where(use_pseudo, pseudo_text_features(img_fts, pseudo_noise),
                       perturbed_text_features(txt_fts, text_noise))


def random_crop_resize(img: torch.Tensor, min_scale: float, size: int) -> torch.Tensor:
    """One random square crop of side in [min_scale, 1] x image size per batch, resized to `size`."""
    H = img.shape[-1]
    s = int(round(H * float(torch.empty(()).uniform_(min_scale, 1.0))))
    y, x = (int(torch.randint(0, H - s + 1, ())) for _ in range(2))
    crop = img[..., y:y + s, x:x + s]
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=s > size)


@dataclass
class LossWeights:
    """Weights of LAFITE's loss terms (names as the original's flags)."""

    gamma: float = 0.1           # R1 weight: gamma / 2 * ||grad D(real)||^2
    itd: float = 10.0            # contrastive D-features <-> condition
    itd_g: float = -1.0          # G's weight on itd (of its fakes' D features); < 0 = the same as itd
    itc: float = 10.0            # contrastive CLIP(fake) <-> condition (G only)
    temp: float = 0.5            # contrastive temperature
    pl_weight: float = 0.0       # StyleGAN2 path-length regulariser (0 = off)
    itc_crop_min: float = 0.5    # itc crops a random 0.5..1 square of the fake before CLIP
    ms_weight: float = 0.0       # mode-seeking term (MSGAN): pushes two latents of one condition apart (0 = off)
    ms_tau: float = 0.0          # stop pushing once the image/latent distance ratio reaches tau (0 = never stop)
    ms_pool: int = 0             # measure the image distance on images average-pooled to this side (0 = full)
    ms_clip: float = 0.0         # saturate each pixel's distance at this (0 = plain L1): "differs", not "how much"
    imle_weight: float = 0.0     # pull, for each real, the nearest of imle_k fakes of its caption towards it (0 = off)
    imle_k: int = 4              # fakes drawn per real for that pull
    imle_pool: int = 8           # side of the average-pooled images it compares (the layout and colours, not details)


def nearest_fake_pull(G, real: torch.Tensor, c: torch.Tensor, k: int, pool: int, n: int) -> torch.Tensor:
    """IMLE's coverage term (Li & Malik 2018), for a condition: for each of the first n reals, draw k fakes of its
    caption, find the one nearest to it (mean squared distance of images average-pooled to pool x pool) and pull
    that one towards it. A GAN's gradient moves samples to where D looks real; a mode that no sample is near gets no
    pull, so the generator can drop it for good. This term pulls, for every real, some sample of the same caption,
    so every mode of the data keeps samples near it. Returns the mean distance to the nearest fakes."""
    n = min(n, len(real))
    z = torch.randn(n * k, G.cfg.z_dim, device=real.device)
    fakes = F.adaptive_avg_pool2d(G(z, c[:n].repeat_interleave(k, 0)), pool).float().reshape(n, k, -1)
    target = F.adaptive_avg_pool2d(real[:n], pool).float().reshape(n, 1, -1)
    d = (fakes - target).square().mean(-1)                                     # (n, k)
    return d.min(1).values.mean()


class LafiteLoss:
    """The four phase losses; `c` is the (B, c_dim) unit condition built by `mix_conditions`."""

    def __init__(self, G, D, clip, w: LossWeights):
        self.G, self.D, self.clip, self.w = G, D, clip, w
        self.pl_mean = torch.zeros([])

    def g_main(self, z: torch.Tensor, c: torch.Tensor, real: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Non-saturating G loss + itd (D features of fakes) + itc (CLIP features of fakes) [+ mode-seeking, + the
        nearest-fake pull towards `real`]."""
        img = self.G(z, c, track_w_avg=True)
        logit, fts = self.D(img, c)
        loss = F.softplus(-logit).mean()
        stats = {"Loss/G/adv": loss.detach(), "Scores/fake": logit.detach().mean()}
        itd_g = self.w.itd if self.w.itd_g < 0 else self.w.itd_g
        if itd_g > 0:
            itd = info_nce(F.normalize(fts.float(), dim=-1), c, self.w.temp)
            loss = loss + itd_g * itd
            stats["Loss/G/itd"] = itd.detach()
        if self.w.itc > 0:
            crop = random_crop_resize(img, self.w.itc_crop_min, img.shape[-1])
            clip_fts = F.normalize(self.clip.encode_image(crop).float(), dim=-1)
            itc = info_nce(clip_fts, c, self.w.temp)
            loss = loss + self.w.itc * itc
            stats["Loss/G/itc"] = itc.detach()
        if self.w.ms_weight > 0:
            ms = mode_seeking(self.G, img, z, c, self.w.ms_tau, self.w.ms_pool, self.w.ms_clip)
            loss = loss + self.w.ms_weight * ms
            stats["Loss/G/ms"] = ms.detach()
        if self.w.imle_weight > 0 and real is not None:
            pull = nearest_fake_pull(self.G, real, c, self.w.imle_k, self.w.imle_pool, max(1, len(z) // 4))
            loss = loss + self.w.imle_weight * pull
            stats["Loss/G/imle"] = pull.detach()
        return loss, stats

    def g_reg(self, z: torch.Tensor, c: torch.Tensor, interval: int) -> tuple[torch.Tensor, dict]:
        """Path-length regulariser (StyleGAN2 Sec. 3.2) on a half batch, scaled by the interval."""
        n = max(1, len(z) // 2)
        w = self.G.mapping(z[:n], c[:n])
        img = self.G.synthesis(w, c[:n])
        noise = torch.randn_like(img) / img.shape[-1]
        (grad,) = torch.autograd.grad((img * noise).sum(), w, create_graph=True)
        lengths = grad.float().square().sum(1).sqrt()
        self.pl_mean = self.pl_mean.to(lengths.device).lerp(lengths.mean().detach(), 0.01)
        penalty = (lengths - self.pl_mean).square().mean()
        return penalty * self.w.pl_weight * interval, {"Loss/G/pl": penalty.detach()}

    def d_main(self, z: torch.Tensor, c: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """softplus(D(fake)) + softplus(-D(real)) + itd on reals."""
        with torch.no_grad():
            fake = self.G(z, c)
        logit_f, _ = self.D(fake, c)
        logit_r, fts_r = self.D(real, c)
        loss = F.softplus(logit_f).mean() + F.softplus(-logit_r).mean()
        stats = {"Loss/D/adv": loss.detach(), "Scores/real": logit_r.detach().mean()}
        if self.w.itd > 0:
            itd = info_nce(F.normalize(fts_r.float(), dim=-1), c, self.w.temp)
            loss = loss + self.w.itd * itd
            stats["Loss/D/itd"] = itd.detach()
        return loss, stats

    def d_reg(self, c: torch.Tensor, real: torch.Tensor, interval: int) -> tuple[torch.Tensor, dict]:
        """Lazy R1: gamma / 2 * ||grad_x D(x)||^2 on reals, every `interval` steps (scaled by it)."""
        real = real.detach().requires_grad_(True)
        with torch.autocast(device_type=real.device.type, enabled=False):  # double backward in fp32
            logit, _ = self.D(real, c)
            (grad,) = torch.autograd.grad(logit.sum(), real, create_graph=True)
        penalty = grad.square().sum([1, 2, 3]).mean()
        return penalty * (self.w.gamma / 2) * interval, {"Loss/D/r1": penalty.detach()}
