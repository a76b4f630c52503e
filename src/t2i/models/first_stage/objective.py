"""The first-stage objective: one loss, two bottlenecks. The VQGAN's (taming-transformers, arXiv
2012.09841, Sec. 3.1-3.2) and the KL autoencoder's (LDM, arXiv 2112.10752, Sec. 3.1 and App. G; CompVis'
LPIPSWithDiscriminator) differ only in the bottleneck's term R:

    L_G = |x - x_rec|_1 + w_p LPIPS(x, x_rec)                                 (reconstruction, "nll")
          + R                                                                  (the bottleneck's term)
          + lambda * f(nimg) * (-D(x_rec))                                      (adversarial, hinge G)
    lambda = clamp(||grad_L nll|| / (||grad_L g_adv|| + 1e-4), 0, 1e4) * disc_weight   (VQGAN Eq. 7)
    L_D = f(nimg) * 0.5 (relu(1 - D(x)) + relu(1 + D(x_rec)))                  (hinge D)

    VQ:  R = w_cb (||sg[z] - z_q||^2 + beta ||z - sg[z_q]||^2),  x_rec = Dec(z_q)   (codebook + commitment)
    KL:  R = w_kl KL(q(z|x) || N(0, I)) / (3 H W),  x_rec = Dec(z), z ~ q(z|x)    (KL over all latents)

where L is the decoder's last layer and f(nimg) switches the discriminator on after `disc_start_kimg`
thousand images (taming: `disc_start` steps). The codebook term uses beta on the commitment part as in
the VQ-VAE paper (taming's legacy quantizer put it on the codebook part). LDM sums the reconstruction
terms over pixels and the KL over latent elements, per image; the reconstruction terms here are means over
pixels, so the KL sum is divided by the pixel count 3 H W: LDM's loss times the constant 1 / (3 H W), which
the adaptive weight (a ratio of gradient norms of terms scaled alike) and Adam do not see, so kl_weight
1e-6 means what it means in LDM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from t2i.errors import T2IError
from t2i.metrics.lpips import load_lpips


@dataclass
class FirstStageLossWeights:
    """Weights and switches of the loss shared by both bottlenecks (names as taming's and LDM's losses)."""

    perceptual_weight: float = 1.0   # used only with --perceptual lpips:...
    disc_weight: float = 0.8         # taming's ImageNet configs
    disc_start_kimg: float = 50.0    # the discriminator trains (and G sees it) after this many kimg


@dataclass
class VQGANLossWeights(FirstStageLossWeights):
    """The VQGAN's: the shared weights and its codebook terms (taming's VQLPIPSWithDiscriminator)."""

    beta: float = 0.25               # commitment weight
    codebook_weight: float = 1.0
    restart_patience: int = 200      # restart codes unused for this many steps (0 = never)


@dataclass
class KLLossWeights(FirstStageLossWeights):
    """The KL autoencoder's: the shared weights and the KL weight (LDM's kl-f8 config)."""

    disc_weight: float = 0.5         # LDM's autoencoder configs
    kl_weight: float = 1e-6


def codebook_loss(z: torch.Tensor, z_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||sg[z] - z_q||^2, ||z - sg[z_q]||^2) as means: the first moves codes, the second (weighted by
    beta in the loss) commits z to its code."""
    return F.mse_loss(z_q, z.detach()), F.mse_loss(z, z_q.detach())


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per image, summed over the latent (B, C, h, w) -> (B,):
    0.5 * sum(mean^2 + sigma^2 - 1 - log sigma^2), the VAE's closed form (Kingma & Welling 2014, App. B)."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3))


def sample_posterior(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mean + sigma * eps, eps ~ N(0, I) from the global RNG (the loop seeds it per step): the
    reparameterisation that lets the reconstruction loss reach the encoder's mean and variance."""
    return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_rec)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(nll: torch.Tensor, g_adv: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float) -> torch.Tensor:
    """lambda = clamp(||grad nll|| / (||grad g_adv|| + 1e-4), 0, 1e4) * disc_weight at `last_layer`
    (Eq. 7 of the VQGAN paper); detached, so it scales the adversarial gradient without being trained."""
    (g_nll,) = torch.autograd.grad(nll, last_layer, retain_graph=True)
    (g_gan,) = torch.autograd.grad(g_adv, last_layer, retain_graph=True)
    lam = g_nll.float().norm() / (g_gan.float().norm() + 1e-4)
    return lam.clamp(0.0, 1e4).detach() * disc_weight


def disc_factor(nimg: int, disc_start_kimg: float) -> float:
    """1 once `disc_start_kimg` thousand images have been shown, else 0 (taming's adopt_weight)."""
    return 1.0 if nimg >= disc_start_kimg * 1000 else 0.0


# ----------------------------------------------------------------------------------------------
# Perceptual loss: LPIPS (VGG16 trunk) from local weights only (t2i.metrics.lpips).

