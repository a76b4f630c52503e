"""`t2i data laion PARQUET... DEST`: LAION-style metadata (url, caption, size, similarity) to t2i shards.

Three resumable stages, everything written under DEST (the parquet files are only read):

1. Select. The rows of every PARQUET, in order, are filtered (no URL; smaller than --min_size on either side;
   similarity below --min_similarity; a caption that is empty, shorter than --min_caption_words words or longer
   than --max_caption_chars characters; a row counts under the first reason that applies) and the rest written
   to DEST/work/filtered.parquet (url, caption, source_file, source_row, similarity) through a temporary file.
   Its schema metadata holds the selection's fingerprint (the selected rows and the download options that
   shape the images), so a rerun knows whether DEST/downloads belongs to the same selection.
2. Download with img2dataset (https://github.com/rom1504/img2dataset), run as a separate executable because
   it pins webdataset<0.3 and t2i needs webdataset 1.x: it fetches, decodes and resizes the images into
   DEST/downloads/NNNNN.tar (webdataset: KEY.jpg, KEY.txt, KEY.json), NNNNN.parquet (every row with its
   status and error message) and NNNNN_stats.json, written last. In --incremental_mode incremental a rerun
   skips every shard that has its stats file, so an interrupted download resumes and a finished one is not
   repeated; failed URLs of a finished shard are not tried again.
3. Shard. Each finished download shard NNNNN becomes DEST/shards/shard-NNNNNN.tar in the t2i.data.shards
   format that ShardStream reads (KEY.png re-encoded from the fully decoded image, KEY.json with the caption
   and the attributes url, source, row, similarity, original_size), through `t2i.data.shards.ShardLog`: atomic
   per-shard writes, a progress log, shards.json last. A rerun keeps a t2i shard while its download shard's
   stats file is unchanged. Images that do not decode are skipped; a download shard with no usable image
   gives no t2i shard. --processes shards are converted side by side, logged in shard order.

DEST/report.json counts the rows read, filtered out per reason, downloaded and kept, and the failures by kind:
missing (an HTTP error such as 404), corrupt (undecodable), slow (timed out), other; with the first failures
of each kind as examples (DEST/downloads/NNNNN.parquet lists them all).
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import tarfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path


from t2i.data.canonical import encode_png
from t2i.data.pack import CORRUPT, Skipped, Unusable, load_image, report_path
from t2i.data.shards import MANIFEST, ShardLog, sample_json, shard_intact, shard_name, write_tar
from t2i.errors import T2IError
from t2i.io import remove, replace_atomic, sha256_file, temp_sibling, write_json_atomic

# Filter reasons: the report counts rows by these.
NO_URL = "url"
TOO_SMALL = "size"
LOW_SIMILARITY = "similarity"
BAD_CAPTION = "caption"
FILTER_REASONS = (NO_URL, TOO_SMALL, LOW_SIMILARITY, BAD_CAPTION)

# Failure kinds of selected rows: the report counts them by these.
MISSING = "missing"  # an HTTP error status (404, 403, 500, ...)
CORRUPT_KIND = "corrupt"  # the bytes do not decode as an image (in img2dataset or here)
SLOW = "slow"  # the server did not answer within --timeout
OTHER = "other"  # connection refused, DNS failure, ...
FAILURE_KINDS = (MISSING, CORRUPT_KIND, SLOW, OTHER)

# Column spellings of the LAION releases (LAION-400M/5B: URL, TEXT, WIDTH, HEIGHT, similarity; re-LAION and
# img2dataset-style files: url, caption), matched case-insensitively, the first present wins.
COLUMNS = {
    "url": ("url", "image_url"),
    "caption": ("caption", "text", "alt_text"),
    "width": ("width", "original_width"),
    "height": ("height", "original_height"),
    "similarity": ("similarity", "clip_similarity"),
}
RESIZE_MODES = ("center_crop", "border")  # img2dataset modes that give IMAGE_SIZE x IMAGE_SIZE images
ENV_VAR = "T2I_IMG2DATASET"
INSTALL = ("python3.11 -m venv ~/.venvs/img2dataset && ~/.venvs/img2dataset/bin/pip install img2dataset, then "
           f"pass --img2dataset ~/.venvs/img2dataset/bin/img2dataset or set {ENV_VAR} to it")
FILTERED = "filtered.parquet"
SELECTION_KEY = b"t2i.selection"  # file metadata of filtered.parquet: fingerprint, rows, download shape
SAVED_COLUMNS = ("source_file", "source_row", "similarity")  # passed through img2dataset into each KEY.json
IMAGE_EXTENSIONS = ("jpg", "png", "webp")  # img2dataset's --encode_format choices
MAX_EXAMPLES = 100  # failures listed per kind in the report


@dataclass(frozen=True)
class Filters:
    """Which metadata rows are worth downloading; 0 / None switch a filter off."""

    min_size: int = 0  # the smaller of WIDTH and HEIGHT, as the metadata states them
    min_similarity: float | None = None  # CLIP image-text similarity (LAION-400M kept >= 0.3 with ViT-B/32)
    min_caption_words: int = 1
    max_caption_chars: int = 0

    def check(self) -> None:
        """Reject negative limits."""
        for name in ("min_size", "min_caption_words", "max_caption_chars"):
            if getattr(self, name) < 0:
                raise T2IError(f"--{name} {getattr(self, name)} must be 0 or more")


@dataclass(frozen=True)
class DownloadOptions:
    """How img2dataset fetches and resizes; image_size, resize_mode and shard_size shape the downloads, so
    they are part of the selection's fingerprint, the others are not."""

    image_size: int = 256
    resize_mode: str = "center_crop"
    shard_size: int = 10000
    processes: int = 1
    threads: int = 64
    timeout: int = 10
    retries: int = 0

    def check(self) -> None:
        """Reject values img2dataset would fail on (or silently misuse)."""
        if self.image_size < 8:
            raise T2IError(f"--image_size {self.image_size} must be at least 8 pixels")
        if self.resize_mode not in RESIZE_MODES:
            raise T2IError(f"--resize_mode {self.resize_mode!r}: choose one of {', '.join(RESIZE_MODES)}")
        for name in ("shard_size", "processes", "threads", "timeout"):
            if getattr(self, name) < 1:
                raise T2IError(f"--{name} {getattr(self, name)} must be at least 1")
        if self.retries < 0:
            raise T2IError(f"--retries {self.retries} must be 0 or more")


