"""Latent diffusion (t2i.models.ldm): the noise schedule and training targets against their closed forms,
min-SNR weights, null-caption dropout, guidance, seeded batch-independent sampling with each sampler, the
tokenizers, the latent cache under training, and `t2i train ldm` / `t2i generate` / `t2i eval` end to end on
the `test` presets, with the errors users meet."""

import copy
import json

import pytest
import torch
from conftest import cli
from PIL import Image

from t2i.data.dataset import ImageTextDataset
from t2i.errors import T2IError
from t2i.models import load_pipeline
from t2i.models.first_stage.autoencoder_trainer import load_autoencoder_snapshot
from t2i.models.first_stage.cache import load_or_encode_latents
from t2i.models.ldm.diffusion import (
    DiffusionConfig,
    alphas_cumprod,
    betas,
    drop_captions,
    min_snr_weight,
    q_sample,
    target,
)
from t2i.models.ldm.model import PRESETS
from t2i.models.ldm.sampling import SAMPLERS, guided, make_scheduler
from t2i.models.ldm.unet import diffusers_config
from t2i.training.snapshot import weights_identity


# --- schedule and objective -------------------------------------------------------------------------------

def test_schedule_is_compvis_linear_in_closed_form():
    cfg = DiffusionConfig()
    b = betas(cfg)
    T, s0, s1 = 1000, 0.00085 ** 0.5, 0.012 ** 0.5
    closed = torch.tensor([(s0 + t / (T - 1) * (s1 - s0)) ** 2 for t in range(T)], dtype=torch.float64)
    assert torch.allclose(b, closed, rtol=1e-12, atol=0)
    assert b[0].item() == pytest.approx(0.00085) and b[-1].item() == pytest.approx(0.012)
    assert (b.diff() > 0).all()
    a = alphas_cumprod(cfg)
    assert torch.allclose(a, torch.tensor([float(torch.prod(1 - b[:t + 1])) for t in range(T)], dtype=torch.float64))
    assert (a.diff() < 0).all() and a[-1] < 0.01
    for sampler in SAMPLERS:  # every diffusers scheduler runs on this very schedule ("scaled_linear")
        assert torch.allclose(make_scheduler(sampler, cfg).alphas_cumprod.double(), a, rtol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_training_target_matches_the_closed_form(prediction):
    cfg = DiffusionConfig(prediction=prediction)
    a = alphas_cumprod(cfg)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 4, 8, 8, generator=g), torch.randn(6, 4, 8, 8, generator=g)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    x_t = q_sample(x0, t, eps, a)
    ab = a[t].float().view(-1, 1, 1, 1)
    assert torch.allclose(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * eps, atol=1e-6)
    y = target(x0, t, eps, a, prediction)
    if prediction == "eps":
        assert torch.equal(y, eps)
    else:
        assert torch.allclose(y, ab.sqrt() * eps - (1 - ab).sqrt() * x0, atol=1e-6)
        assert torch.allclose(ab.sqrt() * x_t - (1 - ab).sqrt() * y, x0, atol=1e-5)  # x0 recovered from (x_t, v)
        ddim = make_scheduler("ddim", cfg)                                              # diffusers agrees
        assert torch.allclose(ddim.get_velocity(x0, eps, t), y, atol=1e-5)


def test_min_snr_weights():
    a = alphas_cumprod(DiffusionConfig())
    t = torch.tensor([0, 100, 500, 999])
    snr = a[t] / (1 - a[t])
    assert torch.equal(min_snr_weight(t, a, 0.0, "eps"), torch.ones(4))
    assert torch.allclose(min_snr_weight(t, a, 5.0, "eps").double(), snr.clamp(max=5) / snr, rtol=1e-6)
    assert torch.allclose(min_snr_weight(t, a, 5.0, "v").double(), snr.clamp(max=5) / (snr + 1), rtol=1e-6)
    assert min_snr_weight(t, a, 5.0, "eps")[0] < 0.01 and min_snr_weight(t, a, 5.0, "eps")[-1] == 1.0


