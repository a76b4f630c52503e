"""Batches for the training loop, drawn deterministically from (seed, step, rank).

Each step's sample indices come from a generator seeded by the step number, so resuming at step k
reproduces exactly the batches an uninterrupted run would have seen, and every process of a
multi-process run draws different samples. Datasets small enough are decoded once into memory
(the shapes domain at 64px is ~12 KB an image), which is far faster on a CPU than re-decoding PNGs.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from t2i.errors import T2IError
from t2i.training.loop import step_seed

MAX_IN_MEMORY_BYTES = 4 * 2 ** 30


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """A CPU generator for one step's data randomness on one process."""
    return torch.Generator().manual_seed(step_seed(seed + 17, step, rank))


def step_batches(n: int, fetch: Callable[[torch.Tensor, torch.Generator], dict], start_step: int,
                 batch: int, seed: int, rank: int) -> Iterator[dict]:
    """Infinite iterator: batch k = fetch(batch random indices in [0, n), generator of step k)."""
    step = start_step
    while True:
        g = step_generator(seed, step, rank)
        idx = torch.randint(n, (batch,), generator=g)
        yield fetch(idx, g)
        step += 1


def load_images(dataset, n: int | None = None, desc: str = "loading images") -> torch.Tensor:
    """The first n (default all) images of a dataset as one uint8 tensor (N, 3, H, W)."""
    from tqdm import tqdm

    n = len(dataset) if n is None else n
    w, h = dataset.resolution
    need = n * 3 * h * w
    if need > MAX_IN_MEMORY_BYTES:
        raise T2IError(
            f"dataset {dataset.name!r} needs {need / 2 ** 30:.1f} GiB decoded; in-memory training supports up "
            f"to {MAX_IN_MEMORY_BYTES / 2 ** 30:.0f} GiB. Use --subset N or a smaller --resolution."
        )
    out = torch.empty(n, 3, h, w, dtype=torch.uint8)
    for i in tqdm(range(n), desc=desc, unit="img", leave=False, mininterval=1.0):
        out[i] = dataset[i]["image"]
    return out