@dataclass
class LaionReport:
    """What `t2i data laion` read, filtered out, downloaded and kept; written as DEST/report.json."""

    source: list[str]
    dest: str
    filters: dict
    download: dict
    rows: int = 0  # rows read from the parquet files
    filtered: Counter = field(default_factory=Counter)  # rows left out before downloading, per reason
    selected: int = 0  # rows handed to img2dataset
    downloaded: int = 0  # images img2dataset fetched and resized
    kept: int = 0  # samples in the t2i shards
    failed: Counter = field(default_factory=Counter)  # selected rows without a sample, per kind
    messages: Counter = field(default_factory=Counter)  # "kind: error message" -> rows
    examples: list[Skipped] = field(default_factory=list)  # the first MAX_EXAMPLES failures of each kind
    shards: int = 0  # t2i shards
    shards_written: int = 0  # of which this run wrote

    def fail(self, kind: str, url: str, message: str) -> None:
        """Count one selected row that gave no sample."""
        self.failed[kind] += 1
        self.messages[f"{kind}: {message}"] += 1
        if self.failed[kind] <= MAX_EXAMPLES:
            self.examples.append(Skipped(url, kind, message))

    def to_dict(self) -> dict:
        """A JSON-ready dict in the shape of the other importers' reports (kept, skipped_by_reason,
        skipped_files), with every reason and kind present, zero or not."""
        return {"source": self.source, "dest": self.dest, "filters": self.filters, "download": self.download,
                "rows": self.rows, "filtered": {r: self.filtered[r] for r in FILTER_REASONS},
                "selected": self.selected, "downloaded": self.downloaded, "kept": self.kept,
                "failed": {k: self.failed[k] for k in FAILURE_KINDS},
                "pending": self.selected - self.kept - sum(self.failed.values()),
                "shards": self.shards, "shards_written": self.shards_written,
                "skipped_by_reason": {**{f"filtered: {r}": self.filtered[r] for r in FILTER_REASONS},
                                      **{f"failed: {k}": self.failed[k] for k in FAILURE_KINDS}},
                "error_messages": dict(sorted(self.messages.items())),
                "skipped_files": [asdict(s) for s in self.examples],
                "skipped_files_note": f"the first {MAX_EXAMPLES} failures of each kind; "
                                      "downloads/NNNNN.parquet lists every row with its status"}

    def summary(self, max_files: int = 10) -> str:
        """Human-readable lines: the first failures, then the totals."""
        lines = [f"failed {s.file}: {s.reason} ({s.detail})" for s in self.examples[:max_files]]
        if sum(self.failed.values()) > max_files:
            lines.append(f"... and {sum(self.failed.values()) - max_files} more failures (see the report)")
        filtered = ", ".join(f"{self.filtered[r]} {r}" for r in FILTER_REASONS)
        failed = ", ".join(f"{self.failed[k]} {k}" for k in FAILURE_KINDS)
        lines.append(f"read {self.rows} rows; filtered out {sum(self.filtered.values())} ({filtered}); "
                     f"selected {self.selected}; downloaded {self.downloaded}; failed {sum(self.failed.values())} "
                     f"({failed}); kept {self.kept} samples in {self.shards} shards ({self.shards_written} "
                     f"written by this run) in {Path(self.dest) / 'shards'}")
        pending = self.selected - self.kept - sum(self.failed.values())
        if pending:
            lines.append(f"{pending} selected rows are not downloaded yet (img2dataset left a shard unfinished, "
                         "see work/img2dataset.log); rerun the same command to resume")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Stage 1: select