def test_zero_terminal_snr_schedule_in_closed_form():
    base, zero = alphas_cumprod(DiffusionConfig()), alphas_cumprod(DiffusionConfig(prediction="v", zero_snr=True))
    s, s0, sT = base.sqrt(), base[0].sqrt(), base[-1].sqrt()
    closed = (s - sT) * s0 / (s0 - sT)            # Lin et al. 2024, Algorithm 1: shifted to 0 at T, same at t = 1
    assert torch.allclose(zero.sqrt(), closed, rtol=1e-9, atol=1e-12)
    assert zero[-1] == 0 and zero[0] == base[0] and (zero.diff() < 0).all()
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([999, 999])
    assert torch.equal(q_sample(x0, t, eps, zero), eps)                     # x_T holds no image in training
    assert torch.allclose(target(x0, t, eps, zero, "v"), -x0)               # v at T is -x_0
    assert torch.equal(min_snr_weight(t, zero, 5.0, "v", zero_snr=True), torch.ones(2))   # T keeps weight 1
    t = torch.tensor([0, 300, 600, 999])
    snr = zero[t] / (1 - zero[t])
    assert torch.allclose(min_snr_weight(t, zero, 5.0, "v", zero_snr=True).double(),
                          (snr + 1).clamp(max=5) / (snr + 1), rtol=1e-6)
    for terminal in (0.0, 0.25):   # --terminal_weight: the weight at T, Hang et al.'s min-SNR at 0
        w = min_snr_weight(t, zero, 5.0, "v", zero_snr=True, terminal=terminal).double()
        assert torch.allclose(w, (snr + terminal).clamp(max=5) / (snr + 1), rtol=1e-6) and w[-1] == terminal
    for sampler in SAMPLERS:   # every sampler starts at T on the model's schedule (alpha_bar_T lifted to 2^-24)
        sched = make_scheduler(sampler, DiffusionConfig(prediction="v", zero_snr=True))
        sched.set_timesteps(10)
        assert int(sched.timesteps[0]) == 999
        assert torch.allclose(sched.alphas_cumprod[:-1].double(), zero[:-1], rtol=1e-5)
        assert float(sched.alphas_cumprod[-1]) == pytest.approx(2.0 ** -24)


def test_null_caption_dropout_rate():
    caps = [f"caption {i}" for i in range(20000)]
    dropped = drop_captions(caps, 0.1, torch.Generator().manual_seed(0))
    rate = sum(c == "" for c in dropped) / len(caps)
    assert abs(rate - 0.1) < 0.01                                    # 3 sigma is 0.0064
    assert all(d in ("", c) for c, d in zip(caps, dropped))
    assert dropped == drop_captions(caps, 0.1, torch.Generator().manual_seed(0))
    assert drop_captions(caps, 0.0) == caps


# --- networks and tokenizers --------------------------------------------------------------------------------

def test_paper256_is_text2img_large():
    cfg = PRESETS["paper256"]
    d = diffusers_config(cfg.unet)
    assert d["block_out_channels"] == (320, 640, 1280, 1280) and d["layers_per_block"] == 2
    assert d["down_block_types"] == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)  # attention at f 1, 2, 4
    assert d["up_block_types"] == ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    assert d["cross_attention_dim"] == 1280 and d["attention_head_dim"] == 8
    assert (cfg.text.width, cfg.text.layers, cfg.text.max_len) == (1280, 32, 77)
    from t2i.models.ldm.model import LdmConfig

    assert LdmConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg    # config round trip
    from t2i.models.ldm.model import LatentDiffusion

    with torch.device("meta"):                                                 # built without memory
        model = LatentDiffusion(cfg)
        x, t = torch.empty(1, 4, 32, 32), torch.tensor([5])
        ids, mask = torch.zeros(1, 77, dtype=torch.long), torch.ones(1, 77, dtype=torch.bool)
        assert model(x, t, ids, mask).shape == (1, 4, 32, 32)
    n_text = sum(p.numel() for p in model.text.parameters())
    assert n_text == 542_895_360   # x-transformers embedder: 32 x (4*1280*512 + 8*1280^2 + biases, norms) + (30522 + 77)*1280 + final norm


