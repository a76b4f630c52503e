"""`t2i serve` end to end in a real headless browser: Debian's chromium driven by playwright.

The server is the real command (`t2i serve --runs ... --port ...`) over the session's tiny runs. Each view is
saved as a screenshot under the test's folder (and under $T2I_SCREENSHOTS when set). Skipped, saying how to
install the browser, when /usr/bin/chromium is missing, unless T2I_REQUIRE_BROWSER=1 (CI) makes that a failure.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from t2i.models import DEFAULT_MODEL

CHROMIUM = os.environ.get("T2I_CHROMIUM", "/usr/bin/chromium")
# Flags for a sandboxed machine without a network: no background connections, no GPU, no first-run work.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
PROMPT = "a large red circle above a small blue square"
KOREAN = "작은 파란 정사각형 위에 큰 빨간 원"   # (the same scene)

if not Path(CHROMIUM).is_file():
    if os.environ.get("T2I_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"{CHROMIUM} is missing and T2I_REQUIRE_BROWSER=1: run `make browser` as root "
                           "(apt-get install chromium)")
    pytest.skip(f"no browser at {CHROMIUM}: sudo apt-get install chromium (or `make browser` as root)",
                allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api")


def screenshot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if target := os.environ.get("T2I_SCREENSHOTS"):
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


@pytest.fixture(scope="module")
def runs(session_runs, lafite_run, dalle_run, ldm_run, tmp_path_factory):
    """A copy of the session's runs (this module adds a live one), served by the module's server."""
    root = tmp_path_factory.mktemp("served-runs")
    shutil.copytree(session_runs, root, dirs_exist_ok=True)
    return root


@pytest.fixture(scope="module")
def served(runs):
    """The URL of `t2i serve --runs RUNS` on a free port (the real command in its own process)."""
    exe = Path(sys.executable).with_name("t2i")
    proc = subprocess.Popen([str(exe), "serve", "--runs", str(runs), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    url = None
    while url is None and time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise AssertionError(f"t2i serve exited with {proc.returncode}")
        if line.startswith("t2i serve: http://"):
            url = line.split()[2]
    assert url, "t2i serve printed no URL"
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    # (uvicorn re-raises the SIGTERM it handled once it has shut down; an abort at exit would be -SIGABRT)
    assert proc.returncode in (0, -signal.SIGTERM), f"t2i serve did not stop cleanly: {proc.returncode}"


@pytest.fixture(scope="module")
def page(served):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(served)
        page.wait_for_selector("body[data-ready='1']", timeout=30000)
        yield page
        browser.close()


def natural_sizes(page, selector: str) -> list[list[int]]:
    """Each image's decoded size, once every one has finished loading (a busy machine can show the page before the
    browser has decoded them; an image that fails to load still counts as finished, at 0 x 0)."""
    page.wait_for_function("sel => [...document.querySelectorAll(sel)].every(e => e.complete)", arg=selector)
    return page.eval_on_selector_all(selector, "els => els.map(e => [e.naturalWidth, e.naturalHeight])")


def test_generate_with_the_default_model_shows_the_images_and_the_grid(page, tmp_path, served):
    page.click("#tab-generate")
    page.fill("#prompts", f"{PROMPT}\na small green star on the left\n{KOREAN}")
    page.fill("#n", "3")
    truncation = json.loads((DEFAULT_MODEL / "config.json").read_text())["sampling"]["truncation"]
    assert page.input_value("#model") == "default" and float(page.input_value("#opt-truncation")) == truncation
    assert "Korean prompts: read by the model's own text encoder" in page.inner_text("#korean-note")
    page.click("#generate")
    page.wait_for_selector("#grid-link", timeout=60000)
    page.wait_for_function("[...document.querySelectorAll('#results figure img')].every(i => i.complete)")
    assert natural_sizes(page, "#results figure img") == [[64, 64]] * 9
    assert page.locator("#results .prompt-row h4").all_inner_texts() == [PROMPT, "a small green star on the left",
                                                                        KOREAN]
    assert page.locator("#results .verdict").count() == 6      # the English shapes prompts: the oracle judges each
    assert page.inner_text("#warnings") == ""                  # (Korean words are not the captions' vocabulary)
    grid = page.request.get(served.rstrip("/") + page.get_attribute("#grid-link", "href"))
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(grid.body())) as im:
        assert im.size == (3 * 64, 3 * 64)
    image = page.request.get(served.rstrip("/") + page.get_attribute("#results figure img", "src"))
    with Image.open(BytesIO(image.body())) as im:
        assert im.text["prompt"] == PROMPT and im.text["seed"] == "0"
    screenshot(page, tmp_path, "generate")


def test_picking_another_family_shows_its_own_options(page, session_runs, dalle_run, ldm_run):
    page.click("#tab-generate")
    page.select_option("#model", dalle_run.name)
    for name in ("guidance", "top_k", "top_p", "temperature", "candidates"):
        assert page.locator(f"#opt-{name}").is_visible()
    assert page.locator("#opt-truncation").count() == 0 and not page.is_disabled("#rerank")
    page.select_option("#model", ldm_run.name)
    assert page.locator("#opt-sampler option").all_inner_texts() == ["ddim", "plms", "dpm++"]
    assert page.input_value("#opt-steps") == "50" and page.locator("#opt-top_k").count() == 0
    page.fill("#prompts", "a red circle")
    page.fill("#n", "1")
    page.fill("#opt-steps", "3")
    page.click("#generate")
    page.wait_for_selector("#grid-link", timeout=120000)
    assert natural_sizes(page, "#results figure img") == [[16, 16]]
    page.select_option("#model", "default")


def test_the_run_view_draws_curves_and_slides_over_the_grids(page, tmp_path, lafite_run):
    page.click("#tab-runs")
    row = page.locator(f"#runs-table tr[data-path='{lafite_run.name}']")
    assert "finished" in row.inner_text()
    row.click()
    page.wait_for_selector("#curves svg polyline")
    assert page.locator("#curves svg[data-name='Timing/sec_per_kimg']").count() == 1
    assert page.locator("#curves svg").count() >= 3     # every statistic of stats.jsonl gets its chart
    page.wait_for_function("document.getElementById('grid-img').complete && "
                           "document.getElementById('grid-img').naturalWidth > 0")
    last = page.get_attribute("#grid-img", "src")
    assert "fakes-" in last and page.inner_text("#grid-label").endswith("(2 of 2)")
    page.fill("#grid-slider", "0")
    page.dispatch_event("#grid-slider", "input")
    assert page.get_attribute("#grid-img", "src") != last and page.inner_text("#grid-label").endswith("(1 of 2)")
    screenshot(page, tmp_path, "runs")


def test_the_view_of_a_running_run_refreshes_as_it_writes(page, runs):
    import json

    run = runs / "00099-live-linear"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"family": "linear", "config": {"data": "toy"}, "loop": {"kimg": 1}}))
    (run / "log.txt").write_text("training linear to 1 kimg\n")
    tick = {"kimg": 0.1, "timestamp": time.time(), "Loss/mse": 2.0}
    (run / "stats.jsonl").write_text(json.dumps(tick) + "\n")
    page.goto(page.url.split("#")[0] + "#runs/00099-live-linear")
    page.wait_for_selector("#curves svg[data-name='Loss/mse']")
    assert page.inner_text("#run-state").startswith("running")
    with open(run / "stats.jsonl", "a") as f:   # the next tick brings a new statistic
        f.write(json.dumps({**tick, "kimg": 0.2, "timestamp": time.time(), "Loss/new": 1.0}) + "\n")
    page.wait_for_selector("#curves svg[data-name='Loss/new']", timeout=15000)   # polled every 5 s


def test_compare_two_snapshots_side_by_side_with_verdicts(page, tmp_path, lafite_run):
    page.click("#tab-compare")
    snaps = sorted(p.name for p in lafite_run.glob("snapshot-*"))
    for snap in snaps:
        page.check(f"#compare-models input[value='{lafite_run.name}/{snap}']")
    page.fill("#compare-n", "1")
    page.click("#compare-go")
    page.wait_for_function("document.getElementById('compare-progress').value == 4 && "
                           "!document.getElementById('compare-go').disabled", timeout=60000)
    headers = page.locator("#compare-table th").all_inner_texts()
    assert headers[0] == "prompt, seed" and sorted(headers[1:]) == [f"{lafite_run.name}/{s}" for s in snaps]
    assert page.locator("#compare-table td figure img").count() == 4
    assert page.locator("#compare-table .verdict").count() == 4
    screenshot(page, tmp_path, "compare")


def test_an_over_large_request_and_a_traversal_path_get_clear_errors(page, served):
    page.click("#tab-generate")
    page.fill("#prompts", PROMPT)
    page.fill("#n", "1000")
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])")
    assert "n = 1000 is out of range; give a value from 1 to 64" in page.inner_text("#error")
    page.goto(served.rstrip("/") + "/#runs/../../etc")
    page.wait_for_function("!document.getElementById('error').hidden")
    assert "leads outside the runs folder" in page.inner_text("#error")
    reply = page.request.get(served.rstrip("/") + "/api/file?path=../../../etc/passwd")
    assert reply.status == 400 and "outside the runs folder" in reply.json()["error"]
    page.goto(served)
    page.wait_for_selector("body[data-ready='1']")
