"""VQGAN first stage (taming-transformers, arXiv 2012.09841): architecture only, no losses.

The encoder maps an image (B, 3, H, W) in [-1, 1] to a grid of z_channels vectors at H / f, with
f = 2 ** (len(ch_mult) - 1); `quant_conv` projects them to embed_dim, the vector quantizer snaps each
one to its nearest codebook row (token ids (B, H / f, W / f)), `post_quant_conv` and the decoder map
the codes back to an image. The patch discriminator it trains against is shared with the KL autoencoder
(`discriminator.py`).

Module and parameter names follow the taming-transformers layout exactly (encoder.down.0.block.0.norm1,
encoder.mid.attn_1.q, quantize.embedding.weight, decoder.up.3.upsample.conv, ...) so its checkpoints
load by name (see `t2i.models.first_stage.taming`). t2i adds the quantizer's `unused_steps` buffer, a training
counter for dead-code restarts that taming checkpoints do not carry, and two options that are off for taming
checkpoints: `codebook_l2` (cosine lookup of l2-normalised codes) and `local_encoder` (per-position norms,
no attention in the encoder, so a token depends on its receptive field only). The loss (reconstruction,
perceptual, codebook, adversarial) lives in `objective.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from t2i.models.first_stage.discriminator import FirstStageSides


@dataclass
class VQGANConfig(FirstStageSides):
    """Architecture of the VQGAN and its patch discriminator; round-trips to JSON.

    The first fields are taming's `ddconfig` names (plus n_embed, embed_dim); `norm_groups` is fixed
    at 32 in taming and only smaller for t2i's narrow presets.
    """

    resolution: int = 256       # image side (`t2i train vqgan`: the data's, any of `resolutions()`)
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)   # one level each; f = 2 ** (len - 1)
    num_res_blocks: int = 2
    # Feature-map sides whose levels get self-attention. Absolute sides, as in taming: at another resolution a
    # side that no level has adds no attention blocks (the middle blocks keep theirs, at the token grid).
    attn_resolutions: tuple[int, ...] = (16,)
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 8192
    codebook_l2: bool = False   # t2i: look codes up by cosine on l2-normalised vectors (ViT-VQGAN); taming: False
    local_encoder: bool = False  # t2i: per-position norms and no middle attention in the encoder; taming: False
    dropout: float = 0.0
    norm_groups: int = 32
    disc_ndf: int = 64          # discriminator channels of the first layer
    disc_layers: int = 3        # stride-2 convolutions of the discriminator
    disc_norm: str = "batch"    # batch | group

    def __post_init__(self):
        self.ch_mult = tuple(self.ch_mult)
        self.attn_resolutions = tuple(self.attn_resolutions)

    @property
    def factor(self) -> int:
        """Downsampling factor f: an H x W image becomes H/f x W/f tokens."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def token_side(self) -> int:
        """Tokens per side for an image of `resolution` pixels."""
        return self.resolution // self.factor

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ch_mult"], d["attn_resolutions"] = list(self.ch_mult), list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VQGANConfig:
        return cls(**d)


PRESETS: dict[str, VQGANConfig] = {
    # CPU: 64px shapes, f4 -> 16x16 = 256 tokens (a small object spans about 4x4 of them; at f8 it got
    # 2x2 and came back as a blob of the wrong colour), codes looked up by cosine in 8 dimensions
    # (ViT-VQGAN's factorised, l2-normalised codes: all codes stay in use and colours stay apart).
    # A local encoder (per-position norms, no attention): a background token far from every object
    # keeps its code when the objects are removed in 78% of cases, against 4% with taming's encoder.
    # 64 codes, not 512: the same round-trip accuracy (85% vs 87%, PSNR 33.1 dB) with a perplexity of
    # 25 instead of 145, and a transformer trained on them uses the caption's shape word three times
    # as much (9.8 vs 3.0 nats per image) and doubles its shape accuracy (52% vs 22-28%) at the same budget.
    # 16 channels at 64px, 32 at 32px, 64 at 16px; the decoder keeps its middle attention.
    "tiny": VQGANConfig(resolution=64, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(),
                        z_channels=32, embed_dim=8, n_embed=64, codebook_l2=True, local_encoder=True,
                        norm_groups=8, disc_ndf=16, disc_layers=3),
    # Smallest possible, for unit tests: 16px, f2 -> 8x8 tokens, attention at 8x8.
    "test": VQGANConfig(resolution=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                        z_channels=8, embed_dim=8, n_embed=32, norm_groups=4, disc_ndf=8, disc_layers=2),
    # taming's ImageNet f16 configuration (256px -> 16x16 tokens) with the prototype's 8192 codes.
    "paper": VQGANConfig(resolution=256, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                         attn_resolutions=(16,), z_channels=256, embed_dim=256, n_embed=8192),
}


# ----------------------------------------------------------------------------------------------
# Blocks (taming's diffusionmodules layout: GroupNorm eps 1e-6, swish).

