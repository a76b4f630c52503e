"""`t2i serve` without a browser: run states read from the files a run writes, path traversal, request bounds,
and the HTTP API on a real server (uvicorn on a free port) with the embedded default model."""

import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from loop_fakes import LinearFamily
from t2i.errors import T2IError
from t2i.models import DEFAULT_MODEL
from t2i.serve import Limits
from t2i.serve.models import Catalog, check_option
from t2i.serve.runs import inside, list_runs, run_detail, run_state, thin
from t2i.training.distributed import Dist
from t2i.training.loop import LoopConfig, train

PROMPT = "a large red circle above a small blue square"
# the sampling default the embedded model records (docs/DEFAULT_MODEL.md), which the server must pass on
DEFAULT_TRUNCATION = json.loads((DEFAULT_MODEL / "config.json").read_text())["sampling"]["truncation"]


def loop_cfg(**kw) -> LoopConfig:
    return LoopConfig(**{**dict(kimg=0.096, batch=16, tick_kimg=0.032, snap=1, ema_kimg=0.05, device="cpu"), **kw})


def make_run(run, family=None):
    """A finished toy run with the config.json `t2i train` writes first."""
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"family": "linear", "config": {"data": "toy"},
                                                 "loop": {"kimg": 0.096}}))
    train(family or LinearFamily(), loop_cfg(), run, Dist())
    return run


