"""Learned concept embeddings on disk, and `--embeds` applying them to a pipeline.

The file is Hugging Face's textual-inversion layout: `learned_embeds.safetensors` holding {placeholder: (n, width)}.
Beside it, `learned_embeds.json` names the family, the base model and its fingerprint. An embedding is only
meaningful in the token space it was learned in, so one learned on another base model is refused, with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from t2i.errors import T2IError

EMBEDS_FILE = "learned_embeds.safetensors"
EMBEDS_CONFIG = "learned_embeds.json"
ADAPTER_FILE = "adapter.safetensors"   # `t2i invert --adapter`: beside the embedding, named in its config


def write_embeds(folder: Path, placeholder: str, rows: torch.Tensor, config: dict, adapter: nn.Module | None = None
                 ) -> Path:
    """Write the embedding, its adapter if any, and their config into `folder` (each file atomically); returns the
    embedding's path."""
    from safetensors.torch import save_file

    from t2i.io import atomic_path, write_json_atomic

    path = Path(folder) / EMBEDS_FILE
    with atomic_path(path) as tmp:
        save_file({placeholder: rows.detach().float().cpu().contiguous()}, str(tmp))
    if adapter is not None:
        with atomic_path(path.with_name(ADAPTER_FILE)) as tmp:
            save_file({k: v.detach().float().cpu().contiguous() for k, v in adapter.state_dict().items()}, str(tmp))
    write_json_atomic(path.with_name(EMBEDS_CONFIG), {**config, "placeholder": placeholder, "vectors": len(rows)})
    return path


def read_embeds(spec: str | Path) -> tuple[str, torch.Tensor, dict]:
    """(placeholder, rows (n, width), config) of an embedding file, or of the `t2i invert` run folder holding one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(spec)
    if path.is_dir():
        path = path / EMBEDS_FILE
    if not path.is_file():
        raise T2IError(f"--embeds {spec}: no {EMBEDS_FILE} there; give the file `t2i invert` wrote or its run folder")
    config_path = path.with_name(EMBEDS_CONFIG)
    if not config_path.is_file():
        raise T2IError(f"--embeds {spec}: {config_path.name} is missing beside it; t2i needs it to check the "
                       "embedding was learned on this model (re-run `t2i invert`)")
    try:
        tensors = load_file(path)
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (SafetensorError, OSError, ValueError) as e:
        raise T2IError(f"--embeds {spec}: cannot be read ({e}); the file is damaged") from None
    if len(tensors) != 1:
        raise T2IError(f"--embeds {spec}: holds {len(tensors)} tensors; a textual-inversion file holds one, "
                       "{placeholder: (n, width)}")
    (placeholder, rows), = tensors.items()
    return placeholder, rows.reshape(-1, rows.shape[-1]), config


def apply_embeds(pipe, specs: list[str]) -> list[str]:
    """Add each embedding's concept to `pipe` (its tokenizer and token table, and its adapter if it has one);
    returns the placeholders. Every file is checked before the pipeline changes: one learned on another base model
    or family, or a second adapter, is a T2IError that says which."""
    from t2i.concepts.textside import text_side

    if not specs:
        return []
    side = text_side(pipe)
    loaded = [(spec, *read_embeds(spec)) for spec in specs]
    for spec, _, _, config in loaded:
        if config.get("family") != pipe.family or config.get("fingerprint") != side.fingerprint():
            raise T2IError(f"--embeds {spec}: learned on {config.get('family')} model {config.get('base_model')!r} "
                           f"(fingerprint {config.get('fingerprint')}), but this model is {pipe.family} "
                           f"{side.fingerprint()}; an embedding only works on the model it was learned on: run "
                           "`t2i invert --model` with this model")
    adapted = [spec for spec, _, _, config in loaded if "adapter" in config]
    if len(adapted) > 1:   # each adapter was trained alone over the encoder's output
        raise T2IError(f"--embeds {adapted[0]} and {adapted[1]} both bring a text adapter; one model reads one "
                       "adapter: give one of them, or embeddings learned without --adapter")
    names = [placeholder for _, placeholder, _, _ in loaded]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise T2IError(f"--embeds: two embeddings use the placeholder {twice!r}; one word, one concept")
    for spec, placeholder, rows, config in loaded:
        side.add_concept(placeholder, nn.Parameter(rows, requires_grad=False))
        if "adapter" in config:
            side.adapt(load_adapter(Path(spec), config["adapter"]).to(side.table().weight.device))
    return names


def load_adapter(spec: Path, config: dict) -> nn.Module:
    """The frozen text adapter saved beside an embedding."""
    from safetensors.torch import load_file

    from t2i.concepts.adapter import AdapterConfig, TextAdapter

    path = (spec if spec.is_dir() else spec.parent) / ADAPTER_FILE
    if not path.is_file():
        raise T2IError(f"--embeds {spec}: its config names an adapter, but {path} is missing; copy it beside the "
                       "embedding (or re-run `t2i invert --adapter 1`)")
    adapter = TextAdapter(AdapterConfig(**config))
    adapter.load_state_dict(load_file(path))
    return adapter.eval().requires_grad_(False)
