"""FID pieces against direct references: scipy's sqrtm, numpy / torch-fidelity statistics and Inception."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
import torchvision
from safetensors.torch import save_file
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import fid_features_to_statistics

from t2i.errors import T2IError
from t2i.metrics.fid import (
    INCEPTION_WEIGHTS_FILENAME,
    FeatureStats,
    InceptionExtractor,
    RealStatsCache,
    compute_stats,
    fid_from_stats,
    frechet_distance,
)


def scipy_fid(mu1, sigma1, mu2, sigma2) -> float:
    """The textbook formula with scipy.linalg.sqrtm (as in the TTUR / pytorch-fid reference code)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def two_feature_sets(n=500, d=64):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3
    b = rng.standard_normal((n, d)) * 1.5 + 0.7  # other mean and covariance
    return a, b


def test_frechet_distance_matches_scipy_sqrtm():
    a, b = two_feature_sets()
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
    ours = frechet_distance(*stats[0], *stats[1])
    assert ours > 10
    assert ours == pytest.approx(scipy_fid(*stats[0], *stats[1]), rel=1e-3)
    assert abs(frechet_distance(*stats[0], *stats[0])) < 1e-6
    # float32 inputs are promoted rather than tripping torch-fidelity's same-dtype assertion.
    mu32, sigma32 = stats[1][0].astype(np.float32), stats[1][1].astype(np.float32)
    assert frechet_distance(*stats[0], mu32, sigma32) == pytest.approx(ours, rel=1e-4)


def test_frechet_distance_rejects_mismatched_dims():
    with pytest.raises(T2IError, match="same feature extractor"):
        frechet_distance(np.zeros(4), np.eye(4), np.zeros(3), np.eye(3))


def test_compute_stats_streams_to_numpy_mean_and_unbiased_cov():
    rng = np.random.default_rng(1)
    # Far from zero, so a naive sum-of-squares in float64 would lose digits.
    features = rng.standard_normal((300, 16)) @ rng.standard_normal((16, 16)) + 1000.0
    batches = [torch.from_numpy(features[i:j]) for i, j in [(0, 7), (7, 107), (107, 300)]]
    stats = compute_stats(lambda x: x * 1, batches, extractor="identity-test")
    want = fid_features_to_statistics(torch.from_numpy(features))  # torch-fidelity: np.mean, np.cov (ddof=1)
    assert stats.n == 300 and stats.extractor == "identity-test"
    np.testing.assert_allclose(stats.mu, want["mu"], rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, want["sigma"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(want["sigma"], np.cov(features, rowvar=False, ddof=1))


def test_compute_stats_needs_two_samples_and_an_identity():
    with pytest.raises(T2IError, match="at least 2"):
        compute_stats(lambda x: x, [torch.zeros(1, 4)], extractor="x")
    with pytest.raises(ValueError, match="extractor"):
        compute_stats(lambda x: x, [torch.zeros(2, 4)])


def make_stats(seed: int, extractor: str = "inc:abc") -> FeatureStats:
    x = np.random.default_rng(seed).standard_normal((40, 8))
    return FeatureStats(x.mean(0), np.cov(x, rowvar=False), 40, extractor)


def test_feature_stats_round_trip(tmp_path):
    stats = make_stats(0)
    stats.save(tmp_path / "s.safetensors")
    back = FeatureStats.load(tmp_path / "s.safetensors")
    assert back.n == 40 and back.extractor == "inc:abc"
    assert np.array_equal(back.mu, stats.mu) and np.array_equal(back.sigma, stats.sigma)
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]  # no temp file left behind
    assert fid_from_stats(stats, back) == pytest.approx(0, abs=1e-8)
    with pytest.raises(T2IError, match="one extractor"):
        fid_from_stats(stats, make_stats(0, extractor="other"))
    with pytest.raises(T2IError, match="does not exist"):
        FeatureStats.load(tmp_path / "missing.safetensors")


def test_real_stats_cache_keys_on_fingerprint_and_extractor(tmp_path):
    cache = RealStatsCache(tmp_path / "cache")
    calls = []

    def compute(seed, extractor="inc:abc"):
        def fn():
            calls.append(seed)
            return make_stats(seed, extractor)

        return fn

    first = cache.get_or_compute("fp-1", "inc:abc", compute(1))
    again = cache.get_or_compute("fp-1", "inc:abc", compute(2))  # cached: compute(2) must not run
    assert calls == [1] and np.array_equal(again.sigma, first.sigma)
    rebuilt = cache.get_or_compute("fp-2", "inc:abc", compute(3))  # same name, new content
    assert calls == [1, 3] and not np.array_equal(rebuilt.mu, first.mu)
    cache.get_or_compute("fp-1", "inc:other-weights", compute(4, "inc:other-weights"))
    assert calls == [1, 3, 4]
    assert len(list((tmp_path / "cache").iterdir())) == 3
    with pytest.raises(ValueError, match="expected"):
        cache.get_or_compute("fp-3", "inc:abc", compute(5, "inc:wrong"))


@pytest.fixture(scope="module")
def one_thread():
    """Run InceptionV3 on one thread: on the shared 2-core box, two spinning intra-op threads ran 5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inception_weights(one_thread, tmp_path_factory):
    """Random InceptionV3 weights in the standard file's key layout: torchvision's Inception3 names with
    1008 classes, and no BatchNorm num_batches_tracked (torch-fidelity's TF converter writes none)."""
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=True)
    state_dict = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    for name, t in state_dict.items():  # non-trivial BatchNorm statistics, so they must load too
        if name.endswith("running_mean"):
            t.normal_(0, 0.1)
        elif name.endswith("running_var"):
            t.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("inception") / INCEPTION_WEIGHTS_FILENAME
    torch.save(state_dict, path)
    return path, state_dict


@pytest.fixture(scope="module")
def extractor(inception_weights):
    return InceptionExtractor(inception_weights[0])


def test_inception_extractor_matches_torch_fidelity(inception_weights, extractor):
    path, _ = inception_weights
    reference = FeatureExtractorInceptionV3("reference", ["2048"], feature_extractor_weights_path=str(path))
    images = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8)
    got = extractor(images)
    with torch.no_grad():
        (want,) = reference(images)
    assert got.shape == (2, 2048) and got.dtype == torch.float32
    assert torch.equal(got, want) and got.abs().sum() > 0
    assert extractor.identity.endswith(hashlib.sha256(path.read_bytes()).hexdigest()[:16])
    with pytest.raises(T2IError, match="uint8"):
        extractor(images.float())


