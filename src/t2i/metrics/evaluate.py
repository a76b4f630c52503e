"""Evaluate a text-to-image model: fid, clip_score, r_precision, shapes_accuracy.

Used by `t2i eval` and by the training loop at every snapshot (`--metrics`). Every result names
its feature extractor / CLIP and the number of images, so figures are never compared blindly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from t2i.errors import T2IError

METRICS = ("fid", "clip_score", "r_precision", "shapes_accuracy")
DATASET_METRICS = ("fid", "clip_score", "r_precision")  # read --data: a captioned canonical dataset


@dataclass
class EvalOptions:
    """What metrics need besides the model: data, extractors, sample counts."""

    data: str | None = None        # dataset (reals for fid, captions for fid/clip_score/r_precision)
    n: int = 1000                  # generated images per metric (per split for shapes_accuracy)
    clip: str | None = None        # CLIP for clip_score / r_precision (default: the model's own)
    inception: str | None = None   # pt_inception-2015-12-05 weights for fid on real data
    oracle: str | None = None      # shapes oracle (default: the shipped one)
    seed: int = 0
    batch: int = 64
    sampling: dict = field(default_factory=dict)  # the pipeline's sampling options (guidance, ...)


class OracleExtractor:
    """The shapes oracle's penultimate features (256-d): the FID feature space of the shapes domain."""

    def __init__(self, oracle):
        from t2i.training.snapshot import weights_identity

        self.oracle = oracle
        self.identity = weights_identity(oracle, "shapes-oracle")

    @torch.no_grad()
    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        from t2i.data.transforms import to_model
        import torch.nn.functional as F

        x = to_model(images_uint8.to(next(self.oracle.parameters()).device))
        r = self.oracle.config.resolution
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        return self.oracle.fc(self.oracle.features(x)).float().cpu()


def dataset_prompts(dataset, n: int, seed: int) -> list[str]:
    """n captions of the dataset: a random caption of a random image each (seeded)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        caps = dataset.records[rng.randrange(len(dataset))]["captions"]
        out.append(caps[rng.randrange(len(caps))])
    return out


def generate(pipe, prompts: list[str], seed: int, batch: int, sampling: dict | None = None) -> torch.Tensor:
    """uint8 images for prompts, seeds seed, seed + 1, ... (with a progress bar)."""
    from tqdm import tqdm

    out = []
    for s in tqdm(range(0, len(prompts), batch), desc="generating", unit="batch", leave=False):
        chunk = prompts[s:s + batch]
        out.append(pipe(chunk, list(range(seed + s, seed + s + len(chunk))), **(sampling or {})))
    return torch.cat(out)


def _is_shapes(dataset) -> bool:
    return dataset.name.startswith("shapes") and "objects" in (dataset.records[0].get("attributes") or {})


def fid(pipe, opts: EvalOptions, device) -> dict:
    """FID between generated images (for dataset captions) and the dataset's images."""
    from t2i.metrics.fid import InceptionExtractor, RealStatsCache, compute_stats, fid_from_stats

    dataset = _need_data(opts, "fid")
    if opts.inception:
        extractor = InceptionExtractor(opts.inception, device)
    elif _is_shapes(dataset):
        from t2i.metrics.oracle_trainer import load_oracle

        extractor = OracleExtractor(load_oracle(opts.oracle, device))
    else:
        raise T2IError("fid on real data needs Inception weights: --inception /path/to/pt_inception-2015-12-05-6726825d.pth")
    cache = RealStatsCache(Path(str(dataset.path).rstrip("/") + ".features") / "fid-stats")

    def real_batches():
        for s in range(0, len(dataset), opts.batch):
            yield torch.stack([dataset[i]["image"] for i in range(s, min(s + opts.batch, len(dataset)))])

    real = cache.get_or_compute(dataset.fingerprint(), extractor.identity,
                                lambda: compute_stats(extractor, real_batches(), extractor.identity))
    fakes = generate(pipe, dataset_prompts(dataset, opts.n, opts.seed), opts.seed, opts.batch, opts.sampling)
    fake = compute_stats(extractor, fakes.split(opts.batch), extractor.identity)
    return {"fid": fid_from_stats(real, fake), "extractor": extractor.identity, "n_fake": opts.n, "n_real": real.n}