def _pyarrow():
    """pyarrow and pyarrow.parquet, or a T2IError saying how to install them."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise T2IError("reading parquet files needs pyarrow, which is not installed; run "
                       "pip install 't2i[laion]' (or pip install pyarrow)") from None
    return pyarrow, pyarrow.parquet


def resolve_columns(names: list[str], overrides: dict[str, str | None], path: Path,
                    needed: tuple[str, ...]) -> dict[str, str | None]:
    """{role: column name or None} for the roles of COLUMNS: an override (--url_col, ...) must exist as
    given; otherwise the first spelling present in any case. A needed role without a column is an error
    that lists the columns found."""
    lower: dict[str, str] = {}
    for name in names:
        lower.setdefault(name.lower(), name)
    columns = {}
    for role, spellings in COLUMNS.items():
        override = overrides.get(role)
        if override:
            if override not in names:
                raise T2IError(f"{path} has no column {override!r} (--{role}_col); its columns are "
                               f"{', '.join(names)}")
            columns[role] = override
        else:
            columns[role] = next((lower[s] for s in spellings if s in lower), None)
        if columns[role] is None and role in needed:
            raise T2IError(f"{path} has no {role} column (looked for {', '.join(spellings)} in any case; its "
                           f"columns are {', '.join(names)}); name it with --{role}_col")
    return columns


def _number(value) -> float | None:
    """A metadata number, or None for a missing, NaN or non-numeric one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return float(value)


def filter_reason(url, caption, width, height, similarity, filters: Filters) -> str | None:
    """Why a metadata row is not downloaded (one of FILTER_REASONS, the first that applies), or None."""
    if not isinstance(url, str) or not url.strip():
        return NO_URL
    if filters.min_size:
        w, h = _number(width), _number(height)
        if w is None or h is None or min(w, h) < filters.min_size:
            return TOO_SMALL
    if filters.min_similarity is not None:
        s = _number(similarity)
        if s is None or s < filters.min_similarity:
            return LOW_SIMILARITY
    text = caption.strip() if isinstance(caption, str) else ""
    if not text or len(text.split()) < filters.min_caption_words:
        return BAD_CAPTION
    if filters.max_caption_chars and len(text) > filters.max_caption_chars:
        return BAD_CAPTION
    return None