def load_perceptual(spec: str, device) -> nn.Module | None:
    """`none` -> None; `lpips:/path/to/vgg16.pth` -> a frozen LPIPS module (x, y in [-1, 1]) -> (B, 1, 1, 1)."""
    if spec == "none":
        return None
    if spec.startswith("lpips:") and len(spec) > len("lpips:"):
        return load_lpips(spec[len("lpips:"):], device, option="--perceptual lpips:")
    raise T2IError(f"--perceptual {spec!r}: use 'none' or 'lpips:/path/to/vgg16.pth' "
                   "(a torchvision vgg16 state_dict)")


# ----------------------------------------------------------------------------------------------

class FirstStageLoss:
    """The two phase losses; x is a batch of images in [-1, 1], nimg the images shown before this step.
    A subclass gives the bottleneck: `bottleneck(x)` and, optionally, `after_step`."""

    def __init__(self, model: nn.Module, disc: nn.Module, perceptual: nn.Module | None, w: FirstStageLossWeights):
        self.model, self.disc, self.perceptual, self.w = model, disc, perceptual, w

    def bottleneck(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], tuple]:
        """(x_rec as trained, the term R, its stats, what `after_step` needs) for images x."""
        raise NotImplementedError

    def after_step(self, aux: tuple) -> dict[str, torch.Tensor]:
        """Work on the bottleneck after the G loss is built (the VQGAN's dead-code restart); its stats."""
        return {}

    def g_main(self, x: torch.Tensor, nimg: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruction + perceptual + the bottleneck's term (+ adaptive hinge-G term once D is on)."""
        w = self.w
        x_rec, reg, reg_stats, aux = self.bottleneck(x)
        rec = (x - x_rec).abs().mean()
        nll = rec
        stats = {**reg_stats, "Loss/G/rec": rec.detach()}
        if self.perceptual is not None:
            p = self.perceptual(x.float(), x_rec.float()).mean()
            nll = nll + w.perceptual_weight * p
            stats["Loss/G/perceptual"] = p.detach()
        loss = nll + reg
        if disc_factor(nimg, w.disc_start_kimg) > 0:
            logits = self.disc(x_rec)
            g_adv = -logits.float().mean()
            lam = adaptive_weight(nll, g_adv, self.model.last_layer(), w.disc_weight)
            loss = loss + lam * g_adv
            stats.update({"Loss/G/adv": g_adv.detach(), "Loss/G/adaptive_weight": lam, "Scores/fake": -g_adv.detach()})
        return loss, {**stats, **self.after_step(aux)}

    def d_main(self, x: torch.Tensor, nimg: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Hinge loss on reals vs reconstructions (as G trains on them); before disc_start a zero loss with
        no D forward, so D's parameters get no gradient and Adam leaves them (and its moments) untouched."""
        if disc_factor(nimg, self.w.disc_start_kimg) == 0:
            return torch.zeros((), device=x.device, requires_grad=True), {}
        with torch.no_grad():
            x_rec = self.bottleneck(x)[0]
        logits_real, logits_fake = self.disc(x.detach()), self.disc(x_rec)
        loss = hinge_d_loss(logits_real.float(), logits_fake.float())
        return loss, {"Loss/D/adv": loss.detach(), "Scores/real": logits_real.detach().float().mean()}


class VQGANLoss(FirstStageLoss):
    """The vector-quantised bottleneck: codebook + commitment, then the dead-code restart."""

    w: VQGANLossWeights

    def bottleneck(self, x):
        x_rec, z, ids, stats = self.model(x)
        cb, commit = codebook_loss(z.float(), self.model.quantize.embed(ids).float())
        reg = self.w.codebook_weight * (cb + self.w.beta * commit)
        return x_rec, reg, {**stats, "Loss/G/codebook": cb.detach(), "Loss/G/commit": commit.detach()}, (z, ids)

    def after_step(self, aux):
        """Restart codes unused for `restart_patience` steps from this batch's encoder outputs."""
        if self.w.restart_patience <= 0:
            return {}
        z, ids = aux
        restarted = self.model.quantize.restart_dead_codes(z, ids, self.w.restart_patience)
        return {"VQ/restarted": torch.tensor(float(restarted))}


class KLLoss(FirstStageLoss):
    """The Gaussian bottleneck: decode a posterior sample, pay the KL to the unit Gaussian."""

    w: KLLossWeights

    def bottleneck(self, x):
        mean, logvar = self.model.moments(x)
        x_rec = self.model.decode(sample_posterior(mean, logvar))
        kl = gaussian_kl(mean.float(), logvar.float()).mean()           # nats per image
        reg = self.w.kl_weight * kl / x[0].numel()                      # per pixel element, as rec (module doc)
        stats = {"Loss/G/kl": kl.detach(), "Latent/mean_std": mean.detach().float().std(),
                 "Latent/posterior_std": (0.5 * logvar.detach().float()).exp().mean()}
        return x_rec, reg, stats, ()
