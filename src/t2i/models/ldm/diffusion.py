"""LDM's diffusion process and training objective (DDPM, Ho et al. 2020; LDM Sec. 3.3): the math beside the
networks, no module state.

Schedule: CompVis' "linear" betas, beta_t = (linspace(sqrt(beta_start), sqrt(beta_end), T))_t ** 2 (what
diffusers calls "scaled_linear"), 0.00085..0.012 over T = 1000 steps; alpha_bar_t = prod_{s<=t} (1 - beta_s).
Forward process x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps. The network predicts eps, or
v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022). Min-SNR-gamma weighting (Hang et
al. 2023, arXiv 2303.09556) multiplies each sample's loss by min(SNR_t, gamma) / SNR_t (eps) or
min(SNR_t, gamma) / (SNR_t + 1) (v), SNR_t = alpha_bar_t / (1 - alpha_bar_t) (on a zero-terminal-SNR schedule
min(SNR_t + 1, gamma) / (SNR_t + 1), see `min_snr_weight`).

Zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1;
`zero_snr`): the linear schedule ends at alpha_bar_T = 0.0047, so training's x_T still holds the image at 7% of its
amplitude, and a model learns to read it, most strongly its low frequencies (an object's colour). Sampling starts
from pure noise, whose chance low frequencies the model then reads as colour: on shapes the seed, not the caption,
chose an object's colour. The rescaled schedule shifts sqrt(alpha_bar) so it reaches 0 at T (x_T is pure noise in
training too) and scales it so alpha_bar_1 is unchanged. eps is then undefined at T: it needs v-prediction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

PREDICTIONS = ("eps", "v")


@dataclass
class DiffusionConfig:
    """The noise schedule and what the network predicts; round-trips to JSON (travels in every snapshot)."""

    beta_start: float = 0.00085
    beta_end: float = 0.012
    timesteps: int = 1000
    prediction: str = "eps"      # eps | v
    zero_snr: bool = False       # rescale the schedule to zero terminal SNR (needs v)

    def to_dict(self) -> dict:
        return asdict(self)


def betas(cfg: DiffusionConfig) -> torch.Tensor:
    """(T,) float64 betas of CompVis' "linear" schedule (diffusers' "scaled_linear"), rescaled to zero terminal SNR
    (beta_T = 1) with `zero_snr`."""
    b = torch.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, cfg.timesteps, dtype=torch.float64) ** 2
    if cfg.zero_snr:
        from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

        b = rescale_zero_terminal_snr(b)
    return b


def alphas_cumprod(cfg: DiffusionConfig) -> torch.Tensor:
    """(T,) float64 alpha_bar_t."""
    return torch.cumprod(1 - betas(cfg), 0)


def q_sample(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, per sample t (B,)."""
    a = alpha_bar.to(x0.device)[t].float().view(-1, *[1] * (x0.dim() - 1))
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def target(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor, prediction: str
           ) -> torch.Tensor:
    """What the network regresses: eps, or v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0."""
    if prediction == "eps":
        return eps
    a = alpha_bar.to(x0.device)[t].float().view(-1, *[1] * (x0.dim() - 1))
    return a.sqrt() * eps - (1 - a).sqrt() * x0


def min_snr_weight(t: torch.Tensor, alpha_bar: torch.Tensor, gamma: float, prediction: str,
                   zero_snr: bool = False, terminal: float = 1.0) -> torch.Tensor:
    """(B,) loss weights of min-SNR-gamma; all ones when gamma is 0 (off). On a zero-terminal-SNR schedule (v only)
    the clip is taken on SNR + 1, the v-loss's own weight of x_0's error: min(SNR + 1, gamma) / (SNR + 1). Hang et
    al.'s min(SNR, gamma) / (SNR + 1) goes to 0 as SNR does, so the last steps, where a sample's layout and colours
    are decided and x_T is pure noise, would barely train (shapes, seed 0: 87.5% colour against 97.7% with weight 1
    there); this keeps them at 1 and caps the low-noise steps as min-SNR does.

    `terminal` moves the weight of x_0's error at SNR 0 between the two: min(SNR + terminal, gamma) / (SNR + 1)
    (1 = the above, 0 = Hang et al.'s). At the last steps x_0's error is the whole image's spread around what the
    caption fixes, far larger than at the steps that draw an object's outline, so at weight 1 those steps carry
    much of the gradient."""
    if gamma <= 0:
        return torch.ones(len(t), device=t.device)
    a = alpha_bar.to(t.device)[t]
    snr = a / (1 - a)
    if zero_snr:
        return ((snr + terminal).clamp(max=gamma) / (snr + 1)).float()
    clipped = snr.clamp(max=gamma)
    return (clipped / (snr if prediction == "eps" else snr + 1)).float()


def drop_captions(captions: list[str], p: float, generator: torch.Generator | None = None) -> list[str]:
    """Each caption replaced by the null caption "" with probability p (classifier-free guidance training)."""
    keep = torch.rand(len(captions), generator=generator) >= p
    return [c if k else "" for c, k in zip(captions, keep.tolist())]


def diffusion_loss(model, x0: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, cfg: DiffusionConfig,
                   alpha_bar: torch.Tensor, min_snr: float = 0.0, terminal_weight: float = 1.0
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The simple DDPM loss at uniform t: mean over the batch of w_t * mean((target - model(x_t, t, text))^2)."""
    t = torch.randint(cfg.timesteps, (len(x0),), device=x0.device)
    eps = torch.randn_like(x0)
    pred = model(q_sample(x0, t, eps, alpha_bar), t, ids, mask)
    per_sample = (pred.float() - target(x0, t, eps, alpha_bar, cfg.prediction)).square().mean(dim=(1, 2, 3))
    weight = min_snr_weight(t, alpha_bar, min_snr, cfg.prediction, cfg.zero_snr, terminal_weight)
    loss = (weight * per_sample).mean()
    return loss, {"Loss/diffusion": per_sample.detach()}
