"""The DALL-E transformer: one decoder-only stack over [<bos>; text tokens; image tokens].

Architecture only (STYLE 1): the loss (text + 7 * image) / 8 lives in `objective.py`, sampling in
`sampling.py`. One embedding table and one output head cover a joint vocabulary laid out as

    [0, text_vocab)                          text ids (BPE ids, then one padding id per position)
    text_vocab                               <bos>, the first input token
    [text_vocab + 1, text_vocab + 1 + n)     image ids (VQGAN codes, offset)

Position t predicts token t + 1, so the first `text_len` positions predict text and the last
`image_len` predict image tokens; `forward` masks the logits of the other modality to -inf, so a
text position can never predict an image id (and vice versa).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DalleConfig:
    """Transformer shape; vocabularies and lengths are set from the BPE and the VQGAN in use."""

    dim: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    text_len: int = 32          # text tokens (captions are cut or padded to it)
    text_vocab: int = 0         # BPE vocabulary + text_len per-position padding ids
    image_len: int = 64         # image tokens (VQGAN h * w)
    image_vocab: int = 0        # VQGAN codebook size

    @property
    def bos(self) -> int:
        return self.text_vocab

    @property
    def vocab(self) -> int:
        return self.text_vocab + 1 + self.image_vocab

    @property
    def seq_len(self) -> int:
        """Input positions: <bos> + text + image tokens but the last (which is only predicted)."""
        return self.text_len + self.image_len

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, DalleConfig] = {
    "test": DalleConfig(dim=32, depth=2, heads=2, text_len=32),
    # The shapes preset. An MLP twice (not 4x) the width: on the 2-core CPU a 50-kimg run trains in 1216 s
    # instead of 1487 s, and scored 87% seen / 78% held-out (150 prompts, guidance 2, best of 16) against
    # 88% / 73% (300 prompts) for the 4x MLP on the same VQGAN; 2.4M parameters instead of 3.4M.
    "tiny": DalleConfig(dim=256, depth=4, heads=4, mlp_ratio=2, text_len=32),
    # dalle-pytorch's benchmark shape: dim 512, depth 2, 8 heads of 64, 256 text + 256 image tokens.
    "bench": DalleConfig(dim=512, depth=2, heads=8, text_len=256, image_len=256),
    # The DALL-E paper's shape (12B parameters; GPU clusters only): 64 layers, width 3968, 62 heads.
    "paper": DalleConfig(dim=3968, depth=64, heads=62, text_len=256, image_len=1024),
}


class Attention(nn.Module):
    """Causal multi-head self-attention with an optional key/value cache for sampling."""

    def __init__(self, cfg: DalleConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.dropout = cfg.dropout
        self.max_len = cfg.seq_len + 1

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, T, d)
        if cache is not None:
            k, v = cache_append(cache, k, v, self.max_len)
        past = k.shape[2] - T
        p = self.dropout if self.training else 0.0
        if past == 0 and x.device.type == "cpu":
            y = causal_attention(q, k, v, p)
        elif past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        elif T == 1:  # one new token sees everything before it: no mask
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            mask = torch.ones(T, k.shape[2], dtype=torch.bool, device=x.device).tril(past)  # (T, past + T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v for (B, h, T, d) tensors, as three plain batched ops.

    What `F.scaled_dot_product_attention(is_causal=True)` computes, written out for the CPU: there
    PyTorch's flash kernel runs the bf16 backward pass at about half the speed of these matmuls
    (batch 16, 4 heads of 64, 288 tokens, 2 cores: 12 + 15 ms forward + backward per layer, against
    12 + 33 ms; `benchmarks/dalle_transformer.py --only attention` times a whole training step).
    The T x T scores stay small at these sequence lengths.
    """
    B, h, T, d = q.shape
    future = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
    # The mask is added by the score matmul itself (baddbmm), not by a separate pass over the scores.
    scores = torch.baddbmm(future, (q * d ** -0.5).flatten(0, 1), k.flatten(0, 1).transpose(1, 2))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    if dropout > 0:
        probs = F.dropout(probs, dropout)
    return (probs @ v.flatten(0, 1)).view(B, h, T, d)


