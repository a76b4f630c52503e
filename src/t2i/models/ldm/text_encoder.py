"""LDM's text encoder and its tokenizers: architecture only.

LDM text2img (Rombach et al. 2022, arXiv 2112.10752, App. E.2) trains a BERT-like transformer jointly with
the UNet: token embeddings + learned positions, pre-norm transformer layers (no causal mask), a final
LayerNorm. Its token states (B, T, width) are the UNet's cross-attention context; the pooled state (B, width)
is the state at the end token (the last unpadded position: a t2i CLIP's sentence feature), which the UNet adds
to its timestep embedding when its `pooled_dim` is set. CompVis' BERTEmbedder (an x-transformers Encoder) differs
from a textbook layer in three ways the config spells out, so that paper256 holds its weights exactly: 8 heads
of 64 dimensions (attention width 512, not 1280), q/k/v without biases, and no padding mask (its [PAD]
tokens are attended to). The alternative, a frozen CLIP text tower (t2i's small
CLIP: the same pre-norm transformer), is this module holding the CLIP's weights with `frozen` set
(`from_clip_text`): its token states, before CLIP's projection, are the context. An open_clip model from a local
file (`--clip ARCH:/path`) conditions through `OpenClipText`, open_clip's own text tower (causal, its BPE
tokenizer), whose final-LayerNorm token states are the context, as in Stable Diffusion.

Tokenizers: the paper's WordPiece of bert-base-uncased (tokenizers' BertWordPiece from a local vocab.txt) or
the byte-level BPE t2i trains (`t2i.text.bpe`), both as one `tokenizers` JSON document that travels inside
snapshots. Every text becomes [start] ids [end] [pad]...; the empty caption ("" -> [start][end]) is the
null condition of classifier-free guidance.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from t2i.errors import T2IError


@dataclass
class TextConfig:
    """Architecture of the text encoder; round-trips to JSON."""

    vocab_size: int = 30522     # set from the tokenizer when a run starts
    max_len: int = 77           # tokens read, start and end included
    width: int = 1280
    layers: int = 32
    heads: int = 8
    mlp_ratio: int = 4
    head_dim: int = 0           # dimensions per head; 0 = width // heads (attention as wide as the model)
    qkv_bias: bool = True       # biases on the q/k/v projections (CompVis' BERTEmbedder has none)
    mask_padding: bool = True   # pad tokens are not attended to (CompVis' BERTEmbedder attends to them)
    frozen: bool = False        # a frozen CLIP text tower: trained never, run without gradients
    open_clip: str = ""         # an open_clip arch: the module is that arch's text tower (OpenClipText), frozen

    def to_dict(self) -> dict:
        return asdict(self)


class SelfAttention(nn.Module):
    """Multi-head self-attention; parameters named as torch's nn.MultiheadAttention (q, k, v stacked in
    in_proj_weight) so snapshots of the earlier nn.TransformerEncoder layout and t2i's CLIP tower load unchanged."""

    def __init__(self, width: int, heads: int, head_dim: int, bias: bool):
        super().__init__()
        self.heads, inner = heads, heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, width))   # rows: q, k, v
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(B, T, 3, self.heads, -1).permute(2, 0, 3, 1, 4)          # each (B, heads, T, d)
        h = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # scale d ** -0.5
        return self.out_proj(h.transpose(1, 2).reshape(B, T, -1))


class TextBlock(nn.Module):
    """Pre-norm layer: x + attn(norm1(x)), then x + linear2(gelu(linear1(norm2(x)))); torch's
    TransformerEncoderLayer(norm_first=True, activation="gelu") with its parameter names."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width)
        self.self_attn = SelfAttention(cfg.width, cfg.heads, cfg.head_dim or cfg.width // cfg.heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(cfg.width)
        self.linear1 = nn.Linear(cfg.width, cfg.mlp_ratio * cfg.width)
        self.linear2 = nn.Linear(cfg.mlp_ratio * cfg.width, cfg.width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), attn_mask)
        return x + self.linear2(nn.functional.gelu(self.linear1(self.norm2(x))))


class TextLayers(nn.Module):
    """The stack of blocks (`layers.{i}`, as nn.TransformerEncoder names them)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.layers = nn.ModuleList(TextBlock(cfg) for _ in range(cfg.layers))
        self.gradient_checkpointing = False   # recompute each block's activations in backward (training memory)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        for block in self.layers:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask)
        return x


