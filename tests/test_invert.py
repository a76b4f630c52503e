"""Textual inversion (`t2i invert`, t2i.concepts) on every family's `test` run: only the placeholder's row trains,
every other row stays bit-identical, the Hugging Face file layout round-trips, `--embeds` refuses an embedding of
another base model and leaves prompts without the placeholder exactly as the base model draws them."""

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import cli
from torch import nn
from PIL import Image
from safetensors.torch import load_file

from t2i.concepts.embeds import apply_embeds, read_embeds
from t2i.concepts.textside import ExtendedEmbedding, text_side
from t2i.data.shapes import Scene, ShapeObject, render
from t2i.errors import T2IError
from t2i.models import load_pipeline


@pytest.fixture(scope="module")
def concept(tmp_path_factory):
    """5 renders of a star: mixed colours, sizes and places."""
    root = tmp_path_factory.mktemp("concept")
    rng = random.Random(0)
    for i in range(5):
        star = ShapeObject("star", rng.choice(["red", "blue", "green"]), rng.choice(["small", "large"]),
                           rng.choice(["left", "right", "top", "bottom", "center"]))
        render(Scene([star], background="grey"), 16).save(root / f"star{i}.png")
    return root


@pytest.fixture(scope="module")
def inverted(ldm_run, concept, tmp_path_factory):
    out = tmp_path_factory.mktemp("invert-runs")
    # The test BPE (300 tokens) writes "small" as one token; "circle" takes five.
    cli("invert", "--model", ldm_run, "--images", concept, "--placeholder", "*", "--init_word", "small",
        "--steps", 6, "--batch", 2, "--lr", 0.05, "--snap", 1, "--tick_kimg", 0.006, "--outdir", out)
    (run,) = out.glob("*-invert")
    return run


def test_only_the_placeholder_row_trains_and_the_file_is_hugging_faces_layout(ldm_run, inverted, one_thread):
    tensors = load_file(inverted / "learned_embeds.safetensors")
    assert list(tensors) == ["*"] and tensors["*"].shape == (1, 32)                  # {placeholder: (n, width)}
    config = json.loads((inverted / "learned_embeds.json").read_text())
    base = load_pipeline(ldm_run)
    assert config["family"] == "ldm" and config["fingerprint"] == text_side(base).fingerprint()
    assert config["placeholder"] == "*" and config["vectors"] == 1 and config["init_word"] == "small"
    small = base.tokenizer._tok.encode("small", add_special_tokens=False).ids
    start = base.model.text.token.weight[small].detach()
    assert not torch.equal(tensors["*"], start)                                     # it learned
    snap = load_file(sorted(inverted.glob("snapshot-*"))[-1] / "model.safetensors")
    assert list(snap) == ["embeds.rows"] and torch.equal(snap["embeds.rows"], tensors["*"])

    pipe = load_pipeline(ldm_run)
    before = pipe.model.text.token.weight.detach().clone()
    with pytest.raises(T2IError, match="two embeddings use the placeholder '\\*'"):
        apply_embeds(pipe, [str(inverted), str(inverted)])
    assert isinstance(pipe.model.text.token, nn.Embedding)                         # checked before any change
    assert apply_embeds(pipe, [str(inverted)]) == ["*"]
    table = pipe.model.text.token
    assert isinstance(table, ExtendedEmbedding)
    assert torch.equal(table.weight[:len(before)], before)                           # every other row, bit for bit
    assert torch.equal(table.weight[len(before):], tensors["*"])
    ids, mask = pipe.text(["a large red * on the left"])
    n = int(mask.sum())
    assert int((ids == len(before)).sum()) == 1 and len(before) in ids[0, :n].tolist()   # one new token


def test_a_prompt_without_the_placeholder_draws_the_base_images(ldm_run, inverted, tmp_path):
    plain, with_embeds = tmp_path / "plain.png", tmp_path / "embeds.png"
    cli("generate", "a large red circle", "--model", ldm_run, "--steps", 4, "--n", 2, "--out", plain)
    cli("generate", "a large red circle", "--model", ldm_run, "--steps", 4, "--n", 2, "--embeds", inverted,
        "--out", with_embeds)
    assert plain.read_bytes() == with_embeds.read_bytes()
    star = tmp_path / "star.png"
    cli("generate", "a large red *", "--model", ldm_run, "--steps", 4, "--n", 2, "--embeds",
        inverted / "learned_embeds.safetensors", "--out", star)
    assert Image.open(star).size == (32, 16)


