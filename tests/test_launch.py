"""`t2i train`: config layering (defaults <- preset <- resumed run <- CLI), --dry-run, exact resume vs
fine-tune, and clean errors."""

import json
from pathlib import Path

import pytest
import torch

from t2i.cli import main
from t2i.training.snapshot import list_snapshots, load_snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


def dry_run(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main(["train", *map(str, argv), "--dry-run"]) == 0
    return json.loads(capsys.readouterr().out)


def test_dry_run_applies_preset_loop_defaults_and_explicit_options_win(capsys, tmp_path):
    out = tmp_path / "runs"
    r = dry_run(capsys, "lafite", "--data", "d", "--clip", "c", "--preset", "test", "--outdir", out)
    assert r["start"] == "new run" and r["from"] is None and r["family"] == "lafite"
    assert r["loop"]["batch"] == 8 and r["loop"]["kimg"] == 0.032 and r["loop"]["snap"] == 1
    assert r["loop"]["ema_kimg"] == 0.01 and r["loop"]["seed"] == 0          # preset + plain default
    assert r["config"]["preset"] == "test" and r["config"]["g_lr"] == 0.0025 and r["config"]["data"] == "d"

    r = dry_run(capsys, "lafite", "--data", "d", "--clip", "c", "--preset", "test", "--batch", 4,
                "--g_lr", 0.01, "--mirror", 1, "--metrics", "fid,clip_score", "--outdir", out)
    assert r["loop"]["batch"] == 4 and r["loop"]["kimg"] == 0.032            # explicit wins, rest from preset
    assert r["config"]["g_lr"] == 0.01 and r["config"]["mirror"] is True
    assert r["loop"]["metrics"] == ["fid", "clip_score"]

    tiny = dry_run(capsys, "lafite", "--data", "d", "--clip", "c", "--outdir", out)  # default preset
    assert tiny["config"]["preset"] == "tiny" and tiny["loop"]["batch"] == 32 and tiny["loop"]["kimg"] == 200.0

    clip = dry_run(capsys, "clip", "--data", "d", "--preset", "tiny", "--kimg", 0.5, "--outdir", out)
    assert clip["loop"]["batch"] == 128 and clip["loop"]["kimg"] == 0.5      # family LOOP_DEFAULTS + CLI
    assert not out.exists()                                                   # a dry run writes nothing


def test_unknown_preset_is_a_clean_error(cli_error, tmp_path):
    err = cli_error("train", "lafite", "--data", "d", "--clip", "c", "--preset", "huge", "--dry-run")
    assert "'huge'" in err and "paper256" in err


def test_resume_with_only_continuation_options_is_exact(capsys, lafite_run):
    snap = list_snapshots(lafite_run)[-1]
    data = json.loads((lafite_run / "config.json").read_text())["config"]["data"]
    r = dry_run(capsys, "lafite", "--data", data, "--resume", lafite_run, "--kimg", 1, "--snap", 3, "--keep", 1)
    assert r["start"] == "exact resume" and r["from"] == str(snap)
    assert r["loop"]["kimg"] == 1 and r["loop"]["batch"] == 8 and r["config"]["preset"] == "test"


def test_resume_naming_the_data_path_differently_is_still_exact(capsys, lafite_run, monkeypatch):
    data = Path(json.loads((lafite_run / "config.json").read_text())["config"]["data"])
    monkeypatch.chdir(data.parent)
    r = dry_run(capsys, "lafite", "--data", f"./{data.name}/", "--resume", lafite_run)
    assert r["start"] == "exact resume"
    r = dry_run(capsys, "lafite", "--data", str(data.parent), "--resume", lafite_run)  # another folder
    assert r["start"] == "fine-tune"


def test_resume_latest_picks_the_newest_run(capsys, lafite_run, session_runs):
    data = json.loads((lafite_run / "config.json").read_text())["config"]["data"]
    r = dry_run(capsys, "lafite", "--data", data, "--resume", "latest", "--outdir", session_runs)
    assert r["start"] == "exact resume" and r["from"] == str(list_snapshots(lafite_run)[-1])


def test_resume_with_changed_options_is_a_fine_tune(capsys, lafite_run):
    data = json.loads((lafite_run / "config.json").read_text())["config"]["data"]
    r = dry_run(capsys, "lafite", "--data", data, "--resume", lafite_run, "--subset", 8, "--g_lr", 0.001)
    assert r["start"] == "fine-tune"
    assert r["config"]["subset"] == 8 and r["config"]["g_lr"] == 0.001
    assert r["config"]["clip"] == json.loads((lafite_run / "config.json").read_text())["config"]["clip"]
    assert r["loop"]["batch"] == 8                                   # the resumed run's loop, not the default
    r = dry_run(capsys, "lafite", "--data", data, "--resume", lafite_run, "--batch", 4)
    assert r["start"] == "fine-tune"                                 # a loop option outside the continuation set


def test_resume_latest_takes_the_newest_run_of_its_family(capsys, lafite_run, dalle_run, session_runs):
    """A newer DALL-E run in the same --outdir does not hide the LAFITE one."""
    assert int(dalle_run.name[:5]) > int(lafite_run.name[:5])
    data = json.loads((lafite_run / "config.json").read_text())["config"]["data"]
    r = dry_run(capsys, "lafite", "--data", data, "--resume", "latest", "--outdir", session_runs)
    assert r["from"] == str(list_snapshots(lafite_run)[-1])


def killed_run(like: Path, outdir: Path, number: int) -> Path:
    """Run `number` in outdir, of `like`'s config, killed before its first snapshot: config.json and log.txt."""
    run = outdir / f"{number:05d}-{like.name[6:]}"
    run.mkdir(parents=True)
    config = {**json.loads((like / "config.json").read_text()), "run_dir": str(run), "from": None}
    (run / "config.json").write_text(json.dumps(config))
    (run / "log.txt").write_text(f"training {config['family']} to 0.032 kimg, batch 8 on 1 process(es)\n")
    return run


def test_resume_latest_passes_over_a_newer_run_without_a_snapshot(capsys, lafite_run, copy_run):
    """The run a preemptible machine's auto-resume script sees most: killed before its first snapshot."""
    run = copy_run(lafite_run)
    killed_run(run, run.parent, int(run.name[:5]) + 1)
    data = json.loads((run / "config.json").read_text())["config"]["data"]
    r = dry_run(capsys, "lafite", "--data", data, "--resume", "latest", "--outdir", run.parent)
    assert r["start"] == "exact resume" and r["from"] == str(list_snapshots(run)[-1])
    main(["train", "lafite", "--data", data, "--resume", "latest", "--outdir", str(run.parent), "--dry-run"])
    assert capsys.readouterr().err == f"--resume latest: resuming {run} from snapshot-000032\n"


def test_resume_latest_starts_a_new_run_when_no_run_has_a_snapshot(capsys, clip_run, shapes16, tmp_path):
    out = tmp_path / "runs"
    argv = ["train", "clip", "--data", str(shapes16), "--preset", "tiny", "--batch", "32", "--kimg", "0.032",
            "--resume", "latest", "--outdir", str(out)]
    say = f"--resume latest: no clip run in {str(out)!r} has a snapshot yet; starting a new run"
    r = dry_run(capsys, *argv[1:])                                           # no run at all
    assert r["start"] == "new run" and r["from"] is None and r["loop"]["batch"] == 32
    main([*argv, "--dry-run"])
    assert capsys.readouterr().err == say + "\n"

    killed = killed_run(clip_run, out, 0)               # one killed before a snapshot
    assert main(argv) == 0
    assert say in capsys.readouterr().out
    new = out / f"00001-{clip_run.name[6:]}"
    assert sorted(p.name for p in out.iterdir()) == [killed.name, new.name]
    assert say in (new / "log.txt").read_text()
    assert [p.name for p in list_snapshots(new)] == ["snapshot-000032"] and not list_snapshots(killed)
    assert json.loads((new / "config.json").read_text())["from"] is None

    r = dry_run(capsys, *argv[1:])                                           # the next start resumes it
    assert r["start"] == "exact resume" and r["from"] == str(new / "snapshot-000032")


def test_resume_naming_a_run_without_a_snapshot_is_a_clean_error(cli_error, lafite_run, tmp_path):
    run = killed_run(lafite_run, tmp_path / "runs", 3)
    err = cli_error("train", "lafite", "--data", "d", "--resume", run)
    assert err.startswith(f"--resume {run}: '{run}' holds no snapshot yet") and err.count("\n") == 1
    assert "--resume latest" in err


def test_resuming_a_clip_run_as_lafite_names_both_families(cli_error, clip_run):
    err = cli_error("train", "lafite", "--data", "d", "--resume", clip_run)
    assert "'clip'" in err and "'lafite'" in err


def test_bad_batch_is_a_clean_error(cli_error, shapes16, tmp_path):
    err = cli_error("train", "clip", "--data", shapes16, "--preset", "tiny", "--batch", 30, "--accum", 4,
                "--outdir", tmp_path)
    assert "--batch 30" in err and "--accum" in err


def test_exact_resume_continues_the_run_bitwise(shapes16, clip_run, tmp_path):
    """0.064 kimg, then --resume to 0.1 == the session run trained to 0.1 kimg in one go."""
    out = tmp_path / "runs"
    common = ["--data", shapes16, "--batch", 32, "--outdir", out]
    assert main(["train", "clip", *map(str, common), "--preset", "tiny", "--kimg", "0.064"]) == 0
    (run,) = out.iterdir()
    assert [p.name for p in list_snapshots(run)] == ["snapshot-000064"]
    assert main(["train", "clip", *map(str, common), "--resume", str(run), "--kimg", "0.1"]) == 0

    assert [p.name for p in out.iterdir()] == [run.name]                    # same run directory
    assert [p.name for p in list_snapshots(run)] == ["snapshot-000064", "snapshot-000128"]
    assert "resuming " in (run / "log.txt").read_text()
    assert json.loads((run / "config.json").read_text())["from"] == str(run / "snapshot-000064")
    resumed, whole = load_snapshot(run), load_snapshot(clip_run)
    assert resumed.meta["kimg"] == whole.meta["kimg"] == 0.128
    assert resumed.tensors.keys() == whole.tensors.keys()
    for k, v in whole.tensors.items():
        assert torch.equal(resumed.tensors[k], v), k


def test_fine_tune_starts_a_new_run_from_the_snapshot_weights(lafite_run, tmp_path):
    out = tmp_path / "runs"
    source = load_snapshot(lafite_run)
    before = sorted(p.name for p in lafite_run.iterdir())
    data = source.meta["config"]["data"]
    # Zero learning rates: the fine-tune's G and D must stay exactly the snapshot's.
    assert main(["train", "lafite", "--data", data, "--resume", str(lafite_run), "--g_lr", "0", "--d_lr", "0",
                 "--kimg", "0.008", "--outdir", str(out)]) == 0
    (run,) = out.iterdir()
    assert run.name == "00000-data-lafite-test"
    assert [p.name for p in list_snapshots(run)] == ["snapshot-000008"]      # fresh counters
    assert sorted(p.name for p in lafite_run.iterdir()) == before             # source run untouched
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["from"] == str(source.path) and cfg["config"]["g_lr"] == 0.0
    assert "fine-tuning from" in (run / "log.txt").read_text()
    tuned = load_snapshot(run, family="lafite")
    for module in ("G", "D"):
        sd = tuned.state_dict(module)
        for k, v in source.state_dict(module).items():
            if k != "mapping.w_avg":  # a running statistic, updated by every G step
                assert torch.equal(sd[k], v), f"{module}.{k}"


def test_fine_tune_from_a_sampling_only_export_starts_G_from_its_ema(lafite_run, tmp_path):
    """An export (`export_snapshot`: G_ema and the CLIP, no G, no D) can be fine-tuned: G starts from G_ema, D
    from fresh weights, both said in the log; with zero learning rates G stays the export's G_ema."""
    from t2i.training.snapshot import export_snapshot

    source = load_snapshot(lafite_run)
    export = export_snapshot(source.path, tmp_path / "export", ["G_ema", "clip"], dtype="float32")
    out = tmp_path / "runs"
    assert main(["train", "lafite", "--data", source.meta["config"]["data"], "--resume", str(export),
                 "--g_lr", "0", "--d_lr", "0", "--kimg", "0.008", "--outdir", str(out)]) == 0
    (run,) = out.iterdir()
    log = (run / "log.txt").read_text()
    assert f"G: not in {export}; starting from its G_ema" in log
    assert f"D: not in {export} (a sampling-only export); starting from fresh weights" in log
    tuned = load_snapshot(run, family="lafite").state_dict("G")
    for k, v in source.state_dict("G_ema").items():
        if k != "mapping.w_avg":
            assert torch.equal(tuned[k], v), k
