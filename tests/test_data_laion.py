"""Tests for `t2i data laion`: filtering, column names, failure kinds, conversion of img2dataset shards, the
errors, and an end-to-end run of the real img2dataset against a local HTTP server with missing, corrupt and
slow URLs (counts in the report, nothing half-written, reruns that resume without new requests)."""

import io
import json
import os
import tarfile
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import cli
from t2i.cli import data as cli_data
from t2i.data import laion as laion_module
from t2i.data.laion import (
    BAD_CAPTION,
    LOW_SIMILARITY,
    NO_URL,
    TOO_SMALL,
    DownloadOptions,
    Filters,
    LaionReport,
    convert_samples,
    failure_kind,
    filter_reason,
    resolve_columns,
    write_laion_shards,
)
from t2i.data.pack import CORRUPT, WRONG_SIZE
from t2i.data.shards import MANIFEST, ShardStream, shard_name
from t2i.errors import T2IError
from t2i.io import sha256_file

REPO = Path(__file__).resolve().parents[1]
SLOW_SECONDS = 4  # the slow URLs answer after this; the run uses --timeout 1


def img2dataset_exe() -> str:
    """The img2dataset of `make img2dataset` (REPO/.venv-img2dataset), or $T2I_IMG2DATASET; fails (never
    skips) without one, so that CI cannot pass without running the end-to-end test."""
    exe = os.environ.get("T2I_IMG2DATASET") or str(REPO / ".venv-img2dataset" / "bin" / "img2dataset")
    if not (Path(exe).is_file() and os.access(exe, os.X_OK)):
        pytest.fail(f"img2dataset not found at {exe}: run `make img2dataset` (creates .venv-img2dataset) or set "
                    "T2I_IMG2DATASET to an img2dataset executable")
    return exe