class FailingFamily(LinearFamily):
    """Raises at its fourth step, as a run whose data breaks mid-way."""

    def loss(self, phase, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 4:
            raise RuntimeError("image 00042.png is truncated")
        return super().loss(phase, batch)


# ---------------------------------------------------------------------------------------------
# Run states and the run view

def test_finished_run_reads_as_finished_with_its_curves_grids_and_metrics(tmp_path):
    run = make_run(tmp_path / "00000-toy-linear")
    (run / "metric-fid.jsonl").write_text(json.dumps({"kimg": 0.096, "results": {"fid": 12.5}}) + "\n{broken")
    (row,) = list_runs(tmp_path)
    assert row["path"] == "00000-toy-linear" and row["state"] == "finished" and row["kimg"] == 0.096
    assert row["family"] == "linear" and row["data"] == "toy" and row["target_kimg"] == 0.096
    assert row["metrics"] == {"fid/fid": 12.5} and row["snapshots"] == 3   # (the half-written line is skipped)
    detail = run_detail(tmp_path, "00000-toy-linear")
    assert [p[0] for p in detail["curves"]["Loss/mse"]] == [0.032, 0.064, 0.096]
    assert detail["metric_curves"]["fid/fid"] == [[0.096, 12.5]]
    assert [g["kimg"] for g in detail["grids"]["fakes"]] == [0.032, 0.064, 0.096]
    assert detail["grids"]["fakes"][0]["path"] == "00000-toy-linear/fakes-000032.png"
    assert detail["log"][-1].startswith("done: 0.096 kimg")


def test_a_run_that_raises_records_failed_with_the_error(tmp_path):
    run = tmp_path / "00001-toy-linear"
    with pytest.raises(RuntimeError):
        train(FailingFamily(), loop_cfg(), run, Dist())
    assert (run / "log.txt").read_text().splitlines()[-1] == \
        "failed: RuntimeError: image 00042.png is truncated at 0.048 kimg"
    state, detail = run_state(run, [])
    assert state == "failed" and "00042.png is truncated" in detail


def test_running_and_killed_runs_are_told_apart_by_their_last_write(tmp_path):
    run = tmp_path / "00002-toy-linear"
    run.mkdir()
    (run / "log.txt").write_text("training linear to 1.0 kimg, batch 16\ntick 1  kimg 0.032\n")
    stats = [{"kimg": 0.032, "timestamp": time.time() - 60}, {"kimg": 0.064, "timestamp": time.time()}]
    assert run_state(run, stats)[0] == "running"
    hour_ago = time.time() - 3600
    os.utime(run / "log.txt", (hour_ago, hour_ago))
    state, detail = run_state(run, stats)
    assert state == "stopped" and "killed" in detail
    # A run whose own ticks take 30 minutes is still running 20 minutes after its last one.
    slow = [{"kimg": 1, "timestamp": 0.0}, {"kimg": 2, "timestamp": 1800.0}]
    assert run_state(run, slow, now=hour_ago + 1200)[0] == "running"
    (run / "log.txt").write_text("training linear\nstopped: interrupted at 0.512 kimg\n")
    assert run_state(run, stats) == ("stopped", "interrupted at 0.512 kimg")


def test_curves_are_thinned_but_keep_their_last_point():
    rows = [{"kimg": i} for i in range(1001)]
    kept = thin(rows, 100)
    assert len(kept) <= 102 and kept[0]["kimg"] == 0 and kept[-1]["kimg"] == 1000


def test_paths_outside_the_runs_folder_are_refused(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (tmp_path / "runs" / "link").symlink_to(tmp_path)
    assert inside(tmp_path / "runs", "a/b.png") == (tmp_path / "runs" / "a" / "b.png").resolve()
    for bad in ("../secret.png", "/etc/passwd", "a/../../secret.png", "link/secret.png"):
        with pytest.raises(T2IError, match="runs folder"):
            inside(tmp_path / "runs", bad)


# ---------------------------------------------------------------------------------------------
# Request bounds

@pytest.mark.parametrize("body, message", [
    ({"prompts": "   \n "}, "no prompt given"),
    ({"prompts": "x" * 301}, "at most 300"),
    ({"prompts": "\n".join(["a red circle"] * 17)}, "at most 16 per request"),
    ({"prompts": PROMPT, "n": 65}, "from 1 to 64"),
    ({"prompts": "a\nb\nc\nd\ne", "n": 13}, "65 images; at most 64"),
    ({"prompts": PROMPT, "n": "many"}, "whole number"),
    ({"prompts": PROMPT, "seed": -1}, "seed = -1 is out of range"),
    ({"prompts": PROMPT, "options": {"truncation": 9}}, "truncation = 9.0 is out of range"),
    ({"prompts": PROMPT, "options": {"truncation": "high"}}, "must be a number"),
    ({"prompts": PROMPT, "options": {"steps": 20}}, "steps belong to none"),
    ({"prompts": PROMPT, "models": ["default"] * 2}, "different models"),
    ({"prompts": PROMPT, "models": ["../other-runs/x"]}, "outside the runs folder"),
    ({"prompts": PROMPT, "models": ["nope"]}, "does not exist"),
    ({"prompts": 3}, "prompts must be text"),
])
def test_requests_out_of_bounds_are_refused_with_the_reason(tmp_path, body, message):
    from t2i.serve.jobs import parse_request

    with pytest.raises(T2IError, match=message):
        parse_request(body, Limits(), Catalog(tmp_path))


def test_a_request_within_bounds_gets_each_families_options():
    from t2i.serve.jobs import parse_request

    r = parse_request({"prompts": f"{PROMPT}\n\n  a small green star on the left ", "n": 3, "seed": 7,
                       "options": {"truncation": "0.8"}}, Limits(), Catalog(None))
    assert r.prompts == [PROMPT, "a small green star on the left"]
    assert r.options == {"default": {"truncation": 0.8}}
    assert r.images()[:2] == [("default", PROMPT, 7), ("default", PROMPT, 8)] and len(r.images()) == 6
    assert check_option("steps", "30", 50) == 30 and check_option("sampler", "plms", "ddim") == "plms"
    with pytest.raises(T2IError, match="integer"):
        check_option("steps", 2.5, 50)
    with pytest.raises(T2IError, match="one of ddim, plms, dpm"):
        check_option("sampler", "euler", "ddim")


# ---------------------------------------------------------------------------------------------
# The HTTP API on a real server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_runs(tmp_path_factory):
    runs = tmp_path_factory.mktemp("serve-runs")
    make_run(runs / "00000-toy-linear")
    return runs


@pytest.fixture(scope="module")
def server(server_runs):
    import uvicorn

    from t2i.serve.app import create_app

    runs = server_runs
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(runs, Limits(max_images=8, max_queue=2)), host="127.0.0.1",
                                        port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def call(url: str, body=None, raw: bytes | None = None):
    """(status, parsed JSON or bytes) of a GET, or a POST of `body` as JSON."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            payload, status, kind = r.read(), r.status, r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        payload, status, kind = e.read(), e.code, e.headers.get("Content-Type", "")
    return status, json.loads(payload) if "json" in kind else payload


def wait_job(server: str, job_id: str) -> dict:
    for _ in range(600):
        status, job = call(f"{server}/api/jobs/{job_id}")
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError("the job did not finish")


def test_generate_over_http_gives_pngs_with_their_parameters_and_the_oracles_verdict(server):
    from io import BytesIO

    from PIL import Image

    status, models = call(f"{server}/api/models")
    assert status == 200 and models["models"][0]["id"] == "default" and models["limits"]["max_images"] == 8
    status, started = call(f"{server}/api/generate", {"prompts": PROMPT, "n": 2, "seed": 5})
    assert status == 200
    job = wait_job(server, started["id"])
    assert job["state"] == "done" and job["done"] == job["total"] == 2
    assert [im["seed"] for im in job["images"]] == [5, 6] and all(im["verdict"] for im in job["images"])
    status, png = call(server + job["images"][1]["url"])
    with Image.open(BytesIO(png)) as im:
        assert im.size == (64, 64) and im.text["prompt"] == PROMPT and im.text["seed"] == "6"
        assert json.loads(im.text["options"]) == {"truncation": DEFAULT_TRUNCATION}   # the model's recorded default
    status, grid = call(f"{server}/api/jobs/{started['id']}/grid.png?model=default")
    with Image.open(BytesIO(grid)) as im:
        assert im.size == (128, 64)   # one prompt row, two seeds


def test_bad_requests_get_a_message_not_a_trace(server):
    status, reply = call(f"{server}/api/generate", {"prompts": PROMPT, "n": 9})
    assert status == 400 and reply == {"error": "n = 9 is out of range; give a value from 1 to 8"}
    status, reply = call(f"{server}/api/generate", raw=b"{" + b" " * 70000 + b"}")
    assert status == 413 and "at most 65536" in reply["error"]
    status, reply = call(f"{server}/api/generate", raw=b"not json")
    assert status == 400 and "not JSON" in reply["error"]
    status, reply = call(f"{server}/api/file?path=../../etc/passwd")
    assert status == 400 and "outside the runs folder" in reply["error"]
    status, reply = call(f"{server}/api/file?path=00000-toy-linear/config.json")
    assert status == 400 and "only pictures" in reply["error"]
    status, reply = call(f"{server}/api/run?path=00000-toy-linear/snapshot-000032")
    assert status == 400 and "not a run folder" in reply["error"]
    status, reply = call(f"{server}/api/jobs/999-x")
    assert status == 400 and "no job" in reply["error"]


def test_a_model_that_fails_to_load_fails_its_job_and_the_server_goes_on(server, server_runs):
    snap = server_runs / "00001-broken-lafite" / "snapshot-000100"
    snap.mkdir(parents=True)
    (snap.parent / "config.json").write_text(json.dumps({"family": "lafite", "config": {}, "loop": {}}))
    (snap / "config.json").write_text(json.dumps({"family": "lafite", "net": {}}))
    (snap / "model.safetensors").write_bytes(b"not safetensors")
    status, started = call(f"{server}/api/generate", {"prompts": PROMPT, "models": ["00001-broken-lafite"], "n": 1})
    job = wait_job(server, started["id"])
    assert job["state"] == "failed" and "cannot be read" in job["error"] and "damaged" in job["error"]
    status, started = call(f"{server}/api/generate", {"prompts": PROMPT, "n": 1})
    assert wait_job(server, started["id"])["state"] == "done"
    shutil.rmtree(snap.parent)


def test_the_run_view_and_its_files_over_http(server):
    status, table = call(f"{server}/api/runs")
    assert [r["state"] for r in table["runs"]] == ["finished"]
    status, run = call(f"{server}/api/run?path=00000-toy-linear")
    status, png = call(f"{server}/api/file?path={run['grids']['fakes'][-1]['path']}")
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_full_queue_refuses_more_requests_and_tells_each_its_place(monkeypatch):
    from t2i.serve.jobs import Worker, parse_request

    gate = threading.Event()
    monkeypatch.setattr(Worker, "_generate", lambda self, job: gate.wait(30))   # the device is busy until told
    worker = Worker(Catalog(None), Limits(max_queue=2))
    request = parse_request({"prompts": PROMPT}, Limits(), Catalog(None))
    running = worker.submit(request)
    while running.state != "running":
        time.sleep(0.01)
    first, second = worker.submit(request), worker.submit(request)
    assert [worker.position(j) for j in (running, first, second)] == [None, 0, 1]
    with pytest.raises(T2IError, match="2 requests are already waiting"):
        worker.submit(request)
    gate.set()
    while second.state != "done":
        time.sleep(0.01)
    gate.clear()
    busy, dropped = worker.submit(request), None
    while busy.state != "running":
        time.sleep(0.01)
    dropped = worker.submit(request)
    threading.Timer(0.2, gate.set).start()
    worker.close()   # finishes the running job, drops the waiting one, ends the thread
    assert busy.state == "done" and dropped.state == "failed" and "shutting down" in dropped.error
    assert not worker._thread.is_alive()


# ---------------------------------------------------------------------------------------------
# Extras: textual-inversion embeddings under --runs

def test_an_embedding_under_runs_is_offered_for_its_family_and_checked_against_the_model(lafite_run, tmp_path):
    import shutil

    from conftest import cli
    from t2i.data.shapes import Scene, ShapeObject, render
    from t2i.serve.jobs import Worker, parse_request

    runs = tmp_path / "runs"
    model = shutil.copytree(lafite_run, runs / lafite_run.name)
    for i, colour in enumerate(("red", "blue", "green")):
        render(Scene([ShapeObject("star", colour, "large", "center")], background="grey"), 16).save(
            tmp_path / f"star{i}.png")
    cli("invert", "--model", model, "--images", tmp_path, "--init_word", "small", "--steps", 4, "--batch", 3,
        "--outdir", runs)
    catalog = Catalog(runs)
    embeds = catalog.extras()["embeds"]   # the run's latest embedding, and its snapshot's
    assert len(embeds) == 2 and embeds[1]["id"].startswith(embeds[0]["id"] + "/snapshot-")
    embed = embeds[0]
    assert embed["family"] == "lafite" and embed["placeholder"] == "*" and embed["id"].endswith("-invert")
    worker = Worker(catalog, Limits())
    try:
        good = worker.submit(parse_request({"prompts": "a large red * on the left", "models": [model.name],
                                            "embeds": [embed["id"]], "n": 2}, Limits(), catalog))
        wrong = worker.submit(parse_request({"prompts": "a large red * on the left", "embeds": [embed["id"]]},
                                            Limits(), catalog))
        while wrong.state not in ("done", "failed"):
            time.sleep(0.05)
        assert good.state == "done" and [im["size"] for im in good.images] == [[16, 16]] * 2
        assert wrong.state == "failed" and "only works on the model it was learned on" in wrong.error
    finally:
        worker.close()


# ---------------------------------------------------------------------------------------------
# The command's own checks

def test_serve_names_its_missing_extra_and_bad_options(monkeypatch, tmp_path, cli_error):
    assert "--runs" in cli_error("serve", "--runs", tmp_path / "nope") and "not a folder" in cli_error(
        "serve", "--runs", tmp_path / "nope")
    assert "--max_images 0 must be at least 1" in cli_error("serve", "--max_images", 0)
    assert "--port 70000" in cli_error("serve", "--port", 70000)
    import sys

    monkeypatch.setitem(sys.modules, "fastapi", None)   # (an import of it now fails, as when it is not installed)
    assert "pip install 't2i[serve]'" in cli_error("serve")
