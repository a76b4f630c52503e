"""Run directories: `runs/NNNNN-<data>-<family>-<preset>/` and everything a run writes into them.

A run describes itself: config.json (the resolved configuration), log.txt (every line printed),
stats.jsonl (one line per tick), TensorBoard events, reals.png, fakes-NNNNNN.png sample grids,
metric-<name>.jsonl and snapshot-NNNNNN/ directories.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import torch

from t2i.io import write_json_atomic
from t2i.training.snapshot import list_snapshots

RUN_RE = re.compile(r"^(\d{5})-(.+)$")


def next_run_dir(outdir: Path, desc: str) -> Path:
    """A new, not yet existing run directory `outdir/NNNNN-desc` with the next free number."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    ids = [int(m.group(1)) for p in outdir.iterdir() if (m := RUN_RE.match(p.name))]
    return outdir / f"{max(ids, default=-1) + 1:05d}-{desc}"


def latest_run_dir(outdir: Path, desc: str | None = None, family: str | None = None,
                   with_snapshot: bool = False) -> Path | None:
    """The highest-numbered run in `outdir` (optionally with this description, of this family according
    to its config.json, or holding a complete snapshot), or None."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        return None
    runs = sorted(
        ((int(m.group(1)), p) for p in outdir.iterdir()
         if (m := RUN_RE.match(p.name)) and p.is_dir() and (desc is None or m.group(2) == desc)
         and (family is None or run_family(p) == family)),
        reverse=True,
    )
    # A run killed before its first snapshot (config.json and log.txt only) is skipped when one is needed.
    return next((p for _, p in runs if not with_snapshot or list_snapshots(p)), None)


def run_family(run: Path) -> str | None:
    """The family a run directory or snapshot was written by, from its config.json alone (None if unreadable)."""
    try:
        return json.loads((run / "config.json").read_text(encoding="utf-8")).get("family")
    except (OSError, ValueError):
        return None


def grid_picks(n: int, count: int = 8) -> slice:
    """Every (n // count)-th of n items: what a sample grid shows, spread over the data (take the first `count`)."""
    return slice(None, None, max(1, n // count))


def grid_image(images: torch.Tensor, nrow: int | None = None):
    """uint8 images (N, 3, H, W) as one PIL image, `nrow` images per row."""
    from PIL import Image

    n, c, h, w = images.shape
    nrow = min(nrow or max(1, int(n ** 0.5 + 0.999)), n)
    rows = (n + nrow - 1) // nrow
    grid = torch.zeros(c, rows * h, nrow * w, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, r * h:(r + 1) * h, col * w:(col + 1) * w] = images[i]
    return Image.fromarray(grid.permute(1, 2, 0).cpu().numpy())


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None) -> None:
    """Save uint8 images (N, 3, H, W) as one PNG grid, `nrow` images per row."""
    grid_image(images, nrow).save(path)


class RunLog:
    """Writes a run's log.txt, stats.jsonl, metric-<name>.jsonl and TensorBoard events (main rank only)."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True, log_file: bool = True):
        self.dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        self._log = None
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)
            if log_file:
                self._log = open(self.dir / "log.txt", "a", encoding="utf-8")
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(str(self.dir))
                except ImportError:  # tensorboard is optional at run time
                    self._tb = None

    def print(self, msg: str) -> None:
        """Print a line and append it to log.txt."""
        if not self.enabled:
            return
        print(msg, flush=True)
        if self._log is not None:
            self._log.write(msg + "\n")
            self._log.flush()

    def write_config(self, config: dict[str, Any]) -> None:
        """Write the resolved configuration to config.json."""
        if self.enabled:
            write_json_atomic(self.dir / "config.json", config)

    def stats(self, kimg: float, values: dict[str, float]) -> None:
        """Append one tick's statistics to stats.jsonl and TensorBoard."""
        if not self.enabled:
            return
        with open(self.dir / "stats.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"kimg": round(kimg, 3), "timestamp": time.time(), **values}) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, global_step=int(kimg * 1000))
            self._tb.flush()

    def metric(self, name: str, kimg: float, snapshot: str, result: dict[str, Any]) -> None:
        """Append a metric result to metric-<name>.jsonl (and TensorBoard)."""
        if not self.enabled:
            return
        line = {"kimg": round(kimg, 3), "snapshot": snapshot, "results": result, "timestamp": time.time()}
        with open(self.dir / f"metric-{name}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        if self._tb is not None:
            for k, v in result.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"Metrics/{name}/{k}", v, global_step=int(kimg * 1000))

    def close(self) -> None:
        """Flush and close files."""
        if self.enabled:
            if self._log is not None:
                self._log.close()
            if self._tb is not None:
                self._tb.close()
