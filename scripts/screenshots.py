"""Refresh the README's screenshots (docs/screenshots/*.png) from the real app on the digits demo.

    .venv/bin/python scripts/screenshots.py                  # a fresh demo project in a temporary folder
    .venv/bin/python scripts/screenshots.py --project DIR    # create or reuse the demo project in DIR

What it does, as a user would: ``labeller demo DIR --no-serve``; the audit slice's true labels imported
from the demo's ``demo_truth.csv`` (so that versions are compared on held-out labels, as a team's audit
labels would); ``labeller serve DIR`` (the app and one worker, on a free port of 127.0.0.1); ``labeller
train DIR --wait`` for version 1; then, in headless Chromium (Debian's ``/usr/bin/chromium``, or
``LABELLER_CHROMIUM``) through Playwright, a new annotator labels a few images on the Label page
(label.png) and ticks a few tiles on the Grid page (grid.png); version 2 is trained with those labels; the
Train page is shown at the promotion decisions, down to the per-class confusion matrix (train.png), and
the Explore page with a point's thumbnail (explore.png). Images stay as a new annotator sees them: blurred, as the
demo project's settings say (Explore's thumbnail is shown revealed, with Shift held).

Training is the slow part: ``--epochs`` (default 3) keeps each version to minutes on a busy CPU. The
server and worker are stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright
from sqlalchemy import Engine, select

from db.engine import unit_of_work
from db.queries.images import images_by_id
from db.queries.jobs import pending_jobs
from db.queries.models import list_model_versions
from db.schema import Image
from labeller.demo import LOOPS, NO_LOOPS, SUB_KEYS, TRUTH_FILE
from labeller.project import open_project

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "screenshots"
CHROMIUM = os.environ.get("LABELLER_CHROMIUM", "/usr/bin/chromium")
VIEWPORT = {"width": 1400, "height": 1000}
ANNOTATOR = "ada"
MAIN_KEY = {"loops": "l", "no loops": "n"}
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
# Scrolls the page's scrolling container so that the element sits ``gap`` pixels below the top bar's edge.
SCROLL_TO_TOP = """(el, gap) => {
  let box = el.parentElement;
  while (box && !(box.scrollHeight > box.clientHeight && /(auto|scroll)/.test(getComputedStyle(box).overflowY)))
    box = box.parentElement;
  (box || document.scrollingElement).scrollBy(0, el.getBoundingClientRect().top - gap);
}"""


def labeller(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "labeller", *args], cwd=REPO, check=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def truth(root: Path) -> dict[str, tuple[str, str]]:
    """Stored image path ("images/digit_0001.png") -> (main class, digit)."""
    with (root / TRUTH_FILE).open(newline="") as stream:
        return {row["path"]: (row["class"], row["tags"]) for row in csv.DictReader(stream)}


def import_audit_truth(root: Path) -> None:
    """The audit slice's true labels, once: held-out labels that every version is measured on."""
    manifest = root / "audit_truth.csv"
    if manifest.exists():
        return
    with unit_of_work(open_project(root).engine) as session:
        audit = set(session.scalars(select(Image.path).where(Image.audit)))
    rows = [(path, main, digit) for path, (main, digit) in truth(root).items() if path in audit]
    with manifest.open("w", newline="") as stream:
        csv.writer(stream).writerows([("path", "class", "tags"), *rows])
    labeller("import", str(root), "--manifest", str(manifest), "--annotator", "audit", "--no-progress")


def wait_for_jobs(root: Path, timeout: float = 3600) -> None:
    """Until the worker has run every queued job (a train job queues scoring and the latent map)."""
    project = open_project(root)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with unit_of_work(project.engine) as session:
            if not pending_jobs(session):
                return
        time.sleep(3)
    raise TimeoutError("jobs still pending")


def version_count(root: Path) -> int:
    with unit_of_work(open_project(root).engine) as session:
        return len(list_model_versions(session))


def train(root: Path, epochs: int) -> None:
    labeller("train", str(root), "--epochs", str(epochs), "--wait")
    wait_for_jobs(root)


