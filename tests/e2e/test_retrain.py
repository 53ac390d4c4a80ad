"""Start a retrain from the Train page; a real worker process trains; the page shows live progress and
then the new model version."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from db.engine import unit_of_work
from db.queries.models import list_model_versions
from tests.e2e.conftest import AppServer, screenshot, sign_in, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.slow]
IMAGES = 60
LABELLED = 30
WITH_WORKER = True
TRAIN_TIMEOUT_MS = 240_000


def test_retrain_shows_progress_and_a_new_version(app_server: AppServer, page: Page) -> None:
    sign_in(page, app_server.url, "trainer-tom")
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Train").click()
    page.locator("h1", has_text="Train").wait_for()
    wait_idle(page)
    expect(page.get_by_text("No model yet")).to_be_visible()

    form = page.get_by_test_id("stForm")
    model = form.get_by_test_id("stSelectbox").first.locator("input")
    model.click()
    model.fill("M2")
    page.get_by_role("option", name="M2", exact=True).click()
    epochs = form.get_by_label("Epochs")
    epochs.fill("3")
    form.get_by_role("button", name="Start retrain").click()
    wait_idle(page)

    # Live progress: the fragment polls the job's events while the page stays put.
    expect(page.get_by_text(re.compile(r"Job \d+ .*: running"))).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
    # An epoch counter such as "1/3" appears once the first training step is reported.
    expect(page.get_by_test_id("stMetricValue").filter(has_text=re.compile(r"^\d+/3$"))).to_be_visible(
        timeout=TRAIN_TIMEOUT_MS
    )
    page.wait_for_timeout(1500)  # let plotly draw the curves
    screenshot(page, "train-progress")
    expect(page.get_by_text(re.compile(r"Finished: model version \d+ registered"))).to_be_visible(
        timeout=TRAIN_TIMEOUT_MS
    )
    wait_idle(page)
    with unit_of_work(app_server.project.engine) as session:
        versions = list_model_versions(session)
    assert len(versions) == 1 and versions[0].model_kind == "m2"
    table = page.get_by_test_id("stDataFrame").first
    expect(table).to_be_visible()
    expect(page.get_by_text("No model yet")).not_to_be_visible()
    screenshot(page, "train")
