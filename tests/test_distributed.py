"""Two-process training with torchrun (gloo, CPU): gradients are averaged over ranks, ranks stay in
lockstep, and only rank 0 writes the run directory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loop_fakes import LinearFamily
from t2i.training.distributed import Dist
from t2i.training.loop import LoopConfig, train
from t2i.training.snapshot import list_snapshots, load_snapshot

TESTS = Path(__file__).resolve().parent
LOOP = dict(kimg=0.128, batch=32, tick_kimg=0.064, snap=0, ema_kimg=0.05, device="cpu")

# Runs on every rank: (1) the fake family with rank r training on the r-th half of each global
# batch, rank 1 starting from different weights (the loop must broadcast rank 0's); (2) the real
# `t2i train clip` command, which must pick one run directory for all ranks.
WORKER = f"""
import json, sys
from pathlib import Path
import torch
sys.path.insert(0, {str(TESTS)!r})
from loop_fakes import LinearFamily
from t2i.cli import main
from t2i.training import distributed
from t2i.training.loop import LoopConfig, train

out = Path(sys.argv[1])
d = distributed.setup("cpu")
fam = LinearFamily(noise=0.0, shared_batches=True)
if d.rank == 1:
    with torch.no_grad():
        fam.net.weight.add_(1.0)
train(fam, LoopConfig(**{LOOP!r}), out / "linear", d)
torch.save({{k: v for k, v in fam.net.state_dict().items()}}, out / f"rank{{d.rank}}.pt")
code = main(["train", "clip", "--data", sys.argv[2], "--preset", "tiny", "--kimg", "0.064", "--batch", "32",
             "--outdir", str(out / "runs")])
(out / f"rank{{d.rank}}.code").write_text(str(code))
# The CLI's teardown must free the process group (and its gloo threads) while Python is alive; one that
# outlives it can abort the process at exit (see distributed.setup).
tasks = Path("/proc/self/task")
names = [(t / "comm").read_text().strip() for t in tasks.iterdir()] if tasks.is_dir() else []
(out / f"rank{{d.rank}}.threads").write_text(json.dumps(names))
"""


@pytest.mark.slow
def test_two_process_training_averages_gradients(tmp_path, shapes16, one_thread):
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "worker.py"), str(tmp_path), str(shapes16)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "rank0.code").read_text() == (tmp_path / "rank1.code").read_text() == "0"
    for rank in (0, 1):
        threads = json.loads((tmp_path / f"rank{rank}.threads").read_text())
        assert not [t for t in threads if "gloo" in t], threads

    # Identical weights on both ranks (broadcast start + averaged gradients) ...
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # ... equal to one process on the whole batch (each rank's half-batch mean, averaged = the mean).
    single = LinearFamily(noise=0.0, shared_batches=True)
    train(single, LoopConfig(**LOOP), tmp_path / "single", Dist())
    for k, v in single.net.state_dict().items():
        assert torch.allclose(r0[k], v, rtol=1e-5, atol=1e-6), k
    assert not torch.allclose(r0["weight"], LinearFamily().net.weight.detach())

    # Only rank 0 wrote: one line per tick, one progress line per tick.
    linear = tmp_path / "linear"
    stats = [json.loads(line) for line in (linear / "stats.jsonl").read_text().splitlines()]
    assert [s["kimg"] for s in stats] == [0.064, 0.128]
    log = (linear / "log.txt").read_text()
    assert log.count("training linear to 0.128 kimg, batch 32 on 2 process(es)") == 1
    assert sum(line.startswith("tick ") for line in log.splitlines()) == 2
    assert [p.name for p in list_snapshots(linear)] == ["snapshot-000128"]

    # The CLI run: both ranks agreed on one directory, written once, recording world size 2.
    runs = tmp_path / "runs"
    (run,) = runs.iterdir()
    config = json.loads((run / "config.json").read_text())
    assert config["world"] == 2 and config["run_dir"] == str(run)
    assert len((run / "stats.jsonl").read_text().splitlines()) == 1
    assert (run / "log.txt").read_text().count("on 2 process(es)") == 1
    snap = load_snapshot(run, family="clip")
    assert snap.meta["kimg"] == 0.064
    assert all(torch.isfinite(v).all() for v in snap.tensors.values())
