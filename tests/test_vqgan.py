"""DALL-E's VQGAN first stage (t2i.models.first_stage): config round-trip, taming key layout, straight-through
gradients, codebook/commitment loss, dead-code restart, perplexity, adaptive weight, delayed discriminator,
the taming loader, the LPIPS perceptual loss, and `t2i train vqgan` end to end with resume."""

import argparse
import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from t2i.data.dataset import ImageTextDataset
from t2i.errors import T2IError
from t2i.models.first_stage.discriminator import PatchDiscriminator
from t2i.models.first_stage.objective import (
    VQGANLoss,
    VQGANLossWeights,
    adaptive_weight,
    codebook_loss,
    load_perceptual,
)
from t2i.models.first_stage.taming import load_taming_vqgan
from t2i.models.first_stage.vqgan import (
    PRESETS,
    VQGAN,
    ChannelNorm,
    VectorQuantizer,
    VQGANConfig,
    code_usage,
)
from t2i.training.snapshot import load_snapshot, load_training_state

from conftest import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def test_config_round_trips_through_json():
    for cfg in PRESETS.values():
        back = VQGANConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert back == cfg and isinstance(back.ch_mult, tuple) and isinstance(back.attn_resolutions, tuple)
    assert PRESETS["tiny"].token_side == 16 and PRESETS["tiny"].resolution == 64     # 256 tokens per image
    assert PRESETS["paper"].factor == 16 and PRESETS["paper"].token_side == 16 and PRESETS["paper"].n_embed == 8192


def test_encode_decode_shapes_and_token_range():
    torch.manual_seed(0)
    cfg = PRESETS["test"]
    model = VQGAN(cfg)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    ids = model.encode(x)
    assert ids.shape == (2, 8, 8) and ids.dtype == torch.long
    assert 0 <= int(ids.min()) and int(ids.max()) < cfg.n_embed
    assert model.decode_ids(ids).shape == (2, 3, 16, 16)
    x_rec, z, ids2, _ = model(x)
    assert x_rec.shape == x.shape and z.shape == (2, cfg.embed_dim, 8, 8) and torch.equal(ids2, ids)
    assert torch.allclose(x_rec, model.decode_ids(ids), atol=1e-5)   # forward value = decoded codes
    D = PatchDiscriminator(cfg)
    assert D(x).shape == (2, 1, 2, 2)                                  # one logit per patch