def _read_rows(path: Path, overrides: dict, filters: Filters, batch_rows: int = 65536):
    """Batches of {role: values} of one parquet file (only the columns it needs are read)."""
    pa, pq = _pyarrow()
    needed = ("url", "caption") + (("width", "height") if filters.min_size else ()) \
        + (("similarity",) if filters.min_similarity is not None else ())
    try:
        parquet = pq.ParquetFile(path)
        columns = resolve_columns(parquet.schema_arrow.names, overrides, path, needed)
        present = {role: name for role, name in columns.items() if name is not None}
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=sorted(set(present.values()))):
            values = {role: batch.column(name).to_pylist() for role, name in present.items()}
            yield batch.num_rows, values
    except (pa.ArrowException, OSError) as e:
        raise T2IError(f"cannot read {path} as parquet ({type(e).__name__}: {e}); pass LAION metadata "
                       "parquet files with url and caption columns") from None


def select(sources: list[Path], out: Path, filters: Filters, download: DownloadOptions, overrides: dict,
           report: LaionReport) -> str:
    """Write the rows of the sources that pass the filters to the parquet file out, with the selection's
    fingerprint in its metadata; counts go into report; returns the fingerprint."""
    pa, pq = _pyarrow()
    schema = pa.schema([("url", pa.string()), ("caption", pa.string()), ("source_file", pa.string()),
                        ("source_row", pa.int64()), ("similarity", pa.float64())])
    shape = {k: getattr(download, k) for k in ("image_size", "resize_mode", "shard_size")}
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode())
    with pq.ParquetWriter(out, schema) as writer:
        for source in sources:
            row = 0
            for n, values in _read_rows(source, overrides, filters):
                selected = {name: [] for name in schema.names}
                for i in range(n):
                    get = {role: values[role][i] if role in values else None for role in COLUMNS}
                    reason = filter_reason(get["url"], get["caption"], get["width"], get["height"],
                                           get["similarity"], filters)
                    if reason is not None:
                        report.filtered[reason] += 1
                        continue
                    item = {"url": get["url"].strip(), "caption": get["caption"].strip(), "source_file": source.name,
                            "source_row": row + i, "similarity": _number(get["similarity"])}
                    digest.update(json.dumps(list(item.values()), ensure_ascii=False).encode() + b"\n")
                    for name, value in item.items():
                        selected[name].append(value)
                row += n
                report.rows += n
                report.selected += len(selected["url"])
                writer.write_table(pa.table(selected, schema=schema))
        fingerprint = digest.hexdigest()
        # Written into the footer on close: a filtered.parquet always carries the fingerprint of its rows.
        writer.add_key_value_metadata({SELECTION_KEY: json.dumps({"fingerprint": fingerprint, **shape,
                                                                  "rows": report.selected})})
    return fingerprint


def selection_fingerprint(path: Path) -> str | None:
    """The fingerprint stored in a filtered.parquet, or None (absent or unreadable: it is rewritten)."""
    if not path.is_file():
        return None
    pa, pq = _pyarrow()
    try:
        meta = pq.read_metadata(path).metadata or {}
        return json.loads(meta[SELECTION_KEY])["fingerprint"]
    except (pa.ArrowException, OSError, KeyError, ValueError, TypeError):
        return None


# ----------------------------------------------------------------------------------------------------------
# Stage 2: download


def find_img2dataset(option: str | None) -> str:
    """The img2dataset executable: --img2dataset, else $T2I_IMG2DATASET, else `img2dataset` on PATH."""
    given = option or os.environ.get(ENV_VAR)
    if given:
        path = Path(given).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            origin = "--img2dataset" if option else f"${ENV_VAR}"
            raise T2IError(f"{origin} {given} is not an executable file; install img2dataset in its own "
                           f"environment (it pins webdataset<0.3, t2i needs 1.x): {INSTALL}")
        return str(path)
    found = shutil.which("img2dataset")
    if found is None:
        raise T2IError("img2dataset was not found (no --img2dataset, no $T2I_IMG2DATASET, none on PATH); "
                       f"install it in its own environment (it pins webdataset<0.3, t2i needs 1.x): {INSTALL}")
    return found


