"""What `t2i serve` reads of the runs below `--runs`: their state, curves, metrics and sample grids.

Everything comes from the files a run writes (`t2i.training.run`): config.json, log.txt, stats.jsonl,
metric-<name>.jsonl, the PNG grids and snapshot-NNNNNN/ folders. Nothing is imported or unpickled, and every
path a request names is resolved below the runs folder first (`inside`): `..`, absolute paths and symlinks
leading out are refused.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from t2i.errors import T2IError
from t2i.training.run import RUN_RE
from t2i.training.snapshot import CONFIG_FILE, SNAPSHOT_RE, list_snapshots

# Sample pictures a run writes at its snapshots, with their kimg: fakes-NNNNNN.png (every family), AttnGAN's
# stages-/attention-NNNNNN.png.
GRID_RE = re.compile(r"^(fakes|stages|attention)-(\d{6,})\.png$")
MAX_POINTS = 400     # a curve is thinned to about this many points (a long run's stats.jsonl has thousands of ticks)
LOG_TAIL = 20        # lines of log.txt in the run view


def inside(root: Path, rel: str) -> Path:
    """`root / rel`, resolved, if it lies below root; T2IError (path traversal) otherwise."""
    root = root.resolve()
    if not isinstance(rel, str) or "\x00" in rel or Path(rel).is_absolute():
        raise T2IError(f"path {rel!r} must be relative to the runs folder")
    path = (root / rel).resolve()
    if path != root and not path.is_relative_to(root):
        raise T2IError(f"path {rel!r} leads outside the runs folder; only files below it are served")
    return path


def read_json(path: Path) -> dict | None:
    """A JSON object file, or None when missing or unreadable (a run being written)."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def read_jsonl(path: Path) -> list[dict]:
    """The complete lines of a .jsonl file (a half-written last line is skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def find_runs(root: Path) -> list[Path]:
    """Run folders (`NNNNN-desc/` with a config.json) at most two levels below root, sorted by path."""
    root = root.resolve()
    found = []
    for config in sorted(root.glob(CONFIG_FILE)) + sorted(root.glob(f"*/{CONFIG_FILE}")) + sorted(
            root.glob(f"*/*/{CONFIG_FILE}")):
        run = config.parent
        if RUN_RE.match(run.name) and run.resolve().is_relative_to(root):
            found.append(run)
    return sorted(set(found))


def snapshots(run: Path) -> list[tuple[int, Path]]:
    """(kimg x 1000, folder) of a run's complete snapshots, oldest first, read only."""
    return [(int(SNAPSHOT_RE.match(p.name).group(1)), p) for p in list_snapshots(run, recover=False)]


def run_state(run: Path, stats: list[dict], now: float | None = None) -> tuple[str, str]:
    """(state, detail) of a run, from its log.txt and stats.jsonl.

    The last line that starts or ends training decides: `done:` is finished, `failed:` failed (with the error),
    `stopped:` stopped (interrupted; `--resume latest` goes on). A run still training has written a tick lately:
    within three of its own tick times, and at least ten minutes. Past that it was killed (SIGKILL, a lost
    machine), which no line records: stopped.
    """
    try:
        lines = (run / "log.txt").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    last = next((line for line in reversed(lines) if line.startswith(("done:", "failed:", "stopped:", "training "))),
                "")
    if last.startswith("done:"):
        return "finished", last
    if last.startswith("failed:"):
        return "failed", last[len("failed:"):].strip()
    if last.startswith("stopped:"):
        return "stopped", last[len("stopped:"):].strip()
    now = time.time() if now is None else now
    files = [p for p in (run / "log.txt", run / "stats.jsonl") if p.is_file()]
    latest = max((p.stat().st_mtime for p in files), default=0.0)
    recent = stats[-4:]
    tick_s = [b["timestamp"] - a["timestamp"] for a, b in zip(recent, recent[1:])
              if isinstance(a.get("timestamp"), (int, float)) and isinstance(b.get("timestamp"), (int, float))]
    patience = max(600.0, 3 * max(tick_s, default=0.0))
    if now - latest <= patience:
        return "running", f"last written {now - latest:.0f} s ago"
    return "stopped", f"nothing written for {(now - latest) / 60:.0f} min and no end recorded (killed?)"


