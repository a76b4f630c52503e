"""DALL-E end to end on the tiny fixtures: `t2i train dalle`, its token cache, resume, `t2i generate`
with guidance and CLIP reranking, `t2i eval`, and the errors users meet."""

import json

import torch
from PIL import Image

from t2i.data.dataset import ImageTextDataset
from t2i.models import load_pipeline
from t2i.models.first_stage.cache import load_or_encode_tokens
from t2i.models.first_stage.vqgan_trainer import load_vqgan_snapshot

from conftest import cli


def test_train_dalle_writes_a_self_contained_run(dalle_run, shapes16):
    names = {p.name for p in dalle_run.iterdir()}
    assert {"config.json", "log.txt", "stats.jsonl", "reals.png", "fakes-000032.png", "snapshot-000032"} <= names
    stats = [json.loads(line) for line in (dalle_run / "stats.jsonl").read_text().splitlines()]
    assert all({"Loss/text", "Loss/image"} <= set(s) for s in stats)
    meta = json.loads((dalle_run / "snapshot-000032" / "config.json").read_text())
    assert meta["family"] == "dalle" and meta["tokenizer"]["dropout"] == 0.1
    assert meta["net"]["image_len"] == 64 and meta["net"]["image_vocab"] == 32  # the test VQGAN: 8x8 of 32
    assert meta["net"]["text_vocab"] == 300 + meta["net"]["text_len"]
    grid = Image.open(dalle_run / "fakes-000032.png")
    assert grid.size == (16 * 8, 16 * 4)  # 8 prompts x 4 seeds at 16px


def test_image_tokens_are_cached_by_content_and_vqgan(shapes16, vqgan_run):
    dataset = ImageTextDataset(shapes16)
    vqgan = load_vqgan_snapshot(vqgan_run)
    tokens = load_or_encode_tokens(dataset, vqgan, augs=4, log=lambda *_: None)
    assert tokens.shape == (64, 1, 64)  # square data at the VQGAN's size: the DALL-E crop is the identity
    image = dataset[3]["image"]
    from t2i.data.transforms import to_model

    assert torch.equal(tokens[3, 0], vqgan.encode(to_model(image[None])).flatten())
    cached = list((shapes16.parent / (shapes16.name + ".features")).glob("tokens-*.safetensors"))
    assert len(cached) == 1
    logged = []
    load_or_encode_tokens(dataset, vqgan, augs=4, log=logged.append)
    assert logged == []  # second call reads the cache
    with torch.no_grad():
        vqgan.quantize.embedding.weight.add_(1.0)  # other weights: another cache entry
    load_or_encode_tokens(dataset, vqgan, augs=4, log=logged.append)
    assert len(logged) == 1


def test_resume_continues_exactly(dalle_run, shapes16, vqgan_run, copy_run, tmp_path, one_thread):
    """Resumed at 32 images to 48 = trained straight to 48, bit for bit (BPE-dropout draws included)."""
    from safetensors.torch import load_file

    common = ["--data", shapes16, "--vqgan", vqgan_run, "--preset", "test", "--bpe_vocab", 300, "--kimg", 0.048]
    run = copy_run(dalle_run)
    cli("train", "dalle", *common, "--resume", run, "--outdir", run.parent)
    assert "resuming" in (run / "log.txt").read_text()
    assert len((run / "stats.jsonl").read_text().splitlines()) == 3
    cli("train", "dalle", *common, "--outdir", tmp_path / "straight")
    (straight,) = (tmp_path / "straight").glob("*-dalle-test")
    a, b = (load_file(r / "snapshot-000048" / "model.safetensors") for r in (run, straight))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_generate_with_guidance_and_reranking(dalle_run, clip_run, tmp_path):
    out = tmp_path / "g.png"
    cli("generate", "a large red circle", "--model", dalle_run, "--n", 3, "--seed", 5, "--out", out)
    assert Image.open(out).size == (48, 16)
    again = tmp_path / "g2.png"
    cli("generate", "a large red circle", "--model", dalle_run, "--n", 3, "--seed", 5, "--out", again)
    assert out.read_bytes() == again.read_bytes()  # seeded

    pipe = load_pipeline(dalle_run)
    one = pipe(["a small blue square"], [7], guidance=1.0)
    batched = pipe(["a large red circle", "a small blue square"], [1, 7], guidance=1.0)
    assert torch.equal(one[0], batched[1])  # an image does not depend on its batch
    cli("generate", "a small blue square", "--model", dalle_run, "--n", 2, "--candidates", 4,
        "--rerank_clip", clip_run, "--out", tmp_path / "r.png")
    assert Image.open(tmp_path / "r.png").size == (32, 16)


def test_rerank_picks_the_best_candidate_by_clip(dalle_run, clip_run):
    from t2i.clip import load_clip

    pipe = load_pipeline(dalle_run)
    pipe.clip = load_clip(clip_run)
    cands = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    prompts = ["a large red circle", "a small blue square"]
    best = pipe.rerank(cands, prompts)
    img = torch.nn.functional.normalize(pipe.clip.encode_image(cands.flatten(0, 1)), dim=-1).view(2, 3, -1)
    txt = torch.nn.functional.normalize(pipe.clip.encode_text(prompts), dim=-1)
    pick = torch.einsum("ncd,nd->nc", img, txt).argmax(1)
    assert torch.equal(best, cands[torch.arange(2), pick])


def test_eval_shapes_accuracy_on_dalle(dalle_run, shapes16, tmp_path, capsys):
    cli("eval", dalle_run, "--data", shapes16, "--metrics", "shapes_accuracy", "--n", 8, "--guidance", 2,
        "--out", tmp_path)
    (line,) = (tmp_path / "metric-shapes_accuracy.jsonl").read_text().splitlines()
    result = json.loads(line)["results"]
    assert 0.0 <= result["seen_all"] <= 1.0 and result["seen_images"] == 8


def test_errors(dalle_run, shapes16, lafite_run, tmp_path, cli_error):
    assert "--rerank_clip" in cli_error("generate", "a red circle", "--model", dalle_run, "--candidates", 4)
    assert "tokens; this model reads at most" in cli_error(
        "generate", " ".join(["a large red circle"] * 20), "--model", dalle_run)
    assert "is a 'lafite' snapshot" in cli_error("train", "dalle", "--data", shapes16, "--vqgan", lafite_run,
                                                  "--preset", "test", "--outdir", tmp_path)
    assert "carries no CLIP" in cli_error("eval", dalle_run, "--data", shapes16, "--metrics", "clip_score",
                                          "--n", 4, "--out", tmp_path)
