"""FID: Inception pool3 features, streamed Gaussian statistics, a real-stats cache, the Frechet distance."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from t2i.errors import T2IError
from t2i.io import atomic_path, sha256_file

INCEPTION_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
_STATS_FORMAT = "t2i-feature-stats"
_STATS_VERSION = 1


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), computed by torch-fidelity."""
    # Imported here: importing t2i.metrics must stay free of torch-fidelity (and its torchvision import).
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    # torch-fidelity asserts both sides share a dtype; float64 is what its own statistics use.
    mu1, mu2 = (np.asarray(m, dtype=np.float64) for m in (mu1, mu2))
    sigma1, sigma2 = (np.asarray(s, dtype=np.float64) for s in (sigma1, sigma2))
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise T2IError(
            f"Cannot compare feature statistics of shapes mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / "
            f"{sigma2.shape}; both sides must come from the same feature extractor."
        )
    # torch-fidelity takes Tr((sigma1 sigma2)^(1/2)) as the summed square roots of the eigenvalues of
    # sigma1 sigma2 rather than scipy's sqrtm; the tests check the two agree.
    stats1, stats2 = {"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}
    return float(fid_statistics_to_metric(stats1, stats2, verbose=False)[KEY_METRIC_FID])


@dataclass
class FeatureStats:
    """Gaussian fit of a feature set: mean (D,), unbiased covariance (D, D), count, extractor identity."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    extractor: str

    def save(self, path: str | os.PathLike) -> None:
        """Write to a .safetensors file (float64 mu, sigma; JSON metadata in the header), atomically."""
        from safetensors.numpy import save_file

        path = Path(path)
        meta = {"format": _STATS_FORMAT, "version": _STATS_VERSION, "n": self.n, "extractor": self.extractor}
        tensors = {
            "mu": np.ascontiguousarray(self.mu, np.float64),
            "sigma": np.ascontiguousarray(self.sigma, np.float64),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"t2i": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        """Read statistics written by `save`."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise T2IError(f"Feature statistics file {path} does not exist; compute it first or fix the path.")
        try:
            with safe_open(str(path), framework="np") as f:
                meta = json.loads((f.metadata() or {}).get("t2i", "{}"))
                if meta.get("format") != _STATS_FORMAT:
                    raise T2IError(f"{path} is not a t2i feature statistics file; check the path.")
                return cls(f.get_tensor("mu"), f.get_tensor("sigma"), int(meta["n"]), meta["extractor"])
        except SafetensorError as e:
            raise T2IError(f"{path} is not a readable safetensors file ({e}); delete it to recompute.") from e


def compute_stats(
    feature_fn: Callable[[torch.Tensor], torch.Tensor], batches: Iterable, extractor: str | None = None
) -> FeatureStats:
    """Mean and unbiased covariance of feature_fn(batch) over batches, streamed (features are not kept)."""
    if extractor is None:
        extractor = getattr(feature_fn, "identity", None)
        if extractor is None:
            raise ValueError("compute_stats needs extractor=... when feature_fn has no .identity")
    n, shift, s, ss = 0, None, None, None
    with torch.no_grad():
        for batch in batches:
            # float64 on the CPU: the (D, D) sums need the precision, and not every accelerator has float64.
            x = feature_fn(batch).detach().to("cpu", torch.float64)
            if x.ndim != 2:
                raise ValueError(f"feature_fn must return (B, D) features, got shape {tuple(x.shape)}")
            if shift is None:
                # Sums of (x - shift) with shift ~ the mean keep sum-of-squares cancellation small when
                # features sit far from zero (the "shifted data" variance algorithm).
                shift = x.mean(0)
                s, ss = torch.zeros_like(shift), torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
            xc = x - shift
            n += x.shape[0]
            s += xc.sum(0)
            ss += xc.T @ xc
    if n < 2:
        raise T2IError(f"FID statistics need at least 2 images, got {n}; give more images.")
    mean_c = s / n
    sigma = (ss - n * torch.outer(mean_c, mean_c)) / (n - 1)  # ddof=1, as np.cov in torch-fidelity
    return FeatureStats((shift + mean_c).numpy(), sigma.numpy(), n, extractor)


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """FID between two FeatureStats, refusing statistics from different feature extractors."""
    if a.extractor != b.extractor:
        raise T2IError(
            f"FID compares statistics from one extractor, got {a.extractor!r} and {b.extractor!r}; "
            f"recompute one side with the other's extractor."
        )
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def _read_inception_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The Inception weights as tensors, read without unpickling code."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as e:
            raise T2IError(f"{path} is not a readable safetensors file ({e}); re-download it.") from e
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for objects/code, other errors for corrupt files
        raise T2IError(
            f"{path} could not be read as a weights-only state dict ({type(e).__name__}); it should be "
            f"{INCEPTION_WEIGHTS_FILENAME}."
        ) from e
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise T2IError(f"{path} does not hold a state dict; it should be {INCEPTION_WEIGHTS_FILENAME}.")
    return state_dict


class InceptionExtractor:
    """torch-fidelity's TF-compatible InceptionV3, 2048-d pool3 features, from a local weights file."""

    feature_dim = 2048

    def __init__(self, weights_path: str | os.PathLike, device: torch.device | str = "cpu"):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = Path(weights_path)
        if not path.is_file():
            raise T2IError(
                f"Inception weights {path} do not exist. FID needs {INCEPTION_WEIGHTS_FILENAME} (the "
                f"'pt_inception-2015-12-05' TF port; torch-fidelity's weights-inception-2015-12-05-6726825d.pth "
                f"works too): put it there or pass its path as the Inception weights option "
                f"(InceptionExtractor(weights_path=...)); t2i never downloads weights."
            )
        state_dict = _read_inception_state_dict(path)
        # torch-fidelity loads its path with torch.load(weights_only=False), which would unpickle
        # whatever the file holds; it gets an in-memory copy of tensors we have read safely instead.
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        buffer.seek(0)
        try:
            net = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=buffer
            )
        except RuntimeError as e:  # load_state_dict: missing / unexpected keys or shapes
            raise T2IError(
                f"{path} does not hold the {INCEPTION_WEIGHTS_FILENAME} weights: {str(e)[:400]}"
            ) from e
        self.net = net.to(device)
        self.device = torch.device(device)
        self.identity = f"torch-fidelity:inception-v3-compat:pool3-2048:{sha256_file(path)[:16]}"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) images, any size (resized to 299 inside) -> (B, 2048) float32 features."""
        return self._forward(images)[0]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) images -> (B, 1008) class logits (torch-fidelity's logits_unbiased, what IS reads)."""
        return self._forward(images)[1]

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise T2IError(
                f"InceptionExtractor takes uint8 images shaped (B, 3, H, W), got {images.dtype} "
                f"{tuple(images.shape)}; convert model outputs with t2i.data.transforms.to_uint8."
            )
        with torch.no_grad():
            features, logits = self.net(images.to(self.device))
        return features, logits


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))), mean and std over `splits` splits of shuffled samples (torch-fidelity's
    computation, on Inception's logits_unbiased)."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    if len(logits) < splits:
        raise T2IError(f"the inception score needs at least {splits} images (one per split), got {len(logits)}")
    out = isc_features_to_metric(logits.double().cpu(), splits=splits, shuffle=True, rng_seed=seed)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


class RealStatsCache:
    """Feature statistics of real datasets on disk, keyed by dataset fingerprint and extractor identity."""

    def __init__(self, cache_dir: str | os.PathLike):
        self.cache_dir = Path(cache_dir)

    def path_for(self, dataset_fingerprint: str, extractor_identity: str) -> Path:
        """File holding the statistics of this dataset content under this extractor."""
        # Hash of both ids (JSON-encoded, so no two pairs concatenate to the same string): a rebuilt
        # dataset or other Inception weights never reuse stale statistics, unlike a name-keyed cache.
        key = json.dumps({"dataset": dataset_fingerprint, "extractor": extractor_identity}, sort_keys=True)
        return self.cache_dir / f"stats-{hashlib.sha256(key.encode()).hexdigest()}.safetensors"

    def get_or_compute(
        self, dataset_fingerprint: str, extractor_identity: str, compute: Callable[[], FeatureStats]
    ) -> FeatureStats:
        """Cached statistics for this key, or compute(), store atomically and return them."""
        path = self.path_for(dataset_fingerprint, extractor_identity)
        if path.is_file():
            stats = FeatureStats.load(path)
            if stats.extractor != extractor_identity:
                raise T2IError(f"Cached statistics {path} were made by {stats.extractor!r}; delete the file.")
            return stats
        stats = compute()
        if stats.extractor != extractor_identity:
            raise ValueError(f"compute() made statistics of {stats.extractor!r}, expected {extractor_identity!r}")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        stats.save(path)
        return stats