class TextEncoder(nn.Module):
    """ids (B, T) and padding mask (B, T, True = token) -> token states (B, T, width), pooled (B, width)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        if cfg.head_dim == 0 and cfg.width % cfg.heads:
            raise ValueError(f"text width {cfg.width} is not divisible by {cfg.heads} heads; set head_dim")
        self.cfg = cfg
        self.token = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position = nn.Parameter(torch.zeros(cfg.max_len, cfg.width))
        nn.init.normal_(self.position, std=0.01)
        self.layers = TextLayers(cfg)
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # A frozen encoder (cfg.frozen, or --train_text 0) has requires_grad off, so no graph is built here; one
        # that textual inversion extends still carries gradients to its new embedding rows.
        h = self.token(ids) + self.position[:ids.shape[1]]                # (B, T, width)
        attn_mask = mask[:, None, None, :] if self.cfg.mask_padding else None   # (B, 1, 1, T): keys attended
        h = self.norm(self.layers(h, attn_mask))
        end = (mask.long().sum(1) - 1).clamp(min=0)       # the end token: a t2i CLIP's sentence feature
        return h, h[torch.arange(len(h), device=h.device), end]


def from_clip_text(clip) -> tuple[TextConfig, dict[str, torch.Tensor]]:
    """The frozen TextConfig and state_dict of a t2i small CLIP's text tower (`t2i.clip.model.SmallClip`): the
    same architecture under other names (pos -> position, blocks -> layers); CLIP's projection is not used."""
    c = clip.cfg
    cfg = TextConfig(vocab_size=c.vocab_size, max_len=c.context, width=c.text_width, layers=c.text_layers,
                     heads=c.text_heads, frozen=True)
    rename = {"pos": "position", "blocks": "layers"}
    sd = {rename.get(k.split(".", 1)[0], k.split(".", 1)[0]) + k[len(k.split(".", 1)[0]):]: v
          for k, v in clip.text.state_dict().items() if not k.startswith("proj.")}
    return cfg, sd


# The text-tower weights of an open_clip CLIP's state dict (CustomTextCLIP nests them under "text.").
OPEN_CLIP_TEXT_KEYS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")


