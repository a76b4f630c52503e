"""The shared byte-level BPE: BPE-dropout in training only, round trips, Korean, DALL-E text layout,
and `t2i train bpe` end to end."""

import json

import pytest
from tokenizers import Tokenizer

from t2i.errors import T2IError
from t2i.text.bpe import fixed_length_ids, train_bpe
from t2i.text.train import load_bpe

from conftest import cli

EN = ["a large red circle above a small blue square", "a small green star on the left",
      "a large white cross to the left of a small black diamond", "a small purple triangle at the bottom"]
KO = ["큰 빨간 원이 작은 파란 사각형 위에 있다", "왼쪽에 작은 초록색 별", "아래쪽에 작은 보라색 삼각형"]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(EN * 30 + KO * 30, vocab_size=400, dropout=0.1)


def test_dropout_varies_segmentation_only_when_asked(tok):
    text = EN[2]
    canonical = tok.ids(text)
    assert {tuple(tok.ids(text)) for _ in range(30)} == {tuple(canonical)}  # evaluation: always one
    sampled = {tuple(tok.ids(text, dropout=True)) for _ in range(60)}
    assert len(sampled) > 1 and any(len(s) > len(canonical) for s in sampled)  # merges skipped
    assert all(tok.decode(list(s)).strip() == text for s in sampled)  # every segmentation is the text


def test_dropout_is_seeded(tok):
    import random

    text = " ".join(EN + KO)
    draws = [tok.ids(text, dropout=True, rng=random.Random(s)) for s in (1, 1, 2)]
    assert draws[0] == draws[1] and draws[0] != draws[2]


def test_dropout_path_without_drops_is_the_library_bpe(tok):
    """Our seeded merge loop at p -> 0 gives exactly the tokenizers library's canonical segmentation."""
    import random

    from t2i.text.bpe import BpeTokenizer

    almost = BpeTokenizer(tok.spec, dropout=1e-12)
    for text in EN + KO + ["A Large RED circle", "unseen words: zebra, 얼룩말!"]:
        assert almost.ids(text, dropout=True, rng=random.Random(0)) == tok.ids(text)


def test_no_dropout_tokenizer_never_drops(tok):
    plain = train_bpe(EN * 30, vocab_size=300)
    assert len({tuple(plain.ids(EN[0], dropout=True)) for _ in range(20)}) == 1


@pytest.mark.parametrize("text", EN + KO + ["A Large RED circle"])
def test_round_trip(tok, text):
    assert tok.decode(tok.ids(text)).strip() == text.lower()


def test_korean_tokenises_sensibly(tok):
    text = KO[0]
    ids = tok.ids(text)
    assert len(ids) < len(text.encode("utf-8")) / 2  # merges learned, not one id per byte
    assert tok.decode(ids).strip() == text
    words = [tok.decode(tok.ids(w)).strip() for w in text.split()]
    assert words == text.split()


def test_fixed_length_ids_pad_per_position(tok):
    ids = fixed_length_ids(tok, [EN[0], ""], length=24)
    n = len(tok.ids(EN[0]))
    assert ids.shape == (2, 24)
    assert ids[0, :n].tolist() == tok.ids(EN[0])
    assert ids[0, n:].tolist() == [tok.vocab_size + i for i in range(n, 24)]  # each position its own pad
    assert ids[1].tolist() == [tok.vocab_size + i for i in range(24)]  # empty text: all padding
    assert int(ids.max()) < tok.vocab_size + 24


def test_fixed_length_ids_long_text(tok):
    long = " ".join(EN)
    with pytest.raises(T2IError, match="tokens; this model reads at most 8"):
        fixed_length_ids(tok, [long], length=8)
    cut = fixed_length_ids(tok, [long], length=8, truncate=True)
    assert cut[0].tolist() == tok.ids(long)[:8]


def test_train_bpe_cli(shapes16, tmp_path):
    cli("train", "bpe", "--data", shapes16, "--vocab", 320, "--dropout", 0.2, "--outdir", tmp_path)
    (run,) = tmp_path.glob("*-bpe320")
    meta = json.loads((run / "config.json").read_text())
    assert meta["family"] == "bpe" and meta["vocab"] == 320 and meta["dropout"] == 0.2
    assert meta["langs"] == "en,ko" and len(meta["dataset"]) == 64
    hf = Tokenizer.from_file(str(run / "tokenizer.json"))  # standard Hugging Face file
    tok = load_bpe(run)
    assert tok.dropout == 0.2 and hf.get_vocab_size() == tok.vocab_size == 320
    captions = json.loads((shapes16 / "dataset.json").read_text())["images"][0]
    for text in captions["captions"] + captions["captions_ko"]:
        assert hf.encode(text, add_special_tokens=False).ids == tok.ids(text)
        assert tok.decode(tok.ids(text)).strip() == text.lower()


def test_train_bpe_bad_input(shapes16, tmp_path, capsys):
    from t2i.cli import main

    assert main(["train", "bpe", "--data", str(tmp_path / "nope"), "--outdir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "bpe", "--data", str(shapes16), "--vocab", "100", "--outdir", str(tmp_path)]) == 2
    assert "--vocab 100 is too small" in capsys.readouterr().err
    with pytest.raises(T2IError, match="holds no tokenizer.json"):
        load_bpe(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(T2IError, match="cannot be read"):
        load_bpe(tmp_path)
