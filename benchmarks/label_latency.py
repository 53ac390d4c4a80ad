"""Key-down to the next image visible on the Label page, in Chromium driven by Playwright, on a real
``streamlit run`` server over a project of 100k images with an active model (entropy order).

What is timed, in the page: from the key event's own timestamp (``event.timeStamp``, taken when the
browser created the key-down) to the first moment after the card has put the next image on screen and
the browser has painted it (a ``requestAnimationFrame`` callback, then a ``setTimeout`` 0: that runs after
the frame's paint). The card fires ``labelcard:shown`` when it swaps images; a recorder injected before
the page loads does the timing, so the card's own code does not time itself.

Two runs: ``paced`` (one press every 400 ms, an annotator working steadily, after a warm-up) and
``burst`` (20 presses 50 ms apart). After each run the database must hold exactly one decision per
press, on the image that was on screen at that key-down, in order: the benchmark fails otherwise.

    python -m benchmarks.label_latency [--quick] [--images N]

Writes ``benchmarks/results/label_latency.json`` and ``label_latency.md`` (commit, versions, machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import Any

from db.engine import unit_of_work
from db.queries.annotations import recent_annotations
from db.queries.annotators import get_or_create_annotator
from labeller.project import Project

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "labeller" / "app" / "main.py"
CHROMIUM = os.environ.get("LABELLER_CHROMIUM", "/usr/bin/chromium")
RESULTS = REPO / "benchmarks" / "results"
TARGET_MS = 50.0
FULL_IMAGES = 100_000
QUICK_IMAGES = 5_000

RECORDER = """
window.__bench = {presses: [], shown: [], latencies: []};
let lastShown = null;
let pending = null;  // the key-down waiting for its next image
window.addEventListener('keydown', (e) => {
  if (e.repeat) return;
  pending = {t: e.timeStamp, on: lastShown};
  window.__bench.presses.push(lastShown);
}, true);
window.addEventListener('labelcard:shown', (e) => {
  const id = e.detail.imageId;
  if (id === lastShown) return;
  lastShown = id;
  window.__bench.shown.push(id);
  const waiting = pending;
  pending = null;
  if (waiting === null || id === null) return;
  requestAnimationFrame(() => setTimeout(() => {
    window.__bench.latencies.push(performance.now() - waiting.t);
  }, 0));
});
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(project: Project, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.headless", "true", "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false", "--server.port", str(port), "--server.address", "127.0.0.1",
        "--", "--project", str(project.root),
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                return process, url
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(log.read_text()) from None
            time.sleep(0.3)
    process.terminate()
    raise RuntimeError(f"the server did not start:\n{log.read_text()}")


def _rows(project: Project, name: str) -> list[tuple[int, str]]:
    with unit_of_work(project.engine) as session:
        annotator_id = get_or_create_annotator(session, name).id
        views = recent_annotations(session, annotator_id, 10_000, include_undos=True)
    return [(view.image_id, str(view.kind)) for view in reversed(views)]


def _sign_in(page: Any, url: str, name: str) -> None:
    """The annotator exists already, so ``?annotator=`` signs the browser in (as a bookmark does)."""
    page.goto(f"{url}/label?annotator={name}")
    page.get_by_test_id("label-card").locator("img.lc-visible").wait_for(timeout=120_000)


def _wait_saved(page: Any) -> None:
    page.get_by_test_id("label-card-status").filter(has_text="All decisions saved.").wait_for(timeout=60_000)


def run_presses(page: Any, keys: list[str], gap_ms: int) -> dict[str, Any]:
    page.evaluate("window.__bench.presses = []; window.__bench.latencies = []")
    for key in keys:
        page.keyboard.press(key)
        page.wait_for_timeout(gap_ms)
    _wait_saved(page)
    page.wait_for_timeout(200)
    return page.evaluate("window.__bench")


def _summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 1),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 1),
        "max_ms": round(ordered[-1], 1),
    }


