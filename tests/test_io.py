"""Atomic writes: an interrupted write leaves the previous file or folder, never a half-written one."""

import json
import os

import pytest
import torch

from t2i.io import atomic_path, recover_replaced, replace_atomic, sha256_file, temp_sibling, write_json_atomic
from t2i.training.snapshot import list_snapshots, load_snapshot, resolve_snapshot, save_snapshot


def test_atomic_path_keeps_old_file_when_the_write_fails(tmp_path):
    dest = tmp_path / "stats.json"
    write_json_atomic(dest, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(dest.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]  # no temporary left


def test_replace_atomic_overwrites_a_folder(tmp_path):
    dest = tmp_path / "snap"
    dest.mkdir()
    (dest / "a").write_text("old")
    tmp = temp_sibling(dest, directory=True)
    (tmp / "b").write_text("new")
    replace_atomic(tmp, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap"]


def test_temp_sibling_has_plain_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        assert temp_sibling(tmp_path / "x").stat().st_mode & 0o777 == 0o644
        assert temp_sibling(tmp_path / "d", directory=True).stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(mask)


def test_crash_between_the_two_renames_is_recovered(tmp_path):
    """Overwriting snapshot-000100 sets the old one aside first; dying right then must not lose it."""
    run = tmp_path / "run"
    m = torch.nn.Linear(2, 2)
    snap = save_snapshot(run / "snapshot-000100", {"m": m}, {"family": "test"})
    os.replace(snap, run / ".snapshot-000100.old")  # the state after the first rename only
    assert list_snapshots(run) == [snap]
    assert torch.equal(load_snapshot(snap).state_dict("m")["weight"], m.weight.detach())
    os.replace(snap, run / ".snapshot-000100.old")
    assert resolve_snapshot(snap) == snap  # a direct path recovers it too
    assert not recover_replaced(snap)  # nothing left to recover


def test_sha256_file(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    assert sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