def test_an_embedding_of_another_base_model_is_refused(ldm_run, inverted, cli_error):
    message = cli_error("generate", "a *", "--model", ldm_run / "snapshot-000016", "--steps", 2, "--embeds", inverted)
    assert "learned on ldm model" in message and "t2i invert --model" in message


def test_init_word_of_several_tokens_names_them_and_suggests_vectors(ldm_run, concept, tmp_path, cli_error):
    message = cli_error("invert", "--model", ldm_run, "--images", concept, "--init_word", "zebra", "--steps", 1,
                        "--outdir", tmp_path)
    assert "'zebra' is" in message and "tokens" in message and "--vectors" in message
    assert not list(tmp_path.iterdir())                                              # no run directory left behind


def test_steps_default_to_5000_for_an_ldm_and_500_for_the_others(ldm_run, lafite_run, concept, capsys):
    for model, steps in ((ldm_run, 5000), (lafite_run, 500)):
        cli("invert", "--model", model, "--images", concept, "--init_word", "small", "--dry-run")
        out = capsys.readouterr().out
        assert json.loads(out[out.find("{"):])["loop"]["kimg"] == steps * 4 / 1000
    cli("invert", "--model", ldm_run, "--images", concept, "--init_word", "small", "--steps", 7, "--dry-run")
    out = capsys.readouterr().out
    assert json.loads(out[out.find("{"):])["loop"]["kimg"] == 7 * 4 / 1000


def test_several_vectors_and_their_round_trip(ldm_run, concept, tmp_path, one_thread):
    cli("invert", "--model", ldm_run, "--images", concept, "--placeholder", "<my-star>", "--init_word", "star",
        "--vectors", 3, "--steps", 2, "--batch", 2, "--outdir", tmp_path)
    (run,) = tmp_path.glob("*-invert")
    placeholder, rows, config = read_embeds(run / "learned_embeds.safetensors")
    assert placeholder == "<my-star>" and rows.shape == (3, 32) and config["vectors"] == 3
    pipe = load_pipeline(ldm_run)
    size = pipe.model.text.token.num_embeddings
    apply_embeds(pipe, [str(run)])
    ids, _ = pipe.text(["a small <my-star> at the top"])
    assert [i for i in ids[0].tolist() if i >= size] == [size, size + 1, size + 2]


def test_an_image_with_a_caption_file_trains_on_its_captions(concept, tmp_path, cli_error, ldm_run):
    import shutil

    from t2i.concepts.invert import TEMPLATES, InvertConfig, InvertFamily, concept_captions

    folder = tmp_path / "captioned"
    shutil.copytree(concept, folder)
    (folder / "star0.txt").write_text("a red * on the left\n\na small red * at the top\n", encoding="utf-8")
    captions = concept_captions(str(folder), "*")
    assert captions == [["a red * on the left", "a small red * at the top"], [], [], [], []]
    family = InvertFamily.__new__(InvertFamily)     # the batches alone: the images, their captions, the placeholder
    images = torch.zeros(5, 3, 4, 4, dtype=torch.uint8)
    images[0] = 255                                  # image 0 (star0.png) is told apart by its pixels
    family.cfg, family.images, family.captions = InvertConfig(placeholder="*"), images, captions
    batches = family.batches(0, 8, 0, 1, 0)
    seen = {0: set(), 1: set()}
    for _ in range(20):
        batch = next(batches)
        for image, caption in zip(batch["images"], batch["captions"]):
            seen[0 if image.flatten()[0] > 0 else 1].add(caption)
    assert seen[0] == {"a red * on the left", "a small red * at the top"}
    assert seen[1] <= {t.format("*") for t in TEMPLATES} and len(seen[1]) > 2
    (folder / "star1.txt").write_text("a red star on the left\n", encoding="utf-8")
    message = cli_error("invert", "--model", ldm_run, "--images", folder, "--init_word", "small", "--steps", 1,
                        "--outdir", tmp_path / "runs")
    assert "star1.txt" in message and "'a red star on the left' does not write the placeholder '*'" in message


