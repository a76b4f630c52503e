"""Reading other projects' files: their YAML configs and PyTorch Lightning checkpoints (taming-transformers'
VQGAN, CompVis' latent diffusion). One place for the rules every such loader keeps: nothing is unpickled
(`torch.load(weights_only=True)`, or safetensors), a checkpoint that pickles classes is refused with the
command that extracts its weights, and a missing or damaged file is a one-line error naming it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from t2i.errors import T2IError


def read_yaml(path: str | Path, what: str, example: str) -> dict:
    """The parsed YAML mapping at path; `what` names it in errors ("taming config"), `example` says which file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise T2IError(f"{what} {str(p)!r} does not exist; give the model's YAML (e.g. {example})")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise T2IError(f"{p} is not valid YAML ({e})") from None
    return doc if isinstance(doc, dict) else {}


def read_state_dict(path: str | Path, what: str, give: str, convert_hint: str) -> dict[str, torch.Tensor]:
    """The `state_dict` (or the bare dict) of tensors in a checkpoint: a .safetensors file, or a torch file read
    with weights_only (memory-mapped where its format allows: a 5.7 GB model is not read twice). `what` names the
    file in errors, `give` says what to pass instead, `convert_hint` how to extract pickled weights."""
    p = Path(path)
    if not p.is_file():
        raise T2IError(f"{what} {str(p)!r} does not exist; give {give}")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(p)
        except (SafetensorError, OSError, ValueError) as e:
            raise T2IError(f"{p} cannot be read ({e}); the file is truncated or damaged") from None
    try:
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            ckpt = torch.load(p, map_location="cpu", weights_only=True)          # pre-1.6 (non-zip) format
    except pickle.UnpicklingError:
        raise T2IError(f"{p} pickles objects besides tensors (PyTorch Lightning checkpoints may store callback "
                       f"classes), which t2i does not unpickle; {convert_hint}") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise T2IError(f"{p} cannot be read ({type(e).__name__}: {e}); the file is truncated or damaged") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise T2IError(f"{p} has no 'state_dict' of tensors; give {give}")
    return state
