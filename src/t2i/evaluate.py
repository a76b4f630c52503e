"""Evaluate a text-to-image model: sample its pipeline, hand the images to the metric functions.

This is orchestration and sits above `t2i.models` (it loads pipelines) and `t2i.metrics` (which holds
the metric functions and feature extractors, and imports no model). Used by `t2i eval` and, through the
launcher, at every snapshot of a text-to-image run (`--metrics`). Every result names its feature
extractor / CLIP and the number of images, so figures are never compared blindly.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from t2i.errors import T2IError

METRICS = ("fid", "inception_score", "precision_recall", "seed_diversity", "clip_score", "r_precision",
           "r_precision_damsm", "shapes_accuracy")


@dataclass
class EvalOptions:
    """What metrics need besides the model: data, extractors, sample counts."""

    data: str | None = None        # dataset (reals and captions; seed_diversity and shapes_accuracy on shapes need none)
    n: int = 1000                  # generated images per metric (per split for shapes_accuracy)
    clip: str | None = None        # CLIP for clip_score / r_precision (default: the model's own)
    damsm: str | None = None       # DAMSM for r_precision_damsm (default: an AttnGAN model's own)
    inception: str | None = None   # pt_inception-2015-12-05 weights for fid etc. on real data
    oracle: str | None = None      # shapes oracle (default: the shipped one)
    lpips: str | None = None       # torchvision vgg16 weights: seed_diversity also in LPIPS
    seeds_per_prompt: int = 4      # seed_diversity: images of one prompt
    seed: int = 0
    batch: int = 64
    sampling: dict = field(default_factory=dict)  # the pipeline's sampling options (guidance, ...)
    concept: str | None = None     # shapes_accuracy of a learned word: "PLACEHOLDER=SHAPE", e.g. "*=star"
    lang: str = "en"               # shapes_accuracy: the language of its prompts (en, ko)
    # The last generated batch set, keyed by its prompts and seeds: fid, precision_recall, clip_score and
    # r_precision of one `t2i eval` call sample the same images once.
    cache: dict = field(default_factory=dict, repr=False, compare=False)


def dataset_prompts(dataset, n: int, seed: int) -> list[str]:
    """n captions of the dataset: a random caption of a random image each (seeded)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        caps = dataset.records[rng.randrange(len(dataset))]["captions"]
        out.append(caps[rng.randrange(len(caps))])
    return out


def generate(pipe, prompts: list[str], seed: int, batch: int, sampling: dict | None = None,
             seeds: list[int] | None = None, cache: dict | None = None) -> torch.Tensor:
    """uint8 images for prompts, with seeds seed, seed + 1, ... (or the given per-image seeds), with a
    progress bar; `cache` (EvalOptions.cache) keeps the last set, so metrics on the same prompts share it."""
    from tqdm import tqdm

    seeds = list(range(seed, seed + len(prompts))) if seeds is None else seeds
    key = (tuple(prompts), tuple(seeds), repr(sorted((sampling or {}).items())))
    if cache is not None and cache.get("key") == key:
        return cache["images"]
    out = []
    for s in tqdm(range(0, len(prompts), batch), desc="generating", unit="batch", leave=False):
        out.append(pipe(prompts[s:s + batch], seeds[s:s + batch], **(sampling or {})))
    images = torch.cat(out)
    if cache is not None:
        cache.update(key=key, images=images)
    return images


def dataset_fakes(pipe, dataset, opts: EvalOptions) -> torch.Tensor:
    """opts.n images for seeded random captions of the dataset (the fakes of fid and precision_recall)."""
    return generate(pipe, dataset_prompts(dataset, opts.n, opts.seed), opts.seed, opts.batch, opts.sampling,
                    cache=opts.cache)


def _is_shapes(dataset) -> bool:
    return dataset.name.startswith("shapes") and "objects" in (dataset.records[0].get("attributes") or {})


