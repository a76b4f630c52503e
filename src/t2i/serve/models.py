"""The models `t2i serve` offers: the embedded default, every run and snapshot of a text-to-image family below
`--runs`, and what can be loaded onto them (textual-inversion embeddings, aligners, rerank CLIPs).

The catalog reads config.json files only; weights are loaded when a request first uses a model, and the few most
recently used pipelines stay in memory (`PipelineCache`).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import re
import threading
from collections import OrderedDict
from pathlib import Path

from t2i.errors import T2IError
from t2i.serve.runs import find_runs, inside, read_json, snapshots

DEFAULT_ID = "default"
HANGUL = re.compile("[\uac00-\ud7a3]")


def _pipeline_class(family: str):
    from t2i.models import PIPELINES

    module, cls = PIPELINES[family].split(":")
    return getattr(importlib.import_module(module), cls)


@functools.cache
def _sampling_help() -> dict[str, str]:
    """Each sampling option's help, as `t2i generate --help` gives it (one text for the CLI and the page)."""
    from t2i.cli.sampling import add_sampling_args

    p = argparse.ArgumentParser()
    add_sampling_args(p)
    return {a.dest: (a.help or "").replace("%%", "%") for a in p._actions}


# Bounds of each option a request may set: a web request must not ask for 10^6 sampler steps.
BOUNDS = {"truncation": (0.0, 2.0), "guidance": (0.0, 30.0), "top_k": (0, 65536), "top_p": (0.01, 1.0),
          "temperature": (0.05, 5.0), "candidates": (1, 16), "steps": (1, 250), "eta": (0.0, 1.0)}
CHOICES = {"sampler": ("ddim", "plms", "dpm++"), "precision": ("fp32", "bf16")}


def option_specs(defaults: dict) -> list[dict]:
    """The form fields of a family's sampling options: name, kind, default, bounds or choices, help."""
    helps = _sampling_help()
    specs = []
    for name, default in defaults.items():
        spec = {"name": name, "default": default, "help": helps.get(name, "")}
        if name in CHOICES:
            spec |= {"kind": "choice", "choices": list(CHOICES[name])}
        else:
            lo, hi = BOUNDS[name]
            spec |= {"kind": "int" if isinstance(default, int) else "float", "min": lo, "max": hi}
        specs.append(spec)
    return specs


def check_option(name: str, value, default):
    """The option's value, converted to its default's type and checked against its bounds; T2IError otherwise."""
    if name in CHOICES:
        if value not in CHOICES[name]:
            raise T2IError(f"option {name} = {value!r} must be one of {', '.join(CHOICES[name])}")
        return value
    kind = int if isinstance(default, int) and not isinstance(default, bool) else float
    try:
        if isinstance(value, bool) or (kind is int and float(value) != int(float(value))):
            raise ValueError
        value = kind(float(value))
    except (TypeError, ValueError):
        raise T2IError(f"option {name} = {value!r} must be {'an integer' if kind is int else 'a number'}") from None
    lo, hi = BOUNDS[name]
    if not lo <= value <= hi:
        raise T2IError(f"option {name} = {value} is out of range; give a value from {lo} to {hi}")
    return value