def test_wordpiece_tokenizer_from_a_local_vocab(tmp_path):
    from t2i.models.ldm.text_encoder import LdmTokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "large",
                                "##s"]) + "\n")
    tok = LdmTokenizer.from_wordpiece(str(vocab))
    ids, mask = tok(["A red circles", ""], 8)
    assert ids[0].tolist() == [2, 5, 6, 7, 9, 3, 0, 0] and mask[0].tolist() == [True] * 6 + [False] * 2
    assert ids[1].tolist()[:3] == [2, 3, 0] and mask[1].sum() == 2           # "" is [CLS][SEP]: the null caption
    with pytest.raises(T2IError, match="this model reads at most 6"):
        tok(["a red circle a red circle a red circle"], 8)
    assert LdmTokenizer.from_meta(json.loads(json.dumps(tok.to_meta())))(["a red"], 8)[0].equal(tok(["a red"], 8)[0])
    with pytest.raises(T2IError, match="does not exist; give the vocab.txt of bert-base-uncased"):
        LdmTokenizer.from_wordpiece(str(tmp_path / "missing.txt"))


# --- the latent cache -----------------------------------------------------------------------------------------

def test_training_reads_the_latent_cache_keyed_by_the_autoencoder(ldm_run, autoencoder_run, shapes16):
    ae = load_autoencoder_snapshot(autoencoder_run)
    identity = weights_identity(ae, "autoencoder")
    assert f"with {identity} -> " in (ldm_run / "log.txt").read_text()       # the run encoded once, with these weights
    dataset = ImageTextDataset(shapes16)
    logged = []
    mean, logvar = load_or_encode_latents(dataset, ae, log=logged.append)
    assert logged == [] and mean.shape == logvar.shape == (64, 1, 4, 8, 8)  # the run's cache, reused
    with torch.no_grad():
        ae.vae.decoder.conv_out.bias.add_(1.0)                               # another autoencoder: another entry
    load_or_encode_latents(dataset, ae, log=logged.append)
    assert len(logged) == 1 and weights_identity(ae, "autoencoder") in logged[0]


# --- training end to end ---------------------------------------------------------------------------------------