def feature_extractor(opts: EvalOptions, dataset, device, metric: str):
    """The image features a distribution metric compares: Inception (--inception) on any data, else the shapes
    oracle's on the shapes domain (dataset None means shapes); T2IError on real data without Inception."""
    if opts.inception:
        from t2i.metrics.fid import InceptionExtractor

        return InceptionExtractor(opts.inception, device)
    if dataset is None or _is_shapes(dataset):
        from t2i.metrics.oracle import OracleExtractor
        from t2i.metrics.oracle_trainer import load_oracle

        return OracleExtractor(load_oracle(opts.oracle, device))
    raise T2IError(f"{metric} on real data needs Inception weights: --inception "
                   "/path/to/pt_inception-2015-12-05-6726825d.pth")


def features(extractor, images: torch.Tensor, batch: int) -> torch.Tensor:
    """(N, D) features of uint8 images, `batch` at a time."""
    return torch.cat([extractor(chunk) for chunk in images.split(batch)])


def fid(pipe, opts: EvalOptions, device) -> dict:
    """FID between generated images (for dataset captions) and the dataset's images."""
    from t2i.metrics.fid import RealStatsCache, compute_stats, fid_from_stats

    dataset = _need_data(opts, "fid")
    extractor = feature_extractor(opts, dataset, device, "fid")
    cache = RealStatsCache(Path(str(dataset.path).rstrip("/") + ".features") / "fid-stats")

    def real_batches():
        for s in range(0, len(dataset), opts.batch):
            yield torch.stack([dataset[i]["image"] for i in range(s, min(s + opts.batch, len(dataset)))])

    real = cache.get_or_compute(dataset.fingerprint(), extractor.identity,
                                lambda: compute_stats(extractor, real_batches(), extractor.identity))
    fake = compute_stats(extractor, dataset_fakes(pipe, dataset, opts).split(opts.batch), extractor.identity)
    return {"fid": fid_from_stats(real, fake), "extractor": extractor.identity, "n_fake": opts.n, "n_real": real.n}


def inception_score_metric(pipe, opts: EvalOptions, device) -> dict:
    """Inception score of images generated for seeded random dataset captions (10 splits, torch-fidelity's)."""
    from t2i.metrics.fid import InceptionExtractor, inception_score

    dataset = _need_data(opts, "inception_score")
    if not opts.inception:
        raise T2IError("inception_score needs Inception weights (ImageNet classes): --inception "
                       "/path/to/pt_inception-2015-12-05-6726825d.pth; on shapes, shapes_accuracy and "
                       "precision_recall judge with the oracle instead")
    extractor = InceptionExtractor(opts.inception, device)
    images = dataset_fakes(pipe, dataset, opts)
    logits = torch.cat([extractor.logits(chunk) for chunk in images.split(opts.batch)])
    mean, std = inception_score(logits, seed=opts.seed)
    return {"is_mean": mean, "is_std": std, "splits": 10, "extractor": extractor.identity, "n": len(images)}


def precision_recall_metric(pipe, opts: EvalOptions, device) -> dict:
    """Improved precision and recall (k = 3) of generated images (for dataset captions) against as many
    seeded random dataset images, in FID's feature space."""
    from t2i.metrics.diversity import precision_recall

    dataset = _need_data(opts, "precision_recall")
    extractor = feature_extractor(opts, dataset, device, "precision_recall")
    pick = sorted(random.Random(f"{opts.seed}-reals").sample(range(len(dataset)), min(opts.n, len(dataset))))
    real = features(extractor, torch.stack([dataset[i]["image"] for i in pick]), opts.batch)
    fake = features(extractor, dataset_fakes(pipe, dataset, opts), opts.batch)
    precision, recall = precision_recall(real, fake, k=3)
    return {"precision": precision, "recall": recall, "k": 3, "extractor": extractor.identity,
            "n_fake": len(fake), "n_real": len(real)}