def _image_bytes(seed: int, fmt: str, size=(64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    array = np.repeat(np.repeat(rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8), 8, 0), 8, 1)
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").save(buffer, format=fmt)
    return buffer.getvalue()


class ImageServer(ThreadingHTTPServer):
    """Generated images on 127.0.0.1: /ok/N.jpg and /ok/N.png, /missing/N (404), /corrupt/N (random bytes
    served as a JPEG), /slow/N (an image after SLOW_SECONDS); counts the requests per path."""

    daemon_threads = True

    def __init__(self):
        self.hits: Counter = Counter()
        self.stop = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        server: ImageServer = self.server
        server.hits[self.path] += 1
        kind, name = self.path.strip("/").split("/")
        seed = int(name.split(".")[0])
        if kind == "missing":
            self.send_error(404)
            return
        if kind == "slow" and server.stop.wait(SLOW_SECONDS):
            return
        if kind == "corrupt":
            body, mime = np.random.default_rng(seed).bytes(2000), "image/jpeg"
        else:
            fmt = "PNG" if name.endswith(".png") else "JPEG"
            body, mime = _image_bytes(seed, fmt), f"image/{fmt.lower()}"
        try:
            self.send_response(200)
            self.send_header("Content-Type", mime)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up (a slow URL past its timeout)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ImageServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.stop.set()
    srv.shutdown()
    srv.server_close()


# (URL path or None, caption, width, height, similarity) in LAION's column order; the comment says what
# becomes of each row. Shards of 4 selected rows: [0 1 2 4] [5 6 8 9] [11].
ROWS = [
    ("/ok/0.jpg", "a red kite over the sea", 640, 480, 0.35),  # kept (download shard 0)
    ("/ok/1.png", "two dogs on a sofa", 500, 500, 0.31),  # kept
    ("/missing/2", "a lost picture", 300, 200, 0.40),  # missing (404)
    ("/ok/3.jpg", "a tiny icon", 16, 16, 0.50),  # filtered: size
    ("/corrupt/4", "a broken file", 800, 600, 0.33),  # corrupt
    ("/ok/5.jpg", "a city at night", 1024, 768, 0.30),  # kept (download shard 1)
    ("/slow/6", "a slow server", 400, 300, 0.30),  # slow (timed out)
    ("/ok/7.jpg", "unrelated text", 400, 300, 0.05),  # filtered: similarity
    ("/ok/8.png", "a green field", 256, 256, 0.29),  # kept
    ("/missing/9", "another lost picture", 256, 256, 0.29),  # missing (404)
    ("/ok/10.jpg", "   ", 256, 256, 0.35),  # filtered: caption
    ("/ok/11.jpg", "a bowl of fruit", 300, 300, 0.32),  # kept (download shard 2)
    (None, "no link", 300, 300, 0.32),  # filtered: url
]
KEPT = {"a red kite over the sea", "two dogs on a sofa", "a city at night", "a green field", "a bowl of fruit"}
OPTIONS = ["--min_size", 32, "--min_similarity", 0.2, "--image_size", 32, "--shard_size", 4, "--processes", 1,
           "--threads", 4, "--timeout", 1, "--retries", 0]


def write_metadata(path: Path, server: ImageServer | None, rows=ROWS) -> Path:
    """A LAION-style parquet (URL, TEXT, WIDTH, HEIGHT, similarity, and an unused NSFW column)."""
    table = pa.table({
        "URL": [server.url(r[0]) if r[0] and server else r[0] for r in rows],
        "TEXT": [r[1] for r in rows],
        "WIDTH": [r[2] for r in rows],
        "HEIGHT": [r[3] for r in rows],
        "similarity": [r[4] for r in rows],
        "NSFW": ["UNLIKELY"] * len(rows),
    })
    pq.write_table(table, path)
    return path


def _all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*.tar")}


def test_end_to_end_with_missing_corrupt_and_slow_urls(tmp_path, server, capsys, cli_error, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a proxy configured on the machine must not see these
    exe = img2dataset_exe()
    source = write_metadata(tmp_path / "part-00000.parquet", server)
    source_hash = sha256_file(source)
    dest = tmp_path / "laion"
    cli("data", "laion", source, dest, "--img2dataset", exe, *OPTIONS)
    out = capsys.readouterr()
    assert "failed 4 (2 missing, 1 corrupt, 1 slow, 0 other); kept 5 samples in 3 shards" in out.err

    report = json.loads((dest / "report.json").read_text())
    assert (report["rows"], report["selected"], report["downloaded"], report["kept"]) == (13, 9, 5, 5)
    assert report["filtered"] == {NO_URL: 1, TOO_SMALL: 1, LOW_SIMILARITY: 1, BAD_CAPTION: 1}
    assert report["failed"] == {"missing": 2, "corrupt": 1, "slow": 1, "other": 0}
    assert report["kept"] == 5 and report["pending"] == 0 and report["shards"] == 3
    failures = {Path(s["file"]).parts[-2]: s["reason"] for s in report["skipped_files"]}
    assert failures == {"missing": "missing", "corrupt": "corrupt", "slow": "slow"}
    assert source_hash == sha256_file(source)  # the source is only read

    stream = ShardStream(dest / "shards", shuffle=False)
    samples = list(stream)
    assert stream.num_samples() == 5 and {c[0] for _, c, _ in samples} == KEPT
    assert [a["row"] for _, _, a in samples] == [0, 1, 5, 8, 11]  # the metadata's order, whatever the timing
    for image, captions, attributes in samples:
        assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and len(captions) == 1
        row = attributes["row"]
        assert attributes["url"] == server.url(ROWS[row][0]) and attributes["source"] == source.name
        assert ROWS[row][1] == captions[0] and attributes["similarity"] == pytest.approx(ROWS[row][4])
    manifest = json.loads((dest / "shards" / MANIFEST).read_text())
    assert [(e["file"], e["samples"]) for e in manifest["shards"]] == [
        (shard_name(0), 2), (shard_name(1), 2), (shard_name(2), 1)]

    files = _all_files(dest)
    assert not [f for f in files if f.endswith((".tmp", ".old", ".jsonl")) or "_tmp" in f], files
    assert {"report.json", "work/filtered.parquet", "shards/shards.json", "downloads/00002_stats.json"} <= set(files)

    # A rerun of the finished command fetches nothing and keeps every shard.
    hits, stamps = dict(server.hits), _mtimes(dest / "shards")
    cli("data", "laion", source, dest, "--img2dataset", exe, *OPTIONS)
    assert dict(server.hits) == hits and _mtimes(dest / "shards") == stamps
    again = json.loads((dest / "report.json").read_text())
    assert {k: v for k, v in again.items() if k != "shards_written"} == \
        {k: v for k, v in report.items() if k != "shards_written"}
    assert again["shards_written"] == 0 and report["shards_written"] == 3

    # img2dataset killed inside download shard 1 (no stats file yet): only that shard is fetched again, and
    # only its t2i shard is rewritten.
    (dest / "downloads" / "00001_stats.json").unlink()
    cli("data", "laion", source, dest, "--img2dataset", exe, *OPTIONS)
    shard1 = {ROWS[i][0] for i in (5, 6, 8, 9)}
    assert {p for p in server.hits if server.hits[p] != hits.get(p)} == shard1
    assert all(server.hits[p] == hits[p] + 1 for p in shard1)
    now = _mtimes(dest / "shards")
    assert now[shard_name(0)] == stamps[shard_name(0)] and now[shard_name(2)] == stamps[shard_name(2)]
    resumed = json.loads((dest / "report.json").read_text())
    assert (resumed["kept"], resumed["failed"], resumed["shards_written"]) == (5, report["failed"], 1)
    assert not [f for f in _all_files(dest) if f.endswith((".tmp", ".old", ".jsonl")) or "_tmp" in f]

    # Other filters give another selection: refused while DEST holds its downloads, replaced with --overwrite.
    stricter = [*OPTIONS, "--min_similarity", 0.3]  # also drops rows 8 and 9
    assert "--overwrite" in cli_error("data", "laion", source, dest, "--img2dataset", exe, *stricter)
    cli("data", "laion", source, dest, "--img2dataset", exe, *stricter, "--overwrite")
    replaced = json.loads((dest / "report.json").read_text())
    assert (replaced["selected"], replaced["kept"], replaced["shards"]) == (7, 4, 2)
    assert replaced["failed"] == {"missing": 1, "corrupt": 1, "slow": 1, "other": 0}
    assert sorted(p.name for p in (dest / "shards").iterdir()) == sorted([MANIFEST, shard_name(0), shard_name(1)])
    assert sorted(a["row"] for _, _, a in ShardStream(dest / "shards")) == [0, 1, 5, 11]
    assert not [f for f in _all_files(dest) if f.endswith((".tmp", ".old", ".jsonl")) or "_tmp" in f]
    assert source_hash == sha256_file(source)


def test_filter_reasons_in_order():
    f = Filters(min_size=32, min_similarity=0.2, min_caption_words=2, max_caption_chars=20)
    assert filter_reason("http://x/a.jpg", "a red kite", 64, 40, 0.3, f) is None
    assert filter_reason(None, "a red kite", 64, 40, 0.3, f) == NO_URL
    assert filter_reason("  ", "a red kite", 64, 40, 0.3, f) == NO_URL
    assert filter_reason("http://x", "a red kite", 64, 31, 0.3, f) == TOO_SMALL
    assert filter_reason("http://x", "a red kite", None, 40, 0.3, f) == TOO_SMALL  # unknown size
    assert filter_reason("http://x", "a red kite", float("nan"), 40, 0.3, f) == TOO_SMALL
    assert filter_reason("http://x", "", 16, 16, 0.0, f) == TOO_SMALL  # the first reason counts
    assert filter_reason("http://x", "a red kite", 64, 40, 0.19, f) == LOW_SIMILARITY
    assert filter_reason("http://x", "a red kite", 64, 40, None, f) == LOW_SIMILARITY
    assert filter_reason("http://x", "kite", 64, 40, 0.3, f) == BAD_CAPTION  # one word
    assert filter_reason("http://x", "a red kite over the sea", 64, 40, 0.3, f) == BAD_CAPTION  # 23 chars
    assert filter_reason("http://x", None, 64, 40, 0.3, f) == BAD_CAPTION
    off = Filters()  # only the URL and a non-empty caption are required
    assert filter_reason("http://x", "kite", None, None, None, off) is None
    assert filter_reason("http://x", " \n", None, None, None, off) == BAD_CAPTION


def test_columns_found_in_any_case_or_named():
    names = ["SAMPLE_ID", "URL", "TEXT", "WIDTH", "HEIGHT", "similarity"]
    cols = resolve_columns(names, {}, Path("a.parquet"), ("url", "caption"))
    assert cols == {"url": "URL", "caption": "TEXT", "width": "WIDTH", "height": "HEIGHT", "similarity": "similarity"}
    cols = resolve_columns(["link", "alt", "w"], {"url": "link", "caption": "alt"}, Path("b.parquet"), ("url",))
    assert (cols["url"], cols["caption"], cols["width"]) == ("link", "alt", None)
    with pytest.raises(T2IError, match="no url column .*its columns are link, alt, w\\); name it with --url_col"):
        resolve_columns(["link", "alt", "w"], {}, Path("b.parquet"), ("url", "caption"))
    with pytest.raises(T2IError, match="no column 'Link' \\(--url_col\\)"):
        resolve_columns(["link", "alt"], {"url": "Link"}, Path("b.parquet"), ("url",))


def test_failure_kinds_of_img2dataset_messages():
    assert failure_kind("failed_to_download", "HTTP Error 404: Not Found") == "missing"
    assert failure_kind("failed_to_download", "HTTP Error 503: Service Unavailable") == "missing"
    assert failure_kind("failed_to_download", "timed out") == "slow"
    assert failure_kind("failed_to_download", "The read operation timed out") == "slow"
    assert failure_kind("failed_to_resize", "Image decoding error") == "corrupt"
    assert failure_kind("failed_to_download", "<urlopen error [Errno 111] Connection refused>") == "other"


def _download_tar(path: Path, samples: list[tuple[str, bytes, dict]]) -> Path:
    """An img2dataset-style webdataset tar: KEY.jpg, KEY.txt, KEY.json."""
    with tarfile.open(path, "w") as tar:
        for key, image, meta in samples:
            for ext, data in (("jpg", image), ("txt", meta["caption"].encode()), ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_images_that_do_not_decode_are_skipped(tmp_path):
    good = _image_bytes(0, "JPEG", (32, 32))
    meta = {"url": "http://x/0.jpg", "caption": "a kite", "source_file": "p.parquet", "source_row": 7,
            "similarity": 0.3, "original_width": 640, "original_height": 480}
    tar = _download_tar(tmp_path / "00000.tar", [  # in the order img2dataset's threads finished
        ("000000003", _image_bytes(1, "JPEG", (48, 32)), {**meta, "url": "http://x/3.jpg"}),  # wrong size
        ("000000001", good[: len(good) // 2], {**meta, "url": "http://x/1.jpg"}),  # truncated
        ("000000000", good, meta),
        ("000000002", b"not an image", {**meta, "url": "http://x/2.jpg"}),
    ])
    skipped = []
    out = list(convert_samples(tar, 32, skipped))
    assert [s["__key__"] for s in out] == ["000000000"]
    record = json.loads(out[0]["json"])
    assert record["captions"] == ["a kite"] and record["attributes"] == {
        "url": "http://x/0.jpg", "source": "p.parquet", "row": 7, "similarity": 0.3, "original_size": [640, 480]}
    assert Image.open(io.BytesIO(out[0]["png"])).format == "PNG"
    assert [(s.file, s.reason) for s in skipped] == [
        ("http://x/1.jpg", CORRUPT), ("http://x/2.jpg", CORRUPT), ("http://x/3.jpg", WRONG_SIZE)]


def test_shards_converted_by_several_processes_are_the_ones_one_process_writes(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    meta = {"caption": "a kite", "source_file": "p.parquet", "similarity": 0.3}
    for shard in range(5):  # shard 3 holds only an undecodable image: no t2i shard for it
        samples = [(f"{shard:04d}{k:05d}", b"junk" if shard == 3 else _image_bytes(shard * 10 + k, "JPEG", (32, 32)),
                    {**meta, "url": f"http://x/{shard}/{k}.jpg", "source_row": shard * 10 + k}) for k in range(3)]
        _download_tar(downloads / f"{shard:05d}.tar", samples)
        pq.write_table(pa.table({"url": [m["url"] for _, _, m in samples] + [f"http://x/{shard}/gone"],
                                 "status": ["success"] * 3 + ["failed_to_download"],
                                 "error_message": [None] * 3 + ["HTTP Error 404: Not Found"]}),
                       downloads / f"{shard:05d}.parquet")
        (downloads / f"{shard:05d}_stats.json").write_text("{}")
    results = {}
    for processes in (1, 2):
        options = DownloadOptions(image_size=32, shard_size=3, processes=processes)
        report = LaionReport(["p.parquet"], str(tmp_path / f"dest{processes}"), {}, {})
        out = tmp_path / f"dest{processes}" / "shards"
        manifest = write_laion_shards(downloads, out, "fp", options, False, report, progress=False)
        results[processes] = (manifest["shards"], report.to_dict(),
                              {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.tar"))})
    assert [e["file"] for e in results[1][0]] == [shard_name(i) for i in (0, 1, 2, 4)]
    assert results[1][1]["failed"] == {"missing": 5, "corrupt": 3, "other": 0, "slow": 0}
    report1, report2 = ({k: v for k, v in r.items() if k != "dest"} for r in (results[1][1], results[2][1]))
    assert results[1][0] == results[2][0] and report1 == report2
    assert report1["error_messages"][f"corrupt: {CORRUPT}: UnidentifiedImageError: cannot identify image file "
                                     "the image bytes"] == 3   # one message for the three: no object address
    assert results[1][2] == results[2][2] and len(results[1][2]) == 4   # bit-identical shards


@pytest.fixture
def fake_img2dataset(tmp_path):
    """An executable that prints a line and fails, standing in for img2dataset where it is never reached
    or its failure is the point."""
    exe = tmp_path / "bin" / "img2dataset"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\necho 'boom: no network'\nexit 3\n")
    exe.chmod(0o755)
    return exe


def test_errors_name_the_value_and_the_fix(tmp_path, cli_error, fake_img2dataset, monkeypatch):
    source = write_metadata(tmp_path / "meta.parquet", None)
    dest = tmp_path / "out"
    err = cli_error("data", "laion", tmp_path / "nope.parquet", dest, "--img2dataset", fake_img2dataset)
    assert "nope.parquet does not exist" in err
    (tmp_path / "text.parquet").write_text("url,caption\n")
    err = cli_error("data", "laion", tmp_path / "text.parquet", dest, "--img2dataset", fake_img2dataset)
    assert "cannot read" in err and "as parquet" in err
    pq.write_table(pa.table({"link": ["http://x"], "TEXT": ["a kite"]}), tmp_path / "odd.parquet")
    err = cli_error("data", "laion", tmp_path / "odd.parquet", dest, "--img2dataset", fake_img2dataset)
    assert "no url column" in err and "its columns are link, TEXT" in err and "--url_col" in err
    err = cli_error("data", "laion", source, dest, "--img2dataset", fake_img2dataset, "--min_similarity", 0.9)
    assert "no row of the 13 read passed the filters" in err

    # No img2dataset: the message says how to install it in its own venv.
    err = cli_error("data", "laion", source, dest, "--img2dataset", tmp_path / "missing" / "img2dataset")
    assert "is not an executable file" in err and "python3.11 -m venv" in err and "pip install img2dataset" in err
    monkeypatch.delenv("T2I_IMG2DATASET", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    err = cli_error("data", "laion", source, dest)
    assert "img2dataset was not found" in err and "pip install img2dataset" in err
    monkeypatch.setenv("T2I_IMG2DATASET", str(fake_img2dataset))  # found through the variable, and it fails
    err = cli_error("data", "laion", source, dest)
    assert "img2dataset exited with code 3 (boom: no network)" in err and "img2dataset.log" in err
    # filtered.parquet was written before the download, with its fingerprint; without size and similarity
    # filters only the row without a URL and the one with a blank caption are left out.
    filtered = dest / "work" / "filtered.parquet"
    assert pq.read_table(filtered).column("source_row").to_pylist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11]
    assert json.loads(pq.read_metadata(filtered).metadata[b"t2i.selection"])["rows"] == 11


def test_cli_choices_match_the_module():
    assert cli_data.LAION_RESIZE_MODES == laion_module.RESIZE_MODES
