"""Contrastive (InfoNCE) loss shared by CLIP training and LAFITE's itd/itc terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(a: torch.Tensor, b: torch.Tensor, temp: float | torch.Tensor,
             positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between rows of a (B, D) and b (B, D), both L2-normalised.

    logits = a @ b.T / temp; row i's positive is column i, or every column where `positives[i]` is
    True (duplicate captions in a batch are not negatives of each other). Cross-entropy both ways,
    averaged. This is the plain, correct form (the original LAFITE exponentiates twice).
    """
    logits = a @ b.t() / temp                                   # (B, B)
    if positives is None:
        target = torch.arange(len(a), device=a.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    p = positives.float()
    loss_ab = -(p / p.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    loss_ba = -(p.t() / p.t().sum(1, keepdim=True) * F.log_softmax(logits.t(), 1)).sum(1).mean()
    return 0.5 * (loss_ab + loss_ba)
