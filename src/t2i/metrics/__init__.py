"""Evaluation metrics: FID, CLIP score, R-precision, the shapes oracle (importing this loads neither open_clip
nor torch-fidelity). Metric functions take images and features; `t2i.evaluate` samples the models."""

from t2i.metrics.clip_metrics import clip_score, r_precision
from t2i.metrics.fid import FeatureStats, RealStatsCache, compute_stats, fid_from_stats, frechet_distance

# The pipeline metrics that read --data: a captioned canonical dataset (its images or its captions).
DATASET_METRICS = ("fid", "inception_score", "precision_recall", "seed_diversity", "clip_score", "r_precision", "r_precision_damsm")

__all__ = [
    "DATASET_METRICS",
    "FeatureStats",
    "RealStatsCache",
    "clip_score",
    "compute_stats",
    "fid_from_stats",
    "frechet_distance",
    "r_precision",
]