def test_inception_extractor_reads_safetensors_and_refuses_bad_files(inception_weights, tmp_path):
    _, state_dict = inception_weights
    save_file(state_dict, tmp_path / "inception.safetensors")
    extractor = InceptionExtractor(tmp_path / "inception.safetensors")
    key = "Mixed_7c.branch_pool.bn.running_var"
    assert torch.equal(extractor.net.state_dict()[key], state_dict[key])
    with pytest.raises(T2IError, match=INCEPTION_WEIGHTS_FILENAME + ".*weights_path"):
        InceptionExtractor(tmp_path / "nowhere.pth")
    save_file({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(T2IError, match="does not hold the"):
        InceptionExtractor(tmp_path / "other.safetensors")


def test_feature_extractor_feeds_compute_stats(extractor):
    batches = [torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8) for _ in range(2)]
    stats = compute_stats(extractor, batches)
    assert stats.n == 4 and stats.extractor == extractor.identity and stats.sigma.shape == (2048, 2048)


def test_importing_metrics_stays_light():
    code = "import sys, t2i.metrics; print('open_clip' in sys.modules, 'torch_fidelity' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_inception_logits_and_score_match_torch_fidelity(inception_weights, extractor):
    from torch_fidelity.metric_isc import isc_features_to_metric

    from t2i.metrics.fid import inception_score

    path, _ = inception_weights
    reference = FeatureExtractorInceptionV3("reference", ["logits_unbiased"], feature_extractor_weights_path=str(path))
    images = torch.randint(0, 256, (10, 3, 24, 24), dtype=torch.uint8)
    logits = extractor.logits(images)
    with torch.no_grad():
        (want,) = reference(images)
    assert logits.shape == (10, 1008) and torch.equal(logits, want)
    # random weights give logits too large for float64's softmax; the score itself on logits of a trained scale
    moderate = torch.randn(10, 1008, generator=torch.Generator().manual_seed(1)) * 3
    mean, std = inception_score(moderate, splits=5, seed=3)
    ref = isc_features_to_metric(moderate, splits=5, shuffle=True, rng_seed=3)
    assert mean == pytest.approx(ref["inception_score_mean"]) and std == pytest.approx(ref["inception_score_std"])
    assert 1.0 < mean <= 1008
    with pytest.raises(T2IError, match="at least 10 images"):
        inception_score(logits[:4])


def test_inception_score_in_eval(inception_weights, lafite_run, shapes16, tmp_path, cli_error):
    import json

    from conftest import cli

    path, _ = inception_weights
    cli("eval", lafite_run, "--data", shapes16, "--metrics", "inception_score", "--n", 10, "--inception", path,
        "--out", tmp_path)
    result = json.loads((tmp_path / "metric-inception_score.jsonl").read_text())["results"]
    assert result["n"] == 10 and result["splits"] == 10 and result["extractor"].startswith("torch-fidelity:")
    assert {"is_mean", "is_std"} <= result.keys()
    assert "--inception" in cli_error("eval", lafite_run, "--data", shapes16, "--metrics", "inception_score",
                                      "--n", 10, "--out", tmp_path)
