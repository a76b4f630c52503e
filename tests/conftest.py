"""Session fixtures: one tiny shapes dataset, one tiny CLIP run and one LAFITE `test` run, built once
through the real CLI and shared (read-only) by the training, generate and eval tests. Tests that
change a run copy it into their own tmp_path first."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
import torch

from t2i.cli import main


@contextlib.contextmanager
def single_thread():
    """Run torch on one thread: these models are tiny, and on a busy 2-core machine a second thread
    mostly waits for the CPU (runs compared bitwise must also use the same thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    with single_thread():
        yield


def cli(*argv: str) -> None:
    """Run `t2i ARGV...` in-process and require success."""
    code = main([str(a) for a in argv])
    assert code == 0, f"t2i {' '.join(map(str, argv))} exited with {code}"


@pytest.fixture(scope="session")
def shapes16(tmp_path_factory) -> Path:
    """64 shapes images at 16px (4 English captions each)."""
    root = tmp_path_factory.mktemp("shapes16")
    cli("data", "shapes", "--out", root / "data", "--n", 64, "--size", 16, "--seed", 0)
    return root / "data"


@pytest.fixture(scope="session")
def session_runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def clip_run(shapes16, session_runs) -> Path:
    """`t2i train clip --preset tiny`: 4 steps of batch 32 (0.128 kimg), one snapshot."""
    with single_thread():
        cli("train", "clip", "--data", shapes16, "--preset", "tiny", "--kimg", 0.1, "--batch", 32,
            "--outdir", session_runs)
    (run,) = session_runs.glob("*-clip-tiny")
    return run


@pytest.fixture(scope="session")
def lafite_run(shapes16, clip_run, session_runs) -> Path:
    """`t2i train lafite --preset test`: 16px nets, batch 8, two ticks, a snapshot per tick."""
    with single_thread():
        cli("train", "lafite", "--data", shapes16, "--clip", clip_run, "--preset", "test", "--kimg", 0.032,
            "--outdir", session_runs)
    (run,) = session_runs.glob("*-lafite-test")
    return run


@pytest.fixture(scope="session")
def vqgan_run(shapes16, session_runs) -> Path:
    """`t2i train vqgan --preset test`: 16px -> 8x8 tokens of 32 codes, batch 8, one snapshot per tick."""
    with single_thread():
        cli("train", "vqgan", "--data", shapes16, "--preset", "test", "--kimg", 0.032, "--outdir", session_runs)
    (run,) = session_runs.glob("*-vqgan-test")
    return run


@pytest.fixture(scope="session")
def dalle_run(shapes16, vqgan_run, session_runs) -> Path:
    """`t2i train dalle --preset test` on the test VQGAN, with a BPE trained in the run."""
    with single_thread():
        cli("train", "dalle", "--data", shapes16, "--vqgan", vqgan_run, "--preset", "test", "--bpe_vocab", 300,
            "--kimg", 0.032, "--outdir", session_runs)
    (run,) = session_runs.glob("*-dalle-test")
    return run


@pytest.fixture(scope="session")
def autoencoder_run(shapes16, session_runs) -> Path:
    """`t2i train autoencoder --preset test`: 16px -> 8x8x4 latents."""
    with single_thread():
        cli("train", "autoencoder", "--data", shapes16, "--preset", "test", "--outdir", session_runs)
    (run,) = session_runs.glob("*-autoencoder-test")
    return run


@pytest.fixture(scope="session")
def ldm_run(shapes16, autoencoder_run, session_runs) -> Path:
    """`t2i train ldm --preset test` on the test autoencoder, a BPE trained in the run, two snapshots."""
    with single_thread():
        cli("train", "ldm", "--data", shapes16, "--autoencoder", autoencoder_run, "--preset", "test",
            "--bpe_vocab", 300, "--outdir", session_runs)
    (run,) = session_runs.glob("*-ldm-test")
    return run


@pytest.fixture(scope="session")
def damsm_run(shapes16, session_runs) -> Path:
    """`t2i train damsm --preset test`: 16px CNN, 4x4 regions, batch 8, a snapshot per tick."""
    with single_thread():
        cli("train", "damsm", "--data", shapes16, "--preset", "test", "--metrics", "r_at_1", "--outdir", session_runs)
    (run,) = session_runs.glob("*-damsm-test")
    return run


@pytest.fixture(scope="session")
def attngan_run(shapes16, damsm_run, session_runs) -> Path:
    """`t2i train attngan --preset test` on the test DAMSM: stages 8/16, batch 8, a snapshot per tick."""
    with single_thread():
        cli("train", "attngan", "--data", shapes16, "--damsm", damsm_run, "--preset", "test", "--outdir", session_runs)
    (run,) = session_runs.glob("*-attngan-test")
    return run


@pytest.fixture
def cli_error(capsys):
    """Run `t2i ARGV...` in-process; require exit code 2 with a `t2i: error:` line and no traceback;
    return the message."""
    def run(*argv) -> str:
        capsys.readouterr()
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err
        assert "t2i: error: " in err and "Traceback" not in err  # (progress bars may precede it)
        return err.split("t2i: error: ", 1)[1]
    return run


@pytest.fixture
def copy_run(tmp_path):
    """Copy a session run into this test's tmp_path (so the test may change it)."""
    def copy(run: Path) -> Path:
        return Path(shutil.copytree(run, tmp_path / "runs" / run.name))
    return copy


@pytest.fixture(autouse=True)
def _restore_grad_mode():
    """`t2i generate` disables autograd for its (normally short-lived) process; undo it between tests."""
    yield
    torch.set_grad_enabled(True)


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own tmp_path: default outputs (out.png, runs/) must never land in the repository."""
    monkeypatch.chdir(tmp_path)
