"""Sampling a trained LAFITE model: prompt -> CLIP text feature -> G_ema(z, c) -> images."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from t2i.models.lafite.networks import Generator, LafiteNetConfig
from t2i.models.routing import PromptRouting


def load_condition_clip(spec: str, init=None, device="cpu"):
    """The frozen CLIP LAFITE conditions on, and the meta that rebuilds it from a snapshot.

    A t2i CLIP is stored inside LAFITE snapshots (module "clip"); an open_clip model is referenced
    by its ARCH:/path spec instead (hundreds of MB, not copied into every snapshot).
    """
    from t2i.clip import load_clip
    from t2i.clip.model import SmallClip
    from t2i.clip.trainer import clip_from_meta, clip_meta

    if init is not None:
        meta = init.meta["clip"]
        if meta["kind"] == "t2i":
            return clip_from_meta(meta, init.state_dict("clip"), device), meta
        return load_clip(meta["spec"], device), meta
    clip = load_clip(spec, device)
    clip.requires_grad_(False)
    meta = clip_meta(clip) if isinstance(clip, SmallClip) else {"kind": "open_clip", "spec": spec}
    return clip, meta


class LafitePipeline(PromptRouting):
    """Text-to-image with a LAFITE snapshot: `pipe(prompts, seeds) -> uint8 (N, 3, R, R)`."""

    family = "lafite"

    def __init__(self, G: Generator, clip, meta: dict):
        self.G, self.clip, self.meta = G, clip, meta
        self.options = self.default_options(meta)

    @classmethod
    def default_options(cls, meta: dict) -> dict:
        """Sampling options `t2i generate` / `t2i eval` pass through, with this model's defaults: a model may
        record the truncation it was measured with (config "sampling"), as the embedded default model does."""
        return {"truncation": float(meta.get("sampling", {}).get("truncation", 1.0))}

    @classmethod
    def from_snapshot(cls, snap, device="cpu") -> "LafitePipeline":
        """Build from a loaded `Snapshot` of family lafite (uses G_ema)."""
        G = Generator(LafiteNetConfig(**snap.meta["net"]))
        G.load_state_dict(snap.state_dict("G_ema"))
        G = G.to(device).eval().requires_grad_(False)
        clip, _ = load_condition_clip("", snap, device)
        return cls(G, clip, snap.meta)

    @property
    def resolution(self) -> int:
        return self.G.cfg.resolution

    def check_prompts(self, prompts: list[str], **options) -> None:
        """T2IError naming the first prompt the text encoder cannot read, before any image is made."""
        if text := self.text_prompts(prompts):
            self.clip.tokenize(text)

    def text_condition(self, prompts: list[str]) -> torch.Tensor:
        """(N, c_dim) unit CLIP text features of prompts (with autograd, as `t2i invert`'s adapter needs)."""
        return F.normalize(self.clip.encode_text(prompts).float(), dim=-1)

    @torch.no_grad()
    def condition(self, prompts: list[str]) -> torch.Tensor:
        """(N, c_dim) unit conditions: CLIP text features, or the prompt route's."""
        return F.normalize(super().condition(prompts).float(), dim=-1)

    @torch.no_grad()
    def __call__(self, prompts: list[str], seeds: list[int], truncation: float | None = None,
                 batch: int = 64) -> torch.Tensor:
        """One image per (prompt, seed) pair, as uint8 (N, 3, R, R); truncation psi (None: the model's default,
        `options`) pulls each w towards the mean w: 1 = none."""
        from t2i.data.transforms import to_uint8

        truncation = self.options["truncation"] if truncation is None else truncation

        if len(prompts) != len(seeds):
            raise ValueError("one seed per prompt")
        device = next(self.G.parameters()).device
        out = []
        for s in range(0, len(prompts), batch):
            c = self.condition(prompts[s:s + batch]).to(device)
            z = torch.stack([torch.randn(self.G.cfg.z_dim, generator=torch.Generator().manual_seed(int(seed)))
                             for seed in seeds[s:s + batch]]).to(device)
            out.append(to_uint8(self.G(z, c, truncation=truncation, noise="none").float().cpu()))
        return torch.cat(out)