def cache_append(cache: dict, k: torch.Tensor, v: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Write this step's keys/values (B, h, T, d) after the cached ones; return all of them so far.

    The buffers are allocated once for the whole sequence and written in place: growing them with
    torch.cat would copy the whole cache at every sampled token (quadratic in the image length).
    """
    n, T = cache.get("n", 0), k.shape[2]
    if "k" not in cache or cache["k"].shape[2] < n + T:
        size = max(n + T, max_len)
        for name, new in (("k", k), ("v", v)):
            buf = new.new_empty(*new.shape[:2], size, new.shape[3])
            if n:
                buf[:, :, :n] = cache[name][:, :, :n]
            cache[name] = buf
    cache["k"][:, :, n:n + T], cache["v"][:, :, n:n + T] = k, v
    cache["n"] = n + T
    return cache["k"][:, :, :n + T], cache["v"][:, :, :n + T]


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), x + mlp(ln(x))."""

    def __init__(self, cfg: DalleConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim), nn.Dropout(cfg.dropout))

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class DalleTransformer(nn.Module):
    """tokens (B, T) over the joint vocabulary -> logits (B, T, vocab), other modality masked to -inf."""

    def __init__(self, cfg: DalleConfig):
        super().__init__()
        if cfg.text_vocab <= 0 or cfg.image_vocab <= 0:
            raise ValueError("DalleConfig.text_vocab and image_vocab must be set from the BPE and the VQGAN")
        if cfg.dim % cfg.heads:
            raise ValueError(f"dim {cfg.dim} is not a multiple of heads {cfg.heads}")
        self.cfg = cfg
        side = math.isqrt(cfg.image_len)
        if side * side != cfg.image_len:
            raise ValueError(f"image_len {cfg.image_len} is not a square number of tokens")
        self.tok_emb = nn.Embedding(cfg.vocab, cfg.dim)
        # Positions as in the DALL-E paper: one embedding per text position (<bos> included), and a
        # row plus a column embedding for image tokens, so what is learnt at one place of the grid
        # carries over to the rest of its row and column.
        self.pos_emb = nn.Parameter(torch.zeros(1 + cfg.text_len, cfg.dim))
        self.row_emb = nn.Parameter(torch.zeros(side, cfg.dim))
        self.col_emb = nn.Parameter(torch.zeros(side, cfg.dim))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab, bias=False)
        self.apply(self._init)
        for p in (self.pos_emb, self.row_emb, self.col_emb):
            nn.init.normal_(p, std=0.02)
        modality = torch.zeros(cfg.seq_len, cfg.vocab, dtype=torch.bool)  # True = allowed
        modality[:cfg.text_len, :cfg.text_vocab] = True                   # text positions -> text ids
        modality[cfg.text_len:, cfg.text_vocab + 1:] = True               # image positions -> image ids
        self.register_buffer("allowed", modality, persistent=False)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def sequence(self, text: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """Input tokens [<bos>; text; image ids offset] from text ids (B, text_len) and image codes (B, n)."""
        bos = torch.full_like(text[:, :1], self.cfg.bos)
        parts = [bos, text] + ([image + self.cfg.text_vocab + 1] if image is not None else [])
        return torch.cat(parts, 1)

    def positions(self, start: int, T: int) -> torch.Tensor:
        """Position embeddings (T, dim) of input positions start..start+T-1: <bos> and text, then image
        token i at 1 + text_len + i in row i // side, column i % side."""
        grid = (self.row_emb[:, None] + self.col_emb[None, :]).flatten(0, 1)    # (image_len, dim)
        return torch.cat([self.pos_emb, grid[:self.cfg.image_len - 1]])[start:start + T]

    def hidden(self, tokens: torch.Tensor, caches: list[dict] | None = None, start: int = 0,
               embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, T, dim) of tokens (B, T) at positions start..start+T-1; `embeds` (B, T, dim)
        are their input embeddings when given (else the token table's)."""
        T = tokens.shape[1]
        x = (self.tok_emb(tokens) if embeds is None else embeds) + self.positions(start, T)
        for i, block in enumerate(self.blocks):
            x = block(x, caches[i] if caches is not None else None)
        return self.ln_f(x)

    def text_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits over text ids only (..., text_vocab): a slice of the head, half the cost of all of it."""
        return F.linear(h, self.head.weight[:self.cfg.text_vocab])

    def image_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits over image codes only (..., image_vocab), index = VQGAN code."""
        return F.linear(h, self.head.weight[self.cfg.text_vocab + 1:])

    def forward(self, tokens: torch.Tensor, caches: list[dict] | None = None, start: int = 0,
                mask_logits: bool = True) -> torch.Tensor:
        """Logits (B, T, vocab) for tokens (B, T) at positions start..start+T-1 (start > 0 with caches)."""
        logits = self.head(self.hidden(tokens, caches, start))
        if mask_logits:
            logits = logits.masked_fill(~self.allowed[start:start + tokens.shape[1]], float("-inf"))
        return logits
