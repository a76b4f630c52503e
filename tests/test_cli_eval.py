"""`t2i eval` end to end on the session's LAFITE `test` run."""

import json
import math
import shutil

import pytest

from t2i.cli import main
from t2i.metrics.oracle_trainer import DEFAULT_ORACLE

pytestmark = pytest.mark.usefixtures("one_thread")

needs_oracle = pytest.mark.skipif(not (DEFAULT_ORACLE.exists()),
                                  reason=f"no shipped shapes oracle at {DEFAULT_ORACLE} yet")


def metric_lines(run, name) -> list[dict]:
    return [json.loads(line) for line in (run / f"metric-{name}.jsonl").read_text().splitlines()]


def test_clip_score_and_r_precision_print_a_table_and_append_jsonl(tmp_path, lafite_run, shapes16, copy_run,
                                                                   capsys):
    run = copy_run(lafite_run)
    argv = ["eval", str(run), "--data", str(shapes16), "--metrics", "clip_score,r_precision", "--n", "16"]
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["metric", "value"]
    table = dict(line.split() for line in out[1:] if line.startswith(("clip_score/", "r_precision/")))
    assert 0 <= float(table["clip_score/clip_score"]) <= 100 and table["clip_score/n"] == "16"
    assert 0 <= float(table["r_precision/r_precision"]) <= 1
    assert table["clip_score/clip"].startswith("t2i-clip:")

    for name, key, hi in (("clip_score", "clip_score", 100), ("r_precision", "r_precision", 1)):
        (line,) = metric_lines(run, name)
        assert line["snapshot"] == "snapshot-000032" and line["kimg"] == 0.032
        assert isinstance(line["results"][key], float) and 0 <= line["results"][key] <= hi
        assert line["results"]["n"] == 16 and line["results"]["clip"] == table["clip_score/clip"]
        assert float(table[f"{name}/{key}"]) == pytest.approx(line["results"][key], abs=5e-5)

    # Appends, and the same seed gives the same numbers.
    assert main(argv[:2] + ["--data", str(shapes16), "--metrics", "clip_score", "--n", "16"]) == 0
    first, second = metric_lines(run, "clip_score")
    assert first["results"] == second["results"]
    assert len(metric_lines(run, "r_precision")) == 1


def test_out_option_writes_elsewhere_and_a_snapshot_path_works(tmp_path, lafite_run, shapes16, copy_run):
    run = copy_run(lafite_run)
    out = tmp_path / "metrics"
    assert main(["eval", str(run / "snapshot-000016"), "--data", str(shapes16), "--metrics", "clip_score",
                 "--n", "4", "--out", str(out)]) == 0
    (line,) = metric_lines(out, "clip_score")
    assert line["snapshot"] == "snapshot-000016" and line["kimg"] == 0.016 and line["results"]["n"] == 4
    assert not list(run.glob("metric-*.jsonl"))


def test_unknown_metric_and_bad_n_are_clean_errors(lafite_run, shapes16, cli_error):
    err = cli_error("eval", lafite_run, "--data", shapes16, "--metrics", "clip_score,kid")
    assert "'kid'" in err and "r_precision" in err and "inception_score" in err
    assert "--n 0" in cli_error("eval", lafite_run, "--data", shapes16, "--metrics", "clip_score", "--n", 0)
    assert "--data" in cli_error("eval", lafite_run, "--metrics", "clip_score", "--n", 4)


def test_fid_on_real_data_needs_inception(tmp_path, lafite_run, shapes16, cli_error):
    photos = tmp_path / "photos"
    shutil.copytree(shapes16, photos)
    meta = json.loads((photos / "dataset.json").read_text())
    meta["name"] = "photos16"
    for record in meta["images"]:
        record.pop("attributes", None)
    (photos / "dataset.json").write_text(json.dumps(meta))
    err = cli_error("eval", lafite_run, "--data", photos, "--metrics", "fid", "--n", 4, "--out", tmp_path)
    assert "--inception" in err
    assert not (tmp_path / "metric-fid.jsonl").exists()


@needs_oracle
def test_shapes_accuracy_with_the_shipped_oracle(lafite_run, copy_run):
    run = copy_run(lafite_run)
    assert main(["eval", str(run), "--metrics", "shapes_accuracy", "--n", "8"]) == 0
    (line,) = metric_lines(run, "shapes_accuracy")
    results = line["results"]
    assert {k.split("_", 1)[0] for k in results} >= {"seen", "heldout", "oracle"}
    assert all(0 <= v <= 1 for v in results.values() if isinstance(v, float))
    assert results["oracle_self_all"] > 0.5   # the shipped oracle must actually work


@needs_oracle
def test_fid_on_shapes_uses_the_oracle_features(lafite_run, shapes16, copy_run):
    run = copy_run(lafite_run)
    assert main(["eval", str(run), "--data", str(shapes16), "--metrics", "fid", "--n", "16"]) == 0
    (line,) = metric_lines(run, "fid")
    assert line["results"]["extractor"].startswith("shapes-oracle:")
    assert math.isfinite(line["results"]["fid"]) and line["results"]["fid"] > 0
    assert line["results"]["n_fake"] == 16 and line["results"]["n_real"] == 64


def test_training_evaluates_pipeline_metrics_at_every_snapshot(tmp_path, shapes16, clip_run):
    """A text-to-image run's --metrics go through the same evaluation as `t2i eval` (t2i.evaluate)."""
    from conftest import cli

    cli("train", "lafite", "--data", shapes16, "--clip", clip_run, "--preset", "test", "--kimg", 0.016,
        "--metrics", "clip_score", "--outdir", tmp_path / "runs")
    (run,) = (tmp_path / "runs").glob("*-lafite-test")
    (line,) = metric_lines(run, "clip_score")
    assert line["snapshot"] == "snapshot-000016" and line["results"]["n"] == 1000
    assert 0 <= line["results"]["clip_score"] <= 100 and line["results"]["clip"].startswith("t2i-clip:")
