"""`t2i data features`: CLIP features stored beside the dataset, keyed by content and CLIP."""

import json
import shutil

from safetensors.torch import load_file

from t2i.cli import main


def test_features_written_keyed_and_not_reused_after_rebuild(shapes16, clip_run, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(shapes16, data)
    assert main(["data", "features", str(data), "--clip", str(clip_run)]) == 0
    files = sorted((tmp_path / "data.features").glob("*.safetensors"))
    assert len(files) == 1
    t = load_file(files[0])
    meta = json.loads((data / "dataset.json").read_text())
    assert t["image"].shape[0] == len(meta["images"])
    assert t["text"].shape[0] == sum(len(r["captions"]) for r in meta["images"])
    # A rebuilt dataset (one caption changed) gets new features, never the stale file.
    meta["images"][0]["captions"][0] = "a small red circle in the center"
    (data / "dataset.json").write_text(json.dumps(meta))
    assert main(["data", "features", str(data), "--clip", str(clip_run)]) == 0
    assert len(list((tmp_path / "data.features").glob("*.safetensors"))) == 2


def test_features_bad_clip_is_a_clear_error(shapes16, capsys):
    assert main(["data", "features", str(shapes16), "--clip", "/no/such/clip"]) == 2
    assert "ARCH:/path" in capsys.readouterr().err
