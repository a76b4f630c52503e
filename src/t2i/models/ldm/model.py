"""The latent diffusion model t2i trains: text encoder + UNet in one module (trained jointly, one EMA), and
its presets. Architecture only; the schedule and loss are in `diffusion.py`, samplers in `sampling.py`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from t2i.models.ldm.text_encoder import TextConfig, build_text_encoder
from t2i.models.ldm.unet import UNet, UNetConfig


@dataclass
class LdmConfig:
    """The UNet and the text encoder it reads (context_dim = text width); round-trips to JSON."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    text: TextConfig = field(default_factory=TextConfig)

    def to_dict(self) -> dict:
        return {"unet": self.unet.to_dict(), "text": self.text.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> LdmConfig:
        return cls(UNetConfig(**d["unet"]), TextConfig(**d["text"]))


class LatentDiffusion(nn.Module):
    """`model(x_t, t, ids, mask)` -> the UNet's prediction; `encode_text(ids, mask)` -> (states, pooled)."""

    def __init__(self, cfg: LdmConfig):
        super().__init__()
        if cfg.unet.context_dim != cfg.text.width:
            raise ValueError(f"UNet context_dim {cfg.unet.context_dim} != text width {cfg.text.width}")
        self.cfg = cfg
        self.text = build_text_encoder(cfg.text)
        self.unet = UNet(cfg.unet)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text(ids, mask)

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, *self.encode_text(ids, mask))


PRESETS: dict[str, LdmConfig] = {
    # Smallest possible, for unit tests: 8x8x4 latents of the test autoencoder, two levels.
    "test": LdmConfig(UNetConfig(sample_size=8, block_out_channels=(16, 32), attention_levels=(1,),
                                 layers_per_block=1, heads=2, context_dim=32, norm_groups=8),
                      TextConfig(max_len=48, width=32, layers=1, heads=2)),
    # CPU, shapes at 64px: 16x16x4 latents of the tiny autoencoder, attention at 8x8 and 4x4; 6.6M parameters.
    # Widths 64,128,128 rather than 32,64,64 (1.7M): 4x the parameters for 1.7x the time a step (bf16, batch 32,
    # this CPU: 13.2 against 7.7 s/kimg for the UNet alone); attention at 16x16 as well would double it.
    "tiny": LdmConfig(UNetConfig(sample_size=16, block_out_channels=(64, 128, 128), attention_levels=(1, 2),
                                 layers_per_block=1, heads=4, context_dim=64, norm_groups=16),
                      TextConfig(max_len=32, width=64, layers=2, heads=4)),
    # LDM text2img-large (txt2img-1p4B-eval.yaml): model_channels 320, channel_mult 1,2,4,4, attention_resolutions
    # 4,2,1, 2 res blocks, 8 heads, context 1280; BERT embedder 1280-d, 32 layers, 77 tokens, x-transformers'
    # attention (8 heads of 64, q/k/v without bias, pads attended): it holds CompVis' weights (compvis.py).
    "paper256": LdmConfig(UNetConfig(sample_size=32, block_out_channels=(320, 640, 1280, 1280),
                                     attention_levels=(0, 1, 2), layers_per_block=2, heads=8, context_dim=1280),
                          TextConfig(vocab_size=30522, max_len=77, width=1280, layers=32, heads=8, head_dim=64,
                                     qkv_bias=False, mask_padding=False)),
}