@contextmanager
def served(root: Path) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "labeller", "serve", str(root), "--port", str(port)]
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("labeller serve did not start")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)  # serve stops its app and worker
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def settle(page: Page, extra_ms: int = 800) -> None:
    """No script run, no spinner, no skeleton; then a moment for charts to draw."""
    page.wait_for_timeout(300)
    page.wait_for_selector(IDLE, timeout=120_000)
    for busy in ("stSpinner", "stSkeleton"):
        expect(page.get_by_test_id(busy)).to_have_count(0, timeout=120_000)
    page.wait_for_timeout(extra_ms)
    page.wait_for_selector(IDLE, timeout=120_000)


def shoot(page: Page, name: str) -> None:
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=False, timeout=120_000)
    print(f"wrote {OUT / name}.png")


def open_page(page: Page, url: str, path: str, title: str) -> None:
    page.goto(f"{url}/{path}?annotator={ANNOTATOR}")
    page.locator("h1", has_text=title).wait_for(timeout=120_000)
    settle(page)


def sign_in(page: Page, url: str) -> None:
    """A new annotator, as the sidebar asks for one (no login configured)."""
    page.goto(f"{url}/label")
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_text("Who is labelling?").wait_for(timeout=120_000)
    settle(page, 300)
    name_box = sidebar.get_by_label("Your name")
    if not name_box.is_visible():
        picker = sidebar.get_by_test_id("stSelectbox").locator("input")
        picker.click()
        picker.fill("New annotator")
        page.get_by_role("option", name="New annotator...").click()
        settle(page, 300)
    name_box.fill(ANNOTATOR)
    sidebar.get_by_role("button", name="Start labelling").click()
    settle(page, 300)


def keys_for(engine: Engine, answers: dict[str, tuple[str, str]], image_id: int) -> tuple[str, str]:
    """The main-class key and the sub-class key of the image's true digit."""
    with unit_of_work(engine) as session:
        main, digit = answers[images_by_id(session, [image_id])[image_id].path]
    return MAIN_KEY[main], SUB_KEYS[(LOOPS if main == "loops" else NO_LOOPS).index(digit)]


def label_page(page: Page, root: Path, count: int = 6) -> None:
    """Label ``count`` images truthfully with the keys (Shift + main key, sub-class key, Enter), then tick the
    next image's sub-class without sending it, to show the card mid-decision."""
    card = page.get_by_test_id("label-card")
    expect(page.get_by_test_id("label-card-caption")).to_contain_text("image ", timeout=60_000)
    answers = truth(root)
    engine = open_project(root).engine
    for _ in range(count):
        image_id = int(card.get_attribute("data-image-id") or 0)
        main_key, sub_key = keys_for(engine, answers, image_id)
        page.keyboard.press(f"Shift+{main_key.upper()}")
        page.keyboard.press(sub_key)
        page.keyboard.press("Enter")
        expect(card).not_to_have_attribute("data-image-id", str(image_id), timeout=30_000)
    expect(page.get_by_test_id("label-card-status")).to_have_text("All decisions saved.", timeout=60_000)
    session_metric = page.get_by_test_id("stMetric").filter(has_text="Labels this session")
    expect(session_metric).to_contain_text(str(count), timeout=60_000)
    expect(page.locator("[class*='-recent-'] img")).to_have_count(count, timeout=60_000)
    settle(page, 1500)
    main_key, sub_key = keys_for(engine, answers, int(card.get_attribute("data-image-id") or 0))
    page.keyboard.press(f"Shift+{main_key.upper()}")  # the next image's main class armed, its sub-class ticked
    page.keyboard.press(sub_key)
    page.wait_for_timeout(500)


