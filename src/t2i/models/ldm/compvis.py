"""Load a CompVis latent-diffusion text2img checkpoint (`model.ckpt` + its YAML, e.g. the 1.4B text2img-large
of `configs/latent-diffusion/txt2img-1p4B-eval.yaml`) into t2i's modules, or convert it to a t2i snapshot.

The YAML gives the architecture: `model.params.unet_config.params` (openaimodel UNetModel with spatial
transformers), `first_stage_config.params.ddconfig` (KL autoencoder), `cond_stage_config.params` (BERTEmbedder:
n_embed, n_layer), and the schedule (linear_start, linear_end, timesteps, scale_factor). Configurations t2i
cannot represent (other conditioning, scale-shift norms, per-level head counts, ...) are refused by name.

The key map is one table built from t2i's own state_dict names (`key_map`): each t2i tensor comes from one
CompVis tensor (renamed), a 1x1 convolution squeezed to a Linear (the VAE's middle attention q/k/v/proj_out),
or three concatenated ones (the text encoder's to_q/to_k/to_v -> in_proj_weight). The same table names what a
checkpoint lacks or has in excess, in CompVis' names, and writes t2i weights back in CompVis' layout
(`to_compvis`). Renames (CompVis -> diffusers / t2i):
  UNet  input_blocks.0.0 -> conv_in; input_blocks.{1 + l (n + 1) + j}.{0: ResBlock, 1: SpatialTransformer} ->
        down_blocks.l.{resnets, attentions}.j; input_blocks.{(l + 1)(n + 1)}.0.op -> down_blocks.l.downsamplers.0.conv;
        middle_block.{0, 1, 2} -> mid_block.{resnets.0, attentions.0, resnets.1}; output_blocks.{i (n + 1) + j} ->
        up_blocks.i (level L - 1 - i), its upsampler at the last j after the attention if any; time_embed.{0, 2} ->
        time_embedding.linear_{1, 2}; out.{0, 2} -> conv_norm_out, conv_out. ResBlock in_layers.{0, 2},
        emb_layers.1, out_layers.{0, 3}, skip_connection -> norm1, conv1, time_emb_proj, norm2, conv2,
        conv_shortcut. Spatial transformers have the same inner names in both.
  VAE   encoder.down.l.block.j / .downsample -> encoder.down_blocks.l.resnets.j / .downsamplers.0;
        decoder.up.l -> decoder.up_blocks.(L - 1 - l); mid.block_{1, 2} / attn_1 -> mid_block.resnets.{0, 1} /
        attentions.0 (norm, q, k, v, proj_out -> group_norm, to_q, to_k, to_v, to_out.0); nin_shortcut ->
        conv_shortcut; norm_out -> conv_norm_out.
  Text  x-transformers TransformerWrapper: token_emb, pos_emb.emb -> token, position; attn_layers.layers.{2i}
        (attention) and .{2i + 1} (feed-forward), each [0: LayerNorm, 1: block] -> layers.layers.i norm1,
        self_attn, norm2, linear1 (net.0.0), linear2 (net.2); norm -> norm.
Dropped, as CompVis' own sampling ignores them: the DDPM schedule buffers (checked against the YAML's
schedule), `cond_stage_model.transformer.to_logits` (the unused LM head), `first_stage_model.loss.*`, and
`model_ema.*` when the YAML says use_ema: False (with use_ema: True the EMA weights are the UNet's, as in
CompVis' ema_scope). Everything else must match exactly; nothing is loaded partially.

Nothing is unpickled: `torch.load(weights_only=True)`; a checkpoint that pickles classes is refused with the
one-line conversion to a plain state dict.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from t2i.errors import T2IError
from t2i.models.foreign import read_state_dict, read_yaml
from t2i.models.first_stage.autoencoder_kl import KLAutoencoder, KLConfig
from t2i.models.ldm.diffusion import DiffusionConfig, alphas_cumprod
from t2i.models.ldm.model import LatentDiffusion, LdmConfig
from t2i.models.ldm.text_encoder import TextConfig
from t2i.models.ldm.unet import UNetConfig

UNET, VAE, TEXT = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "scale_factor")
UNUSED_PREFIXES = ("model_ema.", TEXT + "to_logits.", VAE + "loss.")   # see the module docstring
CONVERT_HINT = (
    "extract the weights once, where you trust the file: python -c \"import torch; "
    "sd = torch.load('model.ckpt', map_location='cpu', weights_only=False)['state_dict']; "
    "torch.save({'state_dict': {k: v.contiguous() for k, v in sd.items()}}, 'model-weights.ckpt')\" "
    "and pass model-weights.ckpt"
)


# --- the YAML -> t2i configs ---------------------------------------------------------------------------------

def read_compvis_yaml(yaml_path: str | Path) -> dict:
    """`model.params` of a CompVis LDM config YAML (checked to be a text-conditioned LatentDiffusion)."""
    p = Path(yaml_path)
    doc = read_yaml(p, "CompVis config", "configs/latent-diffusion/txt2img-1p4B-eval.yaml")
    params = (doc.get("model") or {}).get("params") if isinstance(doc, dict) else None
    need = ("unet_config", "first_stage_config", "cond_stage_config")
    if not isinstance(params, dict) or not all(isinstance(params.get(k), dict) for k in need):
        raise T2IError(f"{p} has no model.params.{{unet_config, first_stage_config, cond_stage_config}}; give the "
                       "CompVis latent-diffusion config of a text2img model (model.target ...ddpm.LatentDiffusion)")
    return params


def _get(d: dict, key: str, where: str, yaml_path) -> object:
    if key not in d:
        raise T2IError(f"{yaml_path} lacks {where}.{key}; give the full CompVis config that belongs to the checkpoint")
    return d[key]


def _refuse(yaml_path, what: str) -> None:
    raise T2IError(f"{yaml_path}: {what}; t2i's LDM cannot represent it (it loads CompVis text2img models of the "
                   "txt2img-1p4B-eval.yaml kind)")


# openaimodel UNetModel options t2i's UNet fixes: {name: (CompVis' default, the value t2i needs)}.
UNET_OPTIONS = {"use_spatial_transformer": (False, True), "transformer_depth": (1, 1),
                "use_scale_shift_norm": (False, False), "resblock_updown": (False, False),
                "conv_resample": (True, True), "dims": (2, 2), "num_classes": (None, None), "n_embed": (None, None),
                "num_head_channels": (-1, -1), "num_heads_upsample": (-1, -1)}


def unet_config(params: dict, yaml_path) -> UNetConfig:
    """UNetConfig of `unet_config.params` (openaimodel UNetModel with a spatial transformer per attention level)."""
    u, where = params["unet_config"].get("params") or {}, "model.params.unet_config.params"
    for key, (default, want) in UNET_OPTIONS.items():
        if u.get(key, default) != want:
            _refuse(yaml_path, f"{where}.{key} is {u.get(key, default)!r} (t2i needs {want!r})")
    if int(_get(u, "in_channels", where, yaml_path)) != int(_get(u, "out_channels", where, yaml_path)):
        _refuse(yaml_path, f"{where}: in_channels {u['in_channels']} != out_channels {u['out_channels']}")
    mc, mult = int(_get(u, "model_channels", where, yaml_path)), [int(m) for m in _get(u, "channel_mult", where, yaml_path)]
    res = {int(r) for r in _get(u, "attention_resolutions", where, yaml_path)}
    if not res <= {2 ** level for level in range(len(mult))}:
        _refuse(yaml_path, f"{where}.attention_resolutions {sorted(res)} name downsampling rates the UNet "
                           f"(channel_mult {mult}) does not have")
    if isinstance(u.get("num_res_blocks"), (list, tuple)):
        _refuse(yaml_path, f"{where}.num_res_blocks is a list (one count a level)")
    return UNetConfig(latent_channels=int(u["in_channels"]), sample_size=int(_get(u, "image_size", where, yaml_path)),
                      block_out_channels=tuple(mc * m for m in mult),
                      attention_levels=tuple(lv for lv in range(len(mult)) if 2 ** lv in res),
                      layers_per_block=int(_get(u, "num_res_blocks", where, yaml_path)),
                      heads=int(_get(u, "num_heads", where, yaml_path)),
                      context_dim=int(_get(u, "context_dim", where, yaml_path)), norm_groups=32)  # GroupNorm32


def kl_config(params: dict, yaml_path) -> KLConfig:
    """KLConfig of `first_stage_config` (ldm.models.autoencoder.AutoencoderKL); scale_factor from model.params."""
    first = params["first_stage_config"]
    where = "model.params.first_stage_config.params"
    if not str(first.get("target", "")).endswith("AutoencoderKL"):
        _refuse(yaml_path, f"the first stage is {first.get('target')!r}, not ldm.models.autoencoder.AutoencoderKL")
    fp = first.get("params") or {}
    dd = _get(fp, "ddconfig", where, yaml_path)
    where += ".ddconfig"
    if not dd.get("double_z", True) or dd.get("give_pre_end") or dd.get("tanh_out"):
        _refuse(yaml_path, f"{where} has double_z False, give_pre_end or tanh_out")
    if list(dd.get("attn_resolutions") or []):
        _refuse(yaml_path, f"{where}.attn_resolutions is {dd['attn_resolutions']} (t2i's KL autoencoder has "
                           "attention only in the middle blocks)")
    z = int(_get(dd, "z_channels", where, yaml_path))
    if int(_get(fp, "embed_dim", "model.params.first_stage_config.params", yaml_path)) != z:
        _refuse(yaml_path, f"embed_dim {fp['embed_dim']} != ddconfig.z_channels {z}")
    ch, mult = int(_get(dd, "ch", where, yaml_path)), [int(m) for m in _get(dd, "ch_mult", where, yaml_path)]
    return KLConfig(resolution=int(_get(dd, "resolution", where, yaml_path)),
                    in_channels=int(_get(dd, "in_channels", where, yaml_path)),
                    out_channels=int(_get(dd, "out_ch", where, yaml_path)),
                    block_out_channels=tuple(ch * m for m in mult),
                    layers_per_block=int(_get(dd, "num_res_blocks", where, yaml_path)), latent_channels=z,
                    norm_groups=32, mid_attention=True,
                    scale_factor=float(params.get("scale_factor", 1.0)))


def text_config(params: dict, yaml_path) -> TextConfig:
    """TextConfig of `cond_stage_config` (BERTEmbedder: x-transformers Encoder, 8 heads of 64, no qkv bias)."""
    cond, where = params["cond_stage_config"], "model.params.cond_stage_config.params"
    if not str(cond.get("target", "")).endswith("BERTEmbedder"):
        _refuse(yaml_path, f"the text encoder is {cond.get('target')!r}, not ldm.modules.encoders.modules.BERTEmbedder")
    c = cond.get("params") or {}
    if c.get("use_tokenizer", True) is not True:
        _refuse(yaml_path, f"{where}.use_tokenizer is False (t2i tokenises with bert-base-uncased's WordPiece)")
    return TextConfig(vocab_size=int(c.get("vocab_size", 30522)), max_len=int(c.get("max_seq_len", 77)),
                      width=int(_get(c, "n_embed", where, yaml_path)), layers=int(_get(c, "n_layer", where, yaml_path)),
                      heads=8, mlp_ratio=4, head_dim=64, qkv_bias=False, mask_padding=False)  # x-transformers' defaults


def configs_from_yaml(yaml_path: str | Path) -> tuple[LdmConfig, KLConfig, DiffusionConfig, bool]:
    """(LdmConfig, KLConfig, DiffusionConfig, use_ema) of a CompVis LDM text2img YAML; a T2IError for anything t2i
    cannot represent."""
    params = read_compvis_yaml(yaml_path)
    if params.get("conditioning_key", "crossattn") != "crossattn":
        _refuse(yaml_path, f"conditioning_key is {params['conditioning_key']!r} (t2i conditions by cross-attention)")
    if params.get("beta_schedule", "linear") != "linear" or params.get("given_betas") is not None:
        _refuse(yaml_path, f"beta_schedule {params.get('beta_schedule')!r} (t2i has CompVis' 'linear' schedule)")
    if params.get("parameterization", "eps") != "eps":
        _refuse(yaml_path, f"parameterization {params['parameterization']!r} (t2i samples eps-prediction models)")
    net = LdmConfig(unet_config(params, yaml_path), text_config(params, yaml_path))
    if net.unet.context_dim != net.text.width:
        _refuse(yaml_path, f"unet context_dim {net.unet.context_dim} != cond_stage n_embed {net.text.width}")
    kl = kl_config(params, yaml_path)
    if kl.latent_channels != net.unet.latent_channels or kl.latent_side != net.unet.sample_size:
        _refuse(yaml_path, f"the UNet reads {net.unet.latent_channels}x{net.unet.sample_size}x{net.unet.sample_size} "
                           f"latents but the first stage makes {kl.latent_channels}x{kl.latent_side}x{kl.latent_side}")
    diffusion = DiffusionConfig(beta_start=float(params.get("linear_start", 1e-4)),
                                beta_end=float(params.get("linear_end", 2e-2)),
                                timesteps=int(params.get("timesteps", 1000)), prediction="eps")
    return net, kl, diffusion, bool(params.get("use_ema", True))


# --- the key map ---------------------------------------------------------------------------------------------

RESNET_UNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _split(rest: str, table: dict[str, str]) -> str:
    """`rest` ("conv1.weight") with its module renamed by `table` ("in_layers.2.weight")."""
    module, param = rest.rsplit(".", 1)
    if module not in table:
        raise KeyError(rest)
    return f"{table[module]}.{param}"


def unet_name(key: str, cfg: UNetConfig) -> str:
    """The CompVis name (under model.diffusion_model.) of a diffusers UNet2DConditionModel key."""
    n, L = cfg.layers_per_block, len(cfg.block_out_channels)
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    module, param = key.rsplit(".", 1)
    if module in fixed:
        return f"{fixed[module]}.{param}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        lv, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + lv * (n + 1) + j
        return f"input_blocks.{index}.0.{_split(rest, RESNET_UNET)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (n + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        if m[1] == "attentions":
            return f"middle_block.1.{m[3]}"
        return f"middle_block.{2 * int(m[2])}.{_split(m[3], RESNET_UNET)}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = i * (n + 1) + j
        return f"output_blocks.{index}.0.{_split(rest, RESNET_UNET)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
        i = int(m[1])
        position = 2 if L - 1 - i in cfg.attention_levels else 1      # after the level's attention, if any
        return f"output_blocks.{i * (n + 1) + n}.{position}.conv.{m[2]}"
    raise KeyError(key)


def vae_name(key: str, cfg: KLConfig) -> tuple[str, str]:
    """(CompVis name under first_stage_model., kind) of a diffusers AutoencoderKL key; kind "squeeze" marks the
    middle attention's 1x1-conv weights that diffusers holds as Linear."""
    L = len(cfg.block_out_channels)
    if key.split(".")[0] in ("quant_conv", "post_quant_conv"):
        return key, "same"
    part, rest = key.split(".", 1)
    fixed = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}
    module, param = rest.rsplit(".", 1)
    if module in fixed:
        return f"{part}.{fixed[module]}.{param}", "same"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", rest):
        return f"{part}.mid.block_{int(m[1]) + 1}.{_split(m[2], VAE_RESNET)}", "same"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
        name = f"{part}.mid.attn_1.{_split(m[1], VAE_ATTN)}"
        return name, "squeeze" if name.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")) else "same"
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        lv = int(m[2]) if m[1] == "down" else L - 1 - int(m[2])
        return f"{part}.{m[1]}.{lv}.block.{m[3]}.{_split(m[4], VAE_RESNET)}", "same"
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(downsamplers|upsamplers)\.0\.conv\.(\w+)", rest):
        lv = int(m[2]) if m[1] == "down" else L - 1 - int(m[2])
        return f"{part}.{m[1]}.{lv}.{m[1]}sample.conv.{m[4]}", "same"
    raise KeyError(key)