def test_bad_input_is_named(ldm_run, vqgan_run, concept, tmp_path, cli_error):
    assert "no such folder" in cli_error("invert", "--model", ldm_run, "--images", tmp_path / "missing",
                                         "--init_word", "small", "--outdir", tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no images" in cli_error("invert", "--model", ldm_run, "--images", empty, "--init_word", "small",
                                          "--outdir", tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    assert "a.png cannot be read" in cli_error("invert", "--model", ldm_run, "--images", broken, "--init_word",
                                               "small", "--outdir", tmp_path)
    assert "not a text-to-image model" in cli_error("invert", "--model", vqgan_run, "--images", concept,
                                                    "--init_word", "small", "--outdir", tmp_path)


def test_dalle_learns_rows_after_its_joint_vocabulary(dalle_run, concept, tmp_path, one_thread):
    cli("invert", "--model", dalle_run, "--images", concept, "--init_word", "small", "--steps", 3, "--batch", 2,
        "--lr", 0.05, "--outdir", tmp_path / "runs")
    (run,) = (tmp_path / "runs").glob("*-invert")
    placeholder, rows, config = read_embeds(run)
    assert placeholder == "*" and config["family"] == "dalle" and rows.shape == (1, 32)
    pipe = load_pipeline(dalle_run)
    vocab = pipe.model.cfg.vocab                                  # text ids, padding ids, <bos>, image ids
    before = pipe.model.tok_emb.weight.detach().clone()
    apply_embeds(pipe, [str(run)])
    assert torch.equal(pipe.model.tok_emb.weight[:vocab], before)  # every other row, bit for bit
    ids = pipe.text_ids(["a large red * on the left"])
    assert ids.max() == vocab and int((ids == vocab).sum()) == 1  # the placeholder reads the appended row
    assert torch.equal(pipe.text_ids(["a large red circle"]), load_pipeline(dalle_run).text_ids(["a large red circle"]))
    plain, with_embeds = tmp_path / "plain.png", tmp_path / "embeds.png"
    cli("generate", "a large red circle", "--model", dalle_run, "--n", 2, "--out", plain)
    cli("generate", "a large red circle", "--model", dalle_run, "--n", 2, "--embeds", run, "--out", with_embeds)
    assert plain.read_bytes() == with_embeds.read_bytes()
    cli("generate", "a large red *", "--model", dalle_run, "--n", 2, "--embeds", run, "--out", tmp_path / "star.png")


def test_lafite_learns_a_clip_token_towards_the_concepts_image_features(lafite_run, concept, tmp_path, one_thread,
                                                                         capsys):
    import torch.nn.functional as F

    from t2i.concepts.invert import load_concept_images
    from t2i.data.transforms import to_model

    cli("invert", "--model", lafite_run, "--images", concept, "--init_word", "small", "--steps", 20, "--batch", 5,
        "--lr", 0.05, "--outdir", tmp_path / "runs")
    (run,) = (tmp_path / "runs").glob("*-invert")
    base = load_pipeline(lafite_run)
    pipe = load_pipeline(lafite_run)
    before = pipe.clip.text.token.weight.detach().clone()
    apply_embeds(pipe, [str(run)])
    assert torch.equal(pipe.clip.text.token.weight[:len(before)], before)
    with torch.no_grad():
        target = F.normalize(pipe.clip.encode_image(to_model(load_concept_images(str(concept), 16))), dim=-1).mean(0)
        learned = (pipe.condition(["a photo of a *"]) @ target).item()
        start = (base.condition(["a photo of a small"]) @ target).item()
    assert learned > start                                                   # closer to the concept's images
    assert torch.equal(pipe.condition(["a large red circle"]), base.condition(["a large red circle"]))
    capsys.readouterr()
    cli("generate", "a small *", "--model", lafite_run, "--embeds", run, "--n", 2, "--out", tmp_path / "star.png")
    assert "never saw" not in capsys.readouterr().err                          # the placeholder is a known word now


def test_an_ldm_on_a_frozen_clip_tower_learns_rows_after_its_padded_table(shapes16, autoencoder_run, clip_run, concept,
                                                                          tmp_path, one_thread):
    cli("train", "ldm", "--data", shapes16, "--autoencoder", autoencoder_run, "--preset", "test", "--clip", clip_run,
        "--kimg", 0.016, "--outdir", tmp_path / "runs")
    (ldm,) = (tmp_path / "runs").glob("*-ldm-test")
    base = load_pipeline(ldm)
    rows = base.model.text.token.num_embeddings
    assert text_side(base).vocab_size() < rows                 # the CLIP's table is padded past its BPE's tokens
    cli("invert", "--model", ldm, "--images", concept, "--init_word", "small", "--steps", 3, "--outdir", tmp_path)
    (run,) = tmp_path.glob("*-invert")
    pipe = load_pipeline(ldm)
    apply_embeds(pipe, [str(run)])
    ids, _ = pipe.text(["a large red *"])
    assert rows in ids.tolist()[0]                             # the placeholder reads the first row after the table
    assert torch.equal(pipe.text_condition(["a large red circle"])[0], base.text_condition(["a large red circle"])[0])
    assert not torch.equal(pipe.text_condition(["a large red *"])[0], base.text_condition(["a large red small"])[0])


def test_attngan_learns_a_damsm_word_towards_the_concepts_images(attngan_run, concept, tmp_path, one_thread,
                                                                  capsys, cli_error):
    from t2i.concepts.invert import load_concept_images
    from t2i.data.transforms import to_model

    cli("invert", "--model", attngan_run, "--images", concept, "--init_word", "small", "--steps", 20, "--batch", 5,
        "--lr", 0.05, "--outdir", tmp_path / "runs")
    (run,) = (tmp_path / "runs").glob("*-invert")
    rows = load_file(run / "learned_embeds.safetensors")["*"]
    base, pipe = load_pipeline(attngan_run), load_pipeline(attngan_run)
    before = pipe.damsm.text_encoder.encoder.weight.detach().clone()
    assert rows.shape == (1, before.shape[1]) and not torch.equal(rows[0], before[base.damsm.vocab.index["small"]])
    apply_embeds(pipe, [str(run)])
    table = pipe.damsm.text_encoder.encoder
    assert isinstance(table, ExtendedEmbedding) and torch.equal(table.weight[:len(before)], before)
    assert torch.equal(table.weight[len(before):], rows)
    assert pipe.damsm.vocab.ids("a *") == [base.damsm.vocab.index["a"], len(before)]   # one new word
    images = to_model(load_concept_images(str(concept), 16))
    with torch.no_grad():                                   # the learned word brings the captions to the images
        learned = text_side(pipe).inversion_loss(images, ["a photo of a *"] * 5).item()
        start = text_side(base).inversion_loss(images, ["a photo of a small"] * 5).item()
    assert learned < start
    prompts = ["a large red circle", "a small blue star on the left"]
    assert torch.equal(pipe(prompts, [0, 1]), base(prompts, [0, 1]))        # no placeholder: the base images
    assert not torch.equal(pipe(["a small *"], [0]), base(["a small small"], [0]))
    assert "not built for AttnGAN" in cli_error("invert", "--model", attngan_run, "--images", concept,
                                                "--init_word", "small", "--adapter", 1, "--steps", 1,
                                                "--outdir", tmp_path / "runs2")


def test_eval_scores_a_learned_word_as_its_shape(ldm_run, inverted, tmp_path, cli_error):
    cli("eval", ldm_run, "--metrics", "shapes_accuracy", "--embeds", inverted, "--concept", "*=star", "--n", 6,
        "--steps", 2, "--out", tmp_path)
    (line,) = (tmp_path / "metric-shapes_accuracy.jsonl").read_text().splitlines()
    results = json.loads(line)["results"]
    assert results["concept_images"] == 6 and 0 <= results["concept_shape"] <= 1 and "seen_all" not in results
    assert "PLACEHOLDER=SHAPE" in cli_error("eval", ldm_run, "--embeds", inverted, "--concept", "*=hexagon",
                                            "--n", 2, "--steps", 2, "--out", tmp_path)


def test_the_adapter_starts_as_the_identity_in_every_family(ldm_run, dalle_run, lafite_run, one_thread):
    from t2i.concepts.adapter import AdapterConfig, TextAdapter, adapter_heads

    x = torch.randn(3, 5, 32)
    assert torch.equal(TextAdapter(AdapterConfig(32, adapter_heads(32)))(x), x)
    for run, opts in ((ldm_run, {"steps": 3}), (dalle_run, {}), (lafite_run, {})):
        base = load_pipeline(run)
        pipe = load_pipeline(run)
        side = text_side(pipe)
        width = side.condition_width()
        side.adapt(TextAdapter(AdapterConfig(width, adapter_heads(width))).eval())
        prompts = ["a large red circle", "a small blue star on the left"]
        assert torch.equal(pipe(prompts, [0, 1], **opts), base(prompts, [0, 1], **opts)), run.name


def test_invert_with_an_adapter_saves_it_and_applies_it(ldm_run, concept, tmp_path, one_thread):
    cli("invert", "--model", ldm_run, "--images", concept, "--init_word", "small", "--adapter", 1, "--steps", 4,
        "--batch", 2, "--lr", 0.05, "--outdir", tmp_path / "runs")
    (run,) = (tmp_path / "runs").glob("*-invert")
    config = json.loads((run / "learned_embeds.json").read_text())
    weights = load_file(run / "adapter.safetensors")
    assert config["adapter"]["width"] == 32 and weights["layer.linear2.weight"].abs().sum() > 0   # it trained
    pipe = load_pipeline(ldm_run)
    apply_embeds(pipe, [str(run)])
    assert type(pipe.model.text).__name__ == "AdaptedText"
    with pytest.raises(T2IError, match="both bring a text adapter"):
        apply_embeds(load_pipeline(ldm_run), [str(run), str(run)])
    out = tmp_path / "adapted.png"
    cli("generate", "a large red * on the left", "--model", ldm_run, "--steps", 3, "--n", 2, "--embeds", run,
        "--out", out)
    assert Image.open(out).size == (32, 16)


def test_the_keep_term_holds_the_adapter_to_the_identity_on_ordinary_prompts(lafite_run, concept, tmp_path,
                                                                              cli_error, one_thread):
    from t2i.concepts.adapter import bypassed
    from t2i.concepts.invert import InvertConfig, keep_loss, keep_prompts

    ordinary = ["a large red circle", "a small blue square on the left", "a photo of a small"]
    prompts = tmp_path / "keep.txt"
    prompts.write_text("\n".join(ordinary[:2]) + "\n", encoding="utf-8")

    def drift(keep: float) -> float:
        """How far the learned adapter moves ordinary prompts' conditioning (relative squared distance)."""
        out = tmp_path / f"runs-{keep}"
        cli("invert", "--model", lafite_run, "--images", concept, "--init_word", "small", "--adapter", 1,
            "--steps", 30, "--batch", 4, "--lr", 0.02, "--keep_weight", keep, "--keep_prompts", prompts,
            "--outdir", out)
        (run,) = out.glob("*-invert")
        pipe = load_pipeline(lafite_run)
        apply_embeds(pipe, [str(run)])
        side = text_side(pipe)
        adapter = pipe.clip.text.adapter
        with torch.no_grad():
            moved = keep_loss(side, adapter, ordinary).item()
            with bypassed(adapter):   # bypassed: the base model's conditioning exactly
                assert torch.equal(side.encode(ordinary), text_side(load_pipeline(lafite_run)).encode(ordinary))
        return moved

    free, kept = drift(0), drift(10)
    print(f"ordinary prompts' drift: {free:.4f} without the term, {kept:.4f} with --keep_weight 10")
    assert kept < 0.5 * free, (kept, free)
    meta = load_pipeline(lafite_run).meta                 # default: the base model's training captions
    records = json.loads((Path(meta["config"]["data"]) / "dataset.json").read_text())["images"]
    assert keep_prompts(InvertConfig(init_word="circle"), meta) == [r["captions"][0] for r in records]
    assert keep_prompts(InvertConfig(init_word="circle"))[0] == "a circle"   # no data on disk: the templates
    prompts.write_text("a red *\n", encoding="utf-8")
    assert "writes the placeholder" in cli_error("invert", "--model", lafite_run, "--images", concept,
                                                 "--init_word", "small", "--adapter", 1, "--keep_prompts", prompts,
                                                 "--outdir", tmp_path / "bad")