def _eval_clip(pipe, opts: EvalOptions, device):
    from t2i.clip import load_clip

    if opts.clip:
        return load_clip(opts.clip, device)
    if getattr(pipe, "clip", None) is None:
        raise T2IError(f"this {pipe.family} model carries no CLIP; give --clip (a t2i CLIP run, or ARCH:/path)")
    return pipe.clip


def clip_score_metric(pipe, opts: EvalOptions, device) -> dict:
    """CLIP score of generated images against their prompts."""
    from t2i.metrics.clip_metrics import clip_score

    dataset = _need_data(opts, "clip_score")
    clip = _eval_clip(pipe, opts, device)
    prompts = dataset_prompts(dataset, opts.n, opts.seed)
    images = generate(pipe, prompts, opts.seed, opts.batch, opts.sampling)
    return {"clip_score": clip_score(clip, images, prompts, batch_size=opts.batch), "clip": clip.identity, "n": opts.n}


def r_precision_metric(pipe, opts: EvalOptions, device) -> dict:
    """R-precision (1 true + 99 random dataset captions) of generated images."""
    from t2i.metrics.clip_metrics import r_precision

    dataset = _need_data(opts, "r_precision")
    clip = _eval_clip(pipe, opts, device)
    prompts = dataset_prompts(dataset, opts.n, opts.seed)
    images = generate(pipe, prompts, opts.seed, opts.batch, opts.sampling)
    pool = sorted({c for r in dataset.records for c in r["captions"]})
    return {"r_precision": r_precision(clip, images, prompts, pool, seed=opts.seed, batch_size=opts.batch),
            "clip": clip.identity, "n": opts.n}


def shapes_accuracy(pipe, opts: EvalOptions, device) -> dict:
    """Oracle accuracy of generated images against their prompts, seen and held-out compositions."""
    from t2i.data import shapes
    from t2i.metrics.oracle import predict, score
    from t2i.metrics.oracle_trainer import load_oracle, oracle_self_accuracy

    oracle = load_oracle(opts.oracle, device)
    result = {}
    for split, key in (("test-seen", "seen"), ("test-heldout", "heldout")):
        rng = random.Random(f"{opts.seed}-{split}")
        scenes = [shapes.sample_scene(rng, split) for _ in range(opts.n)]
        images = generate(pipe, [shapes.prompt(s) for s in scenes], opts.seed, opts.batch, opts.sampling)
        from t2i.data.transforms import to_model

        preds = []
        with torch.no_grad():
            for chunk in images.split(opts.batch):
                preds += predict(oracle(to_model(chunk.to(device))))
        for k, v in score(preds, scenes).items():
            result[f"{key}_{k}"] = v
    own = oracle_self_accuracy(oracle, n=500, device=device)
    result["oracle_self_all"] = own["all"]
    return result


def _need_data(opts: EvalOptions, metric: str):
    from t2i.data.dataset import ImageTextDataset

    if not opts.data:
        raise T2IError(f"metric {metric} needs --data DATASET (its images and captions)")
    dataset = ImageTextDataset(opts.data)
    dataset.require_captions(f"metric {metric} (its prompts are the dataset's captions)")
    return dataset


RUNNERS = {"fid": fid, "clip_score": clip_score_metric, "r_precision": r_precision_metric,
           "shapes_accuracy": shapes_accuracy}


def evaluate_metric(name: str, model, opts: EvalOptions | None = None, device="cpu", **kw) -> dict:
    """One metric of a model (a pipeline, or a run/snapshot path) -> a dict of numbers."""
    from t2i.models import load_pipeline

    if name not in RUNNERS:
        raise T2IError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    opts = opts or EvalOptions(**kw)
    pipe = load_pipeline(model, device) if isinstance(model, (str, Path)) else model
    return RUNNERS[name](pipe, opts, device)