def img2dataset_command(exe: str, url_list: Path, output: Path, options: DownloadOptions) -> list[str]:
    """The img2dataset command line that downloads the selection into output (see the module docstring)."""
    return [exe, "--url_list", str(url_list), "--input_format", "parquet", "--url_col", "url",
            "--caption_col", "caption", "--save_additional_columns", json.dumps(list(SAVED_COLUMNS)),
            "--output_format", "webdataset", "--output_folder", str(output), "--encode_format", "jpg",
            "--image_size", str(options.image_size), "--resize_mode", options.resize_mode,
            "--resize_only_if_bigger", "False", "--number_sample_per_shard", str(options.shard_size),
            "--processes_count", str(options.processes), "--thread_count", str(options.threads),
            "--timeout", str(options.timeout), "--retries", str(options.retries),
            "--incremental_mode", "incremental", "--distributor", "multiprocessing", "--enable_wandb", "False"]


def _stats_name(shard_id: int) -> str:
    return f"{shard_id:05d}_stats.json"  # img2dataset's --oom_shard_count 5


def finished_downloads(downloads: Path) -> list[int]:
    """Ids of the download shards img2dataset finished (their stats file is written last), sorted."""
    if not downloads.is_dir():
        return []
    return sorted(int(p.name[:5]) for p in downloads.glob("*_stats.json") if p.name[:5].isdigit())


def _forget_broken_downloads(downloads: Path) -> None:
    """Delete the stats file of a finished download shard whose tar or parquet is missing, or that is not
    JSON itself (img2dataset writes it in place), so that img2dataset's incremental mode downloads that
    shard again instead of counting it done."""
    for shard_id in finished_downloads(downloads):
        stats = downloads / _stats_name(shard_id)
        try:
            json.loads(stats.read_text(encoding="utf-8"))
            intact = all((downloads / f"{shard_id:05d}.{ext}").is_file() for ext in ("tar", "parquet"))
        except (OSError, ValueError):
            intact = False
        if not intact:
            remove(stats)


def run_img2dataset(command: list[str], log_path: Path) -> None:
    """Run img2dataset with its output in log_path; a T2IError if it cannot start or fails."""
    # Its own environment: a PYTHONPATH meant for t2i (another pyarrow, webdataset 1.x) must not reach it.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations asks PyPI for updates on every import
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  stdin=subprocess.DEVNULL).returncode
        except OSError as e:
            raise T2IError(f"cannot run img2dataset {command[0]} ({e}); reinstall it: {INSTALL}") from None
    if code != 0:
        lines = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        raise T2IError(f"img2dataset exited with code {code} ({lines[-1] if lines else 'no output'}); its "
                       f"output is in {log_path}; fix the cause and rerun the same command to resume")


# ----------------------------------------------------------------------------------------------------------
# Stage 3: shard, and count the failures


def decode_image(data: bytes, size: int) -> bytes:
    """PNG bytes of a downloaded image after a full decode (the importers' `load_image`); Unusable if it
    does not decode or is not size x size."""
    return encode_png(load_image(data, size, size, "none"))


def _download_samples(tar_path: Path):
    """The samples ({"__key__", "jpg", "json", ...}) of an img2dataset webdataset tar in key order (its
    threads write them in the order the downloads finish), so a t2i shard follows the selection's order."""
    with tarfile.open(tar_path) as tar:
        members: dict[str, dict[str, tarfile.TarInfo]] = {}
        for member in tar.getmembers():  # headers only: the images are read one sample at a time below
            if member.isfile():
                key, _, ext = member.name.rpartition("/")[2].partition(".")
                members.setdefault(key, {})[ext] = member
        for key in sorted(members):
            yield {"__key__": key, **{ext: tar.extractfile(m).read() for ext, m in members[key].items()}}


def convert_samples(tar_path: Path, size: int, skipped: list[Skipped]):
    """t2i shard samples from a download tar; images that do not decode are appended to skipped."""
    for sample in _download_samples(tar_path):
        meta = json.loads(sample["json"].decode("utf-8"))
        url = meta.get("url") or sample["__key__"]
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        caption = (meta.get("caption") or "").strip()
        try:
            if ext is None:
                raise Unusable(CORRUPT, "no image in the sample")
            if not caption:
                raise Unusable(BAD_CAPTION, "empty caption")
            png = decode_image(sample[ext], size)
        except Unusable as e:
            skipped.append(Skipped(url, e.args[0], e.args[1]))
            continue
        similarity = _number(meta.get("similarity"))
        record = {"captions": [caption], "file": url,
                  "attributes": {"url": url, "source": meta.get("source_file"), "row": meta.get("source_row"),
                                 "similarity": similarity,
                                 "original_size": [meta.get("original_width"), meta.get("original_height")]}}
        yield {"__key__": sample["__key__"], "png": png, "json": sample_json(record, int(sample["__key__"]))}