def seed_diversity(pipe, opts: EvalOptions, device) -> dict:
    """How much one prompt's images differ across seeds (mean pairwise distance in feature space, and LPIPS
    with --lpips), beside the same figure for real images of one prompt and the ratio of the two.

    Real images of a prompt: on shapes (no --data, or a shapes dataset), renders of the prompt's scene with a
    fresh background and jitter, as the data draws them; on other data, pairs of dataset images that share a
    caption (without any, only the generated figure is reported)."""
    from t2i.data.transforms import to_model
    from t2i.metrics.diversity import mean_pairwise_distance

    S = opts.seeds_per_prompt
    if S < 2:
        raise T2IError(f"--seeds_per_prompt {S}: seed_diversity compares at least 2 seeds of a prompt")
    dataset = _need_data(opts, "seed_diversity") if opts.data else None
    extractor = feature_extractor(opts, dataset, device, "seed_diversity")
    P = max(1, opts.n // S)
    if dataset is None or _is_shapes(dataset):
        prompts, reals = _shapes_prompt_groups(P, S, opts.seed)
    else:
        prompts, reals = _caption_groups(dataset, P, opts.seed)
    seeds = [opts.seed + 1000 * k + i for i in range(P) for k in range(S)]  # seed_k of prompt i
    fakes = generate(pipe, [p for p in prompts for _ in range(S)], opts.seed, opts.batch, opts.sampling, seeds=seeds)
    fakes = fakes.view(P, S, *fakes.shape[1:])
    result = {"prompts": P, "seeds_per_prompt": S, "extractor": extractor.identity}

    def embed(groups: torch.Tensor) -> torch.Tensor:  # (P, S, 3, H, W) uint8 -> (P, S, D)
        return features(extractor, groups.flatten(0, 1), opts.batch).view(*groups.shape[:2], -1)

    def report(name: str, fake: torch.Tensor, real: torch.Tensor | None, **kw) -> None:
        result[name] = g = mean_pairwise_distance(fake, **kw)
        if real is not None:
            result[f"{name}_real"] = r = mean_pairwise_distance(real, **kw)
            result[f"{name}_ratio"] = g / r if r > 0 else float("nan")

    report("feature_dist", embed(fakes), None if reals is None else embed(reals))
    if opts.lpips:
        from t2i.metrics.lpips import load_lpips

        lp = load_lpips(opts.lpips, device)
        report("lpips", fakes, reals, batch=opts.batch,
               distance=lambda a, b: lp(to_model(a.to(device)), to_model(b.to(device))).cpu())
    if reals is not None:
        result["real_groups"] = len(reals)
    return result


def _shapes_prompt_groups(P: int, S: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """P seeded test-seen shapes prompts and, per prompt, S renders of its scene with fresh unnamed
    attributes: uint8 (P, S, 3, 64, 64)."""
    from t2i.data import shapes

    rng = random.Random(f"{seed}-seed_diversity")
    scenes = [shapes.sample_scene(rng, "test-seen") for _ in range(P)]
    renders = shapes.render_tensor([shapes.resample_unnamed(sc, rng) for sc in scenes for _ in range(S)])
    return [shapes.prompt(sc) for sc in scenes], renders.view(P, S, *renders.shape[1:])


def _caption_groups(dataset, P: int, seed: int) -> tuple[list[str], torch.Tensor | None]:
    """Up to P captions that two or more dataset images share, and two of those images each (P', 2, 3, H, W);
    without shared captions, P random captions and None."""
    by_caption: dict[str, list[int]] = {}
    for i, r in enumerate(dataset.records):
        for c in set(r["captions"]):
            by_caption.setdefault(c, []).append(i)
    shared = sorted(c for c, idx in by_caption.items() if len(idx) >= 2)
    rng = random.Random(f"{seed}-seed_diversity")
    if not shared:
        return dataset_prompts(dataset, P, seed), None
    chosen = rng.sample(shared, min(P, len(shared)))
    pairs = [rng.sample(by_caption[c], 2) for c in chosen]
    return chosen, torch.stack([torch.stack([dataset[i]["image"] for i in pair]) for pair in pairs])


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
    images = dataset_fakes(pipe, dataset, opts)
    return {"clip_score": clip_score(clip, images, prompts, batch_size=opts.batch), "clip": clip.identity, "n": opts.n}


def r_precision_metric(pipe, opts: EvalOptions, device) -> dict:
    """R-precision (1 true + 99 random dataset captions) of generated images."""
    from t2i.metrics.clip_metrics import r_precision

    dataset = _need_data(opts, "r_precision")
    clip = _eval_clip(pipe, opts, device)
    prompts = dataset_prompts(dataset, opts.n, opts.seed)
    images = dataset_fakes(pipe, dataset, opts)
    pool = sorted({c for r in dataset.records for c in r["captions"]})
    return {"r_precision": r_precision(clip, images, prompts, pool, seed=opts.seed, batch_size=opts.batch),
            "clip": clip.identity, "n": opts.n}


def r_precision_damsm_metric(pipe, opts: EvalOptions, device) -> dict:
    """AttnGAN's R-precision: each generated image's true caption among 1 + 99 random dataset captions, ranked
    by the cosine of DAMSM's global image and sentence features."""
    from t2i.metrics.clip_metrics import r_precision
    from t2i.models.attngan.damsm import SentenceScorer, load_damsm

    dataset = _need_data(opts, "r_precision_damsm")
    if opts.damsm:
        scorer = SentenceScorer(load_damsm(opts.damsm, device), f"damsm:{opts.damsm}")
    elif getattr(pipe, "damsm", None) is not None:
        scorer = SentenceScorer(pipe.damsm, "damsm:the model's own")
    else:
        raise T2IError(f"r_precision_damsm needs a DAMSM: this {pipe.family} model has none; give --damsm RUN "
                       "(a `t2i train damsm` run on this data)")
    prompts = dataset_prompts(dataset, opts.n, opts.seed)
    images = dataset_fakes(pipe, dataset, opts)
    pool = sorted({c for r in dataset.records for c in r["captions"]})
    return {"r_precision_damsm": r_precision(scorer, images, prompts, pool, seed=opts.seed, batch_size=opts.batch),
            "damsm": scorer.identity, "n": opts.n}


def shapes_accuracy(pipe, opts: EvalOptions, device) -> dict:
    """Oracle accuracy of generated images against their prompts, seen and held-out compositions. With an
    oracle that reads the unnamed attributes, also how the images spread over what prompts leave free, beside
    the same figures for renders of the same prompts drawn as the data draws them: per split the background
    distribution's total-variation distance to the data's (uniform); on the seen split each background's share,
    how often two seeds of a prompt get different backgrounds, and how far apart they place and scale its
    objects."""
    from t2i.data import shapes
    from t2i.metrics import oracle as om
    from t2i.metrics.oracle_trainer import load_oracle, oracle_self_accuracy

    oracle = load_oracle(opts.oracle, device)
    unnamed = oracle.config.unnamed
    result = {}

    def judge(images: torch.Tensor) -> list[dict]:
        return _oracle_predictions(oracle, images, opts.batch, device)

    if opts.concept:
        return concept_accuracy(pipe, opts, judge)

    for split, key in (("test-seen", "seen"), ("test-heldout", "heldout")):
        rng = random.Random(f"{opts.seed}-{split}")
        scenes = [shapes.sample_scene(rng, split) for _ in range(opts.n)]
        prompts = [shapes.prompt(s, opts.lang) for s in scenes]
        preds = judge(generate(pipe, prompts, opts.seed, opts.batch, opts.sampling))
        result |= {f"{key}_{k}": v for k, v in om.score(preds, scenes).items()}
        if not unnamed:
            continue
        result[f"{key}_background_tv"] = om.background_tv(preds)
        if key == "seen":  # a second seed of every prompt (seeds seed + n + i never met above)
            result |= {f"seen_background_{b}": v for b, v in om.background_shares(preds).items()}
            again = judge(generate(pipe, prompts, opts.seed + opts.n, opts.batch, opts.sampling))
            real = judge(shapes.render_tensor(scenes))
            real_again = judge(shapes.render_tensor([shapes.resample_unnamed(s, rng) for s in scenes]))
            result["seen_background_tv_data"] = om.background_tv(real)
            result["background_seeds_differ"] = om.backgrounds_differ(preds, again)
            result["background_seeds_differ_data"] = om.backgrounds_differ(real, real_again)
            result |= om.jitter_seeds_differ(preds, again, scenes)
            result |= {f"{k}_data": v for k, v in om.jitter_seeds_differ(real, real_again, scenes).items()}
    own = oracle_self_accuracy(oracle, n=500, device=device)
    result["oracle_self_all"] = own["all"]
    if unnamed:
        result["oracle_self_background"] = own["unnamed_background"]
    return result


def concept_accuracy(pipe, opts: EvalOptions, judge) -> dict:
    """shapes_accuracy of a learned word (`--concept '*=star'`): n one-object scenes of that shape in any colour,
    size and place, prompted with the placeholder for the shape word ("a large red * on the left") and scored
    as that shape."""
    from t2i.data import shapes
    from t2i.metrics import oracle as om

    placeholder, _, shape = (opts.concept or "").partition("=")
    if not placeholder or shape not in shapes.SHAPES:
        raise T2IError(f"--concept {opts.concept!r}: give PLACEHOLDER=SHAPE with a shapes shape, e.g. '*=star' "
                       f"({', '.join(shapes.SHAPES)})")
    rng = random.Random(f"{opts.seed}-concept-{shape}")
    scenes = [shapes.concept_scene(rng, shape) for _ in range(opts.n)]
    prompts = [re.sub(rf"\b{shape}\b", placeholder, shapes.prompt(s)) for s in scenes]
    preds = judge(generate(pipe, prompts, opts.seed, opts.batch, opts.sampling))
    return {f"concept_{k}": v for k, v in om.score(preds, scenes).items()}


def _oracle_predictions(oracle, images: torch.Tensor, batch: int, device) -> list[dict]:
    """The oracle's per-image predictions of uint8 images, `batch` at a time."""
    from t2i.data.transforms import to_model
    from t2i.metrics.oracle import predict

    preds = []
    with torch.no_grad():
        for chunk in images.split(batch):
            preds += predict(oracle(to_model(chunk.to(device))))
    return preds


def _need_data(opts: EvalOptions, metric: str):
    from t2i.data.dataset import ImageTextDataset

    if not opts.data:
        raise T2IError(f"metric {metric} needs --data DATASET (its images and captions)")
    dataset = ImageTextDataset(opts.data)
    dataset.require_captions(f"metric {metric} (its prompts are the dataset's captions)")
    return dataset


RUNNERS = {"fid": fid, "inception_score": inception_score_metric, "precision_recall": precision_recall_metric,
           "seed_diversity": seed_diversity, "clip_score": clip_score_metric, "r_precision": r_precision_metric,
           "r_precision_damsm": r_precision_damsm_metric, "shapes_accuracy": shapes_accuracy}


def evaluate_metric(name: str, model, opts: EvalOptions | None = None, device="cpu", **kw) -> dict:
    """One metric of a model (a pipeline, or a run/snapshot path) -> a dict of numbers."""
    from t2i.models import load_pipeline

    if name not in RUNNERS:
        raise T2IError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    opts = opts or EvalOptions(**kw)
    pipe = load_pipeline(model, device) if isinstance(model, (str, Path)) else model
    return RUNNERS[name](pipe, opts, device)
