"""`torchrun -m t2i train lafite --data SHARDS` end to end on two processes (gloo, CPU): each rank streams
its own shards, the ranks end every run with identical weights, and `--resume latest` continues the run."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli
from safetensors.torch import load_file

from t2i.training.snapshot import list_snapshots, load_snapshot

# Runs on every rank: `t2i train ARGV...` through the real CLI, with the loop wrapped so that each rank
# writes every module's state_dict as it stands when the loop returns (only rank 0 writes snapshots).
WORKER = """
import os, sys
from pathlib import Path
from safetensors.torch import save_file
import t2i.training.loop as loop
from t2i.cli import main

out, tag, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
rank = int(os.environ["RANK"])
loop_train = loop.train

def train(family, cfg, run_dir, d, **kwargs):
    progress = loop_train(family, cfg, run_dir, d, **kwargs)
    save_file({f"{name}.{key}": value.detach().cpu().contiguous().clone()
               for name, module in family.modules.items() for key, value in module.state_dict().items()},
              out / f"{tag}-rank{d.rank}.safetensors")
    return progress

loop.train = train  # run_training imports it at call time
code = main(argv)
(out / f"{tag}-rank{rank}.code").write_text(str(code))
"""


@pytest.fixture(scope="module")
def shards(shapes16, tmp_path_factory):
    """shapes16 as 7 shards (6 x 10 + 4): the two ranks read 3 or 4 shards an epoch, unequal sample counts."""
    out = tmp_path_factory.mktemp("torchrun-stream") / "shards"
    cli("data", "shards", shapes16, out, "--shard_size", 10)
    return out


def torchrun(tmp_path: Path, tag: str, *argv) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Run `t2i ARGV...` under torchrun on two CPU processes; (its stdout, rank 0's and rank 1's weights)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "worker.py"), str(tmp_path), tag, *map(str, argv)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [(tmp_path / f"{tag}-rank{r}.code").read_text() for r in (0, 1)] == ["0", "0"]
    return proc.stdout, *(load_file(tmp_path / f"{tag}-rank{r}.safetensors") for r in (0, 1))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


@pytest.mark.slow
def test_lafite_streams_shards_on_two_processes_and_resumes_exactly(shards, clip_run, tmp_path, one_thread):
    (tmp_path / "worker.py").write_text(WORKER)
    out = tmp_path / "runs"
    # What an auto-resume script runs on every start: --resume latest, a new run the first time.
    common = ["train", "lafite", "--data", shards, "--clip", clip_run, "--preset", "test", "--resume", "latest",
              "--outdir", out]
    t0 = time.time()
    stdout, rank0, rank1 = torchrun(tmp_path, "first", *common, "--kimg", 0.016, "--workers", 1)
    (run,) = out.iterdir()
    started = f"--resume latest: no lafite run in {str(out)!r} has a snapshot yet; starting a new run"
    assert stdout.count(started) == 1                                         # rank 0 only
    assert_same(rank0, rank1)                                                 # broadcast start, averaged grads
    assert_same(rank0, load_snapshot(run / "snapshot-000016").tensors)
    config = json.loads((run / "config.json").read_text())
    assert config["world"] == 2 and config["from"] is None
    log = (run / "log.txt").read_text()
    assert log.count("64 images streamed from 7 shards") == 1 and log.count("on 2 process(es)") == 1

    # The second start resumes it exactly (another --workers is still a continuation), in the same directory.
    stdout, rank0, rank1 = torchrun(tmp_path, "resumed", *common, "--kimg", 0.032, "--workers", 0)
    assert [p.name for p in out.iterdir()] == [run.name]
    assert stdout.count(f"--resume latest: resuming {run} from snapshot-000016") == 1
    assert [p.name for p in list_snapshots(run)] == ["snapshot-000016", "snapshot-000032"]
    assert [json.loads(line)["kimg"] for line in (run / "stats.jsonl").read_text().splitlines()] == [0.016, 0.032]
    assert_same(rank0, rank1)
    resumed = load_snapshot(run / "snapshot-000032").tensors
    assert_same(rank0, resumed)

    # Bit for bit what one uninterrupted run gives, on both ranks: the streams were placed at step 2 of
    # their uneven epochs, and the ranks' own statistics (w_avg) are rank 0's at every snapshot.
    _, straight0, straight1 = torchrun(tmp_path, "straight", *common[:-1], tmp_path / "straight", "--kimg", 0.032)
    assert_same(rank0, straight0)
    assert_same(rank1, straight1)
    print(f"three torchrun starts: {time.time() - t0:.1f}s")
