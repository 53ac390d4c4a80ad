"""Label ten images with the keyboard only, tag one, undo one: in a real browser on a real server."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from db.engine import unit_of_work
from db.queries.annotations import current_labels
from tests.e2e.conftest import AppServer, screenshot, sign_in, wait_idle
from tests.e2e.project_factory import DIGIT_TAXONOMY, MAIN_KEYS

pytestmark = pytest.mark.browser
IMAGES = 30


def shown_image_id(page: Page) -> int:
    text = page.locator(".st-key-image-info").inner_text()
    return int(re.search(r"image (\d+)", text).group(1))


def press(page: Page, key: str) -> None:
    """Click the page background first so that no widget holds the focus, then press ``key``."""
    page.get_by_role("heading", name="Label").click()
    page.keyboard.press(key)


def press_and_wait_for_next(page: Page, key: str) -> int:
    before = shown_image_id(page)
    press(page, key)
    expect(page.locator(".st-key-image-info")).not_to_contain_text(f"image {before}", timeout=15_000)
    wait_idle(page)
    return before


def labels_by_image(server: AppServer) -> dict[int, tuple[str, tuple[str, ...]]]:
    with unit_of_work(server.project.engine) as session:
        return {label.image_id: (label.main_class, label.tags) for label in current_labels(session)}


def test_label_ten_images_with_the_keyboard_then_undo(app_server: AppServer, page: Page) -> None:
    sign_in(page, app_server.url, "keyboard-kim")
    expect(page.locator(".st-key-image-info")).to_be_visible()
    mains = list(MAIN_KEYS)
    labelled: dict[int, str] = {}

    # First image: toggle the first sub-class tag of "loops" (its key is the first tag key, Q), then commit
    # with the main-class key.
    press(page, "q")
    wait_idle(page)
    expect(page.locator(".st-key-tag-1 button")).to_have_attribute("kind", re.compile("primary"))
    labelled[press_and_wait_for_next(page, MAIN_KEYS["loops"])] = "loops"
    for index in range(9):
        main = mains[index % len(mains)]
        labelled[press_and_wait_for_next(page, MAIN_KEYS[main])] = main
    screenshot(page, "label")

    stored = labels_by_image(app_server)
    assert {image_id: main for image_id, (main, _) in stored.items()} == labelled
    first = next(iter(labelled))
    assert stored[first][1] == (DIGIT_TAXONOMY["loops"][0],)

    # Undo (Z) withdraws the newest label and brings that image back on screen.
    newest = list(labelled)[-1]
    press(page, "z")
    expect(page.locator(".st-key-image-info")).to_contain_text(f"image {newest}", timeout=15_000)
    wait_idle(page)
    stored = labels_by_image(app_server)
    assert newest not in stored
    assert len(stored) == 9

    # Skip (S) moves on without a label.
    skipped = press_and_wait_for_next(page, "s")
    assert skipped == newest
    assert newest not in labels_by_image(app_server)
