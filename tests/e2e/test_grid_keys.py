"""Grid in the browser: arrow keys move between tiles, Space ticks the focused one, Shift-click ticks a
range, and 'Select all that match' takes an Explore-sized selection across pages."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import AppServer, screenshot, sign_in, wait_idle

pytestmark = pytest.mark.browser
WITH_MODEL = True
IMAGES = 60
LABELLED = 5

FOCUSED_TILE = """() => {
  const holder = document.activeElement && document.activeElement.closest('[class*="st-key-pick-"]');
  const match = holder && /st-key-pick-(\\d+)/.exec(holder.className);
  return match ? Number(match[1]) : null;
}"""
PAGE_IDS = """() => [...document.querySelectorAll('[class*="st-key-pick-"]')].map(
  (el) => Number(/st-key-pick-(\\d+)/.exec(el.className)[1]))"""


def selected_count(page: Page) -> int:
    text = page.get_by_text(re.compile(r"images · page \d+ of \d+")).inner_text()
    return int(re.search(r"(\d+) selected", text)[1])


def first_arrow(page: Page) -> None:
    """ArrowRight from no tile, once the keyboard layer is there: it mounts after the page is drawn (a
    module the browser loads), and a press before that does nothing, as for an annotator."""
    for _ in range(40):
        page.keyboard.press("ArrowRight")
        if page.evaluate(FOCUSED_TILE) is not None:
            return
        page.wait_for_timeout(250)
    raise AssertionError("no tile took the focus: the Grid's keyboard layer never mounted")


def test_keyboard_and_shift_click_selection(app_server: AppServer, page: Page) -> None:
    sign_in(page, app_server.url, "keyboard-kim")
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Grid").click()
    page.locator("h1", has_text="Grid").wait_for()
    wait_idle(page)
    expect(page.get_by_text("unlabelled", exact=True).first).to_be_visible()  # the default filter: unlabelled
    ids = page.evaluate(PAGE_IDS)
    assert len(ids) == 24
    page.locator("h1", has_text="Grid").click()  # no widget holds the keys
    first_arrow(page)
    assert page.evaluate(FOCUSED_TILE) == ids[0]
    page.keyboard.press("ArrowRight")
    assert page.evaluate(FOCUSED_TILE) == ids[1]
    page.wait_for_timeout(6000)  # an annotator who looks a while before ticking keeps the focus too
    page.keyboard.press(" ")
    wait_idle(page)
    expect(page.get_by_text(re.compile(r"· 1 selected"))).to_be_visible()
    # The redrawn tile gets the focus back (the layer checks every 250 ms).
    page.wait_for_function(f"({FOCUSED_TILE})() === {ids[1]}", timeout=5_000)
    page.keyboard.press("ArrowDown")
    assert page.evaluate(FOCUSED_TILE) == ids[7]
    page.keyboard.press(" ")
    wait_idle(page)
    expect(page.get_by_text(re.compile(r"· 2 selected"))).to_be_visible()

    def tile_label(image_id: int):  # type: ignore[no-untyped-def]
        return page.locator(f".st-key-pick-{image_id} label")

    tile_label(ids[10]).click()
    wait_idle(page)
    expect(page.get_by_text(re.compile(r"· 3 selected"))).to_be_visible()
    tile_label(ids[14]).click(modifiers=["Shift"])
    wait_idle(page)
    expect(page.get_by_text(re.compile(r"· 7 selected"))).to_be_visible()
    for index in (1, 7, 10, 11, 12, 13, 14):
        expect(page.locator(f".st-key-pick-{ids[index]} input")).to_be_checked()
    screenshot(page, "grid-keyboard")
    # Unticking a tile of the range takes it out; a click on the page ends the keyboard walk for good.
    tile_label(ids[12]).click()
    wait_idle(page)
    expect(page.get_by_text(re.compile(r"· 6 selected"))).to_be_visible()
    expect(page.locator(f".st-key-pick-{ids[12]} input")).not_to_be_checked()
    page.locator("h1", has_text="Grid").click()
    page.wait_for_timeout(600)
    assert page.evaluate(FOCUSED_TILE) is None

    page.get_by_role("button", name=f"Select all {IMAGES - LABELLED} that match").click()
    wait_idle(page)
    expect(page.get_by_text(re.compile(rf"· {IMAGES - LABELLED} selected"))).to_be_visible()