def normalize(channels: int, groups: int, local: bool = False) -> nn.Module:
    """taming's GroupNorm, or with `local` a LayerNorm over the channels of each position."""
    return ChannelNorm(channels) if local else nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ChannelNorm(nn.GroupNorm):
    """Normalises each position's channel vector on its own (ConvNeXt's LayerNorm for images; a
    GroupNorm of one group whose statistics skip the spatial axes). A t2i addition.

    With GroupNorm's image-wide statistics every encoder output depends on the whole image: removing
    an object changed the code of 96% of the tokens far from it, so the transformer had to model a
    background that carries information about everything else. Per-position statistics keep a token a
    function of its receptive field only. (Per-position statistics over small groups would not do: a
    group of two channels normalises to +-1 and loses its magnitudes.)
    """

    def __init__(self, channels: int):
        super().__init__(1, channels, eps=1e-6, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class ResnetBlock(nn.Module):
    """norm1-swish-conv1-norm2-swish-dropout-conv2 plus a 1x1 `nin_shortcut` when channels change."""

    def __init__(self, cin: int, cout: int, groups: int, dropout: float, local: bool = False):
        super().__init__()
        self.norm1 = normalize(cin, groups, local)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = normalize(cout, groups, local)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, 1x1 convs q, k, v, proj_out, residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = normalize(channels, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (m(h).reshape(B, 1, C, H * W).transpose(-1, -2) for m in (self.q, self.k, self.v))  # (B, 1, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)        # softmax(q k^T / sqrt(C)) v, as taming
        return x + self.proj_out(h.transpose(-1, -2).reshape(B, C, H, W))


class Downsample(nn.Module):
    """3x3 stride-2 conv after zero padding right and bottom by one (taming's asymmetric padding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def mid_block(channels: int, cfg: VQGANConfig, local: bool = False) -> nn.Module:
    """taming's `mid`: block_1, attn_1, block_2 at the lowest resolution; `local` drops attn_1 (an
    identity) and uses per-position norms."""
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, cfg.norm_groups, cfg.dropout, local)
    mid.attn_1 = nn.Identity() if local else AttnBlock(channels, cfg.norm_groups)
    mid.block_2 = ResnetBlock(channels, channels, cfg.norm_groups, cfg.dropout, local)
    return mid


def run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """One level's resnet blocks, each followed by its attention block when the level has them."""
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn) > 0:
            h = level.attn[i](h)
    return h