def test_train_ldm_writes_a_self_contained_run(ldm_run, autoencoder_run):
    names = {p.name for p in ldm_run.iterdir()}
    assert {"config.json", "log.txt", "stats.jsonl", "reals.png", "fakes-000032.png", "snapshot-000032"} <= names
    stats = [json.loads(line) for line in (ldm_run / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == 2 and all("Loss/diffusion" in s for s in stats)
    meta = json.loads((ldm_run / "snapshot-000032" / "config.json").read_text())
    ae_meta = json.loads((autoencoder_run / "snapshot-000032" / "config.json").read_text())
    assert meta["family"] == "ldm" and meta["diffusion"] == DiffusionConfig().to_dict()
    assert meta["autoencoder"]["scale_factor"] == ae_meta["net"]["scale_factor"]
    assert meta["net"]["unet"]["sample_size"] == 8 and meta["net"]["text"]["vocab_size"] == 300
    assert Image.open(ldm_run / "fakes-000032.png").size == (16 * 8, 16 * 4)  # 8 prompts x 4 seeds at 16px


def test_dry_run_and_exact_resume(ldm_run, autoencoder_run, shapes16, copy_run, tmp_path, capsys, one_thread):
    from safetensors.torch import load_file

    common = ["--data", shapes16, "--autoencoder", autoencoder_run, "--preset", "test", "--bpe_vocab", 300]
    capsys.readouterr()
    cli("train", "ldm", *common, "--prediction", "v", "--min_snr", 5, "--dry-run", "--outdir", tmp_path / "d")
    r = json.loads(capsys.readouterr().out)
    assert r["family"] == "ldm" and r["config"]["prediction"] == "v" and r["config"]["min_snr"] == 5.0
    assert r["loop"]["batch"] == 8 and r["start"] == "new run" and not (tmp_path / "d").exists()

    run = copy_run(ldm_run)
    cli("train", "ldm", *common, "--kimg", 0.048, "--resume", run, "--outdir", run.parent)
    assert "resuming" in (run / "log.txt").read_text() and len((run / "stats.jsonl").read_text().splitlines()) == 3
    cli("train", "ldm", *common, "--kimg", 0.048, "--outdir", tmp_path / "straight")
    (straight,) = (tmp_path / "straight").glob("*-ldm-test")
    a, b = (load_file(r / "snapshot-000048" / "model.safetensors") for r in (run, straight))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_v_prediction_min_snr_and_zero_terminal_snr_train(shapes16, autoencoder_run, tmp_path, one_thread):
    cli("train", "ldm", "--data", shapes16, "--autoencoder", autoencoder_run, "--preset", "test", "--bpe_vocab", 300,
        "--prediction", "v", "--min_snr", 5, "--zero_snr", 1, "--terminal_weight", 0.25, "--kimg", 0.016,
        "--outdir", tmp_path)
    (run,) = tmp_path.glob("*-ldm-test")
    assert json.loads((run / "config.json").read_text())["config"]["terminal_weight"] == 0.25
    pipe = load_pipeline(run)
    assert pipe.diffusion.prediction == "v" and pipe.diffusion.zero_snr     # the snapshot carries the schedule
    assert make_scheduler("ddim", pipe.diffusion).config.prediction_type == "v_prediction"
    for sampler in SAMPLERS:
        images = pipe(["a large red circle"], [0], sampler=sampler, steps=3)
        assert images.shape == (1, 3, 16, 16) and images.float().std() > 0


# --- sampling --------------------------------------------------------------------------------------------------

def test_guidance_at_scale_one_is_the_conditional_prediction(ldm_run):
    pipe = load_pipeline(ldm_run)
    cond, uncond = pipe.model_fns(["a large red circle", "a small blue square"])
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500, 20])
    c, u = cond(x, t), uncond(x, t)
    assert torch.equal(guided(cond, uncond, 1.0)(x, t), c)
    assert torch.allclose(u + 1.0 * (c - u), c, atol=1e-6)                   # the formula agrees at 1
    assert torch.allclose(guided(cond, uncond, 3.0)(x, t), u + 3 * (c - u), atol=1e-6)
    assert not torch.allclose(c, u)                                          # the caption matters


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("plms", 0.0), ("dpm++", 0.0)])
def test_sampling_is_seeded_and_batch_independent(ldm_run, sampler, eta, one_thread):
    pipe = load_pipeline(ldm_run)
    opts = {"sampler": sampler, "steps": 6, "guidance": 3.0, "eta": eta}
    both = pipe.sample_latents(["a large red circle", "a small blue square"], [1, 7], **opts)
    alone = pipe.sample_latents(["a small blue square"], [7], **opts)
    # Image 7 does not depend on its batch, up to float rounding at its scale (a barely trained model's latents
    # reach |z| ~ 50 after a few solver steps).
    torch.testing.assert_close(both[1], alone[0], rtol=0, atol=1e-5 * float(alone.abs().max()))
    assert torch.equal(alone, pipe.sample_latents(["a small blue square"], [7], **opts))   # seeded
    assert not torch.allclose(alone[0], pipe.sample_latents(["a small blue square"], [8], **opts)[0])


def test_generate_with_each_sampler_and_the_compvis_aliases(ldm_run, tmp_path):
    for sampler in SAMPLERS:
        out = tmp_path / f"{sampler}.png"
        cli("generate", "a large red circle", "--model", ldm_run, "--sampler", sampler, "--steps", 4, "--n", 3,
            "--out", out)
        assert Image.open(out).size == (48, 16)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    cli("generate", "a large red circle", "--model", ldm_run, "--sampler", "ddim", "--steps", 5, "--guidance", 2,
        "--eta", 0.5, "--n", 2, "--out", a)
    cli("generate", "a large red circle", "--model", ldm_run, "--ddim_steps", 5, "--scale", 2, "--ddim_eta", 0.5,
        "--n_samples", 2, "--out", b)
    assert a.read_bytes() == b.read_bytes()


