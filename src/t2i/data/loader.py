"""Batches for the training loop, drawn deterministically from (seed, step, rank), from memory or streamed.

A canonical dataset small enough is decoded once into memory (the shapes domain at 64px is ~12 KB an
image), which is far faster on a CPU than re-decoding PNGs: each step's sample indices come from a
generator seeded by the step number (`step_batches`), so resuming at step k reproduces exactly the batches
an uninterrupted run would have seen, and every process of a multi-process run draws different samples.

Shards (`--data` a shards.json, a folder holding one, or several comma-separated: a split of ten million
pairs is a list of shard lists, not code) are streamed instead (`stream_batches`): each rank reads its
shards of every epoch once, through a DataLoader whose workers decode. Step k is this rank's stream
samples [k * batch, (k + 1) * batch): the stream's order is fixed by (shards, seed, rank, world), not by the
number of workers, and the shard lists' sample counts place step k in it (epoch, offset; see
`t2i.data.shards.ShardBatches`), so a resumed run sees exactly the batches an uninterrupted one would have
(with the same processes and batch). The per-step augmentations draw from the same step generator as in
memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import torch

from t2i.errors import T2IError
from t2i.training.loop import step_seed

MAX_IN_MEMORY_BYTES = 4 * 2 ** 30
STREAM_BUFFER = 1000  # samples in each stream reader's shuffle buffer (raw PNG bytes, ~1000 x 50 KB at 256px)


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


def stream_batches(data: str, fetch: Callable[[dict, torch.Generator], dict], start_step: int, batch: int,
                   seed: int, rank: int, world: int, resolution: tuple[int, int], workers: int = 2,
                   caption_lang: str = "en") -> Iterator[dict]:
    """Infinite iterator over the shards `data` names: batch k = fetch({"image": uint8 (batch, 3, H, W),
    "captions": [[str]]} of this rank's stream samples [k * batch, (k + 1) * batch), generator of step k)."""
    from t2i.data.shards import ShardBatches, split_spec

    stream = ShardBatches(split_spec(data), batch, resolution, rank, world, seed, start=start_step * batch,
                          buffer=STREAM_BUFFER, caption_lang=caption_lang)
    # The stream never ends, so the workers live as long as the run (what persistent_workers gives a loop over
    # epochs). The loader's own generator keeps its seed draw off the global RNG, which the loop reseeds per step.
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, generator=torch.Generator())
    for step, item in enumerate(loader, start=start_step):
        if "error" in item:
            raise T2IError(item["error"])
        yield fetch(item, step_generator(seed, step, rank))


def data_name(data: str) -> str:
    """The data's name in run directories: a dataset's stem, or a shard list's folder (+N for N more lists)."""
    from t2i.data.shards import is_shard_spec, split_spec

    if not is_shard_spec(data):
        return Path(data.rstrip("/")).stem
    parts = split_spec(data)
    first = Path(parts[0].rstrip("/"))
    name = first.name if first.is_dir() else first.parent.name
    return name + (f"+{len(parts) - 1}" if len(parts) > 1 else "")


def require_dataset(data: str, needed_by: str) -> None:
    """Fail with the fix when `data` names shards but `needed_by` reads a canonical dataset into memory."""
    from t2i.data.shards import is_shard_spec

    if is_shard_spec(data):
        raise T2IError(f"--data {data} names shards, but {needed_by} reads a canonical dataset into memory and "
                       "cannot stream them; give the dataset folder or zip the shards were written from")
