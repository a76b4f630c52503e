"""t2i's own small CLIP: a CNN image encoder and a transformer text encoder trained contrastively.

It gives domains without a public CLIP (the shapes domain) a real CLIP for LAFITE conditioning,
CLIP score and R-precision. Same interface as the open_clip wrapper (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from t2i.clip.tokenizer import ClipTokenizer


@dataclass
class ClipConfig:
    """Architecture of the small CLIP; round-trips to JSON."""

    resolution: int = 64                 # images are resized to this before the CNN
    embed_dim: int = 256                 # the joint embedding (LAFITE's condition size)
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])  # one stride-2 stage each
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    context: int = 32                    # text tokens, including <sot> and <eot>
    vocab_size: int = 1024               # BPE vocabulary trained on the dataset's captions

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ClipConfig":
        return cls(**d)


CLIP_PRESETS: dict[str, ClipConfig] = {
    "tiny": ClipConfig(resolution=32, embed_dim=64, channels=[16, 32, 64], text_width=64,
                       text_layers=1, text_heads=2, context=32, vocab_size=512),
    "small": ClipConfig(),
}


class ImageEncoder(nn.Module):
    """Strided CNN; the last feature map is flattened (not pooled) so positions stay encoded."""

    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.resolution = cfg.resolution
        layers, cin = [], 3
        for cout in cfg.channels:
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8 if cout >= 16 else 1, cout),
                       nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.SiLU()]
            cin = cout
        self.trunk = nn.Sequential(*layers)
        side = cfg.resolution // 2 ** len(cfg.channels)
        self.proj = nn.Linear(cin * side * side, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                              antialias=True, align_corners=False)
        return self.proj(self.trunk(x).flatten(1))          # (B, embed_dim)


class TextEncoder(nn.Module):
    """Pre-norm transformer over BPE ids; the <eot> position's feature is the sentence feature."""

    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.token = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.pos = nn.Parameter(torch.randn(cfg.context, cfg.text_width) * 0.01)
        layer = nn.TransformerEncoderLayer(cfg.text_width, cfg.text_heads, 4 * cfg.text_width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.text_width)
        self.proj = nn.Linear(cfg.text_width, cfg.embed_dim)

    def forward(self, ids: torch.Tensor, eot_index: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        x = self.token(ids) + self.pos[: ids.shape[1]]       # (B, T, width)
        x = self.norm(self.blocks(x, src_key_padding_mask=pad_mask))
        x = x[torch.arange(len(ids), device=ids.device), eot_index]
        return self.proj(x)                                   # (B, embed_dim)


class SmallClip(nn.Module):
    """Image and text towers with a learned temperature; implements the t2i CLIP interface."""

    def __init__(self, cfg: ClipConfig, tokenizer: ClipTokenizer):
        super().__init__()
        if tokenizer.vocab_size > cfg.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids, config allows {cfg.vocab_size}")
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.visual = ImageEncoder(cfg)
        self.text = TextEncoder(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self._identity: str | None = None

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def max_text_tokens(self) -> int:
        return self.cfg.context - 2

    @property
    def identity(self) -> str:
        """'t2i-clip:<sha256 of the weights>' (first 16 hex), for cache keys."""
        if self._identity is None:
            h = hashlib.sha256()
            for k, v in sorted(self.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().cpu().float().numpy().tobytes())
            self._identity = "t2i-clip:" + h.hexdigest()[:16]
        return self._identity

    def load_state_dict(self, *args, **kwargs):
        self._identity = None
        return super().load_state_dict(*args, **kwargs)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) unnormalised features of float images in [-1, 1]."""
        return self.visual(images)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """(B, context) ids on the model's device."""
        return self.tokenizer(texts, self.cfg.context).to(self.logit_scale.device)

    def encode_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, D) unnormalised features of token ids from `tokenize`."""
        pad_mask = ids == self.tokenizer.pad_id
        eot_index = (ids == self.tokenizer.eot_id).int().argmax(dim=1)
        return self.text(ids, eot_index, pad_mask)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(B, D) unnormalised features of prompts."""
        return self.encode_tokens(self.tokenize(texts))
