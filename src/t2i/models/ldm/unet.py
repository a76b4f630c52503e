"""LDM's text-conditioned UNet: architecture only.

The network is diffusers' `UNet2DConditionModel` (ResNet levels, spatial transformers with self- and
cross-attention to the text encoder's token states), configured by t2i presets. A level with attention is a
CrossAttn block; `attention_levels` names them by index (0 = full latent resolution), which is CompVis'
`attention_resolutions` (downsampling factors 4, 2, 1 at ch_mult 1,2,4,4 -> levels 0, 1, 2). The model's
call convention: `unet(x_t, t, context, pooled) -> prediction`, x_t (B, C, h, w), t (B,) integer timesteps,
context (B, T, context_dim), pooled (B, pooled_dim) or None. With `pooled_dim` the pooled text state is projected
and added to the timestep embedding (diffusers' class_embed_type="projection", as SDXL adds its pooled text
embedding), so every res block of every level sees the whole caption; CompVis' models have none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class UNetConfig:
    """Architecture of the UNet (diffusers' UNet2DConditionModel arguments); round-trips to JSON."""

    latent_channels: int = 4
    sample_size: int = 32                    # latent side it is built for (any multiple of 2 ** (levels - 1) works)
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)   # model_channels x channel_mult
    attention_levels: tuple[int, ...] = (0, 1, 2)                  # levels with cross-attention
    layers_per_block: int = 2                # res blocks per level
    heads: int = 8                           # attention heads (diffusers' attention_head_dim is their number)
    context_dim: int = 1280                  # width of the text encoder's token states
    norm_groups: int = 32
    pooled_dim: int = 0                      # > 0: the text's pooled state (this wide) joins the timestep embedding

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        self.attention_levels = tuple(self.attention_levels)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["block_out_channels"], d["attention_levels"] = list(self.block_out_channels), list(self.attention_levels)
        return d


def diffusers_config(cfg: UNetConfig) -> dict:
    """The UNet2DConditionModel arguments of a t2i UNet config."""
    levels = range(len(cfg.block_out_channels))
    attn = set(cfg.attention_levels)
    return dict(
        sample_size=cfg.sample_size, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if i in attn else "DownBlock2D" for i in levels),
        up_block_types=tuple("CrossAttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(levels)),
        mid_block_type="UNetMidBlock2DCrossAttn", block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block, norm_num_groups=cfg.norm_groups, cross_attention_dim=cfg.context_dim,
        attention_head_dim=cfg.heads, flip_sin_to_cos=True, freq_shift=0,   # CompVis' timestep embedding
        **(dict(class_embed_type="projection", projection_class_embeddings_input_dim=cfg.pooled_dim)
           if cfg.pooled_dim else {}))


def attention_kind(device: torch.device) -> str:
    """Which of diffusers' attentions the UNet runs: "plain" (baddbmm, softmax, bmm) to train on a CPU, else "sdpa"
    (its default, torch's scaled_dot_product_attention). torch's CPU flash-attention backward took a third of a
    tiny-preset training step (bf16, batch 32: 496 against 385 ms a step on one core); forward passes take the same
    time either way, and sampling keeps the default, whose images do not depend on the batch they are in. The
    training loop's math kernel for SDPA on a CPU (`t2i.training.loop.training_attention`) comes close but not level
    (two cores: 250 against 235 ms a step)."""
    return "plain" if device.type == "cpu" and torch.is_grad_enabled() else "sdpa"


def attention_processor(kind: str):
    """diffusers' attention processor of an `attention_kind`."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    return AttnProcessor() if kind == "plain" else AttnProcessor2_0()


class UNet(nn.Module):
    """(x_t, t, context, pooled) -> eps or v prediction of the same shape as x_t; `net` is diffusers'
    UNet2DConditionModel."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        from diffusers import (
            UNet2DConditionModel,  # a few seconds to import: only where the network is built
        )

        self.cfg = cfg
        self.net = UNet2DConditionModel(**diffusers_config(cfg))
        self._attention = ""

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                pooled: torch.Tensor | None = None) -> torch.Tensor:
        kind = attention_kind(x.device)
        if kind != self._attention:
            self._attention = kind
            self.net.set_attn_processor(attention_processor(kind))
        return self.net(x, t, encoder_hidden_states=context,
                        class_labels=pooled if self.cfg.pooled_dim else None).sample
