"""t2i's small CLIP: BPE tokenizer, encoders, identity, contrastive learning, load_clip."""

import json
import re

import pytest
import torch

from t2i.clip import load_clip
from t2i.clip.model import CLIP_PRESETS, SmallClip
from t2i.clip.tokenizer import ClipTokenizer, train_bpe
from t2i.clip.trainer import ClipTrainConfig, build
from t2i.errors import T2IError
from t2i.training.distributed import Dist
from t2i.training.loop import split_batch

pytestmark = pytest.mark.usefixtures("one_thread")

CORPUS = ["a large red circle above a small blue square", "a small green star on the left", "큰 빨간 원",
          "작은 파란 사각형이 왼쪽에 있다", "a black triangle to the right of a white cross"] * 20


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return train_bpe(CORPUS, vocab_size=400)


def decode(tok: ClipTokenizer, ids: list[int]) -> str:
    return tok._tok.decode(ids).strip()


def test_tokenizer_round_trip_and_json_spec(tokenizer):
    text = "A Large RED circle above a small blue square"
    ids = tokenizer.ids(text)
    assert decode(tokenizer, ids) == text.lower()            # lower-casing normaliser, lossless otherwise
    again = ClipTokenizer(json.loads(json.dumps(tokenizer.spec)))   # stored in snapshot config.json
    assert again.ids(text) == ids and again.vocab_size == tokenizer.vocab_size
    assert {tokenizer.pad_id, tokenizer.sot_id, tokenizer.eot_id} == {0, 1, 2}


def test_fixed_length_and_eot_position(tokenizer):
    texts = ["a red circle", "a small green star on the left of a black triangle"]
    out = tokenizer(texts, context=32)
    assert out.shape == (2, 32) and out.dtype == torch.long
    for row, text in zip(out, texts):
        ids = tokenizer.ids(text)
        assert row[0] == tokenizer.sot_id and row[1:1 + len(ids)].tolist() == ids
        assert row[1 + len(ids)] == tokenizer.eot_id
        assert (row[2 + len(ids):] == tokenizer.pad_id).all()
        assert (row == tokenizer.eot_id).sum() == 1


def test_too_long_prompt_is_a_t2ierror(tokenizer):
    words, text = [], ""
    while len(tokenizer.ids(text)) < 30:
        words.append(["red", "blue", "circle"][len(words) % 3])
        text = " ".join(words)
    assert len(tokenizer.ids(text)) == 30
    assert tokenizer([text], context=32).shape == (1, 32)    # exactly context - 2 tokens fit
    with pytest.raises(T2IError, match=r"31 tokens.*at most 30"):
        tokenizer([text + " a"], context=32)


def test_korean_tokenises_without_unknown_ids(tokenizer, clip_run):
    english_only = load_clip(clip_run).tokenizer                  # never saw Korean
    for tok in (tokenizer, english_only):
        for text in ["큰 빨간 원", "작은 파란 사각형이 왼쪽에 있다", "노란 별 ★ 🙂"]:
            ids = tok.ids(text)
            assert ids and all(i is not None and 3 <= i < tok.vocab_size for i in ids)
            assert decode(tok, ids) == text
    # A BPE trained on Korean captions learns Korean merges: far fewer ids than UTF-8 bytes.
    text = "작은 파란 사각형이 왼쪽에 있다"
    assert len(tokenizer.ids(text)) < 0.5 * len(english_only.ids(text))


def make_clip(tokenizer, seed=0) -> SmallClip:
    torch.manual_seed(seed)
    return SmallClip(CLIP_PRESETS["tiny"], tokenizer).eval()


def test_encoders_output_shapes_for_any_image_size(tokenizer):
    clip = make_clip(tokenizer)
    assert clip.embed_dim == 64 and clip.max_text_tokens == 30
    with torch.no_grad():
        for size in (16, 32, 48):
            assert clip.encode_image(torch.rand(3, 3, size, size) * 2 - 1).shape == (3, 64)
        short = clip.encode_text(["a red circle"])
        both = clip.encode_text(["a red circle", "a small green star on the left of a black triangle"])
    assert short.shape == (1, 64) and both.shape == (2, 64)
    assert torch.allclose(both[0], short[0], atol=1e-5)   # padding is masked: no effect of other prompts
    assert not torch.allclose(both[0], both[1])


def test_identity_follows_the_weights(tokenizer):
    a, b, c = make_clip(tokenizer, 0), make_clip(tokenizer, 0), make_clip(tokenizer, 1)
    assert re.fullmatch(r"t2i-clip:[0-9a-f]{16}", a.identity)
    assert a.identity == b.identity != c.identity
    sd = a.state_dict()
    sd["logit_scale"] = sd["logit_scale"] + 1.0
    b.load_state_dict(sd)
    assert b.identity != a.identity
    b.load_state_dict(a.state_dict())
    assert b.identity == a.identity