def test_bf16_sampling_stays_close_to_fp32(ldm_run, tmp_path, one_thread):
    pipe = load_pipeline(ldm_run)
    opts = {"sampler": "dpm++", "steps": 4, "guidance": 2.0}
    full = pipe(["a large red circle", "a small blue square"], [3, 4], **opts).float()
    half = pipe(["a large red circle", "a small blue square"], [3, 4], precision="bf16", **opts).float()
    assert half.shape == full.shape and 0 < (half - full).abs().mean() < 8       # of 255: rounding, not noise
    with pytest.raises(T2IError, match="--precision 'fp16'"):
        pipe(["a large red circle"], [0], precision="fp16")
    out = tmp_path / "bf16.png"
    cli("generate", "a large red circle", "--model", ldm_run, "--steps", 4, "--precision", "bf16", "--n", 2,
        "--out", out)
    assert Image.open(out).size == (32, 16)


def test_eval_takes_the_sampling_options(ldm_run, tmp_path):
    cli("eval", ldm_run, "--metrics", "shapes_accuracy", "--n", 4, "--sampler", "dpm++", "--steps", 4, "--scale", 2,
        "--out", tmp_path)
    (line,) = (tmp_path / "metric-shapes_accuracy.jsonl").read_text().splitlines()
    assert json.loads(line)["results"]["seen_images"] == 4


# --- bad input --------------------------------------------------------------------------------------------------

def test_errors_name_the_value_and_the_fix(ldm_run, shapes16, vqgan_run, autoencoder_run, tmp_path, cli_error):
    base = ["train", "ldm", "--data", shapes16, "--preset", "test", "--outdir", tmp_path]
    msg = cli_error(*base, "--autoencoder", tmp_path / "missing")
    assert f"--autoencoder {tmp_path / 'missing'}: " in msg and "train one with `t2i train autoencoder" in msg
    assert "\n" not in msg.strip()
    msg = cli_error(*base, "--autoencoder", vqgan_run)
    assert "is a 'vqgan' snapshot, but a 'autoencoder' model is needed here" in msg
    assert not any(tmp_path.iterdir())                                       # no run left behind
    msg = cli_error("train", "ldm", "--data", shapes16, "--autoencoder", vqgan_run, "--preset", "paper256")
    assert "give --vocab /path/to/vocab.txt" in msg
    assert "--zero_snr 1 needs --prediction v" in cli_error(*base, "--autoencoder", autoencoder_run, "--zero_snr", 1)
    assert "--terminal_weight 2.0 must be in [0, 1]" in cli_error(*base, "--autoencoder", autoencoder_run,
                                                                   "--terminal_weight", 2)
    assert "the prompt is empty" in cli_error("generate", "  ", "--model", ldm_run)
    assert "--eta 1.0: eta is DDIM's noise" in cli_error("generate", "a red circle", "--model", ldm_run,
                                                         "--sampler", "plms", "--eta", 1)
    assert "--steps 0 must be between 1 and the model's 1000" in cli_error("generate", "a red circle", "--model",
                                                                            ldm_run, "--steps", 0)
    assert "this model reads at most 46. Shorten the prompt." in cli_error(
        "generate", "a large red circle " * 20, "--model", ldm_run)


