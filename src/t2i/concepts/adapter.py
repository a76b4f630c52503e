"""The text adapter of `t2i invert --adapter`: a small residual MLP and one transformer layer over the frozen text
encoder's output (the conditioning a family consumes), trained with the concept's embedding.

Both residual branches end in zero-initialised projections, so a fresh adapter is exactly the identity and the base
model's images are unchanged until it learns. The adapter reads every prompt, not only the concept's: trained on the
concept's loss alone it learns to send every prompt to the concept images, so `t2i invert` also holds it near the
identity on ordinary prompts (`--keep_weight`, `keep_loss`). Each family routes its conditioning through it at one
place (`TextSide.install_adapter`): LDM's token states, DALL-E's text input embeddings, LAFITE's CLIP text feature.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class AdapterConfig:
    width: int
    heads: int
    mlp_ratio: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


def adapter_heads(width: int) -> int:
    """The most heads of at least 16 dimensions (up to 8) that divide the width."""
    return next(h for h in (8, 4, 2, 1) if width % h == 0 and width // h >= 16 or h == 1)


class TextAdapter(nn.Module):
    """x (B, T, width), optional mask (B, T, True = token) -> x + MLP(LN(x)), then one pre-norm transformer layer;
    the identity at initialisation."""

    def __init__(self, cfg: AdapterConfig):
        super().__init__()
        self.cfg = cfg
        w, hidden = cfg.width, cfg.mlp_ratio * cfg.width
        self.mlp = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, hidden), nn.GELU(), nn.Linear(hidden, w))
        self.layer = nn.TransformerEncoderLayer(w, cfg.heads, hidden, dropout=0.0, activation="gelu",
                                                batch_first=True, norm_first=True)
        for proj in (self.mlp[-1], self.layer.self_attn.out_proj, self.layer.linear2):
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    enabled = True   # False: the identity (`bypassed`), for the base model's own conditioning

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.enabled:
            return x
        dtype = x.dtype
        x = x.float()
        x = x + self.mlp(x)
        pad = None if mask is None else ~mask.bool()
        return self.layer(x, src_key_padding_mask=pad).to(dtype)


@contextmanager
def bypassed(adapter: TextAdapter):
    """The adapter as the identity within the block: the family's conditioning as the base model gives it."""
    adapter.enabled = False
    try:
        yield
    finally:
        adapter.enabled = True


class _AroundText(nn.Module):
    """A text module with an adapter around it; attributes it lacks are the wrapped module's."""

    def __init__(self, text: nn.Module, adapter: TextAdapter):
        super().__init__()
        self.inner, self.adapter = text, adapter

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


class AdaptedText(_AroundText):
    """LDM: a text encoder whose token states pass through the adapter (the pooled state stays the encoder's)."""

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states, pooled = self.inner(ids, mask)
        return self.adapter(states, mask), pooled


class AdaptedTextEmbedding(nn.Module):
    """DALL-E: the joint token table whose text positions ([<bos>; caption], always embedded together at the start
    of a sequence) pass through the adapter; image tokens, alone or after the text, are left as they are."""

    def __init__(self, table: nn.Module, adapter: TextAdapter, text_positions: int):
        super().__init__()
        self.inner, self.adapter, self.text_positions = table, adapter, text_positions

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight

    @property
    def num_embeddings(self) -> int:
        return self.inner.num_embeddings

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.inner(ids)
        n = self.text_positions
        if ids.shape[1] < n:     # a cached step of image tokens
            return x
        return torch.cat([self.adapter(x[:, :n]), x[:, n:]], 1)


class AdaptedFeature(_AroundText):
    """LAFITE: a CLIP text tower whose projected feature (B, D) passes through the adapter as a one-token sequence."""

    def forward(self, *args) -> torch.Tensor:
        return self.adapter(self.inner(*args)[:, None])[:, 0]
