"""Webdataset tar shards of a canonical dataset, and a stream that splits them over ranks and workers.

`write_shards` (`t2i data shards DATASET OUTDIR --shard_size N`) writes `OUTDIR/shard-000000.tar`, ...: sample
i of the dataset is `<key>.png` (the dataset's PNG bytes, unchanged) and `<key>.json` ({"captions": [...],
every other `captions_<lang>` list, "attributes": {...}, "file": ...}) with key = f"{i:08d}", shard s holding
samples [s * N, (s + 1) * N). Each shard is written to a temporary sibling and renamed, and then appended to
OUTDIR/.shards-progress.jsonl with its size and sha256, so a rerun after a crash keeps the shards that are
complete and rewrites a missing, truncated or altered one. `OUTDIR/shards.json` comes last: the shard list
with sample counts, the resolution and the source's fingerprint (and `"image_only": true` for an image-only
dataset, whose samples carry `"captions": []`). Tar members carry a fixed mtime, so a rewritten shard is
bit-identical to the first one. `write_tar` and `ShardLog` (the progress log and manifest) are shared with the
other writer of shards, `t2i data laion` (t2i.data.laion).

`ShardStream` reads shards (a shards.json, a folder holding one, tar paths, or a list mixing them: a split of
ten million pairs is a list of shards, not code) as (image uint8 (3, H, W), captions, attributes). Per epoch
the shard list is shuffled by (seed, epoch), the same on every process; rank r reads positions r, r + world,
... of that order and its DataLoader workers split those round-robin, so each shard, and so each sample, is
read exactly once per epoch across all ranks and workers. Samples pass through a shuffle buffer seeded by
(seed, epoch, rank, worker). With S shards and a world that does not divide S, some ranks read one shard
more than others (which ones changes with the epoch), and the last shard may be short: every sample is still
read once per epoch, but ranks read different numbers of samples, so a multi-process loop must count steps,
not epochs. Fewer shards than ranks is an error; a worker left without a shard yields nothing.

Training streams through `ShardBatches`: one rank's endless stream of batches over epochs, in an order that
does not depend on the DataLoader's workers, placed at any step from the sample counts (exact --resume).
`open_shard_set` reads a trainer's `--data` (shards.json files or folders holding one, comma-separated) and
checks that the lists agree on one resolution and count every shard's samples.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import re
import tarfile
import zipfile
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from t2i.data.dataset import ImageTextDataset
from t2i.data.transforms import pil_to_tensor
from t2i.errors import T2IError
from t2i.io import atomic_path, remove, sha256_file, write_json_atomic

FORMAT = "t2i-shards"
VERSION = 1
MANIFEST = "shards.json"
PROGRESS = ".shards-progress.jsonl"
TAR_MTIME = 0  # fixed member mtime: reproducible shard bytes
_SHARD_NAME = re.compile(r"shard-\d{6}\.tar")


def shard_name(index: int) -> str:
    """File name of shard `index`."""
    return f"shard-{index:06d}.tar"


def sample_json(record: dict, index: int) -> bytes:
    """The `<key>.json` member of a dataset record: its caption lists, attributes, file and index."""
    meta = {k: v for k, v in record.items() if k == "captions" or k.startswith("captions_")}
    meta.update(attributes=record.get("attributes", {}), file=record["file"], index=index)
    return json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")


@contextmanager
def _image_reader(dataset: ImageTextDataset):
    """A function from an image's file name to its bytes as stored in the dataset (folder or zip)."""
    if dataset.is_zip:
        with zipfile.ZipFile(dataset.path) as zf:
            yield zf.read
    else:
        yield lambda file: (dataset.path / file).read_bytes()


