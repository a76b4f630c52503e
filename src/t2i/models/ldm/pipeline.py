"""Sampling a trained latent diffusion model: prompt -> tokens -> text encoder -> guided sampler over latents ->
the KL autoencoder's decoder."""

from __future__ import annotations

import torch

from t2i.errors import T2IError
from t2i.models.first_stage.autoencoder_kl import KLAutoencoder, KLConfig
from t2i.models.ldm.diffusion import DiffusionConfig
from t2i.models.ldm.model import LatentDiffusion, LdmConfig
from t2i.models.ldm.sampling import SAMPLERS, guided, initial_noise, sample
from t2i.models.ldm.text_encoder import LdmTokenizer, tokenizer_from_meta
from t2i.models.routing import PromptRouting

# Sampling options `t2i generate` / `t2i eval` pass through, with their defaults (LDM: DDIM 50, scale 7.5).
OPTIONS = {"sampler": "ddim", "steps": 50, "guidance": 7.5, "eta": 0.0, "precision": "fp32"}
PRECISIONS = ("fp32", "bf16")


class LdmPipeline(PromptRouting):
    """Text-to-image with an LDM snapshot: `pipe(prompts, seeds, **options) -> uint8 (N, 3, R, R)`."""

    family = "ldm"
    options = OPTIONS
    preview = {"sampler": "dpm++", "steps": 20, "guidance": 4.0}

    def __init__(self, model: LatentDiffusion, autoencoder: KLAutoencoder, tokenizer: LdmTokenizer,
                 diffusion: DiffusionConfig, meta: dict):
        self.model, self.autoencoder, self.tokenizer, self.diffusion, self.meta = (
            model, autoencoder, tokenizer, diffusion, meta)

    @classmethod
    def from_snapshot(cls, snap, device="cpu", module: str = "ldm_ema") -> LdmPipeline:
        """Build from a loaded `Snapshot` of family ldm (its EMA weights)."""
        model = LatentDiffusion(LdmConfig.from_dict(snap.meta["net"]))
        model.load_state_dict(snap.state_dict(module))
        autoencoder = KLAutoencoder(KLConfig.from_dict(snap.meta["autoencoder"]))
        autoencoder.load_state_dict(snap.state_dict("autoencoder"))
        return cls(model.to(device).eval().requires_grad_(False),
                   autoencoder.to(device).eval().requires_grad_(False),
                   tokenizer_from_meta(snap.meta["tokenizer"]), DiffusionConfig(**snap.meta["diffusion"]),
                   snap.meta)

    @property
    def resolution(self) -> int:
        return self.autoencoder.cfg.resolution

    def text(self, prompts: list[str], truncate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) (N, max_len) on the model's device; a prompt too long is cut (truncate) or a T2IError."""
        device = next(self.model.parameters()).device
        ids, mask = self.tokenizer(prompts, self.model.cfg.text.max_len, truncate)
        return ids.to(device), mask.to(device)

    def text_condition(self, prompts: list[str], truncate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The text encoder's token states (N, max_len, width) and pooled state (N, width)."""
        return self.model.encode_text(*self.text(prompts, truncate))

    def check_prompts(self, prompts: list[str], sampler: str = "ddim", steps: int = 50, guidance: float = 7.5,
                      eta: float = 0.0, truncate: bool = False, precision: str = "fp32", **_) -> None:
        """T2IError naming the first prompt or option the model cannot take, before any image is made."""
        if precision not in PRECISIONS:
            raise T2IError(f"--precision {precision!r}: choose from {', '.join(PRECISIONS)}")
        if sampler not in SAMPLERS:
            raise T2IError(f"--sampler {sampler!r} is not an LDM sampler; choose from {', '.join(SAMPLERS)}")
        if not 1 <= steps <= self.diffusion.timesteps:
            raise T2IError(f"--steps {steps} must be between 1 and the model's {self.diffusion.timesteps} timesteps")
        if eta < 0 or (eta > 0 and sampler != "ddim"):
            raise T2IError(f"--eta {eta}: eta is DDIM's noise (>= 0); give --sampler ddim or --eta 0")
        if guidance < 0:
            raise T2IError(f"--guidance {guidance} must be >= 0 (1 = no guidance)")
        for p in prompts:
            if not p.strip():
                raise T2IError('a prompt is empty; describe the image, e.g. "a large red circle on the left"')
        if text := self.text_prompts(prompts):
            self.text(text, truncate)

    @torch.no_grad()
    def __call__(self, prompts: list[str], seeds: list[int], sampler: str = "ddim", steps: int = 50,
                 guidance: float = 7.5, eta: float = 0.0, batch: int = 64, truncate: bool = False,
                 precision: str = "fp32") -> torch.Tensor:
        """One image per (prompt, seed), `batch` at a time; image i's noise comes from seed i alone. `precision`
        bf16 runs the text encoder, UNet and decoder under bf16 autocast (the sampler's arithmetic stays fp32):
        half the activation memory and tensor-core speed on a GPU, AMX on a recent CPU."""
        from t2i.data.transforms import to_uint8

        if len(prompts) != len(seeds):
            raise ValueError("one seed per prompt")
        self.check_prompts(prompts, sampler, steps, guidance, eta, truncate, precision)
        device = next(self.model.parameters()).device
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            out = [self.sample_latents_and_decode(prompts[b:b + batch], seeds[b:b + batch], sampler, steps, guidance,
                                                  eta, truncate) for b in range(0, len(prompts), batch)]
        return to_uint8(torch.cat(out).cpu())

    def model_fns(self, prompts: list[str], truncate: bool = False):
        """(conditional, unconditional) model functions (x_t, t) -> prediction; the unconditional one reads the
        empty caption, LDM's null condition."""
        context = self.condition(prompts, truncate=truncate)
        null_context = self.text_condition([""] * len(prompts))
        return (lambda x, t: self.model.unet(x, t, *context)), (lambda x, t: self.model.unet(x, t, *null_context))

    def sample_latents(self, prompts: list[str], seeds: list[int], sampler: str = "ddim", steps: int = 50,
                       guidance: float = 7.5, eta: float = 0.0, truncate: bool = False) -> torch.Tensor:
        """Scaled latents z_0 (N, C, h, w) (what the UNet works on)."""
        cond, uncond = self.model_fns(prompts, truncate)
        cfg = self.model.cfg.unet
        side = self.autoencoder.cfg.latent_side
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        x_T = initial_noise(generators, (cfg.latent_channels, side, side)).to(next(self.model.parameters()).device)
        return sample(guided(cond, uncond, guidance), x_T, sampler, steps, self.diffusion, eta, generators)

    def sample_latents_and_decode(self, prompts, seeds, sampler, steps, guidance, eta, truncate) -> torch.Tensor:
        """Float images (N, 3, R, R) in [-1, 1]: the sampled latents unscaled by the autoencoder's scale factor."""
        z = self.sample_latents(prompts, seeds, sampler, steps, guidance, eta, truncate)
        return self.autoencoder.decode(z / self.autoencoder.cfg.scale_factor).float().clamp(-1, 1)
