"""Sampling image tokens from the DALL-E transformer: key/value cache, temperature, top-k / top-p,
classifier-free guidance. Plain functions (STYLE 7); guidance wraps the logits, not `forward`."""

from __future__ import annotations

import torch

from t2i.models.dalle.objective import null_text
from t2i.models.dalle.transformer import DalleTransformer


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Logits (B, V) with everything outside the top k, and outside the smallest set of probability
    >= top_p (nucleus), set to -inf. DALL-E's `filter_thres 0.9` is top_k = V // 10."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep tokens until the mass reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def guided(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on a batch stacked [conditional; null]: l_u + s * (l_c - l_u) over
    log-probabilities."""
    cond, uncond = logits.float().log_softmax(-1).chunk(2)
    return uncond + scale * (cond - uncond)


def sample(logits: torch.Tensor, generator=None) -> torch.Tensor:
    """One id per row (B, 1) from softmax(logits). With a list of generators, one per row, each row's
    draw depends only on its own generator (Gumbel-max), so an image does not change with the batch
    it is sampled in."""
    if isinstance(generator, (list, tuple)):
        u = torch.stack([torch.rand(logits.shape[-1], generator=g) for g in generator]).to(logits.device)
        return (logits.float() - torch.log(-torch.log(u.clamp_min(1e-20)))).argmax(-1, keepdim=True)
    return torch.multinomial(logits.float().softmax(-1), 1, generator=generator)


@torch.no_grad()
def generate(model: DalleTransformer, text: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, guidance_scale: float = 1.0, use_cache: bool = True,
             generator: torch.Generator | list[torch.Generator] | None = None,
             prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Image codes (B, image_len) for text ids (B, text_len), one token at a time (`generator`: one
    for the batch, or one per row; see `sample`). `prefix` (B, 1 + text_len, dim), when given, replaces the
    embeddings of [<bos>; text] (an aligner's output for prompts the text ids cannot carry)."""
    cfg = model.cfg
    B, first = len(text), cfg.text_vocab + 1
    if guidance_scale != 1.0:  # one batch [text; null text], combined per step
        text = torch.cat([text, null_text(cfg, B, text.device)])
    seq = model.sequence(text)                                            # (B', 1 + text_len)
    caches = [{} for _ in model.blocks] if use_cache else None
    embeds = None
    if prefix is not None:
        embeds = model.tok_emb(seq)
        embeds[:B] = prefix.to(embeds.dtype)
    logits = model.image_logits(model.hidden(seq, caches, embeds=embeds)[:, -1])        # (B', image_vocab)
    pos, out = seq.shape[1], []
    for i in range(cfg.image_len):
        step = guided(logits, guidance_scale) if guidance_scale != 1.0 else logits.float()
        step = filter_logits(step / max(temperature, 1e-6), top_k, top_p)
        code = sample(step, generator)                                     # (B, 1)
        out.append(code)
        if i == cfg.image_len - 1:
            break
        token = (code + first).repeat(2 if guidance_scale != 1.0 else 1, 1)
        if use_cache:  # feed only the new token; the blocks' caches hold every earlier one
            logits = model.image_logits(model.hidden(token, caches, start=pos)[:, -1])
        else:
            seq = torch.cat([seq, token], 1)
            logits = model.image_logits(model.hidden(seq)[:, -1])
        pos += 1
    return torch.cat(out, 1)