def write_tar(path: Path, samples: Iterable[dict]) -> dict:
    """Write webdataset samples ({"__key__", "png", "json"}, bytes values) to the tar at path, atomically and
    with fixed member mtimes; returns its manifest entry {"file", "samples", "bytes", "sha256"}."""
    import webdataset as wds

    count = 0
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f, wds.TarWriter(f, encoder=False, mtime=TAR_MTIME) as tar:
            for sample in samples:
                tar.write(sample)
                count += 1
        entry = {"file": path.name, "samples": count, "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
    return entry


def _write_shard(dataset: ImageTextDataset, image_bytes, start: int, stop: int, path: Path) -> dict:
    """Write samples [start, stop) to the tar at path (atomically); returns its manifest entry."""
    return write_tar(path, ({"__key__": f"{i:08d}", "png": image_bytes(dataset.records[i]["file"]),
                             "json": sample_json(dataset.records[i], i)} for i in range(start, stop)))


def shard_intact(outdir: Path, entry: dict | None) -> bool:
    """Whether the shard an entry describes is on disk with its recorded size and hash."""
    if entry is None:
        return False
    path = outdir / entry["file"]
    return path.is_file() and path.stat().st_size == entry.get("bytes") and sha256_file(path) == entry.get("sha256")


def _is_complete(outdir: Path, entry: dict | None, samples: int) -> bool:
    """Whether the shard an entry describes is on disk with its recorded sample count, size and hash."""
    return entry is not None and entry.get("samples") == samples and shard_intact(outdir, entry)


def _read_done(outdir: Path, fingerprint: str, shard_size: int, overwrite: bool) -> tuple[dict[str, dict], set[str]]:
    """({shard file: entry} recorded by earlier runs over the same source and shard size, every shard file
    any earlier run recorded)."""
    runs, done, recorded = [], {}, set()
    manifest = outdir / MANIFEST
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text(encoding="utf-8"))
            runs.append((m["fingerprint"], m["shard_size"], list(m["shards"])))
        except (ValueError, KeyError, TypeError) as e:
            if not overwrite:
                raise T2IError(f"{manifest} is unreadable ({type(e).__name__}: {e}); pass --overwrite to write "
                               "all shards anew, or choose another OUTDIR") from None
    progress = outdir / PROGRESS
    if progress.is_file():
        for line in progress.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                e = json.loads(line)
                runs.append((e["fingerprint"], e["shard_size"], [e]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash: that shard is rewritten
    for run_fingerprint, run_size, entries in runs:
        entries = [e for e in entries if isinstance(e, dict) and isinstance(e.get("file"), str)
                   and _SHARD_NAME.fullmatch(e["file"])]
        recorded.update(e["file"] for e in entries)
        if (run_fingerprint, run_size) != (fingerprint, shard_size):
            if not overwrite:
                raise T2IError(f"{outdir} holds shards of another dataset or shard size (fingerprint "
                               f"{str(run_fingerprint)[:12]}, shard size {run_size}); pass --overwrite to replace "
                               "them, or choose another OUTDIR")
            continue
        # Entries keep what their writer recorded beyond file, samples, bytes and sha256 (t2i.data.laion: the
        # download shard it came from); the run keys are not part of an entry.
        done.update({e["file"]: {k: v for k, v in e.items() if k not in ("fingerprint", "shard_size")}
                     for e in entries})
    return done, recorded


class ShardLog:
    """The resumable bookkeeping of one shard folder, shared by every writer of shards (`write_shards`,
    `t2i.data.laion`): the shards earlier runs over the same source (fingerprint) and shard size completed,
    the progress log that survives a crash, and shards.json, written last.

    `with ShardLog(...) as log:` then, per shard in order, `log.previous(index)` (an earlier run's entry, to
    check and keep) and `log.add(entry, written)`; `log.finish(name, source, resolution)` writes the manifest.
    """

    def __init__(self, outdir: Path, fingerprint: str, shard_size: int, overwrite: bool = False):
        self.outdir, self.fingerprint, self.shard_size = outdir, fingerprint, shard_size
        self.done, self.recorded = _read_done(outdir, fingerprint, shard_size, overwrite)
        if overwrite:  # forget the other runs, so that a crash from here on needs no --overwrite again
            remove(outdir / MANIFEST)
            remove(outdir / PROGRESS)
        self.entries: list[dict] = []
        self.written = 0
        self._log = open(outdir / PROGRESS, "a", encoding="utf-8")
        if overwrite:
            for entry in self.done.values():
                self._append(entry)

    def __enter__(self) -> ShardLog:
        return self

    def __exit__(self, *exc) -> None:
        self._log.close()

    def _append(self, entry: dict) -> None:
        """Record a complete shard in the progress log, durably (a crash after this keeps the shard)."""
        self._log.write(json.dumps({"fingerprint": self.fingerprint, "shard_size": self.shard_size, **entry}) + "\n")
        self._log.flush()
        os.fsync(self._log.fileno())

    def previous(self, index: int) -> dict | None:
        """The entry an earlier run recorded for shard `index`, if any (not yet checked against the disk)."""
        return self.done.get(shard_name(index))

    def add(self, entry: dict, written: bool) -> None:
        """Append a shard to the manifest; a shard written by this run also goes into the progress log."""
        if written:
            self._append(entry)
            self.written += 1
        self.entries.append(entry)

    def finish(self, name: str, source, resolution, image_only: bool = False) -> dict:
        """Delete shards only other runs listed, write shards.json and drop the progress log; returns the
        manifest with the counts of shards written and kept under "written" and "kept" (not stored). An
        image-only source (samples without captions) is marked `"image_only": true`."""
        self._log.close()
        for stale in self.recorded - {e["file"] for e in self.entries}:  # listed by an overwritten run only
            remove(self.outdir / stale)
        manifest = {"format": FORMAT, "version": VERSION, "name": name, "source": source,
                    "fingerprint": self.fingerprint, "resolution": list(resolution), "shard_size": self.shard_size,
                    "samples": sum(e["samples"] for e in self.entries), "shards": self.entries}
        if image_only:
            manifest["image_only"] = True
        write_json_atomic(self.outdir / MANIFEST, manifest)
        remove(self.outdir / PROGRESS)
        return {**manifest, "written": self.written, "kept": len(self.entries) - self.written}


def write_shards(dataset_path: str | os.PathLike, outdir: str | os.PathLike, shard_size: int,
                 overwrite: bool = False, progress: bool = True) -> dict:
    """Write a canonical dataset as tar shards plus shards.json in outdir; returns the manifest, with the
    counts of shards written and kept under "written" and "kept" (not stored)."""
    from tqdm import tqdm

    if shard_size < 1:
        raise T2IError(f"--shard_size {shard_size} must be at least 1 sample")
    dataset = ImageTextDataset(dataset_path)
    outdir = Path(outdir)
    src = dataset.path.resolve()
    if outdir.resolve() == src or (not dataset.is_zip and src in outdir.resolve().parents):
        raise T2IError(f"OUTDIR {outdir} is inside the dataset {dataset.path}; choose a folder outside it")
    if outdir.exists() and not outdir.is_dir():
        raise T2IError(f"OUTDIR {outdir} is a file; give a folder for the shards")
    outdir.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    with _image_reader(dataset) as image_bytes, ShardLog(outdir, dataset.fingerprint(), shard_size, overwrite) as log:
        for s in tqdm(range((n + shard_size - 1) // shard_size), desc=f"sharding {dataset.name}", unit="shard",
                      disable=not progress):
            start, stop = s * shard_size, min(n, (s + 1) * shard_size)
            entry = log.previous(s)
            complete = _is_complete(outdir, entry, stop - start)
            if not complete:
                entry = _write_shard(dataset, image_bytes, start, stop, outdir / shard_name(s))
            log.add(entry, written=not complete)
        return log.finish(dataset.name, str(dataset.path), dataset.resolution, dataset.image_only)


def _load_manifest(path: Path) -> dict:
    """A shards.json, checked for its format, version and shard list."""
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise T2IError(f"cannot read the shard list {path} ({e}); write one with `t2i data shards`") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("shards"), list):
        raise T2IError(f"{path} is not a {FORMAT!r} shard list; write one with `t2i data shards DATASET OUTDIR`")
    if m.get("version") != VERSION:
        raise T2IError(f"{path}: shard list version {m.get('version')!r} is not supported (this t2i reads "
                       f"version {VERSION}); rewrite it with `t2i data shards`")
    return m


def _read_manifest(path: Path, m: dict | None = None) -> list[tuple[Path, int | None]]:
    """The (shard path, sample count) list of a shards.json (its loaded content m, if at hand); relative
    files are relative to its folder."""
    m = _load_manifest(path) if m is None else m
    out = []
    for i, e in enumerate(m["shards"]):
        if not (isinstance(e, dict) and isinstance(e.get("file"), str)):
            raise T2IError(f"{path}: shards[{i}] = {e!r} has no 'file'")
        out.append((path.parent / e["file"], e.get("samples")))
    return out


def resolve_shards(spec) -> list[tuple[Path, int | None]]:
    """(tar path, expected sample count or None) of every shard a spec names: a shards.json, a folder holding
    one, a .tar file (with {a..b} braces for ranges), or a list of these."""
    if isinstance(spec, (list, tuple)):
        return [shard for item in spec for shard in resolve_shards(item)]
    text = os.fspath(spec)
    path = Path(text)
    if path.is_dir():
        path = path / MANIFEST
    if path.suffix == ".json":
        if not path.is_file():
            raise T2IError(f"shard list {path} does not exist; write one with `t2i data shards DATASET OUTDIR`")
        return _read_manifest(path)
    if "{" in text:  # webdataset's own shard spec syntax: shard-{000000..000099}.tar
        from webdataset.shardlists import expand_urls

        return [(Path(p), None) for p in expand_urls(text)]
    return [(path, None)]


def split_spec(data: str) -> list[str]:
    """The parts of a comma-separated `--data` value."""
    return [part.strip() for part in str(data).split(",") if part.strip()]


def is_shard_spec(data: str) -> bool:
    """Whether a `--data` value names shards (a shards.json, a folder holding one and no dataset.json, a .tar,
    or several of these comma-separated) rather than one canonical dataset."""
    parts = split_spec(data)

    def names_shards(part: str) -> bool:
        path = Path(part)
        if path.is_dir():
            return (path / MANIFEST).is_file() and not (path / "dataset.json").is_file()
        return path.suffix in (".json", ".tar") or "{" in part

    return len(parts) > 1 or any(names_shards(part) for part in parts)


@dataclass
class ShardSet:
    """The shard lists of a training `--data` value, read together: what a trainer checks before streaming."""

    lists: list[Path]                   # the shards.json files
    shards: list[tuple[Path, int]]      # (tar path, sample count) of every shard, lists in the order given
    resolution: tuple[int, int]         # (width, height), the same in every list
    image_only: list[Path]              # the lists of image-only sources (samples without captions)

    @property
    def samples(self) -> int:
        """Samples in all shards."""
        return sum(count for _, count in self.shards)


def _require_counts(shards: list[tuple[Path, int | None]]) -> None:
    """Every shard must come with a positive sample count: training places a resumed run by the counts."""
    for path, count in shards:
        if not isinstance(count, int) or count < 1:
            raise T2IError(f"shard {path} has no positive sample count in its shard list ({count!r}); training "
                           "streams shards through the shards.json that `t2i data shards` writes, whose counts "
                           "place a resumed run in the stream")


def _first_image_size(shards: list[tuple[Path, int | None]]) -> tuple[int, int]:
    """(width, height) of the first sample's PNG: the resolution of a shard list that does not state one."""
    from t2i.data.canonical import png_size

    path = shards[0][0]
    try:
        with tarfile.open(path) as tar:
            member = next(m for m in tar if m.name.endswith(".png"))
            return png_size(tar.extractfile(member).read(24))
    except (OSError, StopIteration, ValueError, tarfile.TarError) as e:
        raise T2IError(f"cannot read the first image of shard {path} ({type(e).__name__}: {e}); rewrite the shards "
                       "with `t2i data shards`") from None


def open_shard_set(data: str) -> ShardSet:
    """The shard lists a `--data` value names (shards.json files or folders holding one, comma-separated), with
    every shard's sample count (training needs them to place a resumed run in the stream) and one resolution
    (the lists', else the first image's)."""
    lists, shards, image_only, sizes = [], [], [], {}
    for part in split_spec(data):
        path = Path(part) / MANIFEST if Path(part).is_dir() else Path(part)
        if path.suffix != ".json":
            raise T2IError(f"--data {data}: {part} is not a shard list; training streams shards through the "
                           f"{MANIFEST} that `t2i data shards` (or `t2i data laion`) writes beside them, whose "
                           "sample counts let --resume continue the stream exactly; give that file or its folder")
        if not path.is_file():
            raise T2IError(f"shard list {path} does not exist; write one with `t2i data shards DATASET OUTDIR`")
        m = _load_manifest(path)
        entries = _read_manifest(path, m)
        if not entries:
            raise T2IError(f"shard list {path} lists no shards; rewrite it with `t2i data shards`")
        _require_counts(entries)
        res = m.get("resolution")
        valid = isinstance(res, list) and len(res) == 2 and all(isinstance(v, int) and v > 0 for v in res)
        sizes[path] = tuple(res) if valid else _first_image_size(entries)
        lists.append(path)
        shards += entries
        if m.get("image_only"):
            image_only.append(path)
    if not lists:
        raise T2IError(f"--data {data!r} names no shard list; give a {MANIFEST} or a folder holding one")
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{p} {w}x{h}" for p, (w, h) in sizes.items())
        raise T2IError(f"--data {data} mixes resolutions ({listed}); the shard lists of one run must share one "
                       "(repack the odd one with `t2i data pack --width W --height H`, then `t2i data shards`)")
    return ShardSet(lists, shards, sizes[lists[0]], image_only)


def first_samples(data, n: int, caption_lang: str = "en") -> tuple[torch.Tensor, list[list[str]]]:
    """The first n samples of shards in their listed order, unshuffled: images uint8 (n, 3, H, W) and captions
    (fixed grids and metrics of a streamed run)."""
    samples = list(itertools.islice(ShardStream(split_spec(data), shuffle=False, caption_lang=caption_lang), n))
    return torch.stack([image for image, _, _ in samples]), [caps for _, caps, _ in samples]


def assign_shards(n_shards: int, rank: int, world: int, worker: int, workers: int, seed: int, epoch: int,
                  shuffle: bool = True) -> list[int]:
    """Indices of the shards one worker of one rank reads in an epoch (see the module docstring)."""
    order = list(range(n_shards))
    if shuffle:
        random.Random(f"t2i-shards:{seed}:{epoch}").shuffle(order)  # identical on every process
    return order[rank::world][worker::workers]


def shuffle_buffer(items, size: int, rng: random.Random):
    """Items in a random order drawn from a buffer of `size`: each new item replaces a random one yielded."""
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


class ShardStream(torch.utils.data.IterableDataset):
    """(image uint8 (3, H, W), captions, attributes) from tar shards, each read once per epoch over all
    ranks and DataLoader workers; shard order and a sample buffer shuffled per (seed, epoch)."""

    def __init__(self, spec, rank: int = 0, world: int = 1, seed: int = 0, epoch: int = 0, buffer: int = 1000,
                 caption_lang: str = "en", shuffle: bool = True):
        if not 0 <= rank < world:
            raise T2IError(f"rank {rank} is outside [0, world={world})")
        self.shards = resolve_shards(spec)
        if len(self.shards) < world:
            raise T2IError(f"{len(self.shards)} shard(s) for {world} ranks: every rank needs at least one; "
                           "rewrite the shards with a smaller --shard_size")
        missing = [str(p) for p, _ in self.shards if not p.is_file()]
        if missing:
            raise T2IError(f"shard {missing[0]} does not exist ({len(missing)} missing); rewrite the shards with "
                           "`t2i data shards` or fix the shard list")
        self.rank, self.world, self.seed, self.epoch = rank, world, seed, epoch
        if buffer < 1:
            raise T2IError(f"shuffle buffer {buffer} must hold at least 1 sample (1 keeps the shard order)")
        self.buffer, self.shuffle = buffer, shuffle
        self.caption_key = "captions" if caption_lang == "en" else f"captions_{caption_lang}"

    def set_epoch(self, epoch: int) -> None:
        """Read the shards of another epoch on the next iteration."""
        self.epoch = epoch

    def num_samples(self) -> int | None:
        """Samples in all shards (every rank's together); None when plain .tar paths give no counts."""
        counts = [c for _, c in self.shards]
        return None if any(c is None for c in counts) else sum(counts)

    def _raw_samples(self, indices: list[int]):
        """Webdataset samples ({"__key__", "png", "json"}) of the given shards, checked against their counts."""
        # Local files opened here, not by webdataset's URL opener (which would run "pipe:" specs).
        from webdataset.tariterators import group_by_keys, tar_file_expander

        for i in indices:
            path, expected = self.shards[i]
            count = 0
            try:
                with open(path, "rb") as stream:
                    for sample in group_by_keys(tar_file_expander([{"url": str(path), "stream": stream}])):
                        if "png" not in sample or "json" not in sample:
                            raise T2IError(f"shard {path} is damaged or truncated: sample {sample['__key__']} "
                                           "lacks its .png or .json; rewrite it with `t2i data shards`")
                        count += 1
                        yield sample
            except (OSError, EOFError, ValueError, tarfile.TarError) as e:
                raise T2IError(f"shard {path} is damaged ({type(e).__name__}: {e}); rewrite it with "
                               "`t2i data shards`") from None
            if expected is not None and count != expected:
                raise T2IError(f"shard {path} holds {count} samples, its shard list says {expected}: it is "
                               "truncated or replaced; rewrite it with `t2i data shards`")

    def decode(self, sample: dict) -> tuple[torch.Tensor, list[str], dict]:
        """(image uint8 (3, H, W), captions, attributes) of one raw sample."""
        meta = json.loads(sample["json"].decode("utf-8"))
        image = pil_to_tensor(Image.open(io.BytesIO(sample["png"])))
        return image, list(meta.get(self.caption_key, [])), meta.get("attributes", {})

    def _epoch_samples(self, epoch: int, worker: int = 0, workers: int = 1):
        """The raw samples one worker of this rank reads in an epoch, through the shuffle buffer."""
        indices = assign_shards(len(self.shards), self.rank, self.world, worker, workers, self.seed, epoch,
                                self.shuffle)
        samples = self._raw_samples(indices)
        if self.shuffle:
            rng = random.Random(f"t2i-samples:{self.seed}:{epoch}:{self.rank}:{worker}")
            samples = shuffle_buffer(samples, self.buffer, rng)
        return samples

    def __iter__(self):
        worker, workers = _worker()
        for sample in self._epoch_samples(self.epoch, worker, workers):
            yield self.decode(sample)


def _worker() -> tuple[int, int]:
    """(this DataLoader worker's id, the number of workers); (0, 1) outside a worker."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _batched(items, size: int):
    """Consecutive lists of `size` items (the last one may be shorter)."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class ShardBatches(ShardStream):
    """One rank's batches of `batch` samples from its sample number `start` on, epoch after epoch without end:
    the stream a training run reads. Batches are dicts {"image": uint8 (B, 3, H, W), "captions": [[str]]}.

    Epoch e holds exactly the samples `ShardStream(spec, rank, world, seed, e)` yields outside a DataLoader,
    in that order, and the next epoch follows without a gap (a batch may straddle two). The order does not
    depend on the DataLoader's workers: each worker reads the rank's whole sample stream (raw tar members;
    cheap next to PNG decoding, and the page cache serves the workers reading the same shard together) and
    decodes only the batches k with k % workers == worker; the DataLoader takes batches from its workers
    round-robin, so they arrive in order for any number of workers. Where sample `start` lies (epoch,
    offset) follows from the shard lists' sample counts; the samples before it in its epoch are read
    through the shuffle buffer again, not decoded. A T2IError in a worker (a damaged shard) comes out as
    a batch {"error": message}, so the trainer can raise it with its own message rather than the
    DataLoader's traceback text.
    """

    def __init__(self, spec, batch: int, resolution: tuple[int, int], rank: int = 0, world: int = 1,
                 seed: int = 0, start: int = 0, buffer: int = 1000, caption_lang: str = "en"):
        super().__init__(spec, rank, world, seed, 0, buffer, caption_lang)
        _require_counts(self.shards)
        self.batch, self.resolution, self.start = batch, tuple(resolution), start

    def epoch_samples(self, epoch: int) -> int:
        """How many samples this rank reads in an epoch."""
        shards = assign_shards(len(self.shards), self.rank, self.world, 0, 1, self.seed, epoch)
        return sum(self.shards[i][1] for i in shards)

    def locate(self, sample: int) -> tuple[int, int]:
        """(epoch, position in that epoch) of this rank's sample number `sample`, counted from epoch 0."""
        epoch = 0
        while sample >= (n := self.epoch_samples(epoch)):  # every epoch gives every rank >= 1 sample
            sample -= n
            epoch += 1
        return epoch, sample

    def _samples_from(self, epoch: int):
        """This rank's raw samples from the start of `epoch` on, endlessly."""
        while True:
            yield from self._epoch_samples(epoch)
            epoch += 1

    def _decode_batch(self, chunk: list[dict]) -> dict:
        """Stack decoded samples, each checked against the shard lists' resolution."""
        w, h = self.resolution
        images, captions = [], []
        for sample in chunk:
            try:
                image, caps, _ = self.decode(sample)
            except (OSError, ValueError) as e:  # PIL's errors on bad image bytes, JSON's on bad metadata
                raise T2IError(f"sample {sample['__key__']} of shard {sample.get('__url__')} cannot be decoded "
                               f"({type(e).__name__}: {e}); rewrite the shard with `t2i data shards`") from None
            if image.shape[1:] != (h, w):
                raise T2IError(f"sample {sample['__key__']} of shard {sample.get('__url__')} is {image.shape[2]}x"
                               f"{image.shape[1]}, but its shard list says {w}x{h}; rewrite the shards from one "
                               "dataset with `t2i data shards`")
            images.append(image)
            captions.append(caps)
        return {"image": torch.stack(images), "captions": captions}

    def __iter__(self):
        worker, workers = _worker()
        epoch, offset = self.locate(self.start)
        try:
            samples = itertools.islice(self._samples_from(epoch), offset, None)
            for k, chunk in enumerate(_batched(samples, self.batch)):
                if k % workers == worker:
                    yield self._decode_batch(chunk)
        except T2IError as e:
            yield {"error": str(e)}
