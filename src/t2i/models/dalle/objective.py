"""DALL-E's training objective: cross-entropy over [text; image] tokens, (text + 7 * image) / 8,
with null-text dropout for classifier-free guidance."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from t2i.models.dalle.transformer import DalleTransformer


def null_text(cfg, batch: int = 1, device=None) -> torch.Tensor:
    """(batch, text_len) ids of the empty caption: every position its own padding id."""
    return (torch.arange(cfg.text_len, device=device) + cfg.text_vocab - cfg.text_len).repeat(batch, 1)


def drop_text(text: torch.Tensor, cfg, p: float) -> torch.Tensor:
    """Replace each caption by the null caption with probability p (classifier-free guidance training)."""
    if p <= 0:
        return text
    drop = torch.rand(len(text), device=text.device) < p
    return torch.where(drop[:, None], null_text(cfg, len(text), text.device), text)


def dalle_loss(model: DalleTransformer, text: torch.Tensor, image: torch.Tensor,
               image_weight: float = 7.0) -> tuple[torch.Tensor, dict]:
    """(loss_text + w * loss_image) / (1 + w) for text ids (B, text_len) and image codes (B, image_len).

    Each position's logits cover only its own modality's ids: the same as masking the others to -inf,
    at half the output layer's cost.
    """
    T = model.cfg.text_len
    h = model.hidden(model.sequence(text, image)[:, :-1])                 # (B, T + N, dim)
    loss_text = F.cross_entropy(model.text_logits(h[:, :T]).float().flatten(0, 1), text.flatten())
    loss_image = F.cross_entropy(model.image_logits(h[:, T:]).float().flatten(0, 1), image.flatten())
    loss = (loss_text + image_weight * loss_image) / (1 + image_weight)
    return loss, {"Loss/text": loss_text.detach(), "Loss/image": loss_image.detach()}
