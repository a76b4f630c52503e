"""From `t2i train <family> ...` to a running loop: resolve the config, pick the run directory,
restore a snapshot, start the shared loop.

The resolved configuration is layered: the family's defaults (and its preset's), then the config of
the run being resumed, then the options given on the command line. `--resume` continues a run
exactly (same directory, optimizers, counters) when the options are unchanged apart from how long to
train; with changed options (e.g. `--subset 885 --g_lr 0.001`) it is a fine-tune: a new run whose
weights start from the snapshot, with fresh optimizers and counters. `--resume latest` takes the newest
run of the family that has a snapshot (one killed before its first snapshot is passed over), and starts
a new run when none has one, so an auto-resume script can pass it on every start.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from t2i.errors import T2IError
from t2i.training.loop import LoopConfig

# Family name -> module with CONFIG (a dataclass type), PRESETS, add_args(parser), build(cfg, loop, d, log),
# describe(cfg) and, optionally, evaluate(name, snapshot_path, cfg).
TRAINABLE = {
    "aligner": "t2i.concepts.aligner",
    "attngan": "t2i.models.attngan.trainer",
    "autoencoder": "t2i.models.first_stage.autoencoder_trainer",
    "clip": "t2i.clip.trainer",
    "damsm": "t2i.models.attngan.damsm_trainer",
    "dalle": "t2i.models.dalle.trainer",
    "invert": "t2i.concepts.invert",   # its own command, `t2i invert`
    "lafite": "t2i.models.lafite.trainer",
    "ldm": "t2i.models.ldm.trainer",
    "oracle": "t2i.metrics.oracle_trainer",
    "vqgan": "t2i.models.first_stage.vqgan_trainer",
}

# Options that may change on `--resume` without turning it into a fine-tune (loop options, and `workers` of
# the families that stream shards: their batches do not depend on it).
CONTINUATION_KEYS = {"kimg", "snap", "keep", "metrics", "tick_kimg", "device", "workers"}


def family_module(name: str):
    """The trainer module of a family, by name."""
    if name not in TRAINABLE:
        raise T2IError(f"unknown family {name!r}; choose from {sorted(TRAINABLE)}")
    return importlib.import_module(TRAINABLE[name])


def _loop_default_text(name: str, mod) -> str:
    """"default X" for a loop option, as the family (and each of its presets) resolves it."""
    base = {**dataclasses.asdict(LoopConfig()), **getattr(mod, "LOOP_DEFAULTS", {})}
    per_preset = {p: d[name] for p, d in getattr(mod, "PRESET_LOOP_DEFAULTS", {}).items() if name in d}
    if per_preset:
        return "default by preset: " + ", ".join(f"{p} {v}" for p, v in per_preset.items())
    return f"default {base[name]}"


def add_loop_args(p: argparse.ArgumentParser, mod=None) -> None:
    """The shared loop's options; defaults are suppressed so only given options override. With the
    family's trainer module `mod`, the help shows that family's defaults."""
    S = argparse.SUPPRESS
    d = (lambda name: _loop_default_text(name, mod)) if mod else (lambda name: f"default {getattr(LoopConfig(), name)}")
    g = p.add_argument_group("training loop")
    g.add_argument("--kimg", type=float, default=S, help=f"train until this many thousand images ({d('kimg')})")
    g.add_argument("--batch", type=int, default=S, help=f"total batch size over all processes ({d('batch')})")
    g.add_argument("--accum", type=int, default=S, help="split each batch into N micro-batches (gradient accumulation)")
    g.add_argument("--tick_kimg", type=float, default=S, help=f"progress/stats every N kimg ({d('tick_kimg')})")
    g.add_argument("--snap", type=int, default=S, help=f"snapshot every N ticks, 0 = only at the end ({d('snap')})")
    g.add_argument("--keep", type=int, default=S, help="keep only the newest N snapshots (default: all)")
    g.add_argument("--seed", type=int, default=S, help="random seed (default 0)")
    g.add_argument("--precision", choices=["fp32", "bf16", "auto"], default=S,
                   help="bf16 autocast (fast on CUDA and on CPUs with AMX or AVX512-BF16, slower than fp32 on other "
                        "CPUs), fp32, or auto: bf16 where it is fast, else fp32 (default fp32)")
    g.add_argument("--ema_kimg", type=float, default=S, help=f"EMA half-life in kimg ({d('ema_kimg')})")
    g.add_argument("--ema_rampup", type=float, default=S, help=f"EMA ramp-up ratio, 0 = off ({d('ema_rampup')})")
    g.add_argument("--grad_clip", type=float, default=S, help="clip gradient norm per phase (0 = off)")
    g.add_argument("--device", default=S, help="auto | cpu | cuda (default auto)")
    g.add_argument("--metrics", type=lambda s: [m for m in s.split(",") if m], default=S,
                   help="comma-separated metrics evaluated at every snapshot")
    r = p.add_argument_group("run")
    r.add_argument("--outdir", default="runs", help="parent directory of run directories (default runs)")
    r.add_argument("--resume", default=None, metavar="PATH|latest",
                   help="continue from a snapshot or run directory ('latest' = the newest run of this family in "
                        "--outdir that has a snapshot, else a new run); with changed options it becomes a "
                        "fine-tune in a new run")
    r.add_argument("--dry-run", dest="dry_run", action="store_true", help="print the resolved config and exit")


def _split_explicit(args: argparse.Namespace, config_cls) -> tuple[dict, dict]:
    loop_fields = {f.name for f in dataclasses.fields(LoopConfig)}
    fam_fields = {f.name for f in dataclasses.fields(config_cls)}
    loop, fam = {}, {}
    for k, v in vars(args).items():
        if k in loop_fields:
            loop[k] = v
        elif k in fam_fields:
            fam[k] = v
    return loop, fam


def _resume_source(spec: str, outdir: Path, family: str) -> Path | None:
    """The snapshot `--resume SPEC` starts from; None for 'latest' when no run of the family has one yet
    (what an auto-resume script sees on its first start, or after a kill before the first snapshot)."""
    from t2i.training.run import latest_run_dir
    from t2i.training.snapshot import MODEL_FILE, list_snapshots, resolve_snapshot

    if spec == "latest":
        run = latest_run_dir(outdir, family=family, with_snapshot=True)  # the newest run of this family with one
        return resolve_snapshot(run) if run is not None else None
    p = Path(spec)
    if p.is_dir() and not (p / MODEL_FILE).is_file() and not list_snapshots(p):
        raise T2IError(f"--resume {spec}: {str(p)!r} holds no snapshot yet (a run stopped before its first one?); "
                       "give a run or snapshot directory that has one, or --resume latest to take the newest run "
                       "that has one (or start a new run)")
    return resolve_snapshot(p)


def resume_note(spec: str | None, snapshot: Path | None, continuing: bool, family: str, outdir: Path) -> str | None:
    """The line that says what `--resume` did: which snapshot it resumes or fine-tunes from and, for
    'latest', which run it picked or that none has a snapshot, so a new run starts."""
    if not spec:
        return None
    if spec != "latest":
        return ("resuming" if continuing else "fine-tuning from") + f" {snapshot}"
    if snapshot is None:
        return f"--resume latest: no {family} run in {str(outdir)!r} has a snapshot yet; starting a new run"
    if continuing:
        return f"--resume latest: resuming {snapshot.parent} from {snapshot.name}"
    return f"--resume latest: fine-tuning from {snapshot} in a new run (the options differ from that run's)"


def resolve(family: str, args: argparse.Namespace) -> tuple[dict[str, Any], Path | None]:
    """The resolved {"family", "loop", "config"} dict and the snapshot to start from (or None)."""
    mod = family_module(family)
    loop_given, fam_given = _split_explicit(args, mod.CONFIG)
    base_fam = dataclasses.asdict(mod.CONFIG())
    base_loop = dataclasses.asdict(LoopConfig())
    base_loop.update(getattr(mod, "LOOP_DEFAULTS", {}))
    snapshot = _resume_source(args.resume, Path(args.outdir), family) if args.resume else None
    if snapshot is not None:
        meta = json.loads((snapshot / "config.json").read_text())
        if meta.get("family") != family:
            raise T2IError(f"--resume {args.resume}: {snapshot} is a {meta.get('family')!r} snapshot, "
                           f"not {family!r}; give a `t2i train {family}` run or snapshot")
        base_fam.update(meta.get("config", {}))
        base_loop.update(meta.get("loop", {}))
    elif "preset" in fam_given or "preset" in base_fam:
        preset = fam_given.get("preset", base_fam.get("preset"))
        base_loop.update(getattr(mod, "PRESET_LOOP_DEFAULTS", {}).get(preset, {}))
    base_fam.update(fam_given)
    base_loop.update(loop_given)
    try:
        fam_cfg = mod.CONFIG(**base_fam)
        loop_cfg = LoopConfig(**base_loop)
    except TypeError as e:
        raise T2IError(f"configuration does not fit {family}: {e}") from None
    if hasattr(mod, "validate"):
        mod.validate(fam_cfg)
    return {"family": family, "loop": dataclasses.asdict(loop_cfg), "config": dataclasses.asdict(fam_cfg)}, snapshot


def _same_value(old: Any, new: Any) -> bool:
    """Equal, or two spellings of one existing path (`data/x` vs `/work/data/x/`)."""
    if old == new:
        return True
    if isinstance(old, str) and isinstance(new, str) and old and new and Path(old).exists() and Path(new).exists():
        return Path(old).resolve() == Path(new).resolve()
    return False


def is_continuation(resolved: dict, snapshot: Path, defaults: dict | None = None) -> bool:
    """True when only continuation options differ from the snapshot's run (exact resume). An option newer
    than that run (missing from its config) counts as unchanged when it has its default, from `defaults`."""
    meta = json.loads((snapshot / "config.json").read_text())
    old_cfg, new_cfg = {**(defaults or {}), **meta.get("config", {})}, resolved["config"]
    keys = (old_cfg.keys() | new_cfg.keys()) - CONTINUATION_KEYS
    if not all(k in old_cfg and k in new_cfg and _same_value(old_cfg[k], new_cfg[k]) for k in keys):
        return False
    old, new = meta.get("loop", {}), resolved["loop"]
    return all(old.get(k) == v for k, v in new.items() if k not in CONTINUATION_KEYS)


def load_modules(family_obj, snap, continuing: bool, log) -> None:
    """Load every module of the family from the snapshot. A fine-tune may start from a sampling-only export
    (`export_snapshot`: the EMA weights, no discriminator): a trained module it lacks starts from its EMA copy,
    any other (a discriminator) from fresh weights, each said in the log. An exact resume needs them all."""
    have = {key.split(".", 1)[0] for key in snap.tensors}
    ema_of = {source: ema for ema, source in getattr(family_obj, "ema", {}).items()}
    for name, module in family_obj.modules.items():
        if name in have or continuing:
            module.load_state_dict(snap.state_dict(name))
        elif ema_of.get(name) in have:
            module.load_state_dict(snap.state_dict(ema_of[name]))
            log(f"{name}: not in {snap.path}; starting from its {ema_of[name]}")
        else:
            log(f"{name}: not in {snap.path} (a sampling-only export); starting from fresh weights")


def snapshot_evaluator(family: str, mod, fam_cfg, device):
    """`evaluate(metric, snapshot) -> dict` for the loop's --metrics: the family's own metrics (VQGAN PSNR,
    CLIP retrieval, oracle accuracy) where its trainer defines them, else, for a text-to-image family, the
    pipeline metrics of `t2i eval` on the training data."""
    from t2i.models import PIPELINES

    if hasattr(mod, "evaluate"):
        return lambda name, path: mod.evaluate(name, path, fam_cfg, device)
    if family in PIPELINES:
        from t2i.evaluate import evaluate_metric

        return lambda name, path: evaluate_metric(name, path, data=fam_cfg.data, device=device)
    return None


def run_training(family: str, args: argparse.Namespace) -> int:
    """Entry of `t2i train <family>`: resolve, then train (or print with --dry-run)."""
    resolved, snapshot = resolve(family, args)
    mod = family_module(family)
    continuing = snapshot is not None and is_continuation(resolved, snapshot, dataclasses.asdict(mod.CONFIG()))
    note = resume_note(args.resume, snapshot, continuing, family, Path(args.outdir))
    if args.dry_run:
        if note:
            print(note, file=sys.stderr)  # stdout stays one JSON document
        mode = "new run" if snapshot is None else ("exact resume" if continuing else "fine-tune")
        print(json.dumps({**resolved, "start": mode, "from": str(snapshot) if snapshot else None}, indent=2))
        return 0
    import torch

    from t2i.training import distributed
    from t2i.training.loop import train
    from t2i.training.run import RunLog, next_run_dir
    from t2i.training.snapshot import list_snapshots, load_snapshot, load_training_state

    d = distributed.setup(resolved["loop"]["device"])
    try:
        fam_cfg = mod.CONFIG(**resolved["config"])
        loop_cfg = LoopConfig(**resolved["loop"])
        run_dir = snapshot.parent if continuing else next_run_dir(Path(args.outdir), mod.describe(fam_cfg))
        if d.world > 1:  # every rank must agree on the directory rank 0 picked
            import torch.distributed as tdist

            box = [str(run_dir)]
            tdist.broadcast_object_list(box, src=0)
            run_dir = Path(box[0])
        log = RunLog(run_dir, enabled=d.main, tensorboard=False)
        if note:
            log.print(note)
        try:
            snap = load_snapshot(snapshot, family=family) if snapshot is not None else None
            torch.manual_seed(loop_cfg.seed)  # initial weights follow --seed, not the process's RNG history
            family_obj = mod.build(fam_cfg, loop_cfg, d, log.print, init=snap)
            state = None
            if snap is not None:
                load_modules(family_obj, snap, continuing, log.print)
                if continuing:
                    state = load_training_state(snapshot)
        except T2IError:  # bad data or options: leave no empty run directory behind
            log.close()
            if d.main and not continuing and not list_snapshots(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        # As the family resolved it: options that follow the data (a resolution of 0) hold the actual value.
        log.write_config({**resolved, "config": dataclasses.asdict(fam_cfg), "run_dir": str(run_dir),
                          "world": d.world, "from": str(snapshot) if snapshot else None})
        log.close()
        evaluate = snapshot_evaluator(family, mod, fam_cfg, d.device)
        train(family_obj, loop_cfg, run_dir, d, resume_state=state, evaluate=evaluate)
        if d.main:
            print(f"run directory: {run_dir}")
    finally:
        distributed.teardown()
    return 0
