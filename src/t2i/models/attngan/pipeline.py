"""Sampling a trained AttnGAN: prompt -> DAMSM words and sentence -> G_ema(z, cond) -> the last stage's images."""

from __future__ import annotations

import torch

from t2i.errors import T2IError
from t2i.models.attngan.networks import AttnGanConfig, Generator, GOutput, WordCondition
from t2i.models.routing import PromptRouting


class AttnGanPipeline(PromptRouting):
    """Text-to-image with an AttnGAN snapshot: `pipe(prompts, seeds) -> uint8 (N, 3, R, R)`."""

    family = "attngan"
    options: dict = {}    # no sampling options: z and CA's noise come from the seed

    def __init__(self, G: Generator, damsm, meta: dict):
        self.G, self.damsm, self.meta = G, damsm, meta

    @classmethod
    def from_snapshot(cls, snap, device="cpu") -> AttnGanPipeline:
        """Build from a loaded `Snapshot` of family attngan (uses G_ema and the DAMSM text encoder)."""
        from t2i.models.attngan.damsm import damsm_from_meta

        G = Generator(AttnGanConfig(**snap.meta["net"]))
        G.load_state_dict(snap.state_dict("G_ema"))
        damsm = damsm_from_meta(snap.meta["damsm"], snap.state_dict("damsm"), device)
        return cls(G.to(device).eval().requires_grad_(False), damsm, snap.meta)

    @property
    def resolution(self) -> int:
        return self.G.cfg.resolutions[-1]

    def check_prompts(self, prompts: list[str], **options) -> None:
        """T2IError naming the first prompt with no word the DAMSM knows, before any image is made."""
        for p in self.text_prompts(prompts):
            if not self.damsm.vocab.ids(p):
                raise T2IError(f"prompt {p!r} has no word the model knows (its DAMSM vocabulary: "
                               f"{len(self.damsm.vocab) - 1} words, e.g. {', '.join(self.damsm.vocab.words[1:6])}); "
                               "write it with the words of the training captions")

    @torch.no_grad()
    def text_condition(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sentence (N, D), words (N, T, D), lengths (N,)) of prompts by the DAMSM text encoder (the first
        `words` known words of each)."""
        self.check_prompts(prompts)
        words, sentence, lengths = self.damsm.encode_text(prompts)
        return sentence, words, lengths

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int]) -> GOutput:
        """G_ema's output for one (prompt, seed) pair per row: z and CA's noise drawn from the seed."""
        if len(prompts) != len(seeds):
            raise ValueError("one seed per prompt")
        device = next(self.G.parameters()).device
        cond = WordCondition(*(t.to(device) for t in self.condition(prompts)))
        noise = []
        for seed in seeds:
            g = torch.Generator().manual_seed(int(seed))
            z = torch.randn(self.G.cfg.z_dim, generator=g)
            noise.append(torch.cat([z, torch.randn(self.G.cfg.c_dim, generator=g)]))
        noise = torch.stack(noise).to(device)
        return self.G(noise[:, :self.G.cfg.z_dim], cond, noise[:, self.G.cfg.z_dim:])

    def __call__(self, prompts: list[str], seeds: list[int], batch: int = 64) -> torch.Tensor:
        """One image per (prompt, seed) pair, as uint8 (N, 3, R, R)."""
        from t2i.data.transforms import to_uint8

        return torch.cat([to_uint8(self.generate(prompts[s:s + batch], seeds[s:s + batch]).images[-1].float().cpu())
                          for s in range(0, len(prompts), batch)])

    def attention_picture(self, prompts: list[str], seeds: list[int]):
        """A PIL picture: per (prompt, seed) its image and each word's attention map of the last attention stage."""
        from t2i.data.transforms import to_uint8
        from t2i.models.attngan.maps import attention_rows

        out = self.generate(prompts, seeds)
        images = to_uint8(out.images[-1].float().cpu())
        if not out.attention:
            return attention_rows(images, [[] for _ in prompts], [])
        ids, lengths = self.damsm.vocab.encode(prompts, self.damsm.words)
        words = [self.damsm.vocab.decode(ids[k], int(lengths[k])) for k in range(len(prompts))]
        maps = [out.attention[-1][k, :int(lengths[k])].float().cpu() for k in range(len(prompts))]
        return attention_rows(images, words, maps)
