"""Model families. Each text-to-image family has a pipeline: `pipe(prompts, seeds) -> uint8 images`."""

from __future__ import annotations

import importlib
from pathlib import Path

from t2i.errors import T2IError

# family -> "module:Class" of its sampling pipeline
PIPELINES = {"attngan": "t2i.models.attngan.pipeline:AttnGanPipeline",
             "lafite": "t2i.models.lafite.pipeline:LafitePipeline",
             "dalle": "t2i.models.dalle.pipeline:DallePipeline",
             "ldm": "t2i.models.ldm.pipeline:LdmPipeline"}

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "default-lafite"


def load_pipeline(path: str | Path | None = None, device="cpu"):
    """The sampling pipeline of a run directory or snapshot (default: the embedded LAFITE model)."""
    from t2i.training.snapshot import load_snapshot

    if path is None:
        if not (DEFAULT_MODEL / "model.safetensors").is_file():
            raise T2IError(f"the embedded default model is missing from {DEFAULT_MODEL}; reinstall t2i "
                           "or pass --model RUN_OR_SNAPSHOT")
        path = DEFAULT_MODEL
    snap = load_snapshot(path)
    if snap.family not in PIPELINES:
        raise T2IError(f"{snap.path} is a {snap.family!r} snapshot, not a text-to-image model; "
                       f"give a run of one of: {', '.join(sorted(PIPELINES))}")
    module, cls = PIPELINES[snap.family].split(":")
    return getattr(importlib.import_module(module), cls).from_snapshot(snap, device)

