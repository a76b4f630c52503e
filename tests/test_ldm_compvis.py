"""CompVis LDM text2img checkpoints: the YAML -> t2i configs, the key map (round trip and independent positions),
the x-transformers text encoder against a direct re-implementation, and the errors (missing, unexpected and
misshapen keys, pickled classes, configurations t2i cannot represent). Checkpoints are written here, in the
original key layout at small sizes; nothing is downloaded."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from torch import nn

from t2i.errors import T2IError
from t2i.models.ldm import compvis as C
from t2i.models.ldm.diffusion import alphas_cumprod, betas

# configs/latent-diffusion/txt2img-1p4B-eval.yaml of CompVis/latent-diffusion, as published.
PAPER_YAML = """
model:
  base_learning_rate: 5.0e-05
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.00085
    linear_end: 0.012
    num_timesteps_cond: 1
    log_every_t: 200
    timesteps: 1000
    first_stage_key: image
    cond_stage_key: caption
    image_size: 32
    channels: 4
    cond_stage_trainable: true
    conditioning_key: crossattn
    monitor: val/loss_simple_ema
    scale_factor: 0.18215
    use_ema: False
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: 32
        in_channels: 4
        out_channels: 4
        model_channels: 320
        attention_resolutions: [4, 2, 1]
        num_res_blocks: 2
        channel_mult: [1, 2, 4, 4]
        num_heads: 8
        use_spatial_transformer: true
        transformer_depth: 1
        context_dim: 1280
        use_checkpoint: true
        legacy: False
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        monitor: val/rec_loss
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 256
          in_channels: 3
          out_ch: 3
          ch: 128
          ch_mult: [1, 2, 4, 4]
          num_res_blocks: 2
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity
    cond_stage_config:
      target: ldm.modules.encoders.modules.BERTEmbedder
      params:
        n_embed: 1280
        n_layer: 32
