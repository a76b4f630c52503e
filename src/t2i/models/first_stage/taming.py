"""Load a taming-transformers VQGAN (`VQModel`) from local files: its YAML config and checkpoint.

The YAML gives the architecture (`model.params.ddconfig`, `n_embed`, `embed_dim`); the checkpoint's
`state_dict` holds the weights under the same names as t2i's `VQGAN`, plus the training loss's
discriminator and LPIPS (`loss.*`), which are dropped. Everything else must match exactly: a codebook
of another size is never reshaped or partially loaded (an 8192-code codebook must be trained natively),
and missing or unexpected weights are listed in the error.

Nothing is unpickled: a `.safetensors` file is read with safetensors, anything else with
`torch.load(weights_only=True)`. Old PyTorch Lightning checkpoints that pickle callback classes are
refused with the one-line conversion that turns them into a safetensors file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from t2i.errors import T2IError
from t2i.models.foreign import read_state_dict, read_yaml
from t2i.models.first_stage.vqgan import VQGAN, VQGANConfig

DDCONFIG_KEYS = ("resolution", "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks", "attn_resolutions",
                 "z_channels")
CONVERT_HINT = (
    "extract the weights once, where you trust the file: python -c \"import torch, safetensors.torch as st; "
    "sd = torch.load('last.ckpt', map_location='cpu', weights_only=False)['state_dict']; "
    "st.save_file({k: v.contiguous() for k, v in sd.items() if not k.startswith('loss.')}, 'vqgan.safetensors')\" "
    "and pass vqgan.safetensors"
)


def read_taming_yaml(yaml_path: str | Path) -> dict:
    """The `model` section of a taming config YAML (checked to describe a plain VQModel)."""
    p = Path(yaml_path)
    doc = read_yaml(p, "taming config", "configs/model.yaml beside its checkpoint")
    model = doc.get("model") if isinstance(doc, dict) else None
    params = model.get("params") if isinstance(model, dict) else None
    if not isinstance(params, dict) or not isinstance(params.get("ddconfig"), dict):
        raise T2IError(f"{p} has no model.params.ddconfig; give the taming-transformers config of a VQGAN "
                       "(the YAML with model.target taming.models.vqgan.VQModel)")
    target = str(model.get("target", ""))
    if "Gumbel" in target:
        raise T2IError(f"{p} describes a {target} (Gumbel quantizer, another codebook layout); only "
                       "taming.models.vqgan.VQModel checkpoints load into t2i's VQGAN")
    return model


def config_from_taming(model: dict, yaml_path: str | Path = "the YAML") -> VQGANConfig:
    """A VQGANConfig from a taming YAML's `model` section."""
    params, dd = model["params"], model["params"]["ddconfig"]
    missing = [f"model.params.ddconfig.{k}" for k in DDCONFIG_KEYS if k not in dd]
    missing += [f"model.params.{k}" for k in ("n_embed", "embed_dim") if k not in params]
    if missing:
        raise T2IError(f"{yaml_path} lacks {', '.join(missing)}; give the full taming-transformers config "
                       "that belongs to the checkpoint")
    if dd.get("double_z", False):
        raise T2IError(f"{yaml_path}: ddconfig.double_z is true (a KL autoencoder's encoder); a VQGAN has "
                       "double_z: False")
    loss = (params.get("lossconfig") or {}).get("params") or {}
    return VQGANConfig(
        resolution=int(dd["resolution"]), in_channels=int(dd["in_channels"]), out_ch=int(dd["out_ch"]),
        ch=int(dd["ch"]), ch_mult=tuple(int(m) for m in dd["ch_mult"]), num_res_blocks=int(dd["num_res_blocks"]),
        attn_resolutions=tuple(int(r) for r in dd["attn_resolutions"]), z_channels=int(dd["z_channels"]),
        embed_dim=int(params["embed_dim"]), n_embed=int(params["n_embed"]), dropout=float(dd.get("dropout", 0.0)),
        norm_groups=32, disc_ndf=int(loss.get("disc_ndf", 64)), disc_layers=int(loss.get("disc_num_layers", 3)),
        disc_norm="batch",
    )


def read_checkpoint(ckpt_path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a taming checkpoint, without `loss.*`; never unpickles code."""
    state = read_state_dict(ckpt_path, "taming checkpoint", "a taming-transformers VQGAN checkpoint (.ckpt or "
                            ".safetensors)", CONVERT_HINT)
    return {k: v for k, v in state.items() if not k.startswith("loss.")}


def attention_levels(keys, prefix: str = "encoder.down.") -> set[int]:
    """Encoder levels that hold attention blocks, from state_dict keys."""
    return {int(k[len(prefix):].split(".")[0]) for k in keys if k.startswith(prefix) and ".attn." in k}


def check_fit(state: dict[str, torch.Tensor], cfg: VQGANConfig, model: VQGAN, ckpt: Path, yaml: Path) -> None:
    """Explain, with the values, every way the checkpoint disagrees with the YAML's architecture."""
    codes = state.get("quantize.embedding.weight")
    if codes is not None and codes.shape[0] != cfg.n_embed:
        article = "an" if str(cfg.n_embed).startswith("8") else "a"
        raise T2IError(f"{ckpt}: checkpoint has {codes.shape[0]} codes but the YAML says {cfg.n_embed}: {article} "
                       f"{cfg.n_embed} codebook must be trained natively (t2i train vqgan); a pretrained "
                       "codebook is never reshaped. Give the YAML that belongs to this checkpoint")
    if codes is not None and codes.shape[1] != cfg.embed_dim:
        raise T2IError(f"{ckpt}: checkpoint codes have {codes.shape[1]} dimensions but the YAML says "
                       f"embed_dim {cfg.embed_dim}; give the YAML that belongs to this checkpoint")
    have, want = attention_levels(state), attention_levels(model.state_dict())
    if have != want:
        implied = sorted(r * 2 ** lv for r in cfg.attn_resolutions for lv in have)
        raise T2IError(f"{ckpt}: checkpoint has attention at encoder level(s) {sorted(have)} but the YAML "
                       f"(resolution {cfg.resolution}, attn_resolutions {list(cfg.attn_resolutions)}) puts it at "
                       f"{sorted(want)}; the model was trained at resolution {implied or '?'}: fix "
                       f"ddconfig.resolution in {yaml}")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        def show(items):
            return ", ".join(items[:12]) + (f" ... ({len(items)} in all)" if len(items) > 12 else "")
        parts = [f"missing {show(missing)}" if missing else "", f"unexpected {show(unexpected)}" if unexpected else "",
                 f"shape (checkpoint vs YAML) {show(shapes)}" if shapes else ""]
        raise T2IError(f"{ckpt} does not fit the architecture in {yaml}: " + "; ".join(p for p in parts if p)
                       + ". Give the YAML that belongs to this checkpoint")


def load_taming_vqgan(ckpt_path: str | Path, yaml_path: str | Path, device="cpu") -> VQGAN:
    """A frozen t2i VQGAN holding a taming-transformers VQModel's weights (strict load)."""
    cfg = config_from_taming(read_taming_yaml(yaml_path), yaml_path)
    state = read_checkpoint(ckpt_path)
    model = VQGAN(cfg)
    # t2i's dead-code counter is not part of taming's layout: start it at zero.
    state.setdefault("quantize.unused_steps", torch.zeros(cfg.n_embed, dtype=torch.long))
    check_fit(state, cfg, model, Path(ckpt_path), Path(yaml_path))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval().requires_grad_(False)
