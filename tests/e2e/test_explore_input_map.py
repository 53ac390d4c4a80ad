"""Explore in the browser before any model version: the input map (the images placed by their pretrained
features) is drawn, its hover thumbnail works and a lasso on it opens as a Grid selection."""

from __future__ import annotations

import re

import numpy as np
import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from db.engine import unit_of_work
from db.queries.models import set_input_embedding
from db.schema import Image
from tests.e2e.conftest import AppServer, lasso_everything, screenshot, sign_in, wait_for_hover_layer, wait_idle
from tests.e2e.test_explore_hover import POINT_POSITION

pytestmark = pytest.mark.browser
IMAGES = 30
LABELLED = 5


def add_input_map(server: AppServer) -> None:
    """Input-map rows for every image, as the embed job writes them."""
    with unit_of_work(server.project.engine) as session:
        image_ids = list(session.scalars(select(Image.id).order_by(Image.id)))
        coords = np.random.default_rng(3).normal(size=(len(image_ids), 2))
        set_input_embedding(session, "efficientnet_lite2 features", image_ids, coords)


def test_the_input_map_shows_before_any_model_and_a_lasso_opens_in_the_grid(app_server: AppServer, page: Page) -> None:
    add_input_map(app_server)
    sign_in(page, app_server.url, "early-ella")
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Explore").click()
    page.locator("h1", has_text="Explore").wait_for()
    wait_idle(page)
    expect(page.get_by_text("Images placed by their efficientnet_lite2 features; no model yet")).to_be_visible()
    plot = page.locator('[class*="st-key-explore-map"] .js-plotly-plot .nsewdrag').first
    plot.wait_for()
    expect(page.get_by_test_id("stException")).to_have_count(0)

    wait_for_hover_layer(page)
    point = page.evaluate(POINT_POSITION, -1)
    page.mouse.move(point["x"] - 30, point["y"] - 30)
    page.mouse.move(point["x"], point["y"], steps=5)
    tip = page.get_by_test_id("explore-hover-thumb")
    expect(tip).to_be_visible(timeout=15_000)
    expect(tip).to_have_attribute("data-image-id", str(point["id"]))
    screenshot(page, "explore-input-map")
    page.mouse.move(5, 5)
    expect(tip).to_be_hidden()

    lasso_everything(page, plot)
    expect(page.get_by_text(f"{IMAGES} images selected", exact=True)).to_be_visible(timeout=15_000)
    wait_idle(page)
    page.get_by_role("button", name="Open in the Grid").click()
    page.locator("h1", has_text="Grid").wait_for()
    wait_idle(page)
    expect(page.get_by_text(f"{IMAGES} images selected on the Explore page")).to_be_visible()
    tiles = page.get_by_test_id("stMain").get_by_test_id("stCheckbox")
    expect(tiles.first).to_be_visible()
    shown = {int(text.split(" ·")[0]) for text in tiles.all_inner_texts() if re.match(r"^\d+ ·", text)}
    assert shown and shown <= set(range(1, IMAGES + 1))