def _check(rows: list[tuple[int, str]], presses: list[int | None], keys: list[str]) -> None:
    """One decision per press, on the image on screen at that key-down, in order."""
    kinds = ["skip" if key == "s" else "label" for key in keys]
    if None in presses:
        raise AssertionError(f"a key was pressed with no image on screen: {presses}")
    if rows != list(zip(presses, kinds, strict=True)):
        raise AssertionError(f"recorded {rows} for presses on {presses}")


def _git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "labeller/app"], cwd=REPO, capture_output=True, text=True
        )
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(out_dir: Path, quick: bool, images: int | None = None) -> dict[str, Any]:
    """``benchmarks.run_all``'s entry point: ``quick`` is 5k images and 20 paced presses."""
    return measure(images or (QUICK_IMAGES if quick else FULL_IMAGES), 20 if quick else 60, out_dir)


def measure(images: int, presses: int, out_dir: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from benchmarks.app_latency import build_project

    work = Path(tempfile.mkdtemp(prefix="label-latency-"))
    try:
        started = time.perf_counter()
        project = build_project(work / "project", images, with_model=True)
        project.settings.labelling.default_strategy = "entropy"
        project.save_settings()
        _rows(project, "bench")  # creates the annotator
        build_s = time.perf_counter() - started
        process, url = start_server(project, work / "streamlit.log")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.add_init_script(RECORDER)
                _sign_in(page, url, "bench")
                keys = ["1", "2", "s"]
                warm = [keys[i % 3] for i in range(10)]
                run_presses(page, warm, 400)  # first large views are made on demand: leave them out
                before = len(_rows(project, "bench"))
                paced_keys = [keys[i % 3] for i in range(presses)]
                paced = run_presses(page, paced_keys, 400)
                _check(_rows(project, "bench")[before:], paced["presses"], paced_keys)
                before = len(_rows(project, "bench"))
                burst_keys = [keys[i % 3] for i in range(20)]
                burst = run_presses(page, burst_keys, 50)
                _check(_rows(project, "bench")[before:], burst["presses"], burst_keys)
                chromium = browser.version
                browser.close()
        finally:
            process.terminate()
            process.wait(timeout=30)
        result = {
            "benchmark": "label_latency",
            "what": "key-down (event.timeStamp) to the next image painted (rAF then setTimeout 0), Label card",
            "commit": _git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "images": images,
            "strategy": "entropy (active model with predictions for every image)",
            "build_project_s": round(build_s, 1),
            "target_median_ms": TARGET_MS,
            "paced": {"gap_ms": 400, **_summary(paced["latencies"])},
            "burst": {"gap_ms": 50, **_summary(burst["latencies"]), "presses": 20, "recorded_exactly": True},
            "versions": {
                "python": platform.python_version(),
                "streamlit": version("streamlit"),
                "playwright": version("playwright"),
                "chromium": chromium,
            },
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end",
        }
        result["rows"] = [{"run": name, **result[name]} for name in ("paced", "burst")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "label_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "label_latency.md").write_text(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    paced, burst = result["paced"], result["burst"]
    versions = ", ".join(f"{name} {value}" for name, value in result["versions"].items())
    return f"""# Label page: key-down to next image visible

{result["what"]}; {result["images"]:,} images, {result["strategy"]}.
Target: median under {result["target_median_ms"]:.0f} ms.

| run | presses | gap | median | p90 | max |
|---|---|---|---|---|---|
| paced | {paced["n"]} | {paced["gap_ms"]} ms | {paced["median_ms"]} ms | {paced["p90_ms"]} ms | {paced["max_ms"]} ms |
| burst | {burst["n"]} | {burst["gap_ms"]} ms | {burst["median_ms"]} ms | {burst["p90_ms"]} ms | {burst["max_ms"]} ms |

After each run the database held exactly one decision per press, on the image on screen at that key-down,
in order (the benchmark fails otherwise).

- commit: `{result["commit"]}`, {result["date"]}
- versions: {versions}
- machine: {result["machine"]}

Run it with `python -m benchmarks.label_latency` (`--quick`: {QUICK_IMAGES:,} images).
"""


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_IMAGES:,} images and 20 paced presses")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    arguments = parser.parse_args()
    print(json.dumps(main(arguments.out, arguments.quick, arguments.images), indent=2))
