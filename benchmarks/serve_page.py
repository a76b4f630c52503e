"""Benchmark: how fast the `t2i serve` page answers, measured in the real browser (Debian's chromium + playwright).

1. First image: from pressing Generate (4 images of one prompt, the embedded default model) until the first image
   is on the page, in the page's own clock. The server loads the default model at start, as `t2i serve` does.
2. Run view: from opening a run (the hash changes) until every curve is drawn and the latest sample grid has
   loaded, for a run of 200 ticks (trained here: LAFITE `test` preset on 64px shapes, a tick every 4 images, a
   snapshot and grid every 10 ticks).

    python benchmarks/serve_page.py --workdir /tmp/t2i-serve-bench [--screenshots docs/serve] [--runs MORE_RUNS]

Each figure is measured --repeats times; the first and the median are printed. With --screenshots, the three
views are saved there (the README shows them). Nothing here is a test: the numbers are reported, not asserted.

Measured on the 2-core CPU (no GPU), 5 repeats each, three invocations (`--workdir /work/exp/serve-bench
--screenshots docs/serve --runs RUNS_OF_AN_ATTNGAN_RUN`; the run trained once, 28 s):
- first image after Generate (the default model, 4 images of one prompt): first 0.240 / 0.476 / 0.328 s,
  median 0.224 / 0.228 / 0.227 s (target: within 3 s);
- the run view of the 200-tick run (20 grids, 10 statistics): first 0.138 / 0.103 / 0.089 s, median 0.084 /
  0.080 / 0.071 s (target: under 1 s).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
from pathlib import Path

from common import T2I, sh

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLIP = ROOT / "src" / "t2i" / "assets" / "default-lafite"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
PROMPTS = ("a large red circle above a small blue square\na small green star on the left\n"
           "작은 파란 정사각형 위에 큰 빨간 원")   # (the first scene, in Korean)


def long_run(work: Path) -> Path:
    """A finished 200-tick LAFITE run (trained once, then reused)."""
    runs = work / "runs"
    found = sorted(runs.glob("*-lafite-test"))
    if found and "done:" in (found[-1] / "log.txt").read_text():
        return found[-1]
    data = work / "shapes64"
    if not (data / "dataset.json").exists():
        sh(T2I + ["data", "shapes", "--out", data, "--n", 256, "--size", 64, "--seed", 0])
    sh(T2I + ["train", "lafite", "--data", data, "--clip", DEFAULT_CLIP, "--preset", "test", "--batch", 4,
              "--kimg", 0.8, "--tick_kimg", 0.004, "--snap", 10, "--outdir", runs], work / "train.log")
    return sorted(runs.glob("*-lafite-test"))[-1]


def start_server(runs: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(T2I + ["serve", "--runs", str(runs), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("t2i serve: http://"):
            return proc, line.split()[2]
    raise SystemExit(f"t2i serve exited with {proc.wait()}")


def first_image_s(page) -> float:
    """Seconds from the click on Generate to the first image loaded on the page."""
    return page.evaluate("""() => new Promise((resolve) => {
        const t0 = performance.now();
        const results = document.getElementById('results');
        const seen = () => {
            const img = results.querySelector('figure img');
            if (img && img.complete && img.naturalWidth) { resolve((performance.now() - t0) / 1000); return true; }
        };
        const timer = setInterval(() => seen() && clearInterval(timer), 5);
        document.getElementById('generate').click();
    })""")


def run_view_s(page, path: str) -> float:
    """Seconds from opening a run until every curve is drawn and the latest grid has loaded."""
    page.evaluate("() => { location.hash = 'generate'; document.getElementById('curves').replaceChildren(); "
                  "document.getElementById('grid-img').removeAttribute('src'); }")
    return page.evaluate("""(path) => new Promise((resolve) => {
        const t0 = performance.now();
        const done = () => { const img = document.getElementById('grid-img');
            const charts = document.querySelectorAll('#curves svg polyline').length;
            if (charts > 0 && img.getAttribute('src') && img.complete && img.naturalWidth) {
                resolve((performance.now() - t0) / 1000); return true; } };
        const timer = setInterval(() => done() && clearInterval(timer), 5);
        location.hash = 'runs/' + path;
    })""", path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/t2i-serve-bench", help="where the 200-tick run is trained")
    p.add_argument("--repeats", type=int, default=5, help="measurements of each figure")
    p.add_argument("--screenshots", help="save the three views as PNGs in this folder")
    p.add_argument("--runs", help="also show these runs (copied next to the benchmark run: the server does not follow "
                                  "links out of its runs folder)")
    p.add_argument("--chromium", default="/usr/bin/chromium", help="the browser playwright drives")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    run = long_run(work)
    ticks = sum(1 for _ in open(run / "stats.jsonl"))
    if args.runs:
        for other in Path(args.runs).resolve().glob("*/"):
            copy = work / "runs" / other.name
            if not copy.exists() and other.name != run.name:
                shutil.copytree(other, copy)
    proc, url = start_server(work / "runs")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']")
            page.fill("#prompts", PROMPTS.splitlines()[0])
            page.fill("#n", "4")
            firsts = []
            for k in range(args.repeats):
                page.fill("#seed", str(100 * k))
                firsts.append(first_image_s(page))
                page.wait_for_selector("#grid-link")
            views = [run_view_s(page, run.name) for _ in range(args.repeats)]
            print(f"first image after Generate (default model, 4 images): first {firsts[0]:.3f} s, "
                  f"median {statistics.median(firsts):.3f} s over {len(firsts)}")
            print(f"run view of a {ticks}-tick run ({len(list(run.glob('fakes-*.png')))} grids): first "
                  f"{views[0]:.3f} s, median {statistics.median(views):.3f} s over {len(views)}")
            if args.screenshots:
                out = Path(args.screenshots)
                out.mkdir(parents=True, exist_ok=True)
                page.evaluate("() => { location.hash = 'generate'; }")
                page.fill("#prompts", PROMPTS)
                page.fill("#seed", "0")
                page.click("#generate")
                page.wait_for_selector("#grid-link")
                page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete)")
                page.screenshot(path=str(out / "generate.png"), full_page=True)
                page.evaluate(f"() => {{ location.hash = 'runs/{run.name}'; }}")
                page.wait_for_selector("#curves svg polyline")
                page.wait_for_function("document.getElementById('grid-img').complete")
                page.screenshot(path=str(out / "runs.png"), full_page=True)
                page.evaluate("() => { location.hash = 'compare'; }")
                boxes = page.locator("#compare-models input")
                picks = [boxes.nth(0)] + [boxes.nth(i) for i in range(boxes.count())
                                          if "attngan" in (boxes.nth(i).get_attribute("value") or "")][:1]
                if len(picks) < 2:
                    picks.append(boxes.nth(1))
                for box in picks:
                    box.check()
                page.click("#compare-go")
                page.wait_for_function("!document.getElementById('compare-go').disabled && "
                                       "document.getElementById('compare-progress').value > 0")
                page.wait_for_function("[...document.querySelectorAll('#compare-table img')].every(i => i.complete)")
                page.screenshot(path=str(out / "compare.png"), full_page=True)
                print(f"screenshots in {out}/")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
