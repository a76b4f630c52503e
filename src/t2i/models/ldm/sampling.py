"""Sampling latent diffusion: diffusers' schedulers (DDIM, PLMS, DPM-Solver++) driven by t2i's own loop, and
classifier-free guidance as a wrapper around the model function (STYLE 7). Plain functions.

Per-image randomness: each image's initial noise and each of its DDIM eta noises come from its own
`torch.Generator`, so an image depends on its seed, never on the batch it is sampled in.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from t2i.errors import T2IError
from t2i.models.ldm.diffusion import DiffusionConfig, betas

SAMPLERS = ("ddim", "plms", "dpm++")

# (x_t (B, C, h, w), t (B,)) -> prediction (B, C, h, w)
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_scheduler(sampler: str, cfg: DiffusionConfig):
    """A fresh diffusers scheduler on the model's training schedule (schedulers hold per-run state)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

    common = {"num_train_timesteps": cfg.timesteps, "beta_start": cfg.beta_start, "beta_end": cfg.beta_end,
              "beta_schedule": "scaled_linear",   # = CompVis' "linear" (tested against diffusion.betas)
              "prediction_type": "epsilon" if cfg.prediction == "eps" else "v_prediction"}
    if cfg.zero_snr:
        # The model's own betas, alpha_bar_T lifted from 0 to 2^-24 as diffusers' DPM-Solver does (its log-SNR and
        # PLMS's update divide by sqrt(alpha_bar)); "trailing" steps so sampling starts at T, the step whose x_T is
        # pure noise in training as in sampling (Lin et al. 2024, Sec. 3.3).
        b = betas(cfg)
        bar = torch.cumprod(1 - b, 0)
        b[-1] = 1 - 2.0 ** -24 / bar[-2]
        common.update(trained_betas=b.numpy(), timestep_spacing="trailing")
    if sampler == "ddim":   # CompVis' DDIM: alpha_bar_prev of the last step is alpha_bar_0, timesteps offset by 1
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if sampler == "plms":
        return PNDMScheduler(**common, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    if sampler == "dpm++":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    raise T2IError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")


def guided(cond_fn: ModelFn, uncond_fn: ModelFn, scale: float) -> ModelFn:
    """Classifier-free guidance (Ho & Salimans 2022): u + scale * (c - u); scale 1 is the conditional model alone."""
    if scale == 1.0:
        return cond_fn

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c, u = cond_fn(x, t).float(), uncond_fn(x, t).float()   # combined in fp32 under bf16 autocast too
        return u + scale * (c - u)
    return fn


def initial_noise(generators: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) standard normal noise, image i from generators[i] (on the CPU: the same on every device)."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


@torch.no_grad()
def sample(model_fn: ModelFn, x_T: torch.Tensor, sampler: str, steps: int, cfg: DiffusionConfig,
           eta: float = 0.0, generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """Integrate from the noise x_T (B, C, h, w) to x_0 in `steps` scheduler steps; DDIM's eta noise of image i
    from generators[i]."""
    scheduler = make_scheduler(sampler, cfg)
    scheduler.set_timesteps(steps, device=x_T.device)
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        pred = model_fn(scheduler.scale_model_input(x, t), t.expand(len(x))).float()   # the solver runs in fp32
        extra = {}
        if sampler == "ddim":
            extra["eta"] = eta
            if eta > 0:
                extra["variance_noise"] = initial_noise(generators, x.shape[1:]).to(x)
        x = scheduler.step(pred, t, x, **extra).prev_sample
    return x