@functools.lru_cache(maxsize=64)
def _has_hangul(tokenizer_json: str) -> bool:
    """Whether a tokenizer's vocabulary decodes to Hangul (cached: every snapshot of a run holds the same one)."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_str(tokenizer_json)
    except Exception:   # (tokenizers raises its own exception type for a spec it cannot read)
        return False
    return HANGUL.search("".join(tok.decode([i]) for i in range(tok.get_vocab_size()))) is not None


class Catalog:
    """What is on offer below the runs folder; rebuilt on every listing (runs appear while the server is up)."""

    def __init__(self, root: Path | None):
        self.root = root.resolve() if root is not None else None

    def _rel(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    def models(self) -> list[dict]:
        """The model picker's entries: the default, then per run its latest snapshot and every snapshot."""
        from t2i.models import DEFAULT_MODEL, PIPELINES

        out = []
        if (DEFAULT_MODEL / "config.json").is_file():
            out.append(self._entry(DEFAULT_ID, "embedded default (LAFITE, shapes)", DEFAULT_MODEL))
        for run in find_runs(self.root) if self.root else []:
            snaps = snapshots(run)
            config = read_json(run / "config.json") or {}
            if config.get("family") not in PIPELINES or not snaps:
                continue
            out.append(self._entry(self._rel(run), f"{run.name} (latest: {snaps[-1][0] / 1000:g} kimg)", snaps[-1][1]))
            for kimg, snap in reversed(snaps):
                out.append(self._entry(self._rel(snap), f"{run.name} @ {kimg / 1000:g} kimg", snap))
        return [m for m in out if m is not None]

    def _entry(self, model_id: str, label: str, snapshot: Path) -> dict | None:
        from t2i.models import PIPELINES

        meta = read_json(snapshot / "config.json") or {}
        family = meta.get("family")
        if family not in PIPELINES:
            return None
        return {"id": model_id, "label": label, "family": family,
                "options": option_specs(_pipeline_class(family).default_options(meta)),
                "korean": self._reads_korean(meta)}

    @staticmethod
    def _reads_korean(meta: dict) -> bool:
        """Whether a tokenizer stored in the model's config learned Korean words (the default model's CLIP, trained
        with --langs en,ko, did); otherwise Korean prompts need an aligner."""
        def tokenizers(obj):
            if isinstance(obj, dict):
                if isinstance(obj.get("model"), dict) and "added_tokens" in obj:
                    yield obj
                else:
                    for v in obj.values():
                        yield from tokenizers(v)

        return any(_has_hangul(json.dumps(spec, sort_keys=True)) for spec in tokenizers(meta))

    def extras(self) -> dict[str, list[dict]]:
        """Embeddings, aligners and CLIPs below the runs folder, each with the family it was made for."""
        from t2i.concepts.embeds import EMBEDS_CONFIG, EMBEDS_FILE

        embeds, aligners, clips = [], [], []
        if self.root is None:
            return {"embeds": embeds, "aligners": aligners, "clips": clips}
        for config in sorted(self.root.glob(f"**/{EMBEDS_CONFIG}")):
            info = read_json(config) or {}
            if (config.parent / EMBEDS_FILE).is_file() and config.resolve().is_relative_to(self.root):
                embeds.append({"id": self._rel(config.parent), "family": info.get("family"),
                               "placeholder": info.get("placeholder"), "base_model": info.get("base_model")})
        for run in find_runs(self.root):
            family = (read_json(run / "config.json") or {}).get("family")
            snaps = snapshots(run)
            if family == "aligner" and snaps:
                info = (read_json(snaps[-1][1] / "config.json") or {}).get("aligner", {})
                aligners.append({"id": self._rel(run), "family": info.get("family"), "lang": info.get("lang"),
                                 "base_model": info.get("base_model")})
            elif family == "clip" and snaps:
                clips.append({"id": self._rel(run)})
        return {"embeds": embeds, "aligners": aligners, "clips": clips}

    def path(self, model_id: str) -> Path:
        """The folder a model, embedding, aligner or CLIP id names (below the runs folder, or the default)."""
        from t2i.models import DEFAULT_MODEL

        if model_id == DEFAULT_ID:
            return DEFAULT_MODEL
        if self.root is None:
            raise T2IError(f"model {model_id!r}: the server was started without --runs; only 'default' is served")
        path = inside(self.root, model_id)
        if not path.exists():
            raise T2IError(f"{model_id!r} does not exist below the runs folder; reload the page to see what does")
        return path

    def family(self, model_id: str) -> tuple[str, dict]:
        """(family, default options) of a model id, from its config alone; T2IError for anything else."""
        from t2i.models import PIPELINES

        path = self.path(model_id)
        snaps = snapshots(path)
        meta = read_json((snaps[-1][1] if snaps else path) / "config.json") or {}
        family = meta.get("family")
        if family not in PIPELINES:
            raise T2IError(f"{model_id!r} is not a text-to-image model (family {family!r}); pick a run of "
                           f"{', '.join(sorted(PIPELINES))}")
        return family, _pipeline_class(family).default_options(meta)


class PipelineCache:
    """The most recently used pipelines, each with what was loaded onto it (embeddings, aligner, rerank CLIP)."""

    def __init__(self, catalog: Catalog, device: str = "cpu", size: int = 3):
        self.catalog, self.device, self.size = catalog, device, size
        self._pipes: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_id: str, embeds: tuple[str, ...] = (), aligner: str | None = None,
            rerank_clip: str | None = None, candidates: int = 1):
        """The pipeline of a model id with those extras, loaded on first use."""
        from t2i.concepts import equip
        from t2i.models import load_pipeline

        key = (model_id, embeds, aligner, rerank_clip)
        with self._lock:
            if key in self._pipes:
                self._pipes.move_to_end(key)
                pipe = self._pipes[key]
            else:
                pipe = load_pipeline(self.catalog.path(model_id), self.device)
                equip(pipe, self.device, [str(self.catalog.path(e)) for e in embeds],
                      str(self.catalog.path(aligner)) if aligner else None, "auto",
                      str(self.catalog.path(rerank_clip)) if rerank_clip else None, candidates)
                self._pipes[key] = pipe
                while len(self._pipes) > self.size:
                    self._pipes.popitem(last=False)
        if candidates > 1 and "candidates" in pipe.options and getattr(pipe, "clip", None) is None:
            raise T2IError(f"{candidates} candidates per image need a rerank CLIP; pick one under the options")
        return pipe