def grid_page(page: Page, clicks: tuple[int, ...] = (1, 2, 7), key_pick: int = 9) -> None:
    """Tick a few tiles of the most uncertain page with the mouse and one with the keyboard (arrow keys to it,
    Space); the keyboard focus outline stays on that tile."""
    tiles = page.locator("[class*='st-key-pick-'] label")
    for index in clicks:
        tiles.nth(index).click()
        settle(page, 300)

    def keys_to_pick() -> None:
        page.locator("h1", has_text="Grid").click()  # no widget holds the keys
        page.mouse.move(VIEWPORT["width"] - 5, VIEWPORT["height"] - 5)
        for _ in range(key_pick + 1):  # the first press focuses the first tile
            page.keyboard.press("ArrowRight")

    keys_to_pick()
    page.keyboard.press(" ")
    expect(page.get_by_text(re.compile(rf"· {len(clicks) + 1} selected"))).to_be_visible(timeout=60_000)
    settle(page)
    if not page.evaluate("() => !!document.activeElement.closest('[class*=\"st-key-pick-\"]')"):
        keys_to_pick()  # a tick more than 5 s after the page was drawn loses the focus; bring it back
    settle(page)


def train_page(page: Page) -> None:
    """Scrolled so that the promotion decisions and the per-class matrices are in view."""
    heading = page.get_by_text("Promotion decisions", exact=True)
    heading.wait_for(timeout=60_000)
    settle(page, 2000)
    page.mouse.move(VIEWPORT["width"] - 5, VIEWPORT["height"] - 5)  # no hover on a table
    bar = page.get_by_test_id("stHeader").bounding_box()
    heading.evaluate(SCROLL_TO_TOP, (bar["y"] + bar["height"] if bar else 60) + 12)
    settle(page, 1500)


def explore_page(page: Page) -> None:
    """The latent map with one point's thumbnail, revealed while Shift is held."""
    page.locator('[class*="st-key-explore-map"] .js-plotly-plot .nsewdrag').first.wait_for(timeout=60_000)
    settle(page, 1500)
    point = page.evaluate(
        """() => {
          const gd = document.querySelector('[class*="st-key-explore-map"] .js-plotly-plot');
          const trace = gd._fullData[0];
          const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
          const box = gd.getBoundingClientRect();
          // The labelled point (drawn larger, on top) nearest the middle of the map.
          const mid = (a) => (a.range[0] + a.range[1]) / 2, span = (a) => Math.abs(a.range[1] - a.range[0]);
          let i = trace.x.length - 1, best = Infinity;
          trace.x.forEach((x, j) => {
            if (trace.marker.size[j] <= Math.min(...trace.marker.size)) return;
            const d = ((x - mid(xa)) / span(xa)) ** 2 + ((trace.y[j] - mid(ya)) / span(ya)) ** 2;
            if (d < best) { best = d; i = j; }
          });
          return {x: box.left + xa._offset + xa.l2p(trace.x[i]), y: box.top + ya._offset + ya.l2p(trace.y[i])};
        }"""
    )
    page.mouse.move(point["x"] - 30, point["y"] - 30)
    page.mouse.move(point["x"], point["y"], steps=5)
    tip = page.get_by_test_id("explore-hover-thumb")
    expect(tip).to_be_visible(timeout=30_000)
    page.keyboard.down("Shift")
    expect(tip).to_have_attribute("data-hide", "plain", timeout=30_000)
    page.wait_for_timeout(800)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="create or reuse the demo project here (default: a temp folder)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each of the two model versions")
    args = parser.parse_args()
    temporary = None
    if args.project is None:
        temporary = Path(tempfile.mkdtemp(prefix="labeller-screens-"))
        args.project = temporary / "demo"
    root = args.project.resolve()
    os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
    try:
        labeller("demo", str(root), "--no-serve")
        import_audit_truth(root)
        OUT.mkdir(parents=True, exist_ok=True)
        with served(root) as url, sync_playwright() as playwright:
            if version_count(root) < 1:
                train(root, args.epochs)
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
            sign_in(page, url)
            label_page(page, root)
            shoot(page, "label")
            open_page(page, url, "grid", "Grid")
            grid_page(page)
            shoot(page, "grid")
            if version_count(root) < 2:
                train(root, args.epochs)
            open_page(page, url, "train", "Train")
            train_page(page)
            shoot(page, "train")
            open_page(page, url, "explore", "Explore")
            explore_page(page)
            shoot(page, "explore")
            browser.close()
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


if __name__ == "__main__":
    main()
