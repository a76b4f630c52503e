"""Contrastive (InfoNCE) loss shared by CLIP training and LAFITE's itd/itc terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(a: torch.Tensor, b: torch.Tensor, temp: float | torch.Tensor,
             positives: torch.Tensor | None = None, extra_negatives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between rows of a (B, D) and b (B, D), both L2-normalised.

    logits = a @ b.T / temp; row i's positive is column i, or every column where `positives[i]` is
    True (duplicate captions in a batch are not negatives of each other). Cross-entropy both ways,
    averaged. This is the plain, correct form (the original LAFITE exponentiates twice).
    `extra_negatives` (B, K): more logits for the a -> b direction only (hard negative captions).
    """
    logits = a @ b.t() / temp                                   # (B, B)
    ab = logits if extra_negatives is None else torch.cat([logits, extra_negatives], 1)  # (B, B + K)
    if positives is None:
        target = torch.arange(len(a), device=a.device)
        return 0.5 * (F.cross_entropy(ab, target) + F.cross_entropy(logits.t(), target))
    p = positives.float()
    if extra_negatives is not None:
        p_ab = torch.cat([p, torch.zeros_like(extra_negatives)], 1)
    else:
        p_ab = p
    # masked_fill: a masked (-inf) hard negative has weight 0, and 0 * -inf would be nan
    loss_ab = -(p_ab / p_ab.sum(1, keepdim=True) * F.log_softmax(ab, 1).masked_fill(p_ab == 0, 0)).sum(1).mean()
    loss_ba = -(p.t() / p.t().sum(1, keepdim=True) * F.log_softmax(logits.t(), 1)).sum(1).mean()
    return 0.5 * (loss_ab + loss_ba)
