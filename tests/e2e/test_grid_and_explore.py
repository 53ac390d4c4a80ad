"""Bulk labelling: a Grid page selection, and a lasso on the Explore page's latent map opened as a Grid."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Locator, Page, expect

from db.engine import unit_of_work
from db.queries.annotations import current_labels
from tests.e2e.conftest import AppServer, lasso_everything, screenshot, sign_in, wait_idle

pytestmark = pytest.mark.browser
WITH_MODEL = True
IMAGES = 48


def labels(server: AppServer) -> dict[int, tuple[str, tuple[str, ...], str]]:
    with unit_of_work(server.project.engine) as session:
        return {label.image_id: (label.main_class, label.tags, label.annotator) for label in current_labels(session)}


def open_page(page: Page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()
    page.locator("h1", has_text=title).wait_for()
    wait_idle(page)


def tick(page: Page, image_id: int) -> None:
    page.get_by_test_id("stMain").get_by_test_id("stCheckbox").filter(has_text=re.compile(rf"^{image_id} ·")).locator(
        "label"
    ).click()
    wait_idle(page)


def choose(page: Page, widget: Locator, option: str) -> None:
    """Pick ``option`` in a select box by typing it, as a keyboard user would."""
    widget.locator("input").click()
    widget.locator("input").fill(option)
    page.get_by_role("option", name=option, exact=True).click()


def apply_bulk_label(page: Page, main: str, tag: str | None = None) -> None:
    form = page.get_by_test_id("stForm")
    choose(page, form.get_by_test_id("stSelectbox").first, main)
    if tag:
        choose(page, form.get_by_test_id("stMultiSelect"), f"{main} / {tag}")
        page.keyboard.press("Escape")
    form.get_by_role("button", name="Apply").click()
    wait_idle(page)


def test_bulk_label_a_grid_selection(app_server: AppServer, page: Page) -> None:
    sign_in(page, app_server.url, "grid-gus")
    open_page(page, "Grid")
    checkboxes = page.get_by_test_id("stMain").get_by_test_id("stCheckbox")
    expect(checkboxes).to_have_count(24)
    ids = [int(text.split(" ·")[0]) for text in checkboxes.all_inner_texts()[:5]]
    for image_id in ids:
        tick(page, image_id)
    expect(page.get_by_text("5 selected")).to_be_visible()
    screenshot(page, "grid")
    apply_bulk_label(page, "strokes", "7")
    stored = labels(app_server)
    assert {i: stored[i] for i in ids} == {i: ("strokes", ("7",), "grid-gus") for i in ids}
    # Labelled images leave the "most uncertain (unlabelled)" grid.
    for image_id in ids:
        expect(page.locator(f".st-key-pick-{image_id}")).to_have_count(0)
    expect(checkboxes).to_have_count(24)


def test_quick_ticks_each_select_their_tile(app_server: AppServer, page: Page) -> None:
    """Ticks made faster than the page reruns (each click lands while the last one's run is under way) all
    count, once: the selection is what the checkboxes show."""
    sign_in(page, app_server.url, "grid-quinn")
    open_page(page, "Grid")
    checkboxes = page.get_by_test_id("stMain").get_by_test_id("stCheckbox")
    expect(checkboxes).to_have_count(24)
    ids = [int(text.split(" ·")[0]) for text in checkboxes.all_inner_texts()[:8]]
    for image_id in ids:
        checkboxes.filter(has_text=re.compile(rf"^{image_id} ·")).locator("label").click()
        page.wait_for_timeout(40)
    wait_idle(page)
    expect(page.get_by_text("8 selected")).to_be_visible()
    for image_id in ids:
        expect(checkboxes.filter(has_text=re.compile(rf"^{image_id} ·")).locator("input")).to_be_checked()


def test_lasso_on_the_latent_map_then_label_the_selection(app_server: AppServer, page: Page) -> None:
    sign_in(page, app_server.url, "explorer-eve")
    open_page(page, "Explore")
    plot = page.locator(".js-plotly-plot .nsewdrag").first
    plot.wait_for()
    lasso_everything(page, plot)
    expect(page.get_by_text(re.compile(r"\d+ images selected"))).to_be_visible(timeout=15_000)
    wait_idle(page)
    count = int(re.search(r"(\d+) images selected", page.get_by_text(re.compile(r"images selected")).inner_text())[1])
    assert count == IMAGES
    screenshot(page, "explore")

    page.get_by_role("button", name="Open in the Grid").click()
    page.locator("h1", has_text="Grid").wait_for()
    wait_idle(page)
    expect(page.get_by_text(f"{IMAGES} images selected on the Explore page")).to_be_visible()
    page.get_by_role("button", name="Select page").click()
    wait_idle(page)
    apply_bulk_label(page, "curves")
    stored = labels(app_server)
    by_eve = [image_id for image_id, (main, _, who) in stored.items() if who == "explorer-eve" and main == "curves"]
    assert len(by_eve) == 24  # one page of the selection


def test_every_page_renders_without_errors(app_server: AppServer, page: Page) -> None:
    sign_in(page, app_server.url, "visitor-vic")
    for title in ("Review", "Train", "Data", "Explore", "Grid", "Label"):
        open_page(page, title)
        page.wait_for_timeout(800)  # plotly and data frames draw after the script finishes
        expect(page.get_by_test_id("stException")).to_have_count(0)
        screenshot(page, f"page-{title.lower()}")


def test_images_can_be_blurred_and_one_revealed_with_a_key(app_server: AppServer, page: Page) -> None:
    sign_in(page, app_server.url, "careful-cat")
    image = page.locator("[data-testid='label-card'] img.lc-visible")
    expect(image).to_be_visible()
    assert "blur" not in image.evaluate("element => getComputedStyle(element).filter")
    plain = image.get_attribute("src")
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_text("Image safety").click()
    sidebar.get_by_text("Blur images until revealed").click()
    wait_idle(page)
    # Blurred on the server: the card gets another picture, with nothing for CSS to filter.
    expect(image).not_to_have_attribute("src", plain or "")
    assert image.evaluate("e => getComputedStyle(e).filter") == "none"
    screenshot(page, "label-blurred")
    page.locator("h1", has_text="Label").click()
    page.keyboard.press("v")
    expect(page.get_by_role("button", name=re.compile("Hide"))).to_be_visible()
    # Revealed: the full picture comes from the server.
    expect(page.get_by_test_id("label-card")).to_have_attribute("data-revealed", "full")
    expect(image).to_have_attribute("src", plain or "")
