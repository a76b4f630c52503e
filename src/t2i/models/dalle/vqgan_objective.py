"""The VQGAN first-stage objective (taming-transformers, arXiv 2012.09841, Sec. 3.1-3.2).

    L_G = |x - x_rec|_1 + w_p LPIPS(x, x_rec)                                 (reconstruction, "nll")
          + w_cb (||sg[z] - z_q||^2 + beta ||z - sg[z_q]||^2)                  (codebook + commitment)
          + lambda * f(nimg) * (-D(x_rec))                                      (adversarial, hinge G)
    lambda = clamp(||grad_L nll|| / (||grad_L g_adv|| + 1e-4), 0, 1e4) * disc_weight   (Eq. 7)
    L_D = f(nimg) * 0.5 (relu(1 - D(x)) + relu(1 + D(x_rec)))                  (hinge D)

where L is the decoder's last layer and f(nimg) switches the discriminator on after `disc_start_kimg`
thousand images (taming: `disc_start` steps). The codebook term uses beta on the commitment part as in
the VQ-VAE paper (taming's legacy quantizer put it on the codebook part).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from t2i.errors import T2IError
from t2i.metrics.lpips import load_lpips


@dataclass
class VQGANLossWeights:
    """Weights and switches of the VQGAN loss (names as taming's VQLPIPSWithDiscriminator)."""

    beta: float = 0.25               # commitment weight
    codebook_weight: float = 1.0
    perceptual_weight: float = 1.0   # used only with --perceptual lpips:...
    disc_weight: float = 0.8         # taming's ImageNet configs
    disc_start_kimg: float = 50.0    # the discriminator trains (and G sees it) after this many kimg
    restart_patience: int = 200      # restart codes unused for this many steps (0 = never)


def codebook_loss(z: torch.Tensor, z_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||sg[z] - z_q||^2, ||z - sg[z_q]||^2) as means: the first moves codes, the second (weighted by
    beta in the loss) commits z to its code."""
    return F.mse_loss(z_q, z.detach()), F.mse_loss(z, z_q.detach())


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

class VQGANLoss:
    """The two phase losses; x is a batch of images in [-1, 1], nimg the images shown before this step."""

    def __init__(self, vqgan: nn.Module, disc: nn.Module, perceptual: nn.Module | None, w: VQGANLossWeights):
        self.vqgan, self.disc, self.perceptual, self.w = vqgan, disc, perceptual, w

    def g_main(self, x: torch.Tensor, nimg: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruction + perceptual + codebook/commitment (+ adaptive hinge-G term once D is on);
        then the dead-code restart, from this batch's encoder outputs."""
        w = self.w
        x_rec, z, ids, stats = self.vqgan(x)
        rec = (x - x_rec).abs().mean()
        nll = rec
        stats = {**stats, "Loss/G/rec": rec.detach()}
        if self.perceptual is not None:
            p = self.perceptual(x.float(), x_rec.float()).mean()
            nll = nll + w.perceptual_weight * p
            stats["Loss/G/perceptual"] = p.detach()
        cb, commit = codebook_loss(z.float(), self.vqgan.quantize.embed(ids).float())
        loss = nll + w.codebook_weight * (cb + w.beta * commit)
        stats.update({"Loss/G/codebook": cb.detach(), "Loss/G/commit": commit.detach()})
        if disc_factor(nimg, w.disc_start_kimg) > 0:
            logits = self.disc(x_rec)
            g_adv = -logits.float().mean()
            lam = adaptive_weight(nll, g_adv, self.vqgan.decoder.conv_out.weight, w.disc_weight)
            loss = loss + lam * g_adv
            stats.update({"Loss/G/adv": g_adv.detach(), "Loss/G/adaptive_weight": lam, "Scores/fake": -g_adv.detach()})
        if w.restart_patience > 0:
            restarted = self.vqgan.quantize.restart_dead_codes(z, ids, w.restart_patience)
            stats["VQ/restarted"] = torch.tensor(float(restarted))
        return loss, stats

    def d_main(self, x: torch.Tensor, nimg: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Hinge loss on reals vs reconstructions; before disc_start a zero loss with no D forward, so
        D's parameters get no gradient and Adam leaves them (and its moments) untouched."""
        if disc_factor(nimg, self.w.disc_start_kimg) == 0:
            return torch.zeros((), device=x.device, requires_grad=True), {}
        with torch.no_grad():
            x_rec = self.vqgan(x)[0]
        logits_real, logits_fake = self.disc(x.detach()), self.disc(x_rec)
        loss = hinge_d_loss(logits_real.float(), logits_fake.float())
        return loss, {"Loss/D/adv": loss.detach(), "Scores/real": logits_real.detach().float().mean()}
