"""Sampling a trained DALL-E model: prompt -> BPE ids -> transformer (guided, cached) -> VQGAN decode,
optionally reranking N candidates per prompt by CLIP score."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from t2i.models.dalle.sampling import generate
from t2i.models.dalle.transformer import DalleConfig, DalleTransformer
from t2i.models.first_stage.vqgan import VQGAN, VQGANConfig
from t2i.models.routing import PromptRouting

# Sampling options `t2i generate` / `t2i eval` pass through, with their defaults.
OPTIONS = {"guidance": 3.0, "top_k": 0, "top_p": 1.0, "temperature": 1.0, "candidates": 1}


class DallePipeline(PromptRouting):
    """Text-to-image with a DALL-E snapshot: `pipe(prompts, seeds, **options) -> uint8 (N, 3, R, R)`."""

    family = "dalle"
    options = OPTIONS

    def __init__(self, model: DalleTransformer, vqgan: VQGAN, tokenizer, clip, meta: dict):
        self.model, self.vqgan, self.tokenizer, self.clip, self.meta = model, vqgan, tokenizer, clip, meta

    @classmethod
    def from_snapshot(cls, snap, device="cpu", clip=None) -> "DallePipeline":
        """Build from a loaded `Snapshot` of family dalle; `clip` (any t2i CLIP) enables reranking."""
        from t2i.text.bpe import BpeTokenizer

        model = DalleTransformer(DalleConfig(**snap.meta["net"]))
        model.load_state_dict(snap.state_dict("dalle"))
        vqgan = VQGAN(VQGANConfig.from_dict(snap.meta["vqgan"]))
        vqgan.load_state_dict(snap.state_dict("vqgan"))
        tokenizer = BpeTokenizer(snap.meta["tokenizer"]["spec"])  # sampling: never BPE-dropout
        return cls(model.to(device).eval().requires_grad_(False), vqgan.to(device).eval().requires_grad_(False),
                   tokenizer, clip, snap.meta)

    @property
    def resolution(self) -> int:
        return self.vqgan.cfg.resolution

    def text_ids(self, prompts: list[str], truncate: bool = False) -> torch.Tensor:
        """(N, text_len) ids; a prompt longer than the model reads is cut (truncate) or a T2IError."""
        from t2i.text.bpe import fixed_length_ids

        return fixed_length_ids(self.tokenizer, prompts, self.model.cfg.text_len, truncate=truncate)

    def text_condition(self, prompts: list[str], truncate: bool = False) -> torch.Tensor:
        """The transformer's text input: embeddings (N, 1 + text_len, dim) of [<bos>; prompt ids]."""
        model = self.model
        return model.tok_emb(model.sequence(self.text_ids(prompts, truncate).to(next(model.parameters()).device)))

    def check_prompts(self, prompts: list[str], truncate: bool = False, candidates: int = 1, **options) -> None:
        """T2IError naming the first prompt the transformer (or the reranking CLIP) cannot read, before any
        image is made."""
        from t2i.errors import T2IError

        if text := self.text_prompts(prompts):
            self.text_ids(text, truncate)
        if candidates > 1 and self.clip is not None:
            if len(text) < len(prompts):
                raise T2IError("--candidates > 1 reranks with a CLIP that reads the model's own language, not the "
                               "prompts the aligner takes; sample them with --candidates 1")
            self.clip.tokenize(prompts)

    @torch.no_grad()
    def __call__(self, prompts: list[str], seeds: list[int], guidance: float = 3.0, top_k: int = 0,
                 top_p: float = 1.0, temperature: float = 1.0, candidates: int = 1, batch: int = 64,
                 truncate: bool = False) -> torch.Tensor:
        """One image per (prompt, seed); with candidates > 1 and a CLIP, the best of N by CLIP score.
        top_k 0 keeps the top 10% of codes (DALL-E's filter_thres 0.9); truncate cuts long prompts
        (training captions, as in training) instead of refusing them."""
        from t2i.data.transforms import to_uint8

        n = candidates if self.clip is not None else 1
        images = self.sample_candidates(prompts, seeds, n, guidance, top_k, top_p, temperature, batch, truncate)
        return to_uint8((self.rerank(images, prompts) if n > 1 else images[:, 0]).cpu())

    @torch.no_grad()
    def sample_candidates(self, prompts: list[str], seeds: list[int], n: int, guidance: float = 3.0,
                          top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0, batch: int = 64,
                          truncate: bool = False) -> torch.Tensor:
        """n candidates per (prompt, seed) as float images (N, n, 3, R, R) in [-1, 1]; candidate j of seed s
        draws from its own generator, so it does not depend on the batch it is sampled in."""
        if len(prompts) != len(seeds):
            raise ValueError("one seed per prompt")
        device = next(self.model.parameters()).device
        rows = [(p, s, j) for p, s in zip(prompts, seeds) for j in range(n)]
        k = top_k or max(1, self.model.cfg.image_vocab // 10)
        side = self.vqgan.cfg.token_side
        images = []
        for b in range(0, len(rows), batch):
            chunk = rows[b:b + batch]
            texts = [p for p, _, _ in chunk]
            taken = self.routed(texts)
            # A routed prompt's ids are never read (its input embeddings come from the route): the empty caption's.
            text = self.text_ids(["" if t else p for p, t in zip(texts, taken)], truncate).to(device)
            prefix = self.condition(texts, truncate=truncate) if any(taken) else None
            gens = [torch.Generator().manual_seed(int(s) * 1_000_003 + j) for _, s, j in chunk]
            codes = generate(self.model, text, temperature, k, top_p, guidance, generator=gens, prefix=prefix)
            images.append(self.vqgan.decode_ids(codes.view(-1, side, side)).float().clamp(-1, 1))
        return torch.cat(images).view(len(prompts), n, *images[0].shape[1:])

    def rerank(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The candidate with the highest CLIP similarity to its prompt, per prompt: (N, n, 3, R, R) -> (N, 3, R, R)."""
        best = self.clip_similarity(images, prompts).argmax(1)                    # (N,)
        return images[torch.arange(len(images)), best]

    @torch.no_grad()
    def clip_similarity(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Cosine similarity (N, n) under the reranking CLIP of candidates (N, n, 3, R, R) to their prompts."""
        N, n = images.shape[:2]
        img = F.normalize(self.clip.encode_image(images.flatten(0, 1)).float(), dim=-1).view(N, n, -1)
        txt = F.normalize(self.clip.encode_text(prompts).float(), dim=-1)          # (N, D)
        return (img @ txt[:, :, None]).squeeze(-1)
