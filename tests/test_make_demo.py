"""`make demo` on the installed venv: one sample grid, announced once."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_writes_the_grid_and_says_so_once(tmp_path):
    venv = Path(sys.prefix)
    out = tmp_path / "demo.png"
    # -o: take the install stamp as up to date (this test runs inside the installed venv).
    proc = subprocess.run(["make", "-s", "-C", str(REPO), "-o", f"{venv}/.t2i-installed", "demo",
                           f"VENV={venv}", f"DEMO_OUT={out}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wrote = [line for line in proc.stdout.splitlines() if "wrote" in line]
    assert len(wrote) == 1 and str(out) in wrote[0], proc.stdout
    from PIL import Image

    assert Image.open(out).size == (8 * 64, 64)  # one prompt, 8 seeds, 64px
