"""Tests for `t2i data shards` and ShardStream: round trip, resumable writing, and the split over ranks."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli
from t2i.data import shards as shards_module
from t2i.data.dataset import DatasetWriter, ImageTextDataset
from t2i.data.shards import MANIFEST, ShardStream, assign_shards, shard_name, write_shards
from t2i.errors import T2IError


def make_dataset(path, n=10, seed=0):
    """n random 8x8 images with two captions each, Korean captions on even ones, attributes {"id": i}."""
    rng = np.random.default_rng(seed)
    with DatasetWriter(path, "tiny", (8, 8)) as w:
        for i in range(n):
            image = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
            w.add(image, [f"caption {i}", f"second {i}"], {"id": i, "tag": ["x", i]},
                  {"ko": [f"캡션 {i}"]} if i % 2 == 0 else None)
    return Path(path)


@pytest.fixture
def tiny(tmp_path):
    return make_dataset(tmp_path / "tiny")


def _members(tar_path):
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _ids(stream):
    return [attributes["id"] for _, _, attributes in stream]


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_round_trip_is_bit_identical(tmp_path, kind, capsys):
    ds = ImageTextDataset(make_dataset(tmp_path / ("tiny.zip" if kind == "zip" else "tiny")))
    out = tmp_path / "shards"
    cli("data", "shards", ds.path, out, "--shard_size", 4)
    assert "10 samples in 3 shards of up to 4 (3 written, 0 already complete)" in capsys.readouterr().out
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["fingerprint"] == ds.fingerprint() and manifest["samples"] == 10
    assert [(e["file"], e["samples"]) for e in manifest["shards"]] == [
        ("shard-000000.tar", 4), ("shard-000001.tar", 4), ("shard-000002.tar", 2)]
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST] + [shard_name(s) for s in range(3)])

    members = {}
    for s in range(3):
        members.update(_members(out / shard_name(s)))
    assert len(members) == 20
    for i, record in enumerate(ds.records):
        raw = (ds._zipfile().read(record["file"]) if ds.is_zip else (ds.path / record["file"]).read_bytes())
        assert members[f"{i:08d}.png"] == raw  # the dataset's PNG bytes, not re-encoded
        meta = json.loads(members[f"{i:08d}.json"])
        assert meta["captions"] == record["captions"] and meta["attributes"] == record["attributes"]
        assert meta.get("captions_ko") == record.get("captions_ko") and meta["index"] == i

    stream = ShardStream(out, shuffle=False)
    assert stream.num_samples() == 10
    for i, (image, captions, attributes) in enumerate(stream):
        item = ds[i]
        assert image.dtype == torch.uint8 and torch.equal(image, item["image"])
        assert captions == item["captions"] and attributes == item["attributes"]
    korean = ShardStream(out / MANIFEST, shuffle=False, caption_lang="ko")
    assert [c for _, c, _ in korean][:2] == [["캡션 0"], []]


def test_rerun_skips_complete_shards_and_repairs_damaged_ones(tmp_path, tiny, monkeypatch):
    out = tmp_path / "shards"
    first = write_shards(tiny, out, 4, progress=False)
    original = {s: (out / shard_name(s)).read_bytes() for s in range(3)}
    stamps = {s: (out / shard_name(s)).stat().st_mtime_ns for s in range(3)}

    again = write_shards(tiny, out, 4, progress=False)
    assert (again["written"], again["kept"]) == (0, 3) and again["shards"] == first["shards"]
    assert {s: (out / shard_name(s)).stat().st_mtime_ns for s in range(3)} == stamps

    path = out / shard_name(1)
    path.write_bytes(original[1][: len(original[1]) // 2])  # truncated, e.g. by a full disk
    with pytest.raises(T2IError, match="shard-000001.tar .*rewrite"):
        list(ShardStream(out, shuffle=False))
    (out / shard_name(2)).unlink()
    repaired = write_shards(tiny, out, 4, progress=False)
    assert (repaired["written"], repaired["kept"]) == (2, 1)
    assert {s: (out / shard_name(s)).read_bytes() for s in range(3)} == original  # rewritten bit for bit
    assert (out / shard_name(0)).stat().st_mtime_ns == stamps[0]

    # A crash after shard 0: a rerun keeps it (recorded in the progress log) and writes the others.
    crash_out = tmp_path / "crash"
    real = shards_module._write_shard

    def crash_after_first(dataset, image_bytes, start, stop, path):
        if start > 0:
            raise KeyboardInterrupt
        return real(dataset, image_bytes, start, stop, path)

    monkeypatch.setattr(shards_module, "_write_shard", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        write_shards(tiny, crash_out, 4, progress=False)
    assert not (crash_out / MANIFEST).exists() and (crash_out / shard_name(0)).is_file()
    monkeypatch.setattr(shards_module, "_write_shard", real)
    resumed = write_shards(tiny, crash_out, 4, progress=False)
    assert (resumed["written"], resumed["kept"]) == (2, 1)
    assert sorted(p.name for p in crash_out.iterdir()) == sorted([MANIFEST] + [shard_name(s) for s in range(3)])


def test_another_dataset_needs_overwrite_and_replaces_all_shards(tmp_path, tiny, cli_error):
    out = tmp_path / "shards"
    cli("data", "shards", tiny, out, "--shard_size", 2)
    other = make_dataset(tmp_path / "other", n=3, seed=1)
    assert "--overwrite" in cli_error("data", "shards", other, out, "--shard_size", 2)
    assert "--overwrite" in cli_error("data", "shards", tiny, out, "--shard_size", 3)
    cli("data", "shards", other, out, "--shard_size", 2, "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, shard_name(0), shard_name(1)])
    assert sorted(_ids(ShardStream(out))) == [0, 1, 2]
    assert "at least 1" in cli_error("data", "shards", tiny, tmp_path / "x", "--shard_size", 0)
    assert "inside the dataset" in cli_error("data", "shards", tiny, tiny / "shards", "--shard_size", 2)


@pytest.mark.parametrize("n_shards", [4, 5, 7])
def test_shard_assignment_partitions_every_epoch(n_shards):
    for world in (1, 2, 3):
        for workers in (1, 2):
            for epoch in (0, 1):
                parts = [assign_shards(n_shards, r, world, w, workers, 3, epoch)
                         for r in range(world) for w in range(workers)]
                flat = [s for part in parts for s in part]
                assert sorted(flat) == list(range(n_shards))  # each shard once: disjoint, complete
                per_rank = [sum(len(parts[r * workers + w]) for w in range(workers)) for r in range(world)]
                assert max(per_rank) - min(per_rank) <= 1  # at most one shard more when world does not divide
    orders = {tuple(assign_shards(7, 0, 1, 0, 1, 3, e)) for e in range(5)}
    assert len(orders) > 1 and assign_shards(7, 0, 1, 0, 1, 3, 0, shuffle=False) == list(range(7))


def test_shuffling_differs_per_epoch_and_is_reproducible(tmp_path):
    out = tmp_path / "shards"
    write_shards(make_dataset(tmp_path / "d", n=24), out, 4, progress=False)

    def order(seed, epoch):
        return _ids(ShardStream(out, seed=seed, epoch=epoch, buffer=5))

    e0, e1 = order(0, 0), order(0, 1)
    assert sorted(e0) == sorted(e1) == list(range(24))
    assert e0 != e1 and order(0, 0) == e0 and order(1, 0) != e0
    stream = ShardStream(out, seed=0, buffer=5)
    stream.set_epoch(1)
    assert _ids(stream) == e1
    # DataLoader workers split a rank's shards: still every sample once.
    loader = torch.utils.data.DataLoader(ShardStream(out, seed=0), batch_size=None, num_workers=2)
    assert sorted(_ids(loader)) == list(range(24))


def test_stream_arguments_are_checked(tmp_path, tiny):
    out = tmp_path / "shards"
    write_shards(tiny, out, 5, progress=False)
    with pytest.raises(T2IError, match="2 shard\\(s\\) for 3 ranks"):
        ShardStream(out, rank=0, world=3)
    with pytest.raises(T2IError, match="rank 2 is outside"):
        ShardStream(out, rank=2, world=2)
    with pytest.raises(T2IError, match="does not exist"):
        ShardStream(tmp_path / "nope")
    with pytest.raises(T2IError, match="shard .*missing.tar does not exist"):
        ShardStream([out / shard_name(0), tmp_path / "missing.tar"])
    plain = ShardStream(str(out / "shard-{000000..000001}.tar"), shuffle=False)
    assert plain.num_samples() is None and _ids(plain) == list(range(10))


# Runs on each of two ranks: join the gloo group, read epochs 0 and 1 of the shards, check the total
# sample count over ranks with an all-reduce, and write this rank's sample ids.
WORKER = """
import json, sys
import torch
import torch.distributed as dist
from t2i.data.shards import ShardStream
from t2i.training import distributed

