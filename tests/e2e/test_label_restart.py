"""No key press is lost or applied twice across a server restart: the card keeps its unacknowledged
decisions (in memory and in localStorage) and sends them again to the new server, which finds the ones it
had already applied in the history."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import AppServer, free_port, start_server, stop_server
from tests.e2e.project_factory import MAIN_KEYS, make_app_project
from tests.e2e.test_label_keyboard import RECORDER, card, decisions, shown_image_id, wait_saved

pytestmark = pytest.mark.browser


def start_on(project, log: Path, port: int) -> AppServer:  # type: ignore[no-untyped-def]
    """``start_server`` on a given port (a restarted server comes back where the browser looks for it)."""
    import tests.e2e.conftest as conftest

    original = conftest.free_port
    conftest.free_port = lambda: port
    try:
        return start_server(project, log)
    finally:
        conftest.free_port = original


def test_presses_survive_a_server_restart_exactly_once(tmp_path: Path, page: Page) -> None:
    project = make_app_project(tmp_path / "project", images=60)
    port = free_port()
    server = start_on(project, tmp_path / "first.log", port)
    try:
        page.add_init_script(RECORDER)
        from db.engine import unit_of_work
        from db.queries.annotators import get_or_create_annotator

        with unit_of_work(project.engine) as session:
            get_or_create_annotator(session, "restart-rae")
        page.goto(f"{server.url}/label?annotator=restart-rae")
        expect(page.get_by_test_id("label-card-caption")).to_contain_text("image ", timeout=30_000)
        for key in (MAIN_KEYS["loops"], MAIN_KEYS["strokes"]):
            image = shown_image_id(page)
            page.keyboard.press(key)
            expect(card(page)).not_to_have_attribute("data-image-id", str(image))
        wait_saved(page)
        # Three more presses, and the server dies at once, before it can answer all of them.
        for key in (MAIN_KEYS["curves"], "s", MAIN_KEYS["loops"]):
            page.keyboard.press(key)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        page.wait_for_timeout(1_000)
        # Two presses while the server is down: the card still shows the preloaded images.
        for key in (MAIN_KEYS["strokes"], MAIN_KEYS["curves"]):
            page.keyboard.press(key)
        server = start_on(project, tmp_path / "second.log", port)
        wait_saved(page, timeout=60_000)
        pressed_on = page.evaluate("window.__pressedOn")
        rows = decisions(AppServer(server.url, project, server.process, server.log), "restart-rae")
        assert len(pressed_on) == 7 and None not in pressed_on
        assert [image for image, _, _, _ in rows] == pressed_on
        assert [(kind, main) for _, kind, main, _ in rows] == [
            ("label", "loops"),
            ("label", "strokes"),
            ("label", "curves"),
            ("skip", None),
            ("label", "loops"),
            ("label", "strokes"),
            ("label", "curves"),
        ]
    finally:
        if server.process.poll() is None:
            stop_server(server)