class OpenClipText(nn.Module):
    """open_clip's text tower of `cfg.open_clip` (built alone, without the vision tower), frozen: ids (B, T) ->
    token states after the final LayerNorm (B, T, width) and the projected end-of-text state (B, embed_dim).
    The mask is unused: the tower is causal, so states never read the padding after them."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        import open_clip
        # open_clip's builder of one tower (a private name, stable since open_clip 2.x); the public
        # create_model would build and initialise a vision tower that is thrown away.
        from open_clip.model import _build_text_tower

        arch = open_clip.get_model_config(cfg.open_clip)
        if arch is None:
            raise T2IError(f"open_clip arch {cfg.open_clip!r} is not known to the installed open_clip")
        self.cfg = cfg
        self.tower = _build_text_tower(arch["embed_dim"], {**arch["text_cfg"], "output_tokens": True},
                                       arch.get("quick_gelu", False))
        self.requires_grad_(False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, tokens = self.tower(ids)   # frozen weights: no graph unless an extended embedding trains
        return tokens, pooled


def from_open_clip(clip) -> tuple[TextConfig, dict[str, torch.Tensor]]:
    """The frozen TextConfig and text-tower state_dict of an open_clip model (`t2i.clip.openclip.OpenClipModel`)."""
    state = clip.model.state_dict()
    if any(k.startswith("text.") for k in state):
        state = {k[len("text."):]: v for k, v in state.items() if k.startswith("text.")}
    tower = {k: v for k, v in state.items() if k.split(".", 1)[0] in OPEN_CLIP_TEXT_KEYS}
    import open_clip

    emb, text_cfg = tower["token_embedding.weight"], open_clip.get_model_config(clip.arch)["text_cfg"]
    cfg = TextConfig(vocab_size=emb.shape[0], max_len=tower["positional_embedding"].shape[0], width=emb.shape[1],
                     layers=text_cfg["layers"], heads=text_cfg["heads"], frozen=True, open_clip=clip.arch)
    return cfg, {f"tower.{k}": v for k, v in tower.items()}


def pooled_width(cfg: TextConfig) -> int:
    """Width of the pooled state of the text module a config describes (open_clip's is projected)."""
    if cfg.open_clip:
        import open_clip

        return open_clip.get_model_config(cfg.open_clip)["embed_dim"]
    return cfg.width


def build_text_encoder(cfg: TextConfig) -> nn.Module:
    """The text module a config describes: open_clip's tower, or t2i's BERT-like encoder (trained or a frozen
    t2i CLIP's)."""
    return OpenClipText(cfg) if cfg.open_clip else TextEncoder(cfg)


class OpenClipTokenizer:
    """open_clip's BPE tokenizer of an arch (shipped inside the open_clip package): texts -> (ids, mask)."""

    def __init__(self, arch: str):
        import open_clip

        self.arch, self._tok = arch, open_clip.get_tokenizer(arch)
        self.vocab_size = open_clip.get_model_config(arch)["text_cfg"].get("vocab_size", 49408)

    def to_meta(self) -> dict:
        return {"open_clip": self.arch}

    def __call__(self, texts: list[str], length: int, truncate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask), each (B, length): <start> ids <end> then zeros; a text longer than length - 2 tokens is cut
        (truncate) or a T2IError naming it (open_clip itself would cut it silently)."""
        for text in texts:
            n = len(self._tok.encode(text))
            if n > length - 2 and not truncate:
                short = text if len(text) <= 60 else text[:57] + "..."
                raise T2IError(f"prompt {short!r} is {n} tokens; this model reads at most {length - 2}. "
                               "Shorten the prompt.")
        ids = self._tok(texts, context_length=length).long()
        return ids, ids != 0


def tokenizer_from_meta(meta: dict):
    """The tokenizer a snapshot records: open_clip's of an arch, or a `tokenizers` document (LdmTokenizer)."""
    return OpenClipTokenizer(meta["open_clip"]) if "open_clip" in meta else LdmTokenizer.from_meta(meta)


class LdmTokenizer:
    """A `tokenizers` Tokenizer plus its start / end / pad tokens: texts -> (ids, mask) of a fixed length."""

    def __init__(self, spec: dict, start: str, end: str, pad: str):
        from tokenizers import Tokenizer

        self.spec, self.special = spec, (start, end, pad)
        self._tok = Tokenizer.from_str(json.dumps(spec))
        ids = [self._tok.token_to_id(t) for t in self.special]
        if None in ids:
            raise T2IError(f"the tokenizer lacks one of the tokens {self.special}; its vocabulary must hold them")
        self.start_id, self.end_id, self.pad_id = ids
        self.vocab_size = self._tok.get_vocab_size()

    @classmethod
    def from_bpe(cls, bpe) -> LdmTokenizer:
        """From a t2i BPE (`t2i.text.bpe.BpeTokenizer`, canonical segmentation)."""
        from t2i.text.bpe import EOT, PAD, SOT

        return cls(json.loads(bpe.to_json()), SOT, EOT, PAD)

    @classmethod
    def from_wordpiece(cls, vocab_txt: str) -> LdmTokenizer:
        """bert-base-uncased's WordPiece (lower-casing, accents stripped) from a local vocab.txt."""
        from pathlib import Path

        from tokenizers import BertWordPieceTokenizer

        if not Path(vocab_txt).is_file():
            raise T2IError(f"--vocab {vocab_txt!r} does not exist; give the vocab.txt of bert-base-uncased "
                           "(a local file; nothing is downloaded)")
        tok = BertWordPieceTokenizer(str(vocab_txt), lowercase=True)
        return cls(json.loads(tok.to_str()), "[CLS]", "[SEP]", "[PAD]")

    def to_meta(self) -> dict:
        return {"spec": self.spec, "special": list(self.special)}

    @classmethod
    def from_meta(cls, meta: dict) -> LdmTokenizer:
        return cls(meta["spec"], *meta["special"])

    def __call__(self, texts: list[str], length: int, truncate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask), each (B, length); a text longer than length - 2 tokens is cut (truncate, for training
        captions) or a T2IError naming it."""
        ids = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(texts), length, dtype=torch.bool)
        for i, text in enumerate(texts):
            body = self._tok.encode(text, add_special_tokens=False).ids if text else []
            if len(body) > length - 2:
                if not truncate:
                    short = text if len(text) <= 60 else text[:57] + "..."
                    raise T2IError(f"prompt {short!r} is {len(body)} tokens; this model reads at most {length - 2}. "
                                   "Shorten the prompt.")
                body = body[:length - 2]
            row = [self.start_id, *body, self.end_id]
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = True
        return ids, mask