d = distributed.setup("cpu")
ids = {epoch: [a["id"] for _, _, a in ShardStream(sys.argv[2], d.rank, d.world, seed=5, epoch=epoch, buffer=3)]
       for epoch in (0, 1)}
total = torch.tensor([len(ids[0])])
dist.all_reduce(total)
# What training reads: two epochs of 8 samples per rank in batches of 4, decoded by two DataLoader workers
# (shuffle buffer 1000, not 3: another order within the epoch).
from t2i.data.loader import stream_batches
batches = stream_batches(sys.argv[2] + "/shards.json", lambda item, g: item, 0, 4, 5, d.rank, d.world, (8, 8), 2)
trained = [int(c[0].split()[1]) for _, b in zip(range(4), batches) for c in b["captions"]]
with open(f"{sys.argv[1]}/rank{d.rank}.json", "w") as f:
    json.dump({"ids": ids, "total": int(total), "world": d.world, "trained": trained}, f)
distributed.teardown()
"""


@pytest.mark.slow
def test_two_gloo_ranks_read_disjoint_halves(tmp_path):
    out = tmp_path / "shards"
    write_shards(make_dataset(tmp_path / "d", n=16), out, 2, progress=False)  # 8 shards: divides by 2
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "worker.py"), str(tmp_path), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["total"] == r1["total"] == 16
    for epoch in ("0", "1"):
        a, b = r0["ids"][epoch], r1["ids"][epoch]
        assert len(a) == len(b) == 8 and not set(a) & set(b) and sorted(a + b) == list(range(16))
    assert r0["ids"]["0"] != r0["ids"]["1"]  # another epoch, another order (and shard split)
    for r in (r0, r1):  # the training stream (another shuffle buffer): each epoch the rank's same samples
        assert sorted(r["trained"][:8]) == sorted(r["ids"]["0"]) and sorted(r["trained"][8:]) == sorted(r["ids"]["1"])
    # The same split in this process: reproducible for the seed.
    assert _ids(ShardStream(out, 1, 2, seed=5, epoch=1, buffer=3)) == r1["ids"]["1"]


def _option_help(name: str) -> dict:
    """{option dest: help} of `t2i data NAME`."""
    import argparse

    from t2i.cli import build_parser

    def choices(parser):
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return {a.dest: a.help for a in choices(choices(build_parser("data"))["data"])[name]._actions}


def test_every_option_has_help():
    helps = _option_help("shards")
    assert len(helps) >= 4 and all(helps.values()), [dest for dest, text in helps.items() if not text]
