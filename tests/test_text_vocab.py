"""Caption vocabularies: the word split, the unknown-word warning, and the vocabulary snapshots record."""

import json

import pytest
from conftest import cli

from t2i.data.dataset import ImageTextDataset
from t2i.text.vocab import (
    caption_vocabulary,
    dataset_vocabulary,
    shapes_vocabulary,
    unknown_words,
    vocabulary_warning,
    words,
)
from t2i.training.snapshot import resolve_snapshot


@pytest.mark.parametrize("text, expected", [
    ("A Red-Circle, top!", ["a", "red", "circle", "top"]),
    ("snake_case x2 3D", ["snake", "case", "x2", "3d"]),
    ("왼쪽에 빨간 원이, 있다.", ["왼쪽에", "빨간", "원이", "있다"]),   # Hangul syllables are letters
    ("Ｒｅｄ Straße", ["red", "strasse"]),                        # NFKC, then case folding
    ("  \t ", []),
])
def test_words(text, expected):
    assert words(text) == expected


def test_caption_vocabulary_is_sorted_and_distinct():
    assert caption_vocabulary(["a red circle", "A circle on the LEFT", "큰 원"]) == \
        ["a", "circle", "left", "on", "red", "the", "원", "큰"]


def test_unknown_words_are_case_insensitive_distinct_and_in_order():
    vocab = caption_vocabulary(["a purple circle on the left"])
    assert unknown_words("A PURPLE Elephant riding an elephant, on the Left", vocab) == ["elephant", "riding", "an"]
    assert unknown_words("a Purple circle", vocab) == []


def test_vocabulary_warning_is_one_line_naming_the_unknown_words():
    vocab = caption_vocabulary(["a purple circle"])
    assert vocabulary_warning(["a purple elephant", "riding a Bicycle"], vocab) == (
        "t2i: warning: the model never saw these words in training captions: 'elephant', 'riding', 'bicycle' "
        "(its vocabulary: 3 words)")
    assert vocabulary_warning(["A Purple circle"], vocab) is None
    for none in (None, [], 16384):  # no vocabulary recorded (16384: some other meta's "vocab", a size)
        assert vocabulary_warning(["a purple elephant"], none) is None
    many = vocabulary_warning([" ".join(f"w{i}" for i in range(25))], vocab)
    assert "'w19' and 5 more (its" in many and "'w20'" not in many and "\n" not in many


def test_shapes_vocabulary_replays_the_dataset_captions(shapes16):
    """`t2i data shapes --n 64 --seed 0` (the fixture): the same words from the scene sampler alone."""
    dataset = ImageTextDataset(shapes16)
    assert shapes_vocabulary(64, 0) == dataset_vocabulary(dataset)
    assert shapes_vocabulary(64, 0, lang="ko") == dataset_vocabulary(dataset, "ko")
    assert dataset_vocabulary(dataset, "en,ko") == sorted(set(shapes_vocabulary(64, 0)) |
                                                          set(shapes_vocabulary(64, 0, lang="ko")))
    assert "circle" in shapes_vocabulary(64, 0) and "elephant" not in shapes_vocabulary(64, 0)


def test_the_default_model_records_its_training_vocabulary():
    """docs/DEFAULT_MODEL.md: the shipped model was trained on `t2i data shapes --n 10000 --seed 1`, English."""
    from t2i.models import DEFAULT_MODEL

    meta = json.loads((DEFAULT_MODEL / "config.json").read_text(encoding="utf-8"))
    assert meta["config"]["lang"] == "en" and meta["config"]["mixing_prob"] < 1
    assert meta["vocab"] == shapes_vocabulary(10000, 1)


def test_trained_runs_record_the_vocabulary_of_their_generator_captions(shapes16, clip_run, lafite_run, dalle_run,
                                                                        tmp_path, one_thread):
    """A LAFITE run on real captions records the words of the captions (of the --subset) it trained on; a
    language-free one records none; DALL-E records its --langs captions."""
    from t2i.models.lafite.trainer import subset_indices

    dataset = ImageTextDataset(shapes16)
    cli("train", "lafite", "--data", shapes16, "--clip", clip_run, "--preset", "test", "--kimg", 0.008,
        "--mixing_prob", 0.5, "--subset", 2, "--outdir", tmp_path)
    (run,) = tmp_path.glob("*-lafite-test")
    meta = json.loads((resolve_snapshot(run) / "config.json").read_text(encoding="utf-8"))
    assert meta["vocab"] == dataset_vocabulary(dataset, "en", subset_indices(64, 2).tolist())
    assert meta["vocab"] != dataset_vocabulary(dataset, "en")  # 2 images do not hold every word of 64
    assert "vocab" not in json.loads((resolve_snapshot(lafite_run) / "config.json").read_text())  # mixing_prob 1
    dalle = json.loads((resolve_snapshot(dalle_run) / "config.json").read_text(encoding="utf-8"))
    assert dalle["vocab"] == dataset_vocabulary(dataset, "en")


def test_a_run_streaming_shards_records_no_vocabulary(shapes16, clip_run, tmp_path, one_thread):
    """Its first samples are not all its captions: no vocabulary rather than a wrong one."""
    cli("data", "shards", shapes16, tmp_path / "shards", "--shard_size", 32)
    cli("train", "lafite", "--data", tmp_path / "shards", "--clip", clip_run, "--preset", "test", "--kimg", 0.008,
        "--mixing_prob", 0.5, "--workers", 0, "--outdir", tmp_path / "runs")
    (run,) = (tmp_path / "runs").glob("*-lafite-test")
    meta = json.loads((resolve_snapshot(run) / "config.json").read_text(encoding="utf-8"))
    assert meta["config"]["mixing_prob"] == 0.5 and "vocab" not in meta
