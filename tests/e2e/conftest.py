"""End-to-end fixtures: Debian's Chromium driven by Playwright, and a real ``streamlit run`` server on a
small generated project (one server per test module, each on a free port)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from labeller.project import Project

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "labeller" / "app" / "main.py"
CHROMIUM = Path(os.environ.get("LABELLER_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = REPO / "test-output" / "screenshots"
SERVER_START_TIMEOUT = 90.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # In CI a browser test must run: a missing Chromium fails it instead of skipping it.
    if CHROMIUM.exists() or os.environ.get("CI"):
        return
    skip = pytest.mark.skip(reason=f"{CHROMIUM} not installed (scripts/system-packages.sh installs it)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    return {
        **browser_type_launch_args,
        "executable_path": str(CHROMIUM),
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict) -> dict:
    return {**browser_context_args, "viewport": {"width": 1400, "height": 1000}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class AppServer:
    url: str
    project: Project
    process: subprocess.Popen
    log: Path
    worker: subprocess.Popen | None = None


def start_server(project: Project, log: Path) -> AppServer:
    port = free_port()
    command = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        "--", "--project", str(project.root),
    ]  # fmt: skip
    handle = log.open("w")
    process = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return AppServer(url, project, process, log)
        except OSError:
            time.sleep(0.3)
    process.terminate()
    raise RuntimeError(f"streamlit did not become healthy in {SERVER_START_TIMEOUT} s:\n{log.read_text()}")


def start_worker(project: Project, log: Path) -> subprocess.Popen:
    """A real worker process (what ``labeller serve`` starts next to the app)."""
    command = [sys.executable, "-m", "labeller", "worker", str(project.root), "--poll", "0.5", "--device", "cpu"]
    return subprocess.Popen(command, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_server(server: AppServer) -> None:
    if server.worker is not None:
        # Killed, not stopped: a worker stops between steps, and the map job a retrain queues runs one UMAP
        # step of 10 s or more under load. Its graceful stop is tested in tests/test_worker.py.
        server.worker.kill()
        server.worker.wait()
    _stop(server.process)


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[AppServer]:
    """A server on a fresh project. A test module sets ``IMAGES``, ``WITH_MODEL = True`` for an active model
    with predictions, ``LABELLED`` for that many images labelled with their true main class, and
    ``WITH_WORKER = True`` for a worker process next to the server."""
    from tests.e2e.project_factory import add_active_model, label_truthfully, make_app_project

    root = tmp_path_factory.mktemp("app") / "project"
    project = make_app_project(root, images=int(getattr(request.module, "IMAGES", 40)))
    if getattr(request.module, "WITH_MODEL", False):
        add_active_model(project)
    if labelled := int(getattr(request.module, "LABELLED", 0)):
        label_truthfully(project, labelled)
    server = start_server(project, root.parent / "streamlit.log")
    if getattr(request.module, "WITH_WORKER", False):
        server.worker = start_worker(project, root.parent / "worker.log")
    try:
        yield server
    finally:
        stop_server(server)


def wait_idle(page, timeout: float = 30_000) -> None:  # type: ignore[no-untyped-def]
    """Wait until the script run triggered by the last action has finished."""
    page.wait_for_timeout(150)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=timeout)


def screenshot(page, name: str) -> Path:  # type: ignore[no-untyped-def]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


HOVER_LAYER_ATTACHED = """() => {
  const chart = document.querySelector('[class*="st-key-explore-map"] .js-plotly-plot');
  return Boolean(chart && chart.__llHover);
}"""


def wait_for_hover_layer(page) -> None:  # type: ignore[no-untyped-def]
    """Until the Explore map's hover thumbnail listens to the chart (it attaches on a 400 ms poll)."""
    page.wait_for_function(HOVER_LAYER_ATTACHED, timeout=10_000)


def lasso_everything(page, plot) -> None:  # type: ignore[no-untyped-def]
    """Draw a lasso along the edges of a Plotly plot area (its ``.nsewdrag`` layer): every point is inside."""
    box = plot.bounding_box()
    assert box is not None
    corners = [(0.02, 0.02), (0.98, 0.02), (0.98, 0.98), (0.02, 0.98), (0.02, 0.03)]
    page.mouse.move(box["x"] + box["width"] * corners[0][0], box["y"] + box["height"] * corners[0][1])
    page.mouse.down()
    for fx, fy in corners[1:]:
        page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy, steps=8)
    page.mouse.up()


def sign_in(page, url: str, name: str, path: str = "") -> None:  # type: ignore[no-untyped-def]
    """Open ``path`` (the Label page by default) and enter a new annotator name in the sidebar."""
    page.goto(f"{url}/{path}")
    wait_idle(page)
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_text("Who is labelling?").wait_for()
    name_box = sidebar.get_by_label("Your name")
    if not name_box.is_visible():
        picker = sidebar.get_by_test_id("stSelectbox").locator("input")
        picker.click()
        picker.fill("New annotator")
        page.get_by_role("option", name="New annotator...").click()
        wait_idle(page)
    name_box.fill(name)
    sidebar.get_by_role("button", name="Start labelling").click()
    wait_idle(page)
    # The name goes into the URL as ?annotator=; a navigation made before that update reaches the browser
    # was undone by it (the update carries the page it was made on): seen as the Grid or Explore page
    # turning back into the Label page on a loaded machine.
    page.wait_for_url(lambda current: "annotator=" in current)
    sidebar.get_by_role("button", name="Switch").wait_for()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    """A screenshot of the page when a browser test fails, next to the others, to see what went wrong."""
    outcome = yield
    report = outcome.get_result()
    page = item.funcargs.get("page") if hasattr(item, "funcargs") else None
    if report.when == "call" and report.failed and page is not None:
        # The browser may be gone already; the failure itself is what matters.
        with contextlib.suppress(Exception):
            screenshot(page, f"failed-{item.name}")