def text_names(key: str) -> tuple[tuple[str, ...], str]:
    """(CompVis names under cond_stage_model.transformer., kind) of a t2i TextEncoder key; kind "cat" marks
    in_proj_weight, the concatenation of to_q, to_k, to_v."""
    fixed = {"token.weight": "token_emb.weight", "position": "pos_emb.emb.weight", "norm.weight": "norm.weight",
             "norm.bias": "norm.bias"}
    if key in fixed:
        return (fixed[key],), "same"
    m = re.fullmatch(r"layers\.layers\.(\d+)\.(.+)", key)
    if m is None:
        raise KeyError(key)
    attn, ff, rest = f"attn_layers.layers.{2 * int(m[1])}", f"attn_layers.layers.{2 * int(m[1]) + 1}", m[2]
    if rest == "self_attn.in_proj_weight":
        return tuple(f"{attn}.1.to_{x}.weight" for x in "qkv"), "cat"
    table = {"norm1": f"{attn}.0", "self_attn.out_proj": f"{attn}.1.to_out", "norm2": f"{ff}.0",
             "linear1": f"{ff}.1.net.0.0", "linear2": f"{ff}.1.net.2"}
    return (_split(rest, table),), "same"


def key_map(model: LatentDiffusion, autoencoder: KLAutoencoder) -> dict[str, tuple[tuple[str, ...], str]]:
    """{t2i key ("ldm.unet.net.conv_in.weight", "autoencoder.vae..."): (CompVis keys, kind)} for every tensor of
    the two modules; kind is same | squeeze | cat. Works on meta-device modules (names only)."""
    table = {}
    for key in model.state_dict():
        module, rest = key.split(".", 1)
        if module == "unet":
            table[f"ldm.{key}"] = ((UNET + unet_name(rest.removeprefix("net."), model.cfg.unet),), "same")
        else:
            names, kind = text_names(rest)
            table[f"ldm.{key}"] = (tuple(TEXT + n for n in names), kind)
    for key in autoencoder.state_dict():
        name, kind = vae_name(key.removeprefix("vae."), autoencoder.cfg)
        table[f"autoencoder.{key}"] = ((VAE + name,), kind)
    return table