"""


def tiny_doc() -> dict:
    """The paper YAML at test sizes: UNet 32/64 channels (attention at level 1 only), 1 res block, 2 heads,
    context 32; KL f2 16px; BERT embedder 32-d, 2 layers, 64 tokens, 16 positions."""
    doc = yaml.safe_load(PAPER_YAML)
    p = doc["model"]["params"]
    p["image_size"] = 8
    p["unet_config"]["params"].update(image_size=8, model_channels=32, attention_resolutions=[2], num_res_blocks=1,
                                      channel_mult=[1, 2], num_heads=2, context_dim=32)
    p["first_stage_config"]["params"]["ddconfig"].update(resolution=16, ch=32, ch_mult=[1, 2], num_res_blocks=1)
    p["cond_stage_config"]["params"] = {"n_embed": 32, "n_layer": 2, "vocab_size": 64, "max_seq_len": 16}
    return doc


def write_yaml(path, doc) -> str:
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(ckpt path, yaml path, t2i model, autoencoder, CompVis state_dict): seeded t2i modules written back in
    CompVis' names, with the extras a real checkpoint carries (schedule buffers, LM head)."""
    from t2i.models.first_stage.autoencoder_kl import KLAutoencoder
    from t2i.models.ldm.model import LatentDiffusion

    d = tmp_path_factory.mktemp("compvis")
    yaml_path = write_yaml(d / "tiny.yaml", tiny_doc())
    net, kl, diffusion, _ = C.configs_from_yaml(yaml_path)
    torch.manual_seed(0)
    model, ae = LatentDiffusion(net).eval(), KLAutoencoder(kl).eval()
    with torch.no_grad():                      # diffusers zero-initialises some outputs: make every weight count
        for p in [*model.parameters(), *ae.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    state = {f"ldm.{k}": v for k, v in model.state_dict().items()}
    state |= {f"autoencoder.{k}": v for k, v in ae.state_dict().items()}
    sd = C.to_compvis(state, C.key_map(model, ae))
    sd |= {"betas": betas(diffusion).float(), "alphas_cumprod": alphas_cumprod(diffusion).float(),
           "posterior_variance": torch.zeros(diffusion.timesteps),
           C.TEXT + "to_logits.weight": torch.zeros(64, 32), C.TEXT + "to_logits.bias": torch.zeros(64)}
    ckpt = d / "model.ckpt"
    torch.save({"state_dict": sd, "global_step": 7}, ckpt)
    return str(ckpt), yaml_path, model, ae, sd


def save(tmp_path, sd) -> str:
    path = tmp_path / "edited.ckpt"
    torch.save({"state_dict": sd}, path)
    return str(path)


# --- configs ---------------------------------------------------------------------------------------------------

def test_paper_yaml_is_the_paper256_presets_with_the_published_sizes(tmp_path):
    from t2i.models.first_stage.autoencoder_kl import PRESETS as KL_PRESETS
    from t2i.models.first_stage.autoencoder_kl import KLAutoencoder
    from t2i.models.ldm.model import PRESETS, LatentDiffusion

    net, kl, diffusion, use_ema = C.configs_from_yaml(write_yaml(tmp_path / "p.yaml", yaml.safe_load(PAPER_YAML)))
    assert net == PRESETS["paper256"] and kl == KL_PRESETS["paper256"] and not use_ema
    assert (diffusion.beta_start, diffusion.beta_end, diffusion.timesteps, diffusion.prediction) == (
        0.00085, 0.012, 1000, "eps")
    with torch.device("meta"):
        model, ae = LatentDiffusion(net), KLAutoencoder(kl)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(model.unet) == 872_300_484           # diffusers' ldm-text2im-large-256 UNet
    # x-transformers Encoder: per layer 4 * 1280 * 512 (+ bias 1280) attention, 2 * 4 * 1280^2 (+ biases)
    # feed-forward, 2 LayerNorms; 30522 + 77 embeddings; final LayerNorm (the unused LM head is not held).
    layer = 4 * 1280 * 512 + 1280 + 2 * 4 * 1280 ** 2 + 4 * 1280 + 1280 + 4 * 1280
    assert count(model.text) == 32 * layer + (30522 + 77) * 1280 + 2 * 1280 == 542_895_360
    assert count(ae) == 83_653_863                     # KL-f8 (Stable Diffusion's VAE)
    table = C.key_map(model, ae)
    names = [n for ns, _ in table.values() for n in ns]
    assert len(names) == len(set(names)) == 1354      # one CompVis tensor for each, none shared


@pytest.mark.parametrize("edit, named", [
    (lambda p: p["unet_config"]["params"].update(use_scale_shift_norm=True), "use_scale_shift_norm"),
    (lambda p: p["unet_config"]["params"].update(num_head_channels=64), "num_head_channels"),
    (lambda p: p["unet_config"]["params"].update(transformer_depth=2), "transformer_depth"),
    (lambda p: p.update(conditioning_key="concat"), "conditioning_key"),
    (lambda p: p.update(parameterization="x0"), "parameterization"),
    (lambda p: p["cond_stage_config"].update(target="ldm.modules.encoders.modules.FrozenCLIPEmbedder"),
     "FrozenCLIPEmbedder"),
    (lambda p: p["first_stage_config"]["params"]["ddconfig"].update(attn_resolutions=[32]), "attn_resolutions"),
    (lambda p: p["unet_config"]["params"].pop("context_dim"), "context_dim"),
])
def test_configs_t2i_cannot_represent_are_refused_by_name(tmp_path, edit, named):
    doc = yaml.safe_load(PAPER_YAML)
    edit(doc["model"]["params"])
    with pytest.raises(T2IError, match=named):
        C.configs_from_yaml(write_yaml(tmp_path / "bad.yaml", doc))


# --- the key map -----------------------------------------------------------------------------------------------

def test_round_trip_reproduces_every_weight_and_output_bit_for_bit(tiny):
    ckpt, yaml_path, model, ae, _ = tiny
    got, got_ae, diffusion = C.read_compvis_ldm(ckpt, yaml_path)
    for a, b in ((model, got), (ae, got_ae)):
        ref = a.state_dict()
        assert ref.keys() == b.state_dict().keys()
        assert all(torch.equal(ref[k], v) for k, v in b.state_dict().items())
    g = torch.Generator().manual_seed(1)
    ids, mask = torch.randint(64, (2, 16), generator=g), torch.ones(2, 16, dtype=torch.bool)
    x, t, img = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3, 900]), torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x, t, ids, mask), got(x, t, ids, mask))
        assert torch.equal(ae.decode(x), got_ae.decode(x))
        assert all(torch.equal(p, q) for p, q in zip(ae.moments(img), got_ae.moments(img)))
    assert got_ae.cfg.scale_factor == 0.18215 and diffusion.timesteps == 1000


