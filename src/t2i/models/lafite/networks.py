"""LAFITE networks: a StyleGAN2-style generator and discriminator conditioned on CLIP features.

Pure PyTorch, no custom CUDA op. Modulated convolution has a fused path (grouped convolution, one
kernel per sample) and a reference path (scale activations, shared kernel, scale back); a test checks
they agree. Resampling is bilinear/average pooling rather than StyleGAN2's FIR filters.

Conditioning follows the LAFITE paper and its code: the CLIP feature c (B, c_dim) is embedded and
concatenated with z in the mapping network, and in every synthesis and to-RGB layer the style s from
w is modulated by c as s' = scale(c) * s + bias(c). The discriminator has a semantic head d_fts
projected to c_dim; its logit adds the per-sample projection <d_fts, c>.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


@dataclass
class LafiteNetConfig:
    """Architecture of G and D; round-trips to JSON."""

    resolution: int = 64        # image side: a power of two in `resolutions()` (t2i train: the data's)
    c_dim: int = 256            # CLIP embedding size (set from the CLIP in use)
    z_dim: int = 128
    w_dim: int = 256
    mapping_layers: int = 2
    mapping_lr_mul: float = 0.01  # learning-rate multiplier of the mapping MLP (StyleGAN2's 0.01)
    channel_base: int = 4096    # channels at resolution r: min(channel_base // r, channel_max)
    channel_max: int = 256
    mbstd_group: int = 4
    fused_modconv: bool = False  # grouped-conv path: faster on GPUs, ~5x slower on CPUs
    projection: bool = True      # D's logit adds <D features, condition> (the projection discriminator's term)
    pack: int = 1                # D also judges packs of this many samples jointly (PacGAN); 1 = off

    def channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)

    def resolutions(self) -> list[int]:
        """The image sides G and D build at: powers of two from 16 (at least two blocks above the 4x4
        base, StyleGAN's range) while the channel rule leaves a channel (res <= channel_base)."""
        return [2 ** i for i in range(4, int(math.log2(max(self.channel_base, 1))) + 1)]

    def check_resolution(self) -> None:
        """ValueError unless `resolution` is one of `resolutions()` (log2 would silently round it)."""
        if self.resolution not in self.resolutions():
            raise ValueError(f"resolution {self.resolution} is not one of {self.resolutions()} (powers of two "
                             f"from 16 to channel_base {self.channel_base})")

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, LafiteNetConfig] = {
    # Each preset's resolution is its default; `t2i train` builds the nets at the data's instead (any of
    # `resolutions()`), with the preset's channel rule.
    # CPU: shapes at 64px in minutes (channels 128 at 4..8px, 64 at 16px, 32 at 32px, 16 at 64px).
    "tiny": LafiteNetConfig(resolution=64, z_dim=64, w_dim=256, mapping_layers=2, channel_base=1024,
                            channel_max=128),
    # Smallest possible, for unit tests.
    "test": LafiteNetConfig(resolution=16, c_dim=16, z_dim=8, w_dim=16, mapping_layers=1, channel_base=128,
                            channel_max=16),
    # The paper's 256px StyleGAN2 configuration (GPU), c_dim 512 for CLIP ViT-B/32.
    "paper256": LafiteNetConfig(resolution=256, c_dim=512, z_dim=512, w_dim=512, mapping_layers=8,
                                channel_base=32768, channel_max=512, fused_modconv=True),
}


# ----------------------------------------------------------------------------------------------
# Equalised-learning-rate layers (StyleGAN2): weights stored at unit variance, scaled at run time.

class FC(nn.Module):
    """Fully connected layer with equalised learning rate and optional lrelu."""

    def __init__(self, cin: int, cout: int, bias_init: float = 0.0, lr_mul: float = 1.0, act: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.full([cout], float(bias_init)))
        self.w_gain, self.lr_mul, self.act = lr_mul / math.sqrt(cin), lr_mul, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.w_gain, self.bias * self.lr_mul)
        return F.leaky_relu(x, 0.2) * SQRT2 if self.act else x