def failure_kind(status: str, message: str) -> str:
    """The report's kind (FAILURE_KINDS) of a row img2dataset did not download, from its status
    ("failed_to_download" or "failed_to_resize") and error message (str() of urllib's exception, or the
    resizer's message)."""
    text = (message or "").lower()
    if "http error" in text:  # urllib.error.HTTPError: "HTTP Error 404: Not Found"
        return MISSING
    if "timed out" in text:  # socket timeouts: "timed out", "The read operation timed out"
        return SLOW
    if "decod" in text or "cannot identify image" in text:  # the resizer's "Image decoding error"
        return CORRUPT_KIND
    if status == "failed_to_resize" and not any(w in text for w in ("too small", "too large", "blurrer")):
        return CORRUPT_KIND  # OpenCV failing on the bytes
    return OTHER


def count_download_failures(parquet_path: Path, report: LaionReport) -> None:
    """Add one download shard's rows to report: successes to downloaded, the others to failed."""
    pa, pq = _pyarrow()
    try:
        table = pq.read_table(parquet_path, columns=["url", "status", "error_message"])
    except (pa.ArrowException, OSError) as e:
        raise T2IError(f"cannot read img2dataset's {parquet_path} ({e}); delete it and "
                       f"{_stats_name(int(parquet_path.stem))} beside it and rerun to download that shard "
                       "again") from None
    for url, status, message in zip(*(table.column(c).to_pylist() for c in ("url", "status", "error_message"))):
        if status == "success":
            report.downloaded += 1
        else:
            report.fail(failure_kind(status, message), url, message or status)


def _convert_shard(job: tuple[Path, Path, Path, int]) -> dict:
    """Pool worker: (download tar, its stats file, t2i shard to write, image size) to the shard's log entry
    (with the images skipped and the download's stats hash)."""
    tar, stats, out, size = job
    skipped: list[Skipped] = []
    try:
        entry = write_tar(out, convert_samples(tar, size, skipped))
    except (OSError, EOFError, ValueError, KeyError, tarfile.TarError) as e:
        raise T2IError(f"download shard {tar} is damaged ({type(e).__name__}: {e}); delete {stats} and rerun to "
                       "download it again") from None
    return {**entry, "download": tar.name, "download_stats": sha256_file(stats),
            "skipped": [asdict(s) for s in skipped]}


def write_laion_shards(downloads: Path, outdir: Path, fingerprint: str, options: DownloadOptions,
                       overwrite: bool, report: LaionReport, progress: bool = True) -> dict:
    """One t2i shard per finished download shard with a usable image (see the module docstring), converted
    by `options.processes` processes; counts go into report; returns the manifest."""
    from tqdm import tqdm

    outdir.mkdir(parents=True, exist_ok=True)
    with ShardLog(outdir, fingerprint, options.shard_size, overwrite) as log:
        plan = []  # (previous entry if still complete, else the conversion job), in shard order
        for shard_id in finished_downloads(downloads):
            count_download_failures(downloads / f"{shard_id:05d}.parquet", report)
            stats = downloads / _stats_name(shard_id)
            entry = log.previous(shard_id)
            if entry is not None and entry.get("download_stats") == sha256_file(stats) and shard_intact(outdir, entry):
                plan.append((entry, None))
            else:
                plan.append((None, (downloads / f"{shard_id:05d}.tar", stats, outdir / shard_name(shard_id),
                                    options.image_size)))
        jobs = [job for _, job in plan if job is not None]
        # Order-preserving pool: shards are decoded side by side and logged in shard order.
        pool = multiprocessing.Pool(min(options.processes, len(jobs))) if options.processes > 1 and len(jobs) > 1 \
            else None
        try:
            converted = pool.imap(_convert_shard, jobs) if pool else map(_convert_shard, jobs)
            converted = iter(tqdm(converted, total=len(jobs), desc="t2i shards", unit="shard", disable=not progress))
            for entry, job in plan:
                written = job is not None
                entry = next(converted) if written else entry
                for s in entry.get("skipped", []):
                    report.fail(CORRUPT_KIND if s["reason"] == CORRUPT else OTHER, s["file"],
                                f"{s['reason']}: {s['detail']}")
                if entry["samples"] == 0:  # nothing usable: no empty shard in the list (it stays uncounted)
                    remove(outdir / entry["file"])
                    continue
                log.add(entry, written=written)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        manifest = log.finish(Path(report.dest).name, report.source, (options.image_size, options.image_size))
    report.kept, report.shards, report.shards_written = manifest["samples"], len(log.entries), manifest["written"]
    return manifest