def test_mapped_tensors_land_in_the_right_modules(tiny):
    """Positions checked by hand against CompVis' layout, independently of the table."""
    ckpt, yaml_path, *_, sd = tiny
    model, ae, _ = C.read_compvis_ldm(ckpt, yaml_path)
    unet, vae, text = model.unet.net, ae.vae, model.text
    U, V, T = C.UNET, C.VAE, C.TEXT
    pairs = [
        (U + "input_blocks.0.0.weight", unet.conv_in.weight),
        (U + "input_blocks.1.0.in_layers.2.weight", unet.down_blocks[0].resnets[0].conv1.weight),
        (U + "input_blocks.2.0.op.weight", unet.down_blocks[0].downsamplers[0].conv.weight),
        (U + "input_blocks.3.0.skip_connection.weight", unet.down_blocks[1].resnets[0].conv_shortcut.weight),
        (U + "input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight",
         unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k.weight),
        (U + "input_blocks.3.1.transformer_blocks.0.ff.net.0.proj.weight",
         unet.down_blocks[1].attentions[0].transformer_blocks[0].ff.net[0].proj.weight),
        (U + "middle_block.2.emb_layers.1.weight", unet.mid_block.resnets[1].time_emb_proj.weight),
        (U + "middle_block.1.proj_in.weight", unet.mid_block.attentions[0].proj_in.weight),
        # output_blocks 0-1 are the level with attention (up_blocks.0): its upsampler follows the attention (.2);
        # output_blocks 2-3 are level 0 (no attention, no upsampler).
        (U + "output_blocks.1.2.conv.weight", unet.up_blocks[0].upsamplers[0].conv.weight),
        (U + "output_blocks.1.1.proj_out.weight", unet.up_blocks[0].attentions[1].proj_out.weight),
        (U + "output_blocks.3.0.out_layers.3.weight", unet.up_blocks[1].resnets[1].conv2.weight),
        (U + "time_embed.2.weight", unet.time_embedding.linear_2.weight),
        (U + "out.2.weight", unet.conv_out.weight),
        (V + "encoder.down.1.block.0.nin_shortcut.weight", vae.encoder.down_blocks[1].resnets[0].conv_shortcut.weight),
        (V + "decoder.up.0.block.1.conv1.weight", vae.decoder.up_blocks[1].resnets[1].conv1.weight),
        (V + "decoder.up.1.upsample.conv.weight", vae.decoder.up_blocks[0].upsamplers[0].conv.weight),
        (V + "decoder.mid.attn_1.norm.weight", vae.decoder.mid_block.attentions[0].group_norm.weight),
        (V + "post_quant_conv.weight", vae.post_quant_conv.weight),
        (T + "pos_emb.emb.weight", text.position),
        (T + "attn_layers.layers.3.1.net.0.0.weight", text.layers.layers[1].linear1.weight),
        (T + "attn_layers.layers.2.1.to_out.bias", text.layers.layers[1].self_attn.out_proj.bias),
    ]
    for name, param in pairs:
        assert torch.equal(sd[name], param), name
    q = vae.encoder.mid_block.attentions[0].to_q.weight              # 1x1 conv (C, C, 1, 1) -> Linear (C, C)
    assert sd[V + "encoder.mid.attn_1.q.weight"].shape == (*q.shape, 1, 1)
    assert torch.equal(sd[V + "encoder.mid.attn_1.q.weight"][:, :, 0, 0], q)
    inner = 8 * 64                                                    # to_k: the middle third of in_proj_weight
    assert torch.equal(sd[T + "attn_layers.layers.2.1.to_k.weight"],
                       text.layers.layers[1].self_attn.in_proj_weight[inner:2 * inner])


