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


def run_parallel(commands: dict[str, tuple[list, Path]], jobs: int, threads: int | None = 1) -> dict[str, float]:
    """Run labelled commands, up to `jobs` at a time with OMP_NUM_THREADS=threads each (None: inherited; one core a
    training on this 2-core machine beats two threads each), output to each one's log; fail loudly naming the one
    that failed (stopping the others). Returns each command's wall time in seconds."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    queue, running, walls = list(commands.items()), {}, {}
    try:
        while queue or running:
            while queue and len(running) < jobs:
                label, (cmd, log) = queue.pop(0)
                running[label] = (subprocess.Popen([str(c) for c in cmd], stdout=open(log, "w"),
                                                   stderr=subprocess.STDOUT, env=env), time.time())
            for label, (proc, t0) in list(running.items()):
                if proc.poll() is not None:
                    if proc.returncode:
                        raise SystemExit(f"{label} failed ({proc.returncode}); see {commands[label][1]}")
                    walls[label] = time.time() - t0
                    del running[label]
            time.sleep(0.2)
    finally:
        for proc, _ in running.values():
            proc.kill()
    return walls


def finished(outdir: Path, suffix: str) -> Path | None:
    """The newest run in outdir ending in suffix whose log has a `done:` line (or a BPE run), else None."""
    runs = sorted(outdir.glob(f"*{suffix}")) if outdir.is_dir() else []
    for run in reversed(runs):
        if (run / "tokenizer.json").exists() or re.search(r"^done: ", (run / "log.txt").read_text()
                                                          if (run / "log.txt").exists() else "", re.M):
            return run
    return None


def stages(specs: dict[str, tuple[Path, str, list]], work: Path, walls: dict, threads: int | None = None) -> list[Path]:
    """Run training stages {name: (outdir, run suffix, command)} side by side with `threads` each (None: inherited),
    unless a finished run of one exists; record each one's wall time (a reused run's: its training time); their runs."""
    todo = {name: (cmd + ["--outdir", outdir], work / f"{name}.log")
            for name, (outdir, suffix, cmd) in specs.items() if finished(outdir, suffix) is None}
    walls.update(run_parallel(todo, len(todo), threads) if todo else {})
    runs = []
    for name, (outdir, suffix, _) in specs.items():
        runs.append(run := finished(outdir, suffix))
        if name not in walls:
            found = re.findall(r"^done: [\d.]+ kimg in ([\d.]+)s", (run / "log.txt").read_text(), re.M) \
                if (run / "log.txt").exists() else []
            walls[name] = sum(map(float, found))
        print(f"{name}: {run} ({walls[name]:.0f}s)")
    return runs


def stage(name: str, outdir: Path, suffix: str, cmd: list, work: Path, walls: dict) -> Path:
    """Run one training stage (see `stages`)."""
    return stages({name: (outdir, suffix, cmd)}, work, walls)[0]


def metric_seconds(run: Path) -> float:
    """Seconds a run spent evaluating its --metrics at snapshots (the `metric NAME at K kimg (Ns)` lines of its
    log): evaluation inside a training stage's wall time."""
    log = (run / "log.txt").read_text() if (run / "log.txt").exists() else ""
    return sum(map(float, re.findall(r"^metric \S+ at [\d.]+ kimg \(([\d.]+)s\)", log, re.M)))


def metric(run: Path, name: str) -> dict:
    """The last line of a run's metric-<name>.jsonl."""
    return json.loads((run / f"metric-{name}.jsonl").read_text().splitlines()[-1])["results"]
