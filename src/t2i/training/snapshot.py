"""Snapshots: safetensors weights + JSON config (+ a separate training-state file for resume).

A snapshot is a directory:
    snapshot-000120/
        model.safetensors     every module's state_dict, keys prefixed "<module>."
        config.json           {"family": ..., "kimg": ..., "config": {...}} -- enough to rebuild
        training_state.pt     optimizers, RNG states, counters (tensors and plain Python only)
It is written into a hidden temporary directory and renamed into place, so a process killed at any
moment leaves either the previous snapshots or a complete new one, never a half-written one.
Nothing is ever unpickled: weights come from safetensors, training state from
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from t2i.errors import T2IError
from t2i.io import atomic_path, recover_replaced

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.pt"
SNAPSHOT_RE = re.compile(r"^snapshot-(\d{6,})$")


@dataclass
class Snapshot:
    """A loaded snapshot: its directory, parsed config.json and flat tensor dict."""

    path: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def family(self) -> str:
        return self.meta["family"]

    def state_dict(self, module: str) -> dict[str, torch.Tensor]:
        """The state_dict of one saved module (keys without the "<module>." prefix)."""
        prefix = module + "."
        sd = {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        if not sd:
            have = sorted({k.split(".", 1)[0] for k in self.tensors})
            raise T2IError(f"snapshot {self.path} has no module {module!r} (it has {have})")
        return sd


def weights_identity(module: torch.nn.Module, kind: str) -> str:
    """`kind:<hash of the state_dict>`: a stable id of a module's weights, for cache keys."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode() + v.detach().cpu().float().numpy().tobytes())
    return f"{kind}:{h.hexdigest()[:16]}"


def save_snapshot(
    dest: Path,
    modules: dict[str, torch.nn.Module],
    meta: dict[str, Any],
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Atomically write a snapshot directory at `dest` (replacing an older one of that name)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest, directory=True) as tmp:
        tensors = {}
        for name, module in modules.items():
            for key, value in module.state_dict().items():
                # safetensors refuses shared storage; contiguous clones are cheap at our sizes.
                tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous().clone()
        save_file(tensors, tmp / MODEL_FILE, metadata={"family": str(meta.get("family", ""))})
        with open(tmp / CONFIG_FILE, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, ensure_ascii=False)
        if training_state is not None:
            torch.save(training_state, tmp / STATE_FILE)
    return dest


def list_snapshots(run_dir: Path, recover: bool = True) -> list[Path]:
    """Complete snapshot directories of a run, oldest first. recover=False only reads (a reader beside a training
    process, `t2i serve`, leaves a half-replaced snapshot to it)."""
    run_dir = Path(run_dir)
    for aside in run_dir.glob(".snapshot-*.old") if recover and run_dir.is_dir() else []:
        recover_replaced(aside.with_name(aside.name[1:-len(".old")]))  # a crash mid-overwrite
    found = []
    for p in run_dir.iterdir() if run_dir.is_dir() else []:
        m = SNAPSHOT_RE.match(p.name)
        if m and (p / MODEL_FILE).is_file() and (p / CONFIG_FILE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def resolve_snapshot(path: str | Path) -> Path:
    """Turn a run directory (-> its latest snapshot) or a snapshot directory into a snapshot path."""
    p = Path(path)
    recover_replaced(p)
    if not p.exists():
        raise T2IError(f"model path {str(p)!r} does not exist; give a run directory or a snapshot directory")
    if p.is_file():
        if p.name in (MODEL_FILE, CONFIG_FILE):
            p = p.parent
        else:
            raise T2IError(
                f"{str(p)!r} is a file; give the snapshot directory holding {MODEL_FILE} and {CONFIG_FILE}"
            )
    if (p / MODEL_FILE).is_file() and (p / CONFIG_FILE).is_file():
        return p
    snaps = list_snapshots(p)
    if not snaps:
        raise T2IError(f"{str(p)!r} holds no snapshot (no {MODEL_FILE} + {CONFIG_FILE}, no snapshot-NNNNNN/)")
    return snaps[-1]


def load_snapshot(path: str | Path, family: str | None = None) -> Snapshot:
    """Load a snapshot's config and weights; `family` checks it was written by that family."""
    p = resolve_snapshot(path)
    try:
        meta = json.loads((p / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise T2IError(f"{p / CONFIG_FILE} is not valid JSON ({e}); the snapshot is damaged") from None
    if not isinstance(meta, dict) or "family" not in meta:
        raise T2IError(f"{p / CONFIG_FILE} has no 'family' field; it is not a t2i snapshot")
    if family is not None and meta["family"] != family:
        raise T2IError(
            f"{str(p)!r} is a {meta['family']!r} snapshot, but a {family!r} model is needed here"
        )
    try:
        tensors = load_file(p / MODEL_FILE)
    except (SafetensorError, OSError, ValueError) as e:
        raise T2IError(f"{p / MODEL_FILE} cannot be read ({e}); the file is truncated or damaged") from None
    return Snapshot(path=p, meta=meta, tensors=tensors)


def load_training_state(snapshot_dir: Path) -> dict[str, Any]:
    """The resume state of a snapshot (optimizers, RNG, counters), loaded without unpickling code."""
    f = Path(snapshot_dir) / STATE_FILE
    if not f.is_file():
        raise T2IError(f"{snapshot_dir} has no {STATE_FILE}; it is an exported model and cannot be resumed")
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise T2IError(f"{f} cannot be read ({type(e).__name__}); the file is truncated or damaged, "
                       "or holds more than tensors and plain Python values") from None


def export_snapshot(src: str | Path, dest: str | Path, modules: list[str], dtype: str = "float16",
                    meta: dict | None = None) -> Path:
    """Write a sampling-only copy of a snapshot: the named modules only, stored in `dtype`, no training
    state (how the embedded default model is made small). Loading casts back to the model's dtype. `meta`
    entries are added to its config (e.g. {"sampling": {"truncation": 0.7}}: the copy's sampling defaults)."""
    snap = load_snapshot(src)
    keep = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v
            for k, v in snap.tensors.items() if k.split(".", 1)[0] in modules}
    with atomic_path(dest, directory=True) as tmp:
        save_file(keep, tmp / MODEL_FILE, metadata={"family": snap.family})
        (tmp / CONFIG_FILE).write_text(json.dumps({**snap.meta, **(meta or {}), "exported_from": str(snap.path)}, indent=2,
                                                  ensure_ascii=False))
    return Path(dest)