def xtransformers_embedder(sd: dict[str, torch.Tensor], ids: torch.Tensor, depth: int, heads: int = 8) -> torch.Tensor:
    """CompVis' BERTEmbedder forward (ldm/modules/x_transformer.py TransformerWrapper + Encoder, no mask), written
    directly from its checkpoint tensors."""
    w = {k[len(C.TEXT):]: v for k, v in sd.items() if k.startswith(C.TEXT)}
    ln = lambda x, p: nn.functional.layer_norm(x, x.shape[-1:], w[p + ".weight"], w[p + ".bias"])
    x = w["token_emb.weight"][ids] + w["pos_emb.emb.weight"][: ids.shape[1]]
    for i in range(depth):
        a, f = f"attn_layers.layers.{2 * i}", f"attn_layers.layers.{2 * i + 1}"
        h = ln(x, a + ".0")
        q, k, v = (nn.functional.linear(h, w[f"{a}.1.to_{n}.weight"]).unflatten(-1, (heads, -1)).transpose(1, 2)
                   for n in "qkv")                                    # (B, heads, T, 64)
        dots = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        out = (dots.softmax(-1) @ v).transpose(1, 2).flatten(2)
        x = x + nn.functional.linear(out, w[a + ".1.to_out.weight"], w[a + ".1.to_out.bias"])
        h = nn.functional.gelu(nn.functional.linear(ln(x, f + ".0"), w[f + ".1.net.0.0.weight"], w[f + ".1.net.0.0.bias"]))
        x = x + nn.functional.linear(h, w[f + ".1.net.2.weight"], w[f + ".1.net.2.bias"])
    return ln(x, "norm")


def test_text_encoder_computes_compvis_bert_embedder_with_pads_attended(tiny):
    ckpt, yaml_path, *_, sd = tiny
    model, _, _ = C.read_compvis_ldm(ckpt, yaml_path)
    ids = torch.tensor([[1, 5, 9, 2] + [0] * 12, [1, 7, 2] + [0] * 13])     # [CLS] ... [SEP] [PAD]...
    mask = ids != 0
    with torch.no_grad():
        ours = model.text(ids, mask)[0]
        torch.testing.assert_close(ours, xtransformers_embedder(sd, ids, depth=2), rtol=1e-5, atol=1e-5)


def test_text_blocks_match_torch_transformer_layers_and_load_their_snapshots():
    """The explicit blocks keep nn.TransformerEncoder's names and math (earlier snapshots, t2i's CLIP tower)."""
    from t2i.models.ldm.text_encoder import TextConfig, TextEncoder

    cfg = TextConfig(vocab_size=50, max_len=12, width=32, layers=2, heads=4)
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 128, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
    old = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    for p in old.parameters():
        nn.init.normal_(p, std=0.2)
    enc = TextEncoder(cfg).eval()
    enc.layers.load_state_dict(old.state_dict(), strict=True)
    x = torch.randn(3, 12, 32)
    mask = torch.arange(12)[None] < torch.tensor([[12], [5], [2]])
    with torch.no_grad():
        torch.testing.assert_close(enc.layers(x, mask[:, None, None, :]), old.train()(x, src_key_padding_mask=~mask),
                                   rtol=1e-5, atol=1e-5)


# --- errors ----------------------------------------------------------------------------------------------------

def test_a_missing_key_is_named(tiny, tmp_path):
    _, yaml_path, *_, sd = tiny
    sd = dict(sd)
    del sd[C.UNET + "output_blocks.1.2.conv.weight"]
    with pytest.raises(T2IError, match=r"missing model\.diffusion_model\.output_blocks\.1\.2\.conv\.weight"):
        C.read_compvis_ldm(save(tmp_path, sd), yaml_path)


def test_unexpected_keys_are_named_with_their_count(tiny, tmp_path):
    _, yaml_path, *_, sd = tiny
    extra = {f"{C.UNET}input_blocks.9.{i}.weight": torch.zeros(1) for i in range(10)}
    with pytest.raises(T2IError, match=r"unexpected model\.diffusion_model\.input_blocks\.9\.0\.weight.*\(10 in all\)"):
        C.read_compvis_ldm(save(tmp_path, dict(sd) | extra), yaml_path)


