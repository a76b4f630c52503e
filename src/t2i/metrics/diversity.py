"""Diversity metrics on feature sets: improved precision and recall, and the spread of one prompt's seeds.

Precision and recall follow Kynkaanniemi et al. 2019 ("Improved Precision and Recall Metric for Assessing
Generative Models"): each set's manifold is the union of balls around its points, each ball reaching the
point's k-th nearest neighbour in its own set (k = 3). Precision is the fraction of generated points inside
the real manifold (fidelity); recall the fraction of real points inside the generated one (coverage). A
generator that makes one image per prompt keeps its precision and loses its recall.

Seed diversity is the mean distance between images of one prompt under different seeds; it is 0 for a
generator that ignores its noise. Written here rather than taken from a library: torch-fidelity's
precision/recall reads its own feature extractors only, and we score in the oracle's feature space too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def kth_neighbour_radii(feats: torch.Tensor, k: int = 3, batch: int = 1024) -> torch.Tensor:
    """(N,) distance of each point to its k-th nearest other point of the same set."""
    if len(feats) <= k:
        raise ValueError(f"need more than k={k} points for k-nearest-neighbour radii, got {len(feats)}")
    feats = feats.double()
    radii = []
    for chunk in feats.split(batch):
        d = torch.cdist(chunk, feats)                       # (b, N); each row holds its own 0
        radii.append(d.kthvalue(k + 1, dim=1).values)      # k + 1: skip the point itself
    return torch.cat(radii)


def inside_manifold(query: torch.Tensor, support: torch.Tensor, radii: torch.Tensor,
                    batch: int = 1024) -> torch.Tensor:
    """(Q,) bool: whether each query point lies in some support point's ball (distance <= its radius)."""
    support = support.double()
    out = []
    for chunk in query.double().split(batch):
        out.append((torch.cdist(chunk, support) <= radii[None]).any(dim=1))
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved (precision, recall) of fake features (M, D) against real features (N, D)."""
    precision = inside_manifold(fake, real, kth_neighbour_radii(real, k)).double().mean().item()
    recall = inside_manifold(real, fake, kth_neighbour_radii(fake, k)).double().mean().item()
    return precision, recall


def feature_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) Euclidean distance between rows of two (B, D) feature batches."""
    return (a.double() - b.double()).norm(dim=1)


def mean_pairwise_distance(groups: torch.Tensor,
                           distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = feature_distance,
                           batch: int = 256) -> float:
    """Mean over groups of the mean distance between a group's members: groups is (P, S, ...) with S >= 2
    members each (features, or images for a perceptual distance such as LPIPS, `batch` pairs at a time)."""
    P, S = groups.shape[:2]
    if S < 2:
        raise ValueError(f"need at least 2 members a group, got {S}")
    i, j = torch.triu_indices(S, S, offset=1)                # every unordered pair once
    a = groups[:, i].flatten(0, 1)                            # (P * pairs, ...)
    b = groups[:, j].flatten(0, 1)
    d = torch.cat([distance(x, y).double().flatten() for x, y in zip(a.split(batch), b.split(batch))])
    return d.mean().item()