class Conv(nn.Module):
    """Plain conv with equalised learning rate, optional lrelu and 2x average-pool downsampling.

    Downsampling pools *before* the convolution: exact for the 1x1 skip (both are linear) and a
    quarter of the convolution's cost for the 3x3 (the D's most expensive layers at full resolution).
    """

    def __init__(self, cin: int, cout: int, k: int, act: bool = True, down: bool = False, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.gain, self.act, self.down = 1 / math.sqrt(cin * k * k), act, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = F.avg_pool2d(x, 2)
        x = F.conv2d(x, self.weight * self.gain, self.bias, padding=self.weight.shape[-1] // 2)
        return F.leaky_relu(x, 0.2) * SQRT2 if self.act else x


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     fused: bool = True) -> torch.Tensor:
    """StyleGAN2 modulated convolution. x (B, Cin, H, W), weight (Cout, Cin, k, k), styles (B, Cin)."""
    B, cin, H, W = x.shape
    cout, _, k, _ = weight.shape
    pad = k // 2
    if demodulate:  # (B, Cout): 1 / ||w * s|| per output channel (Eq. 3 of StyleGAN2)
        dcoefs = ((weight[None] * styles[:, None, :, None, None]).square().sum([2, 3, 4]) + 1e-8).rsqrt()
    if not fused:  # reference path: scale activations instead of weights
        x = x * styles[:, :, None, None]
        x = F.conv2d(x, weight, padding=pad)
        return x * dcoefs[:, :, None, None] if demodulate else x
    w = weight[None] * styles[:, None, :, None, None]                      # (B, Cout, Cin, k, k)
    if demodulate:
        w = w * dcoefs[:, :, None, None, None]
    x = F.conv2d(x.reshape(1, B * cin, H, W), w.reshape(B * cout, cin, k, k), padding=pad, groups=B)
    return x.reshape(B, cout, H, W)


class CondStyle(nn.Module):
    """Style of one layer: s = affine(w), then LAFITE's condition modulation s' = scale(c) * s + bias(c)."""

    def __init__(self, w_dim: int, c_dim: int, channels: int):
        super().__init__()
        self.affine = FC(w_dim, channels, bias_init=1.0)
        self.scale = FC(c_dim, channels, bias_init=1.0)
        self.shift = FC(c_dim, channels, bias_init=0.0)

    def forward(self, w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.scale(c) * self.affine(w) + self.shift(c)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (+ optional 2x upsampling), per-pixel noise, bias, lrelu."""

    def __init__(self, cin: int, cout: int, cfg: LafiteNetConfig, up: bool = False):
        super().__init__()
        self.style = CondStyle(cfg.w_dim, cfg.c_dim, cin)
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.up, self.fused = up, cfg.fused_modconv

    def forward(self, x, w, c, noise: str = "random"):
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = modulated_conv2d(x, self.weight, self.style(w, c), fused=self.fused)
        if noise == "random":
            x = x + torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype) * self.noise_strength
        return F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * SQRT2


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB, without demodulation."""

    def __init__(self, cin: int, cfg: LafiteNetConfig):
        super().__init__()
        self.style = CondStyle(cfg.w_dim, cfg.c_dim, cin)
        self.weight = nn.Parameter(torch.randn(3, cin, 1, 1))
        self.bias = nn.Parameter(torch.zeros(3))
        self.gain, self.fused = 1 / math.sqrt(cin), cfg.fused_modconv

    def forward(self, x, w, c):
        s = self.style(w, c) * self.gain
        return modulated_conv2d(x, self.weight, s, demodulate=False, fused=self.fused) + self.bias[None, :, None, None]


class SynthesisBlock(nn.Module):
    """One resolution: (const input | upsampling conv), conv, to-RGB; skip connections for RGB."""

    def __init__(self, res: int, cfg: LafiteNetConfig):
        super().__init__()
        cout = cfg.channels(res)
        self.res = res
        if res == 4:
            self.const = nn.Parameter(torch.randn(cout, 4, 4))
            self.conv0 = None
        else:
            self.conv0 = SynthesisLayer(cfg.channels(res // 2), cout, cfg, up=True)
        self.conv1 = SynthesisLayer(cout, cout, cfg)
        self.torgb = ToRGB(cout, cfg)

    def forward(self, x, img, w, c, noise: str):
        if self.conv0 is None:
            x = self.const[None].expand(w.shape[0], -1, -1, -1)
        else:
            x = self.conv0(x, w, c, noise)
        x = self.conv1(x, w, c, noise)
        rgb = self.torgb(x, w, c)
        if img is not None:
            img = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
        return x, rgb if img is None else img + rgb


class MappingNetwork(nn.Module):
    """z (normalised) ++ embed(c) (normalised) -> MLP -> w; tracks the mean w for truncation."""

    def __init__(self, cfg: LafiteNetConfig):
        super().__init__()
        self.embed = FC(cfg.c_dim, cfg.w_dim)
        dims = [cfg.z_dim + cfg.w_dim] + [cfg.w_dim] * cfg.mapping_layers
        self.layers = nn.Sequential(*[FC(a, b, lr_mul=cfg.mapping_lr_mul, act=True)
                                      for a, b in zip(dims[:-1], dims[1:])])
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    def forward(self, z: torch.Tensor, c: torch.Tensor, track_w_avg: bool = False) -> torch.Tensor:
        def norm2(v):
            return v * (v.square().mean(1, keepdim=True) + 1e-8).rsqrt()

        w = self.layers(torch.cat([norm2(z), norm2(self.embed(c))], dim=1))
        if track_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().float().mean(0).lerp(self.w_avg, 0.995))
        return w


class Generator(nn.Module):
    """G(z, c) -> images in [-1, 1] (B, 3, R, R)."""

    def __init__(self, cfg: LafiteNetConfig):
        super().__init__()
        cfg.check_resolution()
        self.cfg = cfg
        self.mapping = MappingNetwork(cfg)
        res = [2 ** i for i in range(2, int(math.log2(cfg.resolution)) + 1)]
        self.blocks = nn.ModuleList([SynthesisBlock(r, cfg) for r in res])

    def synthesis(self, w: torch.Tensor, c: torch.Tensor, noise: str = "random") -> torch.Tensor:
        x = img = None
        for block in self.blocks:
            x, img = block(x, img, w, c, noise)
        return img

    def forward(self, z, c, truncation: float = 1.0, noise: str = "random", track_w_avg: bool = False):
        w = self.mapping(z, c, track_w_avg=track_w_avg)
        if truncation != 1.0:
            w = self.mapping.w_avg.lerp(w, truncation)
        return self.synthesis(w, c, noise)


class DiscriminatorBlock(nn.Module):
    """Residual block: two convs (second downsamples) + a 1x1 downsampling skip."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0 = Conv(cin, cin, 3)
        self.conv1 = Conv(cin, cout, 3, down=True)
        self.skip = Conv(cin, cout, 1, act=False, down=True, bias=False)

    def forward(self, x):
        return (self.skip(x) + self.conv1(self.conv0(x))) / SQRT2


class Discriminator(nn.Module):
    """D(x, c) -> (logit (B,), d_fts (B, c_dim)); logit = out(h) + <d_fts, c> (per sample).

    With cfg.pack = m > 1, samples i, i + B/m, i + 2B/m, ... form a pack (as minibatch_std groups them), and every
    member's logit also gets one joint logit of the pack from a second, small discriminator that sees the pack's
    images side by side (stacked as channels, PacGAN, Lin et al. 2018) at 16x16. A single-sample D sees each fake
    alone, so a generator that draws one of the data's modes too often (or never) is only weakly penalised; a pack
    reveals it: two fakes sharing an over-drawn mode are likelier than two reals. The pack branch is separate from
    the main D (whose features the itd loss trains to read the prompt and so to ignore what no prompt names, such
    as the background) and works at 16x16, where the background and layout are what is left to see. The main D's
    logit and d_fts stay per sample (the projection term and itd need them); the losses are unchanged."""

    PACK_SIDE = 16   # the pack branch's input side

    def __init__(self, cfg: LafiteNetConfig):
        super().__init__()
        cfg.check_resolution()
        self.cfg = cfg
        top = cfg.resolution
        self.fromrgb = Conv(3, cfg.channels(top), 1)
        res = [2 ** i for i in range(int(math.log2(top)), 2, -1)]
        self.blocks = nn.Sequential(*[DiscriminatorBlock(cfg.channels(r), cfg.channels(r // 2)) for r in res])
        c4 = cfg.channels(4)
        self.conv = Conv(c4 + 1, c4, 3)
        self.fc = FC(c4 * 16, c4, act=True)
        self.out = FC(c4, 1)
        self.d_fts = FC(c4, cfg.c_dim)
        if cfg.pack > 1:
            side = min(self.PACK_SIDE, top)
            res = [2 ** i for i in range(int(math.log2(side)), 2, -1)]
            self.pack_head = nn.Sequential(
                Conv(3 * cfg.pack, cfg.channels(side), 1),
                *[DiscriminatorBlock(cfg.channels(r), cfg.channels(r // 2)) for r in res],
                Conv(c4, c4, 3), nn.Flatten(1), FC(c4 * 16, c4, act=True), FC(c4, 1))

    def packed(self, img: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B,) the joint logit of each sample's pack, repeated for its members."""
        m = self.cfg.pack
        if len(img) % m:
            raise ValueError(f"D packs {m} samples: the batch ({len(img)}) must be a multiple of it")
        x = F.adaptive_avg_pool2d(img, min(self.PACK_SIDE, img.shape[-1]))
        B, C, H, W = x.shape
        x = x.reshape(m, B // m, C, H, W).transpose(0, 1).reshape(B // m, m * C, H, W)
        return self.pack_head(x).squeeze(1).repeat(m)

    def minibatch_std(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        G = min(self.cfg.mbstd_group, B)
        if B % G:
            G = 1
        y = x.reshape(G, -1, C, H, W).float()
        y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean([1, 2, 3])      # (B / G,)
        y = y.to(x.dtype).reshape(-1, 1, 1, 1).repeat(G, 1, H, W)
        return torch.cat([x, y], dim=1)

    def forward(self, img: torch.Tensor, c: torch.Tensor):
        h = self.blocks(self.fromrgb(img))
        h = self.fc(self.conv(self.minibatch_std(h)).flatten(1))
        fts = self.d_fts(h)
        logit = self.out(h).squeeze(1)
        if self.cfg.projection:
            logit = logit + (fts * c).sum(1)
        if self.cfg.pack > 1:
            logit = logit + self.packed(img)
        return logit, fts
