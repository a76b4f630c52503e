"""Benchmark: LAFITE on the shapes domain, language-free vs supervised, at the same image budget.

Runs the real CLI commands and prints one table: kimg, wall time, img/s, shapes_accuracy (seen and
held-out), oracle FID and CLIP score per model; then `t2i generate` cold-start latency on the
embedded default model and the eval throughput.

    python benchmarks/lafite_shapes.py --kimg 40 --workdir /tmp/t2i-bench
    python benchmarks/lafite_shapes.py --clip runs/00000-shapes64-clip-small   # reuse a CLIP

Nothing here is a test: the numbers depend on the machine and are reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

T2I = [sys.executable, "-m", "t2i"]


def sh(args: list[str], log: Path | None = None) -> float:
    """Run a command (output to `log`), fail loudly, return its wall time in seconds."""
    t0 = time.time()
    with open(log, "w") if log else subprocess.DEVNULL as out:
        r = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT)
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(args)}" + (f"; see {log}" if log else ""))
    return time.time() - t0


def newest_run(outdir: Path, suffix: str) -> Path:
    """The highest-numbered run directory ending in `suffix`."""
    return sorted(p for p in outdir.iterdir() if p.name.endswith(suffix))[-1]


def last_metric(run: Path, name: str) -> dict:
    """The last line of a run's metric-<name>.jsonl."""
    lines = (run / f"metric-{name}.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["results"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/t2i-bench", help="where data and runs go")
    p.add_argument("--n_images", type=int, default=10000, help="training images rendered")
    p.add_argument("--kimg", type=float, default=40, help="LAFITE training budget per model")
    p.add_argument("--clip", help="reuse this CLIP run instead of training one")
    p.add_argument("--clip_kimg", type=float, default=60, help="CLIP training budget")
    p.add_argument("--eval_n", type=int, default=500, help="images per split for the metrics")
    p.add_argument("--latency_runs", type=int, default=5, help="cold starts of t2i generate to time")
    args = p.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data, runs = work / "shapes64", work / "runs"
    if not (data / "dataset.json").exists():
        sh(T2I + ["data", "shapes", "--out", str(data), "--n", str(args.n_images), "--size", "64", "--seed", "1"])
    clip = args.clip
    if clip is None:
        sh(T2I + ["train", "clip", "--data", str(data), "--langs", "en,ko", "--kimg", str(args.clip_kimg),
                  "--outdir", str(runs)], work / "clip.log")
        clip = str(newest_run(runs, "clip-small"))
    rows = []
    for label, mixing in (("language-free", "1.0"), ("supervised", "0.0")):
        wall = sh(T2I + ["train", "lafite", "--data", str(data), "--clip", clip, "--preset", "tiny",
                         "--mixing_prob", mixing, "--kimg", str(args.kimg), "--outdir", str(runs)],
                  work / f"lafite-{label}.log")
        run = newest_run(runs, "lafite-tiny")
        t0 = time.time()
        sh(T2I + ["eval", str(run), "--data", str(data), "--metrics", "shapes_accuracy,fid,clip_score",
                  "--n", str(args.eval_n)], work / f"eval-{label}.log")
        eval_wall = time.time() - t0
        acc, fid, cs = (last_metric(run, m) for m in ("shapes_accuracy", "fid", "clip_score"))
        rows.append({"model": label, "kimg": args.kimg, "wall_s": wall, "img_per_s": args.kimg * 1000 / wall,
                     "seen_all": acc["seen_all"], "heldout_all": acc["heldout_all"], "seen_colour": acc["seen_colour"],
                     "oracle_fid": fid["fid"], "clip_score": cs["clip_score"], "oracle_self": acc["oracle_self_all"],
                     "eval_img_per_s": (4 * args.eval_n) / eval_wall})
    latencies = [sh(T2I + ["generate", "a large red circle above a small blue square", "--n", "1",
                           "--out", str(work / "latency.png")]) for _ in range(args.latency_runs)]
    print()
    print(f"{'model':<14} {'kimg':>6} {'wall s':>7} {'img/s':>6} {'seen all':>9} {'held-out all':>12} "
          f"{'seen colour':>11} {'oracle FID':>10} {'CLIP score':>10}")
    for r in rows:
        print(f"{r['model']:<14} {r['kimg']:>6.0f} {r['wall_s']:>7.0f} {r['img_per_s']:>6.1f} {r['seen_all']:>9.3f} "
              f"{r['heldout_all']:>12.3f} {r['seen_colour']:>11.3f} {r['oracle_fid']:>10.2f} {r['clip_score']:>10.2f}")
    lf, sup = rows
    ratio = lf["seen_all"] / max(sup["seen_all"], 1e-9)
    print(f"language-free / supervised accuracy (seen, all attributes): {ratio:.2f}")
    print(f"oracle self-accuracy on fresh renders: {rows[0]['oracle_self']:.4f}")
    print(f"t2i generate (1 prompt, default model, cold start): median {statistics.median(latencies):.2f}s "
          f"(min {min(latencies):.2f}s, {len(latencies)} runs)")
    print(f"eval throughput (generate + score, shapes_accuracy+fid+clip_score): "
          f"{statistics.mean(r['eval_img_per_s'] for r in rows):.0f} img/s")


if __name__ == "__main__":
    main()
