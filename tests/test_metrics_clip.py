"""CLIP score and R-precision with fake CLIPs whose right answers are known."""

import pytest
import torch

from t2i.errors import T2IError
from t2i.metrics.clip_metrics import clip_score, r_precision


def index_images(indices) -> torch.Tensor:
    """1x1 uint8 images carrying an index < 65536 in their red (low byte) and green (high byte) channels."""
    idx = torch.as_tensor(indices)
    return torch.stack([idx % 256, idx // 256, torch.zeros_like(idx)], dim=1).view(-1, 3, 1, 1).to(torch.uint8)


class TableClip:
    """Fake CLIP: image i and caption f"caption {i}" embed to rows of fixed random tables.

    With image_sign=1 and shared tables, matching pairs coincide (cos = 1); image_sign=-1 makes them
    opposite (cos = -1); independent=True draws image rows from a second table (unrelated pairs).
    """

    def __init__(self, n: int, dim: int = 32, image_sign: float = 1.0, independent: bool = False):
        g = torch.Generator().manual_seed(0)
        self.text_table = torch.randn(n, dim, generator=g)
        self.image_table = torch.randn(n, dim, generator=g) if independent else image_sign * self.text_table
        self.embed_dim, self.identity, self.max_text_tokens = dim, "fake:table", 16
        self.batch_sizes = []

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        assert images.is_floating_point() and images.min() >= -1 and images.max() <= 1
        assert not torch.is_grad_enabled()
        self.batch_sizes.append(images.shape[0])
        byte = ((images[:, :2, 0, 0] + 1) * 127.5).round().long()  # back to the uint8 values
        return self.image_table[byte[:, 0] + 256 * byte[:, 1]] * 3.0  # unnormalised on purpose

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        assert isinstance(texts, list) and not torch.is_grad_enabled()
        return self.text_table[[int(t.split()[-1]) for t in texts]] * 0.5


def captions(indices) -> list[str]:
    return [f"caption {i}" for i in indices]


def test_matching_clip_scores_100_and_opposite_scores_0():
    images, texts = index_images(range(10)), captions(range(10))
    assert clip_score(TableClip(10), images, texts) == pytest.approx(100, abs=1e-4)
    assert clip_score(TableClip(10, image_sign=-1), images, texts) == 0.0


def test_clip_score_is_the_mean_clipped_cosine_and_batch_invariant():
    clip = TableClip(300, independent=True)
    images, texts = index_images(range(300)), captions(range(300))
    cos = torch.nn.functional.cosine_similarity(clip.image_table, clip.text_table)
    want = float((100 * cos.clamp(min=0)).mean())
    assert clip_score(clip, images, texts, batch_size=7) == pytest.approx(want, rel=1e-5)
    assert max(clip.batch_sizes) == 7
    assert clip_score(clip, images, texts, batch_size=300) == pytest.approx(want, rel=1e-5)
    # Float [-1, 1] images give the same score as their uint8 originals; a slight overshoot is clamped.
    floats = images.float() / 127.5 - 1
    assert clip_score(clip, floats, texts) == pytest.approx(want, rel=1e-5)
    overshoot = torch.where(floats.abs() == 1, floats * 1.2, floats)
    assert clip_score(clip, overshoot, texts) == pytest.approx(want, rel=1e-5)


def test_r_precision_perfect_clip_even_with_true_captions_in_pool():
    n = 150
    # The pool holds every true caption, some twice: they must not count as negatives.
    pool = captions(range(n)) + captions(range(0, n, 3))
    assert r_precision(TableClip(n), index_images(range(n)), captions(range(n)), pool) == 1.0


def test_r_precision_random_clip_is_near_chance():
    n = 2000
    clip = TableClip(n, independent=True)
    score = r_precision(clip, index_images(range(n)), captions(range(n)), captions(range(n)), batch_size=256)
    assert 0.003 < score < 0.02  # chance is 1 / 100; std over 2000 images ~0.002


def test_r_precision_is_seeded_and_batch_invariant():
    n = 400
    clip = TableClip(n, independent=True)
    args = (index_images(range(n)), captions(range(n)), captions(range(n)))
    a = r_precision(clip, *args, n_negatives=4, seed=3, batch_size=32)
    assert a == r_precision(clip, *args, n_negatives=4, seed=3, batch_size=400)
    others = {r_precision(clip, *args, n_negatives=4, seed=s) for s in range(4)}
    assert len(others) > 1  # negatives really depend on the seed
    assert 0.1 < a < 0.3  # chance with 4 negatives is 1 / 5


def test_r_precision_with_one_negative_follows_the_similarities():
    # Image 0 is closer to caption 0 than caption 1 iff cos(img0, txt0) > cos(img0, txt1).
    clip = TableClip(2, independent=True)
    img, txt = clip.image_table[0], clip.text_table
    cos = torch.nn.functional.cosine_similarity(img[None], txt)
    want = float(cos[0] > cos[1])
    pool = ["caption 1", "caption 0"]
    assert r_precision(clip, index_images([0]), ["caption 0"], pool, n_negatives=1) == want


def test_bad_inputs_raise():
    clip = TableClip(200)
    with pytest.raises(T2IError, match="99 captions other than 'caption 0'.*holds 49"):
        r_precision(clip, index_images([0]), ["caption 0"], captions(range(50)))
    with pytest.raises(T2IError, match="one true caption per image"):
        r_precision(clip, index_images([0, 1]), ["caption 0"], captions(range(200)))
    with pytest.raises(T2IError, match="one text per image"):
        clip_score(clip, index_images([0, 1]), ["caption 0"])
    with pytest.raises(T2IError, match=r"\[-1, 1\].*to_model"):
        clip_score(clip, index_images([200]).float(), ["caption 200"])