# ----------------------------------------------------------------------------------------------------------
# The command


def _check_paths(sources: list[Path], dest: Path) -> None:
    """Reject missing sources, a DEST that is a file, and a source inside the folders laion writes."""
    if not sources:
        raise T2IError("no PARQUET given; pass one or more LAION metadata parquet files, then DEST")
    for source in sources:
        if not source.is_file():
            raise T2IError(f"parquet file {source} does not exist (or is not a file); pass LAION metadata "
                           "parquet files (e.g. part-00000-*.parquet) before DEST")
    if dest.exists() and not dest.is_dir():
        raise T2IError(f"DEST {dest} is a file; give a folder for the downloads, shards and report")
    for folder in (dest / "work", dest / "downloads", dest / "shards"):
        for source in sources:
            if folder.resolve() in source.resolve().parents:
                raise T2IError(f"{source} lies inside {folder}, which t2i data laion writes; move the "
                               "metadata out of DEST")


def laion(
    sources: list[str | os.PathLike],
    dest: str | os.PathLike,
    filters: Filters = Filters(),
    options: DownloadOptions = DownloadOptions(),
    columns: dict[str, str | None] | None = None,
    img2dataset: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> LaionReport:
    """Filter LAION metadata, download it with img2dataset and write t2i shards under DEST (see the module
    docstring); returns the report, also written to DEST/report.json. A rerun resumes."""
    sources, dest = [Path(s) for s in sources], Path(dest)
    _check_paths(sources, dest)
    filters.check()
    options.check()
    exe = find_img2dataset(img2dataset)
    report = LaionReport([str(s) for s in sources], str(dest), asdict(filters), asdict(options))
    work, downloads = dest / "work", dest / "downloads"
    work.mkdir(parents=True, exist_ok=True)
    previous = selection_fingerprint(work / FILTERED)
    tmp = temp_sibling(work / FILTERED)
    try:
        fingerprint = select(sources, tmp, filters, options, columns or {}, report)
        if report.selected == 0:
            reasons = ", ".join(f"{report.filtered[r]} {r}" for r in FILTER_REASONS)
            raise T2IError(f"no row of the {report.rows} read passed the filters ({reasons}); lower --min_size, "
                           "--min_similarity or --min_caption_words, or check --url_col/--caption_col")
        if previous != fingerprint:  # checked before filtered.parquet changes: downloads follow its rows
            if finished_downloads(downloads):
                if not overwrite:
                    raise T2IError(f"{downloads} holds downloads of another selection (other parquet files, "
                                   "filters, --image_size, --resize_mode or --shard_size); pass --overwrite to "
                                   "download anew, or choose another DEST")
                remove(downloads)
            replace_atomic(tmp, work / FILTERED)
    finally:
        remove(tmp)
    _forget_broken_downloads(downloads)
    expected = math.ceil(report.selected / options.shard_size)
    if len(finished_downloads(downloads)) < expected:  # a finished download is not even started again
        run_img2dataset(img2dataset_command(exe, work / FILTERED, downloads, options), work / "img2dataset.log")
    manifest = write_laion_shards(downloads, dest / "shards", fingerprint, options, overwrite, report, progress)
    write_json_atomic(report_path(dest), report.to_dict())
    if manifest["samples"] == 0:
        raise T2IError(f"none of the {report.selected} selected images could be downloaded and decoded "
                       f"({dict(report.failed)}); see {report_path(dest)} and {work / 'img2dataset.log'}")
    return report


def shards_path(dest: str | os.PathLike) -> Path:
    """The shards.json that `t2i data laion` writes under DEST (what ShardStream reads)."""
    return Path(dest) / "shards" / MANIFEST