def test_a_frozen_clip_text_tower_conditions_instead(shapes16, autoencoder_run, clip_run, tmp_path, one_thread):
    from safetensors.torch import load_file

    from t2i.clip.trainer import load_clip_snapshot

    cli("train", "ldm", "--data", shapes16, "--autoencoder", autoencoder_run, "--preset", "test", "--clip", clip_run,
        "--pooled_text", 1, "--kimg", 0.016, "--outdir", tmp_path)
    (run,) = tmp_path.glob("*-ldm-test")
    assert "frozen CLIP text tower" in (run / "log.txt").read_text()
    clip = load_clip_snapshot(clip_run)
    meta = json.loads((run / "snapshot-000016" / "config.json").read_text())
    assert meta["net"]["text"]["frozen"] and meta["net"]["unet"]["context_dim"] == clip.cfg.text_width
    weights = load_file(run / "snapshot-000016" / "model.safetensors")
    text = clip.text.state_dict()
    assert torch.equal(weights["ldm.text.position"], text["pos"])                  # trained never
    assert torch.equal(weights["ldm.text.layers.layers.0.linear1.weight"], text["blocks.layers.0.linear1.weight"])
    pipe = load_pipeline(run)
    prompts = ["a red circle", "a large blue square below a small green triangle"]
    assert torch.equal(pipe.text(prompts[:1])[0].cpu(), clip.tokenize(prompts[:1]).cpu())  # the CLIP's BPE
    # The pooled state the UNet adds to its timestep embedding is the CLIP's sentence feature (before projection).
    assert meta["net"]["unet"]["pooled_dim"] == clip.cfg.text_width
    with torch.no_grad():
        pooled = pipe.text_condition(prompts)[1].cpu()
        torch.testing.assert_close(clip.text.proj(pooled), clip.encode_text(prompts), rtol=1e-4, atol=1e-5)
    assert pipe(["a large red circle"], [0], steps=3).shape == (1, 3, 16, 16)


def test_training_on_a_cpu_runs_plain_attention_and_sampling_the_default(one_thread):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from t2i.models.ldm.model import LatentDiffusion

    torch.manual_seed(0)
    model = LatentDiffusion(PRESETS["test"])
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    ids, mask = torch.randint(4, 100, (2, 6)), torch.ones(2, 6, dtype=torch.bool)
    trained = model(x, t, ids, mask)
    assert {type(p) for p in model.unet.net.attn_processors.values()} == {AttnProcessor}
    with torch.no_grad():
        sampled = model(x, t, ids, mask)
    assert {type(p) for p in model.unet.net.attn_processors.values()} == {AttnProcessor2_0}
    torch.testing.assert_close(trained.detach(), sampled, rtol=1e-4, atol=1e-5)      # the same function


def test_the_pooled_text_state_reaches_the_unet(one_thread):
    from t2i.models.ldm.model import LatentDiffusion

    torch.manual_seed(0)
    cfg = copy.deepcopy(PRESETS["test"])
    cfg.unet.pooled_dim = cfg.text.width
    model = LatentDiffusion(cfg).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    context, pooled = torch.randn(2, 6, cfg.text.width), torch.randn(2, cfg.text.width)
    with torch.no_grad():
        out = model.unet(x, t, context, pooled)
        assert not torch.allclose(out, model.unet(x, t, context, pooled.flip(0)))   # the sentence changes it
        # The pooled state is the end token's (the last unpadded one), whatever the padding after it.
        ids = torch.tensor([[1, 7, 8, 2, 0, 0], [1, 7, 8, 9, 5, 2]])
        states, pooled = model.encode_text(ids, ids != 0)
    assert torch.equal(pooled, states[[0, 1], [3, 5]])


# --- memory options (item 7: the 1.4B model on one GPU) ---------------------------------------------------------

def test_gradient_checkpointing_gives_the_same_gradients(one_thread):
    from t2i.models.ldm.model import LatentDiffusion

    torch.manual_seed(0)
    cfg = PRESETS["test"]
    plain = LatentDiffusion(cfg).train()
    ckpt = LatentDiffusion(cfg).train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.unet.net.enable_gradient_checkpointing()
    ckpt.text.layers.gradient_checkpointing = True
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    ids, mask = torch.randint(4, cfg.text.vocab_size, (2, 6)), torch.ones(2, 6, dtype=torch.bool)
    grads = []
    for model in (plain, ckpt):
        model(x, t, ids, mask).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("text.layers") for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


