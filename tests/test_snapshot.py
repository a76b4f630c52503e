"""Snapshots: safetensors + JSON round trip, family checks, damaged files, atomic writes, resolution."""

import json
import os

import pytest
import torch
from torch import nn

import t2i.training.snapshot as snapshot_mod
from t2i.errors import T2IError
from t2i.training.snapshot import (
    list_snapshots,
    load_snapshot,
    load_training_state,
    resolve_snapshot,
    save_snapshot,
)


def modules(seed: int = 0) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    net[1].running_mean.normal_()
    return {"G": net, "D": nn.Linear(4, 2)}


def save(dest, seed=0, family="toy", state=True):
    mods = modules(seed)
    meta = {"family": family, "kimg": 1.5, "config": {"name": "caf\u00e9", "layers": [1, 2]}}
    training_state = {"progress": {"step": 3, "nimg": 48}, "moments": [torch.full((2,), float(seed))]}
    save_snapshot(dest, mods, meta, training_state if state else None)
    return mods, meta, training_state


def test_round_trip_keeps_every_tensor_and_the_meta(tmp_path):
    mods, meta, state = save(tmp_path / "snapshot-000001")
    snap = load_snapshot(tmp_path / "snapshot-000001", family="toy")
    assert snap.meta == meta and snap.family == "toy"
    for name, module in mods.items():
        loaded = snap.state_dict(name)
        assert loaded.keys() == module.state_dict().keys()  # buffers (BatchNorm stats) included
        for k, v in module.state_dict().items():
            assert torch.equal(loaded[k], v)
    # Rebuild-then-load gives the same module.
    fresh = modules(seed=1)["G"]
    fresh.load_state_dict(snap.state_dict("G"))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), mods["G"].state_dict().values()))
    restored = load_training_state(snap.path)
    assert restored["progress"] == state["progress"] and torch.equal(restored["moments"][0], state["moments"][0])


def test_missing_module_is_named(tmp_path):
    save(tmp_path / "snapshot-000001")
    with pytest.raises(T2IError, match=r"no module 'G_ema'.*\['D', 'G'\]"):
        load_snapshot(tmp_path / "snapshot-000001").state_dict("G_ema")


def test_family_mismatch_names_both_families(tmp_path):
    save(tmp_path / "snapshot-000001", family="clip")
    with pytest.raises(T2IError) as e:
        load_snapshot(tmp_path / "snapshot-000001", family="lafite")
    assert "'clip'" in str(e.value) and "'lafite'" in str(e.value)


@pytest.mark.parametrize("keep", [0, 7, 200, -5])
def test_truncated_weights_raise_t2ierror(tmp_path, keep):
    dest = tmp_path / "snapshot-000001"
    save(dest)
    data = (dest / "model.safetensors").read_bytes()
    (dest / "model.safetensors").write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(T2IError, match="truncated or damaged"):
        load_snapshot(dest)


@pytest.mark.parametrize("text", ['{"family": "toy", ', "\xff\xfe not json", "[1, 2]", '{"kimg": 1}'])
def test_invalid_config_raises_t2ierror(tmp_path, text):
    dest = tmp_path / "snapshot-000001"
    save(dest)
    (dest / "config.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(T2IError, match="config.json"):
        load_snapshot(dest)


def test_truncated_training_state_raises_t2ierror(tmp_path):
    dest = tmp_path / "snapshot-000001"
    save(dest)
    data = (dest / "training_state.pt").read_bytes()
    (dest / "training_state.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(T2IError, match="truncated or damaged"):
        load_training_state(dest)


def test_exported_model_without_state_cannot_be_resumed(tmp_path):
    save(tmp_path / "snapshot-000001", state=False)
    with pytest.raises(T2IError, match="cannot be resumed"):
        load_training_state(tmp_path / "snapshot-000001")


FLAG = []


def _side_effect():
    FLAG.append("unpickled code ran")
    return "pwned"


class Sneaky:
    def __reduce__(self):
        return (_side_effect, ())


def test_training_state_loads_with_weights_only(tmp_path):
    """A training_state.pt holding a pickled object is refused, and its code never runs."""
    dest = tmp_path / "snapshot-000001"
    save(dest)
    torch.save({"progress": {"step": 1}, "evil": Sneaky()}, dest / "training_state.pt")
    with pytest.raises(T2IError):
        load_training_state(dest)
    assert FLAG == []


@pytest.mark.parametrize("target", ["save_file", "torch_save"])
def test_crash_during_save_keeps_the_previous_snapshot(tmp_path, monkeypatch, target):
    dest = tmp_path / "snapshot-000010"
    old_mods, old_meta, _ = save(dest, seed=0)

    real_save_file, real_torch_save = snapshot_mod.save_file, torch.save

    def crash_after_partial_write(real):
        def fake(obj, path, *args, **kwargs):
            real(obj, path, *args, **kwargs)
            with open(path, "r+b") as f:  # half a file on disk, then the "crash"
                f.truncate(os.path.getsize(path) // 2)
            raise KeyboardInterrupt("killed mid-write")
        return fake

    if target == "save_file":
        monkeypatch.setattr(snapshot_mod, "save_file", crash_after_partial_write(real_save_file))
    else:
        monkeypatch.setattr(snapshot_mod.torch, "save", crash_after_partial_write(real_torch_save))
    with pytest.raises(KeyboardInterrupt):
        save(dest, seed=1)
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot-000010"]  # no temp dir left
    snap = load_snapshot(dest)
    assert snap.meta == old_meta
    for k, v in old_mods["D"].state_dict().items():
        assert torch.equal(snap.state_dict("D")[k], v)
    assert torch.equal(load_training_state(dest)["moments"][0], torch.zeros(2))


def test_saving_over_an_existing_snapshot_replaces_it(tmp_path):
    dest = tmp_path / "snapshot-000010"
    save(dest, seed=0)
    new_mods, _, _ = save(dest, seed=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot-000010"]
    assert torch.equal(load_snapshot(dest).state_dict("D")["weight"], new_mods["D"].weight)


def test_resolve_picks_the_newest_complete_snapshot(tmp_path):
    run = tmp_path / "00003-data-toy"
    save(run / "snapshot-000020", seed=0)
    save(run / "snapshot-000100", seed=1)   # numerically newest complete one
    save(run / "snapshot-000003", seed=2)
    incomplete = run / "snapshot-000200"    # e.g. copied half-way: config but no weights
    incomplete.mkdir()
    (incomplete / "config.json").write_text(json.dumps({"family": "toy"}))
    (run / ".snapshot-000300.abc.tmp").mkdir()  # an interrupted write
    (run / "snapshot-000400.txt").write_text("not a snapshot")
    assert [p.name for p in list_snapshots(run)] == ["snapshot-000003", "snapshot-000020", "snapshot-000100"]
    assert resolve_snapshot(run) == run / "snapshot-000100"
    assert resolve_snapshot(run / "snapshot-000020") == run / "snapshot-000020"
    assert resolve_snapshot(run / "snapshot-000020" / "model.safetensors") == run / "snapshot-000020"
    assert load_snapshot(run).path.name == "snapshot-000100"


def test_resolve_errors_name_the_path(tmp_path):
    with pytest.raises(T2IError, match="does not exist"):
        resolve_snapshot(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(T2IError, match="holds no snapshot"):
        resolve_snapshot(tmp_path / "empty")
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(T2IError, match="is a file"):
        resolve_snapshot(tmp_path / "weights.pt")