def headline(metrics: dict[str, list[dict]]) -> dict[str, float]:
    """The latest numeric results of each metric, named `metric/key` (what the runs table shows)."""
    out = {}
    for name, rows in metrics.items():
        results = rows[-1].get("results", {}) if rows else {}
        for k, v in results.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{name}/{k}"] = v
    return out


def read_metrics(run: Path) -> dict[str, list[dict]]:
    """metric name -> its metric-<name>.jsonl lines."""
    return {p.name[len("metric-"):-len(".jsonl")]: read_jsonl(p) for p in sorted(run.glob("metric-*.jsonl"))}


def run_summary(root: Path, run: Path) -> dict:
    """One row of the runs table."""
    config = read_json(run / CONFIG_FILE) or {}
    stats = read_jsonl(run / "stats.jsonl")
    state, detail = run_state(run, stats)
    cfg = config.get("config", {}) if isinstance(config.get("config"), dict) else {}
    loop = config.get("loop", {}) if isinstance(config.get("loop"), dict) else {}
    return {"path": run.resolve().relative_to(root.resolve()).as_posix(), "name": run.name,
            "family": config.get("family", "?"), "data": cfg.get("data") or cfg.get("model") or "",
            "preset": cfg.get("preset", ""), "kimg": stats[-1].get("kimg", 0) if stats else 0,
            "target_kimg": loop.get("kimg"), "state": state, "detail": detail,
            "metrics": headline(read_metrics(run)), "snapshots": len(snapshots(run))}


def list_runs(root: Path) -> list[dict]:
    """Every run below root, newest first by modification time."""
    runs = find_runs(root)
    runs.sort(key=lambda r: max((p.stat().st_mtime for p in (r / "log.txt", r / CONFIG_FILE) if p.exists()),
                                default=0.0), reverse=True)
    return [run_summary(root, r) for r in runs]


def thin(rows: list[dict], limit: int = MAX_POINTS) -> list[dict]:
    """Every k-th row so at most about `limit` remain, the last always kept."""
    if len(rows) <= limit:
        return rows
    step = -(-len(rows) // limit)
    return rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else [])


def curves(stats: list[dict]) -> dict[str, list[list[float]]]:
    """stats.jsonl as one [[kimg, value], ...] series per statistic (timing and memory included)."""
    out: dict[str, list[list[float]]] = {}
    for row in thin(stats):
        for k, v in row.items():
            if k not in ("kimg", "timestamp") and isinstance(v, (int, float)) and v == v:   # (NaN is dropped)
                out.setdefault(k, []).append([row["kimg"], v])
    return out


def metric_curves(metrics: dict[str, list[dict]]) -> dict[str, list[list[float]]]:
    """metric-<name>.jsonl as [[kimg, value], ...] series named `name/key`."""
    out: dict[str, list[list[float]]] = {}
    for name, rows in metrics.items():
        for row in rows:
            for k, v in row.get("results", {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out.setdefault(f"{name}/{k}", []).append([row.get("kimg", 0), v])
    return out


def run_detail(root: Path, rel: str) -> dict:
    """Everything the run view shows of one run: its row, curves, metric curves, grids and log tail."""
    run = inside(root, rel)
    if not RUN_RE.match(run.name) or not (run / CONFIG_FILE).is_file():
        raise T2IError(f"{rel!r} is not a run folder (NNNNN-name/ with a {CONFIG_FILE}); pick one from the runs table")
    grids: dict[str, list[dict]] = {}
    for p in sorted(run.iterdir()):
        if m := GRID_RE.match(p.name):
            grids.setdefault(m.group(1), []).append(
                {"kimg": int(m.group(2)) / 1000, "path": p.relative_to(root.resolve()).as_posix()})
    stats = read_jsonl(run / "stats.jsonl")
    metrics = read_metrics(run)
    try:
        log = (run / "log.txt").read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL:]
    except OSError:
        log = []
    return {**run_summary(root, run), "curves": curves(stats), "metric_curves": metric_curves(metrics),
            "grids": grids, "reals": (run / "reals.png").relative_to(root.resolve()).as_posix()
            if (run / "reals.png").is_file() else None, "log": log, "config": read_json(run / CONFIG_FILE)}