def _to_t2i(tensors: list[torch.Tensor], kind: str) -> torch.Tensor:
    if kind == "cat":
        return torch.cat(tensors, 0)
    return tensors[0].flatten(1) if kind == "squeeze" else tensors[0]


def _compvis_shapes(shape: torch.Size, kind: str, n: int) -> list[tuple[int, ...]]:
    if kind == "cat":
        return [(shape[0] // n, *shape[1:])] * n
    return [(*shape, 1, 1)] if kind == "squeeze" else [tuple(shape)]


def to_compvis(state: dict[str, torch.Tensor], table: dict[str, tuple[tuple[str, ...], str]]) -> dict[str, torch.Tensor]:
    """t2i weights ({"ldm.*", "autoencoder.*"}) in CompVis' names and shapes (the inverse of the load)."""
    out = {}
    for key, (names, kind) in table.items():
        t = state[key]
        parts = t.chunk(len(names), 0) if kind == "cat" else [t[..., None, None] if kind == "squeeze" else t]
        out.update({n: p.clone() for n, p in zip(names, parts)})
    return out


# --- reading and loading -------------------------------------------------------------------------------------

def read_checkpoint(ckpt_path: str | Path) -> dict[str, torch.Tensor]:
    """The `state_dict` of a CompVis checkpoint; never unpickles code."""
    return read_state_dict(ckpt_path, "CompVis checkpoint", "the model.ckpt of a CompVis latent-diffusion text2img "
                           "model", CONVERT_HINT)


def _ema_weights(state: dict[str, torch.Tensor], ckpt: Path) -> dict[str, torch.Tensor]:
    """The UNet's weights replaced by LitEma's (`model_ema.<name without dots>`), as CompVis' ema_scope does."""
    unet = [k for k in state if k.startswith("model.")]
    missing = [k for k in unet if "model_ema." + k[len("model."):].replace(".", "") not in state]
    if missing:
        raise T2IError(f"{ckpt}: the YAML says use_ema: True but the checkpoint has no EMA of {_show(missing)}; "
                       "give the YAML with use_ema: False to load the raw weights")
    return state | {k: state["model_ema." + k[len("model."):].replace(".", "")] for k in unet}


def _show(items: list[str]) -> str:
    return ", ".join(items[:8]) + (f" ... ({len(items)} in all)" if len(items) > 8 else "")


def check_schedule(state: dict[str, torch.Tensor], diffusion: DiffusionConfig, ckpt: Path, yaml: Path) -> None:
    """The checkpoint's alphas_cumprod buffer (if any) is the YAML's schedule, else a T2IError."""
    if "alphas_cumprod" not in state:
        return
    have, want = state["alphas_cumprod"].double(), alphas_cumprod(diffusion)
    if have.shape != want.shape or not torch.allclose(have, want, rtol=1e-5, atol=1e-7):
        raise T2IError(f"{ckpt}: its alphas_cumprod ({len(have)} steps) is not the schedule of {yaml} (linear "
                       f"{diffusion.beta_start}..{diffusion.beta_end}, {diffusion.timesteps} steps); give the YAML "
                       "that belongs to this checkpoint")


def map_state(state: dict[str, torch.Tensor], table: dict, expected: dict[str, torch.Tensor], ckpt: Path,
              yaml: Path) -> dict[str, torch.Tensor]:
    """t2i weights from CompVis ones; a T2IError naming (in CompVis' names) every missing, unexpected or misshapen
    tensor, never a partial result."""
    wanted = {n for names, _ in table.values() for n in names}
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - wanted)
    shapes = []
    for key, (names, kind) in table.items():
        for n, shape in zip(names, _compvis_shapes(expected[key].shape, kind, len(names))):
            if n in state and tuple(state[n].shape) != shape:
                shapes.append(f"{n} {tuple(state[n].shape)} vs {shape}")
    if missing or unexpected or shapes:
        parts = [f"missing {_show(missing)}" if missing else "", f"unexpected {_show(unexpected)}" if unexpected else "",
                 f"shape (checkpoint vs YAML) {_show(shapes)}" if shapes else ""]
        raise T2IError(f"{ckpt} does not fit the architecture in {yaml}: " + "; ".join(p for p in parts if p)
                       + ". Give the YAML that belongs to this checkpoint")
    return {key: _to_t2i([state[n] for n in names], kind).float() for key, (names, kind) in table.items()}


def read_compvis_ldm(ckpt_path: str | Path, yaml_path: str | Path, device="cpu"
                     ) -> tuple[LatentDiffusion, KLAutoencoder, DiffusionConfig]:
    """(model, autoencoder, diffusion) holding a CompVis LDM text2img checkpoint's weights (float32, frozen, eval)."""
    ckpt, yaml = Path(ckpt_path), Path(yaml_path)
    net, kl, diffusion, use_ema = configs_from_yaml(yaml)
    state = read_checkpoint(ckpt)
    check_schedule(state, diffusion, ckpt, yaml)
    if "scale_factor" in state:                      # scale_by_std: the measured factor is a buffer, not in the YAML
        kl.scale_factor = float(state["scale_factor"])
    if use_ema and any(k.startswith("model_ema.") for k in state):
        state = _ema_weights(state, ckpt)
    state = {k: v for k, v in state.items() if k not in SCHEDULE_BUFFERS and not k.startswith(UNUSED_PREFIXES)}
    with torch.device("meta"):                       # names and shapes only; the weights come from the checkpoint
        model, autoencoder = LatentDiffusion(net), KLAutoencoder(kl)
    expected = {f"ldm.{k}": v for k, v in model.state_dict().items()}
    expected |= {f"autoencoder.{k}": v for k, v in autoencoder.state_dict().items()}
    mapped = map_state(state, key_map(model, autoencoder), expected, ckpt, yaml)
    model.load_state_dict({k[4:]: v for k, v in mapped.items() if k.startswith("ldm.")}, strict=True, assign=True)
    autoencoder.load_state_dict({k[12:]: v for k, v in mapped.items() if k.startswith("autoencoder.")},
                                strict=True, assign=True)
    for m in (model, autoencoder):
        if left := [n for n, t in [*m.named_parameters(), *m.named_buffers()] if t.is_meta]:
            raise RuntimeError(f"tensors left unloaded: {left[:8]}")   # a bug in the key map, not in the file
    return (model.to(device).eval().requires_grad_(False), autoencoder.to(device).eval().requires_grad_(False),
            diffusion)


def load_compvis_ldm(ckpt_path: str | Path, yaml_path: str | Path, vocab: str | Path, device="cpu"):
    """An `LdmPipeline` sampling a CompVis LDM text2img checkpoint; vocab = bert-base-uncased's vocab.txt (the
    BERTEmbedder's tokenizer, not stored in the checkpoint)."""
    from t2i.models.ldm.pipeline import LdmPipeline
    from t2i.models.ldm.text_encoder import LdmTokenizer

    model, autoencoder, diffusion = read_compvis_ldm(ckpt_path, yaml_path, device)
    tokenizer = LdmTokenizer.from_wordpiece(str(vocab))
    if tokenizer.vocab_size != model.cfg.text.vocab_size:
        raise T2IError(f"{vocab} holds {tokenizer.vocab_size} tokens but the checkpoint's embedder has "
                       f"{model.cfg.text.vocab_size}; give bert-base-uncased's vocab.txt")
    meta = {"family": "ldm", "source": {"compvis_ckpt": str(ckpt_path), "compvis_yaml": str(yaml_path)},
            "net": model.cfg.to_dict(), "diffusion": diffusion.to_dict(), "autoencoder": autoencoder.cfg.to_dict(),
            "tokenizer": tokenizer.to_meta()}
    return LdmPipeline(model, autoencoder, tokenizer, diffusion, meta)


def convert_compvis_ldm(ckpt_path: str | Path, yaml_path: str | Path, vocab: str | Path, out: str | Path) -> Path:
    """Write a t2i snapshot (model.safetensors + config.json: modules ldm_ema and autoencoder) that
    `t2i generate --model OUT` samples."""
    from t2i.training.snapshot import save_snapshot

    pipe = load_compvis_ldm(ckpt_path, yaml_path, vocab)
    return save_snapshot(Path(out), {"ldm_ema": pipe.model, "autoencoder": pipe.autoencoder}, pipe.meta)