def test_frozen_text_checkpointing_and_an_offloaded_autoencoder_train(ldm_run, shapes16, autoencoder_run, tmp_path,
                                                                        one_thread):
    from safetensors.torch import load_file

    cli("train", "ldm", "--data", shapes16, "--autoencoder", autoencoder_run, "--resume", ldm_run / "snapshot-000032",
        "--train_text", 0,
        "--grad_checkpointing", 1, "--offload_autoencoder", 1, "--kimg", 0.048, "--outdir", tmp_path)
    (run,) = tmp_path.glob("*-ldm-test")
    before = load_file(ldm_run / "snapshot-000032" / "model.safetensors")
    after = load_file(run / "snapshot-000048" / "model.safetensors")
    text = [k for k in before if k.startswith("ldm.text.")]
    unet = [k for k in before if k.startswith("ldm.unet.")]
    assert text and all(torch.equal(before[k], after[k]) for k in text)         # --train_text 0: frozen
    assert not all(torch.equal(before[k], after[k]) for k in unet)              # the UNet trained
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["grad_checkpointing"] and config["offload_autoencoder"] and not config["train_text"]


@pytest.mark.slow
def test_two_process_ldm_training_writes_one_run(shapes16, autoencoder_run, tmp_path):
    import os
    import subprocess
    import sys

    from t2i.training.snapshot import load_snapshot

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "t2i",
           "train", "ldm", "--data", str(shapes16), "--autoencoder", str(autoencoder_run), "--preset", "test",
           "--bpe_vocab", "300", "--batch", "8", "--kimg", "0.032", "--outdir", str(tmp_path / "runs")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "config.json").read_text())["world"] == 2
    assert (run / "log.txt").read_text().count("on 2 process(es)") == 1
    snap = load_snapshot(run, family="ldm")
    assert all(torch.isfinite(v).all() for v in snap.tensors.values())
    assert load_pipeline(run)(["a large red circle"], [0], steps=3).shape == (1, 3, 16, 16)


def test_an_open_clip_text_tower_from_a_local_file_conditions(shapes16, autoencoder_run, tmp_path, one_thread):
    import open_clip
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    weights = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, weights)
    cli("train", "ldm", "--data", shapes16, "--autoencoder", autoencoder_run, "--preset", "test", "--clip",
        f"ViT-B-32:{weights}", "--batch", 4, "--kimg", 0.008, "--tick_kimg", 0.008, "--outdir", tmp_path / "runs")
    (run,) = (tmp_path / "runs").glob("*-ldm-test")
    meta = json.loads((run / "snapshot-000008" / "config.json").read_text())
    assert meta["net"]["text"]["open_clip"] == "ViT-B-32" and meta["net"]["unet"]["context_dim"] == 512
    assert meta["tokenizer"] == {"open_clip": "ViT-B-32"}
    saved = load_file(run / "snapshot-000008" / "model.safetensors")
    assert torch.equal(saved["ldm.text.tower.token_embedding.weight"], clip.state_dict()["token_embedding.weight"])
    pipe = load_pipeline(run)
    prompts = ["a large red circle", ""]
    ids, mask = pipe.text(prompts)
    tokens = open_clip.get_tokenizer("ViT-B-32")(prompts)
    assert torch.equal(ids.cpu(), tokens) and mask.sum(1).tolist() == [6, 2]      # <start> 4 words <end>; <start><end>
    with torch.no_grad():                      # the context is open_clip's final-LayerNorm token states
        x = clip.token_embedding(tokens) + clip.positional_embedding
        expected = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        torch.testing.assert_close(pipe.model.encode_text(ids, mask)[0], expected)
        torch.testing.assert_close(pipe.model.encode_text(ids, mask)[1], clip.encode_text(tokens))
    assert pipe(["a large red circle"], [0], steps=3).shape == (1, 3, 16, 16)
    with pytest.raises(T2IError, match="reads at most 75"):
        pipe.text([" ".join(["red"] * 80)])
