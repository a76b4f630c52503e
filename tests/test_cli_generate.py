"""`t2i generate` end to end on the session's LAFITE `test` run (16px)."""

import numpy as np
import pytest
from PIL import Image

import t2i.models
from t2i.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    """Default outputs (out.png, runs/) must never land in the repository."""
    monkeypatch.chdir(tmp_path)

PROMPT = "a large red circle above a small blue square"


def generate(tmp_path, lafite_run, *args, name="out.png") -> np.ndarray:
    out = tmp_path / name
    assert main(["generate", *map(str, args), "--model", str(lafite_run), "--out", str(out)]) == 0
    return read_png(out)


def read_png(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "RGB"
        return np.asarray(img)


def tiles(grid: np.ndarray, size: int = 16) -> list[list[np.ndarray]]:
    rows, cols = grid.shape[0] // size, grid.shape[1] // size
    return [[grid[r * size:(r + 1) * size, c * size:(c + 1) * size] for c in range(cols)] for r in range(rows)]


def test_grid_size_and_seed_determinism(tmp_path, lafite_run, capsys):
    grid = generate(tmp_path, lafite_run, PROMPT, "--n", 3, "--seed", 5, name="a.png")
    assert grid.shape == (16, 3 * 16, 3)                    # 1 prompt row x 3 columns of 16px
    assert "1 prompt(s) x 3 images, 16px" in capsys.readouterr().out
    generate(tmp_path, lafite_run, PROMPT, "--n", 3, "--seed", 5, name="b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    other = generate(tmp_path, lafite_run, PROMPT, "--n", 3, "--seed", 6, name="c.png")
    assert not np.array_equal(other, grid)
    # Image k uses seed + k: seeds 6, 7 are columns 1, 2 of the seed-5 grid.
    assert np.array_equal(tiles(other)[0][0], tiles(grid)[0][1])
    assert np.array_equal(tiles(other)[0][1], tiles(grid)[0][2])
    # Columns are different seeds, hence different images.
    assert not np.array_equal(tiles(grid)[0][0], tiles(grid)[0][1])


def test_prompts_file_gives_one_row_per_prompt_and_outdir_writes_each_image(tmp_path, lafite_run):
    prompts = ["a small green star on the left", "", "  a large blue square in the center  ", "a red cross"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    grid = generate(tmp_path, lafite_run, "--prompts", tmp_path / "prompts.txt", "--n", 2,
                    "--outdir", tmp_path / "each")
    assert grid.shape == (3 * 16, 2 * 16, 3)                # blank lines are skipped
    files = sorted(p.name for p in (tmp_path / "each").iterdir())
    assert files == ["0000-seed0.png", "0000-seed1.png", "0001-seed0.png", "0001-seed1.png",
                     "0002-seed0.png", "0002-seed1.png"]
    t = tiles(grid)
    for row in range(3):
        for seed in range(2):
            img = read_png(tmp_path / "each" / f"{row:04d}-seed{seed}.png")
            assert img.shape == (16, 16, 3) and np.array_equal(img, t[row][seed])
    # Same seed, different prompts -> different images; a prompt's row matches a single-prompt run.
    assert not np.array_equal(t[0][0], t[1][0])
    single = generate(tmp_path, lafite_run, "a large blue square in the center", "--n", 2, name="single.png")
    assert np.array_equal(single, np.concatenate(t[1], axis=1))


@pytest.mark.parametrize("prompt, message", [("", "prompt is empty"), ("   \t ", "prompt is empty"),
                                             ("a red circle " * 20, "tokens")])
def test_bad_prompts_are_clean_errors(tmp_path, lafite_run, cli_error, prompt, message):
    err = cli_error("generate", prompt, "--model", lafite_run, "--out", tmp_path / "o.png")
    assert message in err
    assert not (tmp_path / "o.png").exists()


def test_bad_prompt_files_are_clean_errors(tmp_path, lafite_run, cli_error):
    (tmp_path / "latin1.txt").write_bytes("un cercle rouge \xe9l\xe9gant\n".encode("latin-1"))
    assert "not UTF-8" in cli_error("generate", "--prompts", tmp_path / "latin1.txt", "--model", lafite_run)
    (tmp_path / "blank.txt").write_text("\n   \n\n", encoding="utf-8")
    assert "no non-empty line" in cli_error("generate", "--prompts", tmp_path / "blank.txt",
                                        "--model", lafite_run)
    assert "does not exist" in cli_error("generate", "--prompts", tmp_path / "nope.txt", "--model", lafite_run)
    assert "not both" in cli_error("generate", PROMPT, "--prompts", tmp_path / "blank.txt")
    assert "no prompt given" in cli_error("generate", "--model", lafite_run)


@pytest.mark.parametrize("n", [0, -1, 2000])
def test_bad_image_counts_are_clean_errors(lafite_run, cli_error, n):
    assert f"--n {n}" in cli_error("generate", PROMPT, "--n", n, "--model", lafite_run)


def test_bad_models_are_clean_errors(tmp_path, lafite_run, clip_run, copy_run, cli_error, monkeypatch):
    err = cli_error("generate", PROMPT, "--model", clip_run, "--out", tmp_path / "o.png")
    assert "'clip'" in err and "lafite" in err
    err = cli_error("generate", PROMPT, "--model", tmp_path / "missing-run")
    assert "missing-run" in err and "does not exist" in err

    damaged = copy_run(lafite_run)
    weights = damaged / "snapshot-000032" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    err = cli_error("generate", PROMPT, "--model", damaged, "--out", tmp_path / "o.png")
    assert "truncated or damaged" in err and "snapshot-000032" in err
    assert not (tmp_path / "o.png").exists()

    monkeypatch.setattr(t2i.models, "DEFAULT_MODEL", tmp_path / "no-default")
    assert "--model" in cli_error("generate", PROMPT, "--out", tmp_path / "o.png")


def test_embedded_default_model_follows_prompts(tmp_path):
    """`t2i generate` with no --model uses the shipped LAFITE model, and its images match the prompt:
    the shipped oracle reads back the colour and shape of 48 single-object prompts far above chance
    (1/8 and 1/6). Measured over 1000 prompts per split in docs/DEFAULT_MODEL.md."""
    import random

    import torch

    from t2i.data import shapes
    from t2i.data.transforms import to_model
    from t2i.metrics.oracle import predict, score
    from t2i.metrics.oracle_trainer import load_oracle
    from t2i.models import load_pipeline

    assert main(["generate", PROMPT, "--n", "2", "--out", str(tmp_path / "d.png")]) == 0
    assert read_png(tmp_path / "d.png").shape == (64, 128, 3)
    rng = random.Random(7)
    scenes = [s for s in (shapes.sample_scene(rng, "test-seen") for _ in range(200)) if len(s.objects) == 1][:48]
    images = load_pipeline()([shapes.prompt(s) for s in scenes], list(range(len(scenes))))
    with torch.no_grad():
        result = score(predict(load_oracle()(to_model(images))), scenes)
    assert result["colour"] >= 0.9 and result["shape"] >= 0.7 and result["position"] >= 0.95