def test_parameter_names_follow_the_taming_layout():
    with torch.device("meta"):
        sd = VQGAN(PRESETS["paper"]).state_dict()
    expected = {  # names and shapes of taming's f16 VQModel (ch 128, ch_mult 1,1,2,2,4, attn at 16)
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.0.block.0.norm1.weight": (128,),
        "encoder.down.1.downsample.conv.weight": (128, 128, 3, 3),
        "encoder.down.2.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.4.attn.1.proj_out.weight": (512, 512, 1, 1),
        "encoder.mid.block_1.conv1.weight": (512, 512, 3, 3),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "encoder.norm_out.weight": (512,),
        "encoder.conv_out.weight": (256, 512, 3, 3),
        "quant_conv.weight": (256, 256, 1, 1),
        "quantize.embedding.weight": (8192, 256),
        "post_quant_conv.weight": (256, 256, 1, 1),
        "decoder.conv_in.weight": (512, 256, 3, 3),
        "decoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        "decoder.up.4.attn.2.k.weight": (512, 512, 1, 1),
        "decoder.up.3.block.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.up.1.upsample.conv.weight": (128, 128, 3, 3),
        "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        "decoder.norm_out.bias": (128,),
        "decoder.conv_out.weight": (3, 128, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "encoder.down.4.downsample.conv.weight" not in sd and "decoder.up.0.upsample.conv.weight" not in sd
    assert not any(".attn." in k for k in sd if k.startswith(("encoder.down.3", "decoder.up.3")))
    assert {k.split(".")[0] for k in sd} == {"encoder", "quant_conv", "quantize", "post_quant_conv", "decoder"}


def test_straight_through_gradient_is_the_gradient_at_z_q():
    torch.manual_seed(0)
    q = VectorQuantizer(16, 4)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    z_q, ids, _ = q(z)
    assert torch.allclose(z_q, q.embed(ids), atol=1e-7)             # forward value is the code (up to z - z rounding)
    w = torch.randn_like(z_q)
    grad_z, grad_zq = torch.autograd.grad((z_q * w).sum(), [z, z_q])
    assert torch.equal(grad_z, grad_zq) and torch.equal(grad_z, w)
    # Through the whole model: a reconstruction loss reaches the encoder but not the codebook.
    model = VQGAN(PRESETS["test"])
    x_rec = model(torch.rand(2, 3, 16, 16) * 2 - 1)[0]
    x_rec.square().mean().backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quantize.embedding.weight.grad is None


def test_l2_codebook_picks_the_code_of_highest_cosine_and_returns_unit_vectors():
    torch.manual_seed(0)
    q = VectorQuantizer(32, 8, l2=True)
    with torch.no_grad():
        q.embedding.weight.mul_(torch.rand(32, 1) * 100)     # lengths must not matter, only directions
    z = q.project(torch.randn(2, 8, 3, 3) * 5)
    assert torch.allclose(z.norm(dim=1), torch.ones(2, 3, 3))
    z_q, ids, _ = q(z)
    cos = torch.einsum("bchw,nc->bhwn", z, F.normalize(q.embedding.weight, dim=1))
    assert torch.equal(ids, cos.argmax(-1))
    assert torch.allclose(z_q.norm(dim=1), torch.ones(2, 3, 3), atol=1e-6)
    assert torch.allclose(q.codebook(), F.normalize(q.embedding.weight, dim=1))
    # The model normalises its latents before the lookup, so the codebook loss compares unit vectors.
    cfg = VQGANConfig(**{**PRESETS["test"].to_dict(), "codebook_l2": True})
    _, z, _, _ = VQGAN(cfg)(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert torch.allclose(z.norm(dim=1), torch.ones_like(z[:, 0]), atol=1e-5)



def test_local_encoder_tokens_ignore_pixels_outside_their_receptive_field():
    # 64px with the test widths (f2, 32x32 latents). The encoder sees at most 18 px around a position
    # (conv_in 1, level 0: 2 + 1 down, level 1: 2 x (2 + 4 mid convs + conv_out 1) at f2 = 14 -> 18).
    base = {**PRESETS["test"].to_dict(), "resolution": 64}
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    x2 = x.clone()
    x2[..., :8, :8] = 1.0                                       # paint the top-left corner white
    far = (slice(None), slice(None), slice(16, None), slice(16, None))   # latents from pixel 32 on
    for local in (True, False):
        torch.manual_seed(0)
        model = VQGAN(VQGANConfig(**{**base, "local_encoder": local})).eval()
        with torch.no_grad():
            z, z2 = model.encode_latents(x), model.encode_latents(x2)
        assert not torch.allclose(z[..., :2, :2], z2[..., :2, :2])        # the corner's own tokens change
        # Per-position norms, no middle attention: far tokens are untouched. With taming's GroupNorm and
        # attention every token depends on the whole image.
        assert torch.allclose(z[far], z2[far], atol=1e-5) == local
    local_model = VQGAN(VQGANConfig(**{**base, "local_encoder": True}))
    norms = [type(m) for m in local_model.encoder.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and set(norms) == {ChannelNorm}
    assert "encoder.mid.attn_1.q.weight" not in local_model.state_dict()
    assert "decoder.mid.attn_1.q.weight" in local_model.state_dict()   # the decoder stays global


def test_channel_norm_normalises_each_position_over_its_channels():
    norm = ChannelNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(6.0)), norm.bias.fill_(0.5)
    x = torch.randn(2, 6, 3, 4) * 3 + 1
    mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-6) * torch.arange(6.0)[:, None, None] + 0.5
    assert torch.allclose(norm(x), expected, atol=1e-5)

def test_codebook_and_commitment_losses_match_the_formula():
    torch.manual_seed(0)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    e = torch.randn(2, 4, 3, 3, requires_grad=True)
    beta = 0.25
    cb, commit = codebook_loss(z, e)
    direct = (z - e).detach().square().mean()
    assert cb.item() == pytest.approx(direct.item()) and commit.item() == pytest.approx(direct.item())
    (cb + beta * commit).backward()
    n = z.numel()
    # d/de ||sg[z] - e||^2 = 2 (e - z) / n ; d/dz beta ||z - sg[e]||^2 = beta 2 (z - e) / n
    assert torch.allclose(e.grad, 2 * (e - z).detach() / n, atol=1e-7)
    assert torch.allclose(z.grad, beta * 2 * (z - e).detach() / n, atol=1e-7)


def test_dead_code_restart_moves_unused_codes_onto_encoder_outputs():
    torch.manual_seed(0)
    q = VectorQuantizer(16, 4)
    with torch.no_grad():
        q.embedding.weight.fill_(100.0)                 # far from the data: never chosen ...
        q.embedding.weight[0] = 0.5
        q.embedding.weight[1] = -0.5                    # ... except codes 0 and 1
    z = torch.randn(2, 4, 4, 4)
    _, ids, stats = q(z)
    assert set(ids.unique().tolist()) == {0, 1} and stats["VQ/used_codes"] == 2
    assert q.restart_dead_codes(z, ids, patience=3) == 0     # unused for 1 step only
    assert q.restart_dead_codes(z, ids, patience=3) == 0
    assert q.unused_steps[2:].eq(2).all() and q.unused_steps[:2].eq(0).all()
    assert q.restart_dead_codes(z, ids, patience=3) == 14    # third step without use
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    dist_to_data = (q.embedding.weight[2:, None].detach() - flat[None]).norm(dim=-1).min(1).values
    assert dist_to_data.max() == 0                          # every restarted code sits on an encoder output
    assert len(q.embedding.weight[2:].unique(dim=0)) == 14    # and on different ones
    assert q.unused_steps.eq(0).all()
    _, _, after = q(z)
    assert after["VQ/used_codes"] > 2


def test_perplexity_of_uniform_usage_is_the_codebook_size():
    uniform = code_usage(torch.arange(64).repeat(5), 64)
    assert uniform["VQ/used_codes"] == 64 and uniform["VQ/perplexity"].item() == pytest.approx(64, rel=1e-4)
    single = code_usage(torch.full((100,), 3), 64)
    assert single["VQ/used_codes"] == 1 and single["VQ/perplexity"].item() == pytest.approx(1.0)
    half = code_usage(torch.tensor([0, 1] * 10), 64)
    assert half["VQ/perplexity"].item() == pytest.approx(2.0, rel=1e-5)


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    torch.manual_seed(0)
    B, H, O = 4, 5, 6
    h, x = torch.randn(B, H), torch.randn(B, O)
    last = nn.Linear(H, O, bias=False)                  # the tiny decoder's last layer: y = h W^T
    a = torch.randn(O)                                  # a linear critic D(y) = <a, y>
    y = last(h)
    nll = (x - y).abs().mean()
    g_adv = -(y @ a).mean()
    lam = adaptive_weight(nll, g_adv, last.weight, disc_weight=0.8)
    # By hand: dnll/dW = (-sign(x - y) / (B O))^T h ; dg/dW = -a (sum_b h_b)^T / B.
    g_nll = (-torch.sign(x - y.detach()) / (B * O)).t() @ h
    g_gan = -a[:, None] * h.sum(0)[None, :] / B
    expected = 0.8 * g_nll.norm() / (g_gan.norm() + 1e-4)
    assert lam.item() == pytest.approx(expected.item(), rel=1e-5) and not lam.requires_grad
    # A critic with vanishing gradients hits the clamp at 1e4.
    y = last(h)
    tiny = adaptive_weight(1e3 * (x - y).abs().mean(), -(y @ (a * 1e-12)).mean(), last.weight, disc_weight=0.8)
    assert tiny.item() == pytest.approx(0.8e4)


def test_discriminator_is_off_before_disc_start():
    torch.manual_seed(0)
    cfg = PRESETS["test"]
    model, D = VQGAN(cfg), PatchDiscriminator(cfg)
    w = VQGANLossWeights(disc_start_kimg=0.016, restart_patience=0)
    obj = VQGANLoss(model, D, None, w)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    calls = []
    D.register_forward_hook(lambda *_: calls.append(1))
    loss, stats = obj.d_main(x, nimg=8)
    loss.backward()
    assert loss.item() == 0.0 and stats == {} and not calls
    assert all(p.grad is None for p in D.parameters())
    loss, stats = obj.g_main(x, nimg=8)
    assert "Loss/G/adv" not in stats and not calls
    plain = stats["Loss/G/rec"] + stats["Loss/G/codebook"] + w.beta * stats["Loss/G/commit"]
    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)   # no adversarial term at all
    # From disc_start on, both phases use D.
    loss, stats = obj.d_main(x, nimg=16)
    loss.backward()
    assert loss.item() > 0 and calls and all(p.grad is not None for p in D.parameters())
    loss, stats = obj.g_main(x, nimg=16)
    assert stats["Loss/G/adaptive_weight"] > 0
    assert loss.item() == pytest.approx((plain.detach() + stats["Loss/G/adaptive_weight"] * stats["Loss/G/adv"]).item(),
                                        rel=1e-5)


# ----------------------------------------------------------------------------------------------
# taming-transformers checkpoints

TAMING_NET = VQGANConfig(resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                         z_channels=4, embed_dim=4, n_embed=16, norm_groups=32)   # taming's 32 groups


def write_taming(tmp_path, model: VQGAN, n_embed=None, resolution=None, extra=None):
    """A taming-style checkpoint (state_dict + loss.* keys) and its YAML, as taming's logs hold them."""
    import yaml

    cfg = model.cfg
    dd = {"double_z": False, "z_channels": cfg.z_channels, "resolution": resolution or cfg.resolution,
          "in_channels": 3, "out_ch": 3, "ch": cfg.ch, "ch_mult": list(cfg.ch_mult),
          "num_res_blocks": cfg.num_res_blocks, "attn_resolutions": list(cfg.attn_resolutions), "dropout": 0.0}
    doc = {"model": {"base_learning_rate": 4.5e-6, "target": "taming.models.vqgan.VQModel",
                     "params": {"embed_dim": cfg.embed_dim, "n_embed": n_embed or cfg.n_embed, "ddconfig": dd,
                                "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                                               "params": {"disc_start": 250001, "disc_weight": 0.8}}}}}
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(doc))
    sd = {k: v for k, v in model.state_dict().items() if k != "quantize.unused_steps"}   # not in taming's layout
    sd["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
    sd["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1)
    torch.save({"state_dict": sd, "global_step": 7, **(extra or {})}, tmp_path / "last.ckpt")
    return tmp_path / "last.ckpt", tmp_path / "model.yaml"


def test_taming_checkpoint_loads_by_name_and_decodes_identically(tmp_path):
    torch.manual_seed(0)
    model = VQGAN(TAMING_NET).eval()
    ckpt, yaml_path = write_taming(tmp_path, model)
    loaded = load_taming_vqgan(ckpt, yaml_path)
    assert loaded.cfg == TAMING_NET and not loaded.training
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    ids = model.encode(x)
    assert torch.equal(loaded.encode(x), ids)
    assert torch.equal(loaded.decode_ids(ids), model.decode_ids(ids))
    # The same weights as a safetensors file (what the conversion hint produces).
    from safetensors.torch import save_file

    flat = torch.load(ckpt, weights_only=True)["state_dict"]
    save_file({k: v.contiguous() for k, v in flat.items()}, tmp_path / "vqgan.safetensors")
    again = load_taming_vqgan(tmp_path / "vqgan.safetensors", yaml_path)
    assert torch.equal(again.decode_ids(ids), model.decode_ids(ids))


def test_taming_loader_refuses_mismatches_with_the_fix(tmp_path):
    torch.manual_seed(0)
    model = VQGAN(TAMING_NET)
    ckpt, yaml_path = write_taming(tmp_path, model, n_embed=8192)
    with pytest.raises(T2IError, match="checkpoint has 16 codes but the YAML says 8192: an 8192 codebook must be "
                                       r"trained natively \(t2i train vqgan\)"):
        load_taming_vqgan(ckpt, yaml_path)
    ckpt, yaml_path = write_taming(tmp_path, model, resolution=32)   # attention lands one level lower
    with pytest.raises(T2IError, match=r"attention at encoder level\(s\) \[1\].*trained at resolution \[16\]"):
        load_taming_vqgan(ckpt, yaml_path)
    ckpt, yaml_path = write_taming(tmp_path, model)
    sd = torch.load(ckpt, weights_only=True)
    del sd["state_dict"]["decoder.conv_out.bias"]
    sd["state_dict"]["decoder.extra.weight"] = torch.zeros(1)
    torch.save(sd, ckpt)
    with pytest.raises(T2IError, match=r"missing decoder\.conv_out\.bias; unexpected decoder\.extra\.weight"):
        load_taming_vqgan(ckpt, yaml_path)
    with pytest.raises(T2IError, match="does not exist"):
        load_taming_vqgan(tmp_path / "nope.ckpt", yaml_path)
    (tmp_path / "bad.yaml").write_text("model:\n  params:\n    n_embed: 16\n")
    with pytest.raises(T2IError, match="no model.params.ddconfig"):
        load_taming_vqgan(ckpt, tmp_path / "bad.yaml")
    # A checkpoint that pickles more than tensors is refused, never unpickled.
    ckpt, yaml_path = write_taming(tmp_path, model, extra={"callbacks": {"cb": argparse.Namespace(best=1)}})
    with pytest.raises(T2IError, match="does not unpickle.*vqgan.safetensors"):
        load_taming_vqgan(ckpt, yaml_path)


# ----------------------------------------------------------------------------------------------
# Perceptual loss

def test_perceptual_none_and_missing_lpips_package(tmp_path, monkeypatch):
    assert load_perceptual("none", "cpu") is None
    with pytest.raises(T2IError, match="lpips:/path/to/vgg16.pth"):
        load_perceptual("vgg", "cpu")
    monkeypatch.setitem(sys.modules, "lpips", None)           # import lpips -> ImportError
    with pytest.raises(T2IError, match="pip install lpips"):
        load_perceptual(f"lpips:{tmp_path / 'vgg16.pth'}", "cpu")


def random_vgg16_features() -> dict[str, torch.Tensor]:
    """A randomly initialised torchvision vgg16 trunk state_dict (`features.N.*`, configuration D)."""
    g = torch.Generator().manual_seed(0)
    sd, i, cin = {}, 0, 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            i += 1
            continue
        sd[f"features.{i}.weight"] = torch.randn(v, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        sd[f"features.{i}.bias"] = torch.zeros(v)
        i, cin = i + 2, v                                      # conv, relu
    return sd


def test_lpips_perceptual_loads_the_local_vgg16_trunk(tmp_path):
    pytest.importorskip("lpips")
    sd = random_vgg16_features()
    torch.save(sd, tmp_path / "vgg16.pth")
    perceptual = load_perceptual(f"lpips:{tmp_path / 'vgg16.pth'}", "cpu")
    assert torch.equal(getattr(perceptual.net.slice1, "0").weight, sd["features.0.weight"])
    assert torch.equal(getattr(perceptual.net.slice5, "28").weight, sd["features.28.weight"])
    assert not any(p.requires_grad for p in perceptual.parameters())
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert perceptual(x, x).abs().max() < 1e-6 and (perceptual(x, y) > 0).all()
    # In the G loss: rec + perceptual_weight * LPIPS + codebook terms.
    cfg = PRESETS["test"]
    w = VQGANLossWeights(perceptual_weight=0.5, restart_patience=0)
    loss, stats = VQGANLoss(VQGAN(cfg), PatchDiscriminator(cfg), perceptual, w).g_main(x[:, :, :16, :16], nimg=0)
    assert stats["Loss/G/perceptual"] > 0
    expected = (stats["Loss/G/rec"] + 0.5 * stats["Loss/G/perceptual"] + stats["Loss/G/codebook"]
                + 0.25 * stats["Loss/G/commit"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(T2IError, match="no such file"):
        load_perceptual(f"lpips:{tmp_path / 'missing.pth'}", "cpu")


# ----------------------------------------------------------------------------------------------
# `t2i train vqgan`

def stats_lines(run):
    return [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]


def test_cli_trains_snapshots_and_resumes_exactly(shapes16, tmp_path):
    common = ["--data", shapes16, "--preset", "test", "--batch", 8, "--disc_start_kimg", 0.016,
              "--restart_patience", 2]
    cli("train", "vqgan", *common, "--kimg", 0.032, "--metrics", "psnr", "--outdir", tmp_path / "a")
    (run,) = (tmp_path / "a").glob("*-vqgan-test")
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "log.txt", "reals.png", "fakes-000016.png", "fakes-000032.png", "snapshot-000016",
            "snapshot-000032", "metric-psnr.jsonl"} <= names
    lines = stats_lines(run)
    assert [line["kimg"] for line in lines] == [0.016, 0.032]
    for line in lines:
        assert {"VQ/used_codes", "VQ/perplexity", "Loss/G/rec", "Loss/G/codebook", "Loss/G/commit"} <= line.keys()
        assert 1 <= line["VQ/used_codes"] <= PRESETS["test"].n_embed
    assert max(line["VQ/restarted"] for line in lines) > 0                   # dead codes restarted (patience 2)
    assert "Loss/D/adv" not in lines[0] and "Loss/G/adv" not in lines[0]     # steps at 0 and 8 images
    assert "Loss/D/adv" in lines[1] and "Loss/G/adaptive_weight" in lines[1]  # from 16 images on
    psnr = json.loads((run / "metric-psnr.jsonl").read_text().splitlines()[-1])["results"]
    assert 0 < psnr["psnr_db"] < 60 and psnr["n"] == 64 and 1 <= psnr["used_codes"] <= 32
    # Fakes: rows alternate 8 originals (every 2nd image of 64) and their 8 reconstructions.
    grid = torch.from_numpy(np.array(Image.open(run / "fakes-000032.png"))).permute(2, 0, 1)
    assert grid.shape == (3, 8 * 16, 8 * 16)
    dataset = ImageTextDataset(shapes16)
    assert all(torch.equal(grid[:, :16, 16 * j:16 * j + 16], dataset[2 * j]["image"]) for j in range(8))
    meta = load_snapshot(run).meta
    assert meta["family"] == "vqgan" and VQGANConfig.from_dict(meta["net"]) == PRESETS["test"]
    # --resume continues the same run; the result equals an uninterrupted run bit for bit.
    cli("train", "vqgan", *common, "--kimg", 0.048, "--resume", run, "--outdir", tmp_path / "a")
    assert (run / "snapshot-000048").is_dir() and len(stats_lines(run)) == 3
    assert "resuming" in (run / "log.txt").read_text()
    cli("train", "vqgan", *common, "--kimg", 0.048, "--outdir", tmp_path / "b")
    (straight,) = (tmp_path / "b").glob("*-vqgan-test")
    resumed = load_snapshot(run / "snapshot-000048").tensors
    direct = load_snapshot(straight / "snapshot-000048").tensors
    assert resumed.keys() == direct.keys() and all(torch.equal(resumed[k], direct[k]) for k in resumed)


def test_lr_schedule_warms_up_then_holds_or_decays():
    from t2i.models.first_stage.trainer import lr_schedule
    from t2i.models.first_stage.vqgan_trainer import VQGANTrainConfig
    from t2i.training.loop import LoopConfig

    loop = LoopConfig(kimg=10, batch=32)
    assert lr_schedule(VQGANTrainConfig(data="d"), loop) is None                 # taming: constant lr
    warm = lr_schedule(VQGANTrainConfig(data="d", warmup_kimg=2), loop)
    assert warm(0) == pytest.approx(32 / 2000) and warm(968) == pytest.approx(1000 / 2000)
    assert warm(2000) == warm(6000) == warm(10000) == pytest.approx(1.0)        # then held
    both = lr_schedule(VQGANTrainConfig(data="d", warmup_kimg=2, lr_decay=True), loop)
    assert both(968) == pytest.approx(0.5) and both(2000) == pytest.approx(1.0)
    assert both(6000) == pytest.approx(0.55) and both(10000) == pytest.approx(0.1)   # cosine to 10%
    decay = lr_schedule(VQGANTrainConfig(data="d", lr_decay=True), loop)
    assert decay(0) == pytest.approx(1.0) and decay(5000) == pytest.approx(0.55)


def test_random_crops_are_seeded_windows_of_each_image():
    from t2i.models.first_stage.trainer import random_crops

    images = torch.arange(4 * 3 * 16 * 16, dtype=torch.float32).view(4, 3, 16, 16)
    a = random_crops(images, 8, torch.Generator().manual_seed(1))
    b = random_crops(images, 8, torch.Generator().manual_seed(1))
    assert a.shape == (4, 3, 8, 8) and torch.equal(a, b)
    for im, crop in zip(images, a):   # each crop is a contiguous window of its own image
        y, x = divmod(int(crop[0, 0, 0]) % 256, 16)
        assert torch.equal(crop, im[:, y:y + 8, x:x + 8])
    assert torch.equal(random_crops(images, 16, torch.Generator()), images)


def test_data_init_puts_every_code_on_an_encoder_output():
    torch.manual_seed(0)
    q = VectorQuantizer(16, 4)
    q.unused_steps.fill_(7)
    z = torch.randn(2, 4, 4, 4)
    q.init_codebook(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    dist_to_data = (q.embedding.weight[:, None].detach() - flat[None]).norm(dim=-1).min(1).values
    assert dist_to_data.max() == 0 and len(q.embedding.weight.unique(dim=0)) == 16   # distinct outputs
    assert q.unused_steps.eq(0).all()
    _, ids, _ = q(z)
    assert ids.unique().numel() == 16          # the uniform start would give z far fewer codes


def test_cli_codebook_init_data_runs_once_and_never_on_resume(shapes16, tmp_path, monkeypatch, cli_error):
    calls = []
    original = VectorQuantizer.init_codebook
    monkeypatch.setattr(VectorQuantizer, "init_codebook", lambda self, z: calls.append(z.shape) or original(self, z))
    args = ["train", "vqgan", "--data", shapes16, "--preset", "test", "--batch", 8, "--outdir", tmp_path]
    cli(*args, "--kimg", 0.032, "--codebook_init", "data")
    assert calls == [(8, 8, 8, 8)]             # the first batch's latents, before the first step
    (run,) = tmp_path.glob("*-vqgan-test")
    cli(*args, "--kimg", 0.048, "--codebook_init", "data", "--resume", run)
    assert len(calls) == 1 and load_snapshot(run).meta["config"]["codebook_init"] == "data"
    cli(*args, "--kimg", 0.016, "--outdir", tmp_path / "uniform")
    assert len(calls) == 1                     # the default keeps taming's uniform start
    assert "choose uniform or data" in cli_error(*args, "--codebook_init", "kmeans")


def test_cli_trains_on_crops_and_rejects_a_bad_crop(shapes16, tmp_path, cli_error):
    cli("train", "vqgan", "--data", shapes16, "--preset", "test", "--batch", 8, "--kimg", 0.032, "--crop", 8,
        "--lr", 1e-3, "--lr_decay", 1, "--outdir", tmp_path)
    (run,) = tmp_path.glob("*-vqgan-test")
    assert stats_lines(run)[0]["Loss/G/rec"] > 0 and load_snapshot(run).meta["config"]["crop"] == 8
    # --lr_decay: cosine from the full lr at 0 images to 10% at --kimg; the last step (after 24 of 32
    # images) ran at 1e-3 * (0.1 + 0.9 * (1 + cos(0.75 pi)) / 2).
    last = load_training_state(run / "snapshot-000032")["optimizers"]["G_main"]["param_groups"][0]["lr"]
    assert last == pytest.approx(1e-3 * (0.1 + 0.45 * (1 + math.cos(0.75 * math.pi))))
    msg = cli_error("train", "vqgan", "--data", shapes16, "--preset", "test", "--crop", 7, "--outdir", tmp_path)
    assert "--crop 7 must be at most 16 and a multiple of 2" in msg


def test_shapes_recon_accuracy_is_the_oracle_score_of_round_trips():
    from t2i.metrics.oracle_trainer import load_oracle, oracle_self_accuracy
    from t2i.models.first_stage.trainer import shapes_recon_accuracy

    oracle = load_oracle()
    clean = oracle_self_accuracy(oracle, n=16, split="test-seen")
    blank = oracle_self_accuracy(oracle, n=16, split="test-seen", through=torch.zeros_like)
    assert clean["all"] >= 0.9 and blank["all"] <= 0.2      # `through` is what the oracle judges
    torch.manual_seed(0)
    result = shapes_recon_accuracy(VQGAN(PRESETS["tiny"]).eval(), n=8, oracle=oracle)
    assert {"seen_all", "heldout_all", "seen_colour", "heldout_shape"} <= result.keys() and result["n"] == 8
    assert result["seen_all"] <= 0.25                        # an untrained VQGAN keeps no scene


def test_cli_rejects_a_dataset_of_the_wrong_size(shapes16, tmp_path, cli_error):
    msg = cli_error("train", "vqgan", "--data", shapes16, "--preset", "tiny", "--outdir", tmp_path)
    assert "is 16x16; VQGAN preset 'tiny' builds square powers of two from 32 up" in msg   # tiny's D: 24 px at least
    assert "t2i data pack --width 32 --height 32" in msg
    msg = cli_error("train", "vqgan", "--data", shapes16, "--preset", "test", "--perceptual", "vgg",
                    "--outdir", tmp_path)
    assert "--perceptual 'vgg'" in msg
