"""Improved precision/recall and seed diversity: worked examples, a brute-force reference, and the
seed_diversity metric on generators that ignore or use their noise."""

import itertools
import random

import numpy as np
import pytest
import torch

from t2i.data import shapes
from t2i.evaluate import EvalOptions, seed_diversity
from t2i.metrics.diversity import kth_neighbour_radii, mean_pairwise_distance, precision_recall

pytestmark = pytest.mark.usefixtures("one_thread")


def brute_force_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """The paper's definition, written out with loops over every pair."""
    def radii(x):
        return np.array([sorted(np.linalg.norm(x - p, axis=1))[k] for p in x])  # [0] is the point itself

    def inside(query, support, r):
        return np.mean([any(np.linalg.norm(q - s) <= rs for s, rs in zip(support, r)) for q in query])

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def test_identical_sets_give_precision_and_recall_one():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x.clone(), k=3) == (1.0, 1.0)


def test_disjoint_clusters_give_zero():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(40, 4, generator=g), torch.randn(40, 4, generator=g) + 100.0
    assert precision_recall(real, fake, k=3) == (0.0, 0.0)


def test_worked_example_in_one_dimension():
    # Reals 0..4 with k=1: every radius is 1. Fakes 0.5 and 10: 0.5 lies in the ball of 0, 10 in none
    # (precision 1/2). The fakes' radii are |10 - 0.5| = 9.5: the ball of 0.5 holds every real (recall 1).
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])
    fake = torch.tensor([[0.5], [10.0]])
    assert kth_neighbour_radii(real, k=1).tolist() == [1.0] * 5
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)


def test_mode_collapse_keeps_precision_and_loses_recall():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(200, 2, generator=g)
    collapsed = real[:10].repeat(20, 1) + 1e-3 * torch.randn(200, 2, generator=g)   # 10 of 200 modes
    precision, recall = precision_recall(real, collapsed, k=3)
    assert precision == 1.0 and recall < 0.2


def test_matches_the_brute_force_definition():
    g = torch.Generator().manual_seed(3)
    real, fake = torch.randn(60, 5, generator=g), torch.randn(45, 5, generator=g) * 1.3 + 0.4
    ours = precision_recall(real, fake, k=3)
    ref = brute_force_precision_recall(real.numpy().astype(np.float64), fake.numpy().astype(np.float64), 3)
    assert ours == pytest.approx(ref, abs=1e-12) and 0 < ours[0] < 1 and 0 < ours[1] < 1


def test_too_few_points_for_k_is_an_error():
    with pytest.raises(ValueError, match="k=3"):
        kth_neighbour_radii(torch.zeros(3, 2), k=3)


def test_mean_pairwise_distance():
    groups = torch.tensor([[[0.0, 0.0], [3.0, 4.0]],              # one pair: 5
                           [[0.0, 0.0], [0.0, 0.0]]])             # identical: 0
    assert mean_pairwise_distance(groups) == pytest.approx(2.5)
    three = torch.tensor([[[0.0], [3.0], [4.0]]])                 # pairs 3, 4, 1
    assert mean_pairwise_distance(three) == pytest.approx(8 / 3)
    manhattan = lambda a, b: (a - b).abs().sum(1)                 # noqa: E731 - any distance, in batches
    assert mean_pairwise_distance(groups, manhattan, batch=1) == pytest.approx(3.5)


class FakePipeline:
    """Renders the prompt's shapes scene; with `use_noise`, each seed draws its own background and jitter."""

    family = "fake"

    def __init__(self, use_noise: bool):
        self.use_noise = use_noise

    def __call__(self, prompts, seeds):
        out = []
        for prompt, seed in zip(prompts, seeds):
            scene = shapes.parse_prompt(prompt)
            scene = shapes.resample_unnamed(scene, random.Random(seed if self.use_noise else 0))
            out.append(torch.from_numpy(np.array(shapes.render(scene, 64))).permute(2, 0, 1))
        return torch.stack(out)


def test_seed_diversity_is_zero_for_a_generator_that_ignores_its_noise():
    opts = EvalOptions(n=24, seeds_per_prompt=3, batch=16)
    flat = seed_diversity(FakePipeline(use_noise=False), opts, "cpu")
    # Identical images; their oracle features may differ by float noise with their place in a batch (oneDNN).
    assert flat["feature_dist"] < 1e-5 * flat["feature_dist_real"] and flat["feature_dist_ratio"] < 1e-5
    assert flat["prompts"] == 8 and flat["seeds_per_prompt"] == 3 and flat["feature_dist_real"] > 0


def test_seed_diversity_of_a_generator_that_draws_like_the_data_is_near_the_real_figure():
    varied = seed_diversity(FakePipeline(use_noise=True), EvalOptions(n=120, seeds_per_prompt=4, batch=64), "cpu")
    assert varied["feature_dist"] > 0 and 0.7 < varied["feature_dist_ratio"] < 1.4


def test_seed_diversity_uses_distinct_seeds_per_prompt():
    seen = []

    class Recorder(FakePipeline):
        def __call__(self, prompts, seeds):
            seen.extend(zip(prompts, seeds))
            return super().__call__(prompts, seeds)

    seed_diversity(Recorder(use_noise=True), EvalOptions(n=12, seeds_per_prompt=3, batch=5), "cpu")
    by_prompt = {}
    for prompt, seed in seen:
        by_prompt.setdefault(prompt, []).append(seed)
    assert len(seen) == 12 and all(len(set(s)) == len(s) for s in by_prompt.values())
    assert len(set(itertools.chain(*by_prompt.values()))) == 12


def test_shapes_accuracy_reports_how_samples_spread_over_unnamed_attributes():
    from t2i.evaluate import shapes_accuracy

    opts = EvalOptions(n=200, batch=100)
    flat = shapes_accuracy(FakePipeline(use_noise=False), opts, "cpu")
    varied = shapes_accuracy(FakePipeline(use_noise=True), opts, "cpu")
    for r in (flat, varied):   # renders of the prompt: the oracle reads them right
        assert r["seen_all"] >= 0.97 and r["heldout_all"] >= 0.97
        # (200 draws of 4 equally likely backgrounds: a TV distance of 0.2 is about 4 standard errors away)
        assert 0.6 < r["background_seeds_differ_data"] < 0.9 and r["seen_background_tv_data"] < 0.2
    # One background, one placement for every seed: never differs, and far from the data's uniform backgrounds.
    assert flat["background_seeds_differ"] == 0.0 and flat["seen_background_tv"] == pytest.approx(0.75, abs=0.02)
    assert flat["offset_seeds_diff"] == 0.0 and flat["scale_seeds_diff"] == 0.0
    assert sorted(flat[f"seen_background_{b}"] for b in shapes.BACKGROUND_NAMES) == pytest.approx([0, 0, 0, 1])
    # Drawn like the data: about the data's figures.
    assert 0.6 < varied["background_seeds_differ"] < 0.9 and varied["seen_background_tv"] < 0.2
    assert varied["offset_seeds_diff"] == pytest.approx(varied["offset_seeds_diff_data"], rel=0.3)
    assert varied["scale_seeds_diff"] == pytest.approx(varied["scale_seeds_diff_data"], rel=0.3)