def test_contrastive_training_raises_batch_top1(shapes16):
    """A few InfoNCE steps of the real `t2i train clip` family on one batch of the tiny dataset."""
    torch.manual_seed(0)
    family = build(ClipTrainConfig(data=str(shapes16), preset="tiny", lr=3e-4), None, Dist(), log=lambda m: None)
    (phase,) = family.phases()
    batch = next(family.batches(0, 32, 0, 1, seed=0))
    assert batch["image"].shape == (32, 3, 16, 16) and batch["ids"].shape == (32, 32)

    def top1_and_loss():
        with torch.no_grad():
            loss, stats = family.loss(phase, batch)
        return float(stats["Clip/batch_top1"]), float(loss)

    top1_before, loss_before = top1_and_loss()
    for _ in range(20):
        phase.opt.zero_grad()
        loss, _ = family.loss(phase, batch)
        loss.backward()
        phase.opt.step()
    top1_after, loss_after = top1_and_loss()
    assert loss_after < 0.7 * loss_before
    assert top1_after >= top1_before + 0.2   # from chance (1/32) to several captions retrieved
    assert split_batch(batch, 2)[1]["ids"].shape == (16, 32)


def test_load_clip_from_a_run_is_frozen(clip_run, lafite_run):
    clip = load_clip(clip_run)
    assert isinstance(clip, SmallClip) and not clip.training
    assert not any(p.requires_grad for p in clip.parameters())
    assert load_clip(clip_run / "snapshot-000128").identity == clip.identity
    # LAFITE snapshots embed their (small) CLIP: the same weights come back.
    assert load_clip(lafite_run).identity == clip.identity


def test_load_clip_with_a_bad_spec_names_the_accepted_forms(tmp_path, shapes16):
    with pytest.raises(T2IError, match="ARCH:/path"):
        load_clip("no-such-clip")
    with pytest.raises(T2IError, match="no snapshot"):
        load_clip(shapes16)


def test_word_swapper_makes_binding_negatives():
    """Interchangeable words are learned from contexts; a negative swaps two of them, never others."""
    import random

    from t2i.clip.negatives import WordSwapper

    caps = [f"a {s} {c} {shape} above a {s2} {c2} {shape2}"
            for s, s2 in (("large", "small"), ("small", "large"))
            for c, c2 in (("red", "blue"), ("blue", "green"), ("green", "red"))
            for shape, shape2 in (("circle", "square"), ("square", "star"), ("star", "circle"))]
    caps += ["큰 빨간 원 위에 작은 파란 사각형", "큰 파란 사각형 위에 작은 빨간 원", "작은 빨간 사각형 위에 큰 파란 원"]
    swapper = WordSwapper(caps, min_count=1)
    assert swapper.interchangeable("red", "blue") and swapper.interchangeable("circle", "square")
    assert not swapper.interchangeable("red", "circle") and not swapper.interchangeable("above", "large")
    rng = random.Random(0)
    text = "a large red circle above a small blue square"
    seen = {swapper.negative(text, rng) for _ in range(50)}
    assert "a large blue circle above a small red square" in seen       # colours swapped between objects
    assert "a large red square above a small blue circle" in seen       # shapes swapped
    assert all(sorted(n.split()) == sorted(text.split()) and n != text for n in seen)
    assert swapper.negative("a large red circle", rng) is None          # nothing to swap in one object
    assert swapper.negative("큰 빨간 원 위에 작은 파란 사각형", rng) is not None  # any language


def test_info_nce_extra_negatives_only_add_to_image_to_text():
    from t2i.clip.loss import info_nce

    torch.manual_seed(0)
    a, b = (torch.nn.functional.normalize(torch.randn(4, 8), dim=-1) for _ in range(2))
    base = info_nce(a, b, 0.5)
    masked = torch.full((4, 4), float("-inf"))
    assert torch.allclose(info_nce(a, b, 0.5, extra_negatives=masked), base)   # masked: no change
    hard = (a @ b.t()).diagonal()[None, :].repeat(4, 1) / 0.5                   # as close as the positives
    assert info_nce(a, b, 0.5, extra_negatives=hard) > base
    logits = a @ b.t() / 0.5
    expect = 0.5 * (torch.nn.functional.cross_entropy(torch.cat([logits, hard], 1), torch.arange(4))
                    + torch.nn.functional.cross_entropy(logits.t(), torch.arange(4)))
    assert torch.allclose(info_nce(a, b, 0.5, extra_negatives=hard), expect)
    same = torch.eye(4, dtype=torch.bool)
    assert torch.allclose(info_nce(a, b, 0.5, positives=same, extra_negatives=masked), base)  # finite, no nan
    assert torch.allclose(info_nce(a, b, 0.5, positives=same, extra_negatives=hard), expect)