class Encoder(nn.Module):
    """(B, in_channels, R, R) -> (B, z_channels, R/f, R/f)."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        g, res, local = cfg.norm_groups, cfg.resolution, cfg.local_encoder
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(cin, cfg.ch * mult, g, cfg.dropout, local))
                cin = cfg.ch * mult
                if res in cfg.attn_resolutions and not local:
                    level.attn.append(AttnBlock(cin, g))
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(cin)
                res //= 2
            self.down.append(level)
        self.mid = mid_block(cin, cfg, local)
        self.norm_out = normalize(cin, g, local)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, padding=1)   # taming's double_z=False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, z_channels, R/f, R/f) -> (B, out_ch, R, R); `up` is indexed by level like the encoder's
    `down` (up.0 is the full-resolution level) although it runs from the last level to the first."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        g, levels = cfg.norm_groups, len(cfg.ch_mult)
        cin = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // cfg.factor
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = mid_block(cin, cfg)
        up = []
        for i in reversed(range(levels)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(cin, cfg.ch * cfg.ch_mult[i], g, cfg.dropout))
                cin = cfg.ch * cfg.ch_mult[i]
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(cin, g))
            if i != 0:
                level.upsample = Upsample(cin)
                res *= 2
            up.insert(0, level)
        self.up = nn.ModuleList(up)
        self.norm_out = normalize(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            h = run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ----------------------------------------------------------------------------------------------
# Vector quantizer.

def code_usage(ids: torch.Tensor, n_embed: int) -> dict[str, torch.Tensor]:
    """Distinct codes among `ids` and the perplexity exp(H(p)) of their frequencies p (n_embed when
    every code is used equally often, 1 when one code takes everything)."""
    counts = torch.bincount(ids.flatten(), minlength=n_embed).float()
    p = counts / counts.sum().clamp(min=1)
    entropy = -(p * torch.log(p.clamp(min=1e-10))).sum()
    return {"VQ/used_codes": (counts > 0).sum().float(), "VQ/perplexity": entropy.exp()}


class VectorQuantizer(nn.Module):
    """Nearest codebook row by L2 distance, with a straight-through gradient to the encoder."""

    def __init__(self, n_embed: int, embed_dim: int, l2: bool = False):
        super().__init__()
        self.n_embed, self.embed_dim, self.l2 = n_embed, embed_dim, l2
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)   # taming's initialisation
        # Training steps since each code was last chosen (t2i only; see restart_dead_codes).
        self.register_buffer("unused_steps", torch.zeros(n_embed, dtype=torch.long))

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """The space codes live in: z itself, or z l2-normalised over channels with `l2`."""
        return F.normalize(z, dim=1) if self.l2 else z

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Token ids (B, h, w) of the codes nearest to z (B, embed_dim, h, w)."""
        B, C, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, C).float()                       # (B*h*w, C)
        e = self.codebook().float()
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; the ||z||^2 term does not change the argmin.
        # fp32 even under bf16 autocast: near-ties between codes are common and bf16 would flip them.
        with torch.autocast(device_type=z.device.type, enabled=False):
            d = e.square().sum(1)[None, :] - 2 * flat @ e.t()                     # (B*h*w, n_embed)
        return d.argmin(1).reshape(B, h, w)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Codebook vectors of token ids (B, h, w) as (B, embed_dim, h, w); differentiable w.r.t. the codebook."""
        e = self.embedding(ids)
        return (F.normalize(e, dim=-1) if self.l2 else e).permute(0, 3, 1, 2)

    def codebook(self) -> torch.Tensor:
        """All code vectors (n_embed, embed_dim), as `embed` returns them."""
        w = self.embedding.weight
        return F.normalize(w, dim=1) if self.l2 else w

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """z (B, embed_dim, h, w) -> (z_q straight-through, ids (B, h, w), usage stats)."""
        ids = self.nearest(z)
        z_q = self.embed(ids).to(z.dtype)
        # Straight-through estimator: the forward value is z_q, the gradient w.r.t. z is the one w.r.t. z_q.
        return z + (z_q - z).detach(), ids, code_usage(ids, self.n_embed)

    @torch.no_grad()
    def restart_dead_codes(self, z: torch.Tensor, ids: torch.Tensor, patience: int) -> int:
        """Count this step's usage; codes unused for `patience` steps move onto random encoder outputs
        z (B, embed_dim, h, w) of the batch. Returns how many codes were restarted.

        Under torchrun the usage is combined over ranks and rank 0's replacement vectors are
        broadcast, so every rank keeps the same codebook.
        """
        used = torch.zeros(self.n_embed, dtype=torch.int32, device=ids.device)
        used[ids.flatten()] = 1
        multi = dist.is_available() and dist.is_initialized()
        if multi:
            dist.all_reduce(used, op=dist.ReduceOp.MAX)
        self.unused_steps.add_(1).masked_fill_(used.bool(), 0)
        dead = (self.unused_steps >= patience).nonzero().squeeze(1)
        if len(dead) == 0:
            return 0
        self._move_codes(dead, z)
        return len(dead)

    @torch.no_grad()
    def init_codebook(self, z: torch.Tensor) -> None:
        """Move every code onto a random encoder output of z (B, embed_dim, h, w): a data-dependent start.

        Uniformly initialised codes can all lie on one side of a freshly initialised encoder's outputs, which
        then all pick the same code; the decoder sees one vector everywhere, learns the mean image and the
        encoder gets no signal to spread out (a 64px f8 VQGAN stayed at one code this way). Codes drawn from
        the outputs themselves tell apart whatever the encoder already tells apart.
        """
        self._move_codes(torch.arange(self.n_embed, device=z.device), z)

    def _move_codes(self, codes: torch.Tensor, z: torch.Tensor) -> None:
        """Set `codes` to random vectors of z (distinct where z has enough), rank 0's under torchrun."""
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, self.embed_dim)
        if len(flat) >= len(codes):   # distinct vectors where possible, so moved codes do not tie
            pick = torch.randperm(len(flat), device=flat.device)[:len(codes)]
        else:
            pick = torch.randint(len(flat), (len(codes),), device=flat.device)
        new = flat[pick].to(self.embedding.weight.dtype)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(new, src=0)
        self.embedding.weight[codes] = new
        self.unused_steps[codes] = 0


# ----------------------------------------------------------------------------------------------
# The autoencoder.

class VQGAN(nn.Module):
    """encoder -> quant_conv -> quantize -> post_quant_conv -> decoder."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.codebook_l2)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latents z (B, embed_dim, R/f, R/f) of images x in [-1, 1]."""
        return self.quantize.project(self.quant_conv(self.encoder(x)))

    def decode_latents(self, z_q: torch.Tensor) -> torch.Tensor:
        """Images in about [-1, 1] from quantised latents (B, embed_dim, h, w)."""
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, x: torch.Tensor):
        """x (B, 3, R, R) -> (reconstruction, z before quantisation, ids (B, h, w), usage stats)."""
        z = self.encode_latents(x)
        z_q, ids, stats = self.quantize(z)
        return self.decode_latents(z_q), z, ids, stats

    def last_layer(self) -> torch.Tensor:
        """The decoder's output convolution, where the adversarial term's adaptive weight is measured."""
        return self.decoder.conv_out.weight

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Token ids (B, h, w) of images (B, 3, R, R) in [-1, 1]."""
        return self.quantize.nearest(self.encode_latents(images))

    @torch.no_grad()
    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, h*f, w*f) in about [-1, 1] from token ids (B, h, w)."""
        return self.decode_latents(self.quantize.embed(ids))

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Round trip images -> token ids -> images, all in [-1, 1] (what a second stage's tokens keep)."""
        return self.decode_ids(self.encode(images))
