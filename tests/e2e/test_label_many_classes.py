"""The Label card with many main classes (issue 23, item 10): past MAX_CLASS_BUTTONS it shows a search box
and the matching classes, not one button per class (10,000 classes drew 10,006 buttons)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from db.engine import unit_of_work
from db.queries.annotations import current_labels
from db.queries.taxonomy import MainClassEntry, TaxonomySpec, apply_taxonomy_spec, taxonomy_spec
from labeller.app.services.label_session import MAX_CLASS_BUTTONS
from tests.e2e.conftest import AppServer, sign_in, start_server, stop_server
from tests.e2e.project_factory import MAIN_KEYS, make_app_project

pytestmark = pytest.mark.browser
CLASSES = 1_000


@pytest.fixture(scope="module")
def many_classes_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    root = tmp_path_factory.mktemp("many") / "project"
    project = make_app_project(root, images=20)
    with unit_of_work(project.engine) as session:
        spec = taxonomy_spec(session)
        extra = tuple(MainClassEntry(f"species {index:04d}") for index in range(CLASSES - len(spec.main_classes)))
        apply_taxonomy_spec(session, TaxonomySpec(spec.main_classes + extra))
    server = start_server(project, root.parent / "streamlit.log")
    try:
        yield server
    finally:
        stop_server(server)


def test_many_main_classes_get_a_search_box_not_a_button_each(many_classes_server: AppServer, page: Page) -> None:
    sign_in(page, many_classes_server.url, "many-mo")
    card = page.get_by_test_id("label-card")
    expect(page.get_by_test_id("label-card-caption")).to_contain_text("image ", timeout=30_000)
    buttons = card.locator("button.lc-main")
    search = card.get_by_test_id("label-card-search")
    expect(search).to_be_visible()
    expect(card.get_by_test_id("label-card-search-hint")).to_contain_text(f"{CLASSES} main classes")
    assert buttons.count() == 0

    # A broad search shows at most MAX_CLASS_BUTTONS of its matches and says how many there are.
    search.fill("species 0")
    expect(buttons).to_have_count(MAX_CLASS_BUTTONS)
    expect(card.get_by_test_id("label-card-search-hint")).to_contain_text("the first 40 are shown")

    # A narrow one: click the class to label the image on screen.
    first = card.get_attribute("data-image-id")
    search.fill("SPECIES 0042")
    expect(buttons).to_have_count(1)
    buttons.first.click()
    expect(card).not_to_have_attribute("data-image-id", first or "")
    # Enter picks the only match; the class keys still work once the search box is left.
    second = card.get_attribute("data-image-id")
    # Typed key by key: letters in the box are not card keys (s would skip, u mark unsure).
    search.fill("")
    search.press_sequentially("species 0077")
    search.press("Enter")
    expect(card).not_to_have_attribute("data-image-id", second or "")
    third = card.get_attribute("data-image-id")
    page.keyboard.press(MAIN_KEYS["loops"])
    expect(card).not_to_have_attribute("data-image-id", third or "")
    expect(page.get_by_test_id("label-card-status")).to_have_text("All decisions saved.", timeout=20_000)
    with unit_of_work(many_classes_server.project.engine) as session:
        stored = {label.image_id: label.main_class for label in current_labels(session)}
    assert {stored[int(image or 0)] for image in (first, second, third)} == {"species 0042", "species 0077", "loops"}
