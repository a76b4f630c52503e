"""What every benchmark script shares: the `t2i` command of this interpreter, and a runner for it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

T2I = [sys.executable, "-m", "t2i"]


def sh(args: list, log: Path | None = None) -> float:
    """Run a command (output to `log`, else discarded), fail loudly, return its wall time in seconds."""
    args = [str(a) for a in args]
    t0 = time.time()
    with open(log if log else os.devnull, "w") as out:
        r = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT)
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(args)}" + (f"; see {log}" if log else ""))
    return time.time() - t0


def run_parallel(commands: dict[str, tuple[list, Path]], jobs: int, threads: int = 1) -> None:
    """Run labelled commands, `jobs` at a time with OMP_NUM_THREADS=threads each (one core a training on this
    2-core machine beats two threads each), output to each one's log; fail loudly naming the one that failed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    pending: dict[str, subprocess.Popen] = {}

    def wait_all() -> None:
        for label, proc in list(pending.items()):
            if proc.wait():
                raise SystemExit(f"{label} failed ({proc.returncode}); see {commands[label][1]}")
            del pending[label]

    for label, (cmd, log) in commands.items():
        pending[label] = subprocess.Popen([str(c) for c in cmd], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                          env=env)
        if len(pending) >= jobs:
            wait_all()
    wait_all()


def finished(outdir: Path, suffix: str) -> Path | None:
    """The newest run in outdir ending in suffix whose log has a `done:` line (or a BPE run), else None."""
    runs = sorted(outdir.glob(f"*{suffix}")) if outdir.is_dir() else []
    for run in reversed(runs):
        if (run / "tokenizer.json").exists() or re.search(r"^done: ", (run / "log.txt").read_text()
                                                          if (run / "log.txt").exists() else "", re.M):
            return run
    return None


def stage(name: str, outdir: Path, suffix: str, cmd: list, work: Path, walls: dict) -> Path:
    """Run one training stage unless a finished run of it exists; record its wall time."""
    run = finished(outdir, suffix)
    if run is None:
        walls[name] = sh(cmd + ["--outdir", outdir], work / f"{name}.log")
        run = finished(outdir, suffix)
    else:
        found = re.findall(r"^done: [\d.]+ kimg in ([\d.]+)s", (run / "log.txt").read_text(), re.M) \
            if (run / "log.txt").exists() else []
        walls[name] = sum(map(float, found))
    print(f"{name}: {run} ({walls[name]:.0f}s)")
    return run


def metric(run: Path, name: str) -> dict:
    """The last line of a run's metric-<name>.jsonl."""
    return json.loads((run / f"metric-{name}.jsonl").read_text().splitlines()[-1])["results"]
