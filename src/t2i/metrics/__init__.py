"""Evaluation metrics: FID, CLIP score, R-precision (importing this loads neither open_clip nor torch-fidelity)."""

from t2i.metrics.clip_metrics import clip_score, r_precision
from t2i.metrics.fid import FeatureStats, RealStatsCache, compute_stats, fid_from_stats, frechet_distance

__all__ = [
    "FeatureStats",
    "RealStatsCache",
    "clip_score",
    "compute_stats",
    "fid_from_stats",
    "frechet_distance",
    "r_precision",
]