def test_a_wrong_shape_is_named_with_both_shapes(tiny, tmp_path):
    _, yaml_path, *_, sd = tiny
    key = C.TEXT + "attn_layers.layers.0.1.to_q.weight"
    sd = dict(sd) | {key: torch.zeros(256, 32)}
    with pytest.raises(T2IError, match=rf"shape \(checkpoint vs YAML\) {key} \(256, 32\) vs \(512, 32\)"):
        C.read_compvis_ldm(save(tmp_path, sd), yaml_path)


def test_a_yaml_of_another_size_fails_whole(tiny, tmp_path):
    ckpt, _, *_ = tiny
    doc = tiny_doc()
    doc["model"]["params"]["cond_stage_config"]["params"]["n_layer"] = 3
    with pytest.raises(T2IError, match=r"missing cond_stage_model\.transformer\.attn_layers\.layers\.4\.0\.bias"):
        C.read_compvis_ldm(ckpt, write_yaml(tmp_path / "other.yaml", doc))


def test_another_schedule_is_refused(tiny, tmp_path):
    ckpt, _, *_ = tiny
    doc = copy.deepcopy(tiny_doc())
    doc["model"]["params"]["linear_end"] = 0.02
    with pytest.raises(T2IError, match="alphas_cumprod.*linear 0.00085..0.02"):
        C.read_compvis_ldm(ckpt, write_yaml(tmp_path / "sched.yaml", doc))


class Callback:                                    # what old Lightning checkpoints pickle beside the weights
    pass


def test_a_checkpoint_that_pickles_classes_gets_the_conversion_command(tiny, tmp_path):
    _, yaml_path, *_, sd = tiny
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": sd, "callbacks": Callback()}, path)
    with pytest.raises(T2IError, match=r"pickles objects.*weights_only=False.*model-weights\.ckpt") as e:
        C.read_compvis_ldm(path, yaml_path)
    assert "\n" not in str(e.value)


def test_ema_weights_are_used_when_the_yaml_says_so(tiny, tmp_path):
    _, yaml_path, model, *_, sd = tiny
    ema = {"model_ema." + k[len("model."):].replace(".", ""): v + 1 for k, v in sd.items() if k.startswith("model.")}
    path = save(tmp_path, dict(sd) | ema | {"model_ema.decay": torch.tensor(0.9999)})
    raw, _, _ = C.read_compvis_ldm(path, yaml_path)                     # tiny.yaml: use_ema False
    assert torch.equal(raw.unet.net.conv_in.weight, model.unet.net.conv_in.weight)
    doc = tiny_doc()
    doc["model"]["params"]["use_ema"] = True
    averaged, _, _ = C.read_compvis_ldm(path, write_yaml(tmp_path / "ema.yaml", doc))
    assert torch.equal(averaged.unet.net.conv_in.weight, model.unet.net.conv_in.weight + 1)
    assert torch.equal(averaged.text.token.weight, model.text.token.weight)   # EMA covers the UNet only


def test_conversion_writes_a_snapshot_that_samples_as_the_loaded_pipeline(tiny, tmp_path):
    from t2i.models import load_pipeline

    ckpt, yaml_path, *_ = tiny
    words = ["red", "circle", "square", "blue", "a", "on", "the", "left"]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(specials + words + [f"##x{i}" for i in range(64 - 13)]) + "\n")
    direct = C.load_compvis_ldm(ckpt, yaml_path, vocab)
    from t2i.cli import main

    out = tmp_path / "snap"
    assert main(["convert", "compvis-ldm", str(ckpt), str(yaml_path), "--vocab", str(vocab), "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    converted = load_pipeline(out)
    prompts, seeds = ["a red circle on the left", "blue square"], [0, 1]
    options = {"sampler": "ddim", "steps": 3, "guidance": 2.0}
    assert torch.equal(direct(prompts, seeds, **options), converted(prompts, seeds, **options))
    ids, mask = direct.text([""])
    assert ids[0, :3].tolist() == [2, 3, 0] and mask[0, :3].tolist() == [True, True, False]   # [CLS] [SEP] [PAD]
    with pytest.raises(T2IError, match="65 tokens but the checkpoint's embedder has 64"):
        vocab.write_text(vocab.read_text() + "extra\n")
        C.load_compvis_ldm(ckpt, yaml_path, vocab)
