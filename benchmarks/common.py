"""What every benchmark script shares: the `t2i` command of this interpreter, and a runner for it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

T2I = [sys.executable, "-m", "t2i"]


def sh(args: list, log: Path | None = None) -> float:
    """Run a command (output to `log`, else discarded), fail loudly, return its wall time in seconds."""
    args = [str(a) for a in args]
    t0 = time.time()
    with open(log if log else os.devnull, "w") as out:
        r = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT)
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(args)}" + (f"; see {log}" if log else ""))
    return time.time() - t0
