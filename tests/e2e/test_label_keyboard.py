"""The Label card in a real browser on a real server: keys from the taxonomy, tags, undo, skip, fast typing
bound to the image on screen, the ``?`` overlay, and focus given back after a mouse click."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest
from playwright.sync_api import Page, expect

from db.engine import unit_of_work
from db.queries.annotations import current_labels, recent_annotations
from db.queries.taxonomy import TaxonomySpec
from labeller.app.services import data
from labeller.app.services.common import Role
from labeller.taxonomy_file import parse_taxonomy_toml, taxonomy_to_toml
from tests.e2e.conftest import AppServer, screenshot, sign_in, wait_idle
from tests.e2e.project_factory import DIGIT_TAXONOMY, MAIN_KEYS

pytestmark = pytest.mark.browser
IMAGES = 120  # each signed-in annotator holds a look-ahead window of claimed images

# Records, in the page, the image on screen at each key-down and every image the card shows.
RECORDER = """
window.__shown = [];
window.__pressedOn = [];
window.addEventListener('labelcard:shown', (e) => {
  const id = e.detail.imageId;
  if (window.__shown[window.__shown.length - 1] !== id) window.__shown.push(id);
});
window.addEventListener('keydown', () => {
  window.__pressedOn.push(window.__shown[window.__shown.length - 1]);
}, true);
"""


def card(page: Page):  # type: ignore[no-untyped-def]
    return page.get_by_test_id("label-card")


def shown_image_id(page: Page) -> int:
    value = card(page).get_attribute("data-image-id")
    assert value, "no image on the card"
    return int(value)


def wait_saved(page: Page, timeout: float = 20_000) -> None:
    expect(page.get_by_test_id("label-card-status")).to_have_text("All decisions saved.", timeout=timeout)


def open_label_page(page: Page, server: AppServer, name: str) -> None:
    page.add_init_script(RECORDER)
    sign_in(page, server.url, name)
    expect(page.get_by_test_id("label-card-caption")).to_contain_text("image ", timeout=20_000)


def decisions(server: AppServer, annotator: str) -> list[tuple[int, str, str | None, tuple[str, ...]]]:
    """(image, kind, main class, tags) of the annotator's rows, oldest first (undo rows included)."""
    with unit_of_work(server.project.engine) as session:
        from db.queries.annotators import get_or_create_annotator

        annotator_id = get_or_create_annotator(session, annotator).id
        rows = recent_annotations(session, annotator_id, 1000, include_undos=True)
    return [(r.image_id, str(r.kind), r.main_class, r.tags) for r in reversed(rows)]


def labels_by_image(server: AppServer) -> dict[int, tuple[str, tuple[str, ...]]]:
    with unit_of_work(server.project.engine) as session:
        return {label.image_id: (label.main_class, label.tags) for label in current_labels(session)}


def test_keys_label_tag_undo_and_skip_the_image_on_screen(app_server: AppServer, page: Page) -> None:
    open_label_page(page, app_server, "keyboard-kim")
    # Tag "0" (the first sub-class of loops, key q in the taxonomy), then label loops with its key.
    first = shown_image_id(page)
    page.keyboard.press("q")
    expect(card(page).locator("[data-sub='1']")).to_have_attribute("aria-pressed", "true")
    page.keyboard.press(MAIN_KEYS["loops"])
    expect(card(page)).not_to_have_attribute("data-image-id", str(first))
    labelled = {first: "loops"}
    mains = list(MAIN_KEYS)
    for index in range(6):
        image = shown_image_id(page)
        page.keyboard.press(MAIN_KEYS[mains[index % len(mains)]])
        expect(card(page)).not_to_have_attribute("data-image-id", str(image))
        labelled[image] = mains[index % len(mains)]
    wait_saved(page)
    stored = labels_by_image(app_server)
    assert {image: main for image, (main, _) in stored.items()} == labelled
    assert stored[first][1] == (DIGIT_TAXONOMY["loops"][0],)
    # Progress and the Recent list (with thumbnails) catch up within their 5 s refresh.
    session_metric = page.get_by_test_id("stMetric").filter(has_text="Labels this session")
    expect(session_metric).to_contain_text(str(len(labelled)), timeout=15_000)
    expect(page.locator("[class*='st-key-hide-plain-recent-'] img")).to_have_count(len(labelled), timeout=15_000)

    # Undo (z) brings the newest labelled image back at once and withdraws its label.
    newest = list(labelled)[-1]
    page.keyboard.press("z")
    expect(card(page)).to_have_attribute("data-image-id", str(newest))
    wait_saved(page)
    assert newest not in labels_by_image(app_server)

    # Skip (s) moves on without a label; the undone image gets exactly one more row: the skip.
    page.keyboard.press("s")
    expect(card(page)).not_to_have_attribute("data-image-id", str(newest))
    wait_saved(page)
    rows = [row for row in decisions(app_server, "keyboard-kim") if row[0] == newest]
    assert [kind for _, kind, _, _ in rows] == ["label", "undo", "skip"]
    screenshot(page, "label")


def test_twenty_fast_presses_record_exactly_the_twenty_images_shown(app_server: AppServer, page: Page) -> None:
    open_label_page(page, app_server, "fast-fay")
    keys = [MAIN_KEYS[m] for m in MAIN_KEYS] + ["s"]
    pressed = [keys[i % len(keys)] for i in range(20)]
    for key in pressed:
        page.keyboard.press(key)
        page.wait_for_timeout(50)
    wait_saved(page)
    pressed_on = page.evaluate("window.__pressedOn")
    assert len(pressed_on) == 20
    # The card holds a window of 24 claimed images, so a burst of 20 never waits for the server: every
    # press lands on an image, and each is recorded once, in order, on that image.
    shown = list(zip(pressed_on, pressed, strict=True))
    assert None not in pressed_on
    assert len({image for image, _ in shown}) == len(shown), "the same image was on screen for two presses"
    rows = decisions(app_server, "fast-fay")
    assert [image for image, _, _, _ in rows] == [image for image, _ in shown]
    expected_kind = {MAIN_KEYS[m]: ("label", m) for m in MAIN_KEYS} | {"s": ("skip", None)}
    assert [(kind, main) for _, kind, main, _ in rows] == [expected_kind[key] for _, key in shown]
    # A rerun resends nothing new: reload the page and nothing is applied twice.
    page.reload()
    wait_idle(page)
    expect(page.get_by_test_id("label-card-caption")).to_contain_text("image ", timeout=20_000)
    assert len(decisions(app_server, "fast-fay")) == len(shown)


def test_a_mouse_click_never_keeps_the_keys(app_server: AppServer, page: Page) -> None:
    open_label_page(page, app_server, "mouse-mo")
    wait_saved(page)
    # Change the queue order with the mouse, then press s: a skip, not an "s" typed into the dropdown.
    page.get_by_test_id("stSelectbox").filter(has_text="Queue order").click()
    page.get_by_role("option", name="random").click()
    wait_idle(page)
    expect(page.get_by_test_id("label-card-caption")).to_contain_text("image ", timeout=20_000)
    before = shown_image_id(page)
    page.keyboard.press("s")
    expect(card(page)).not_to_have_attribute("data-image-id", str(before))
    wait_saved(page)
    assert decisions(app_server, "mouse-mo") == [(before, "skip", None, ())]
    # A click on a card button gives the keys back too.
    card(page).locator("[data-action='help']").click()
    page.keyboard.press("Escape")
    image = shown_image_id(page)
    page.keyboard.press(MAIN_KEYS["curves"])
    expect(card(page)).not_to_have_attribute("data-image-id", str(image))
    wait_saved(page)
    assert decisions(app_server, "mouse-mo")[-1] == (image, "label", "curves", ())


def demo_style_keys(server: AppServer) -> str:
    """The test taxonomy with keys the demo's way: every main class's sub-classes on q, w, e, ..."""
    engine = server.project.engine
    spec = parse_taxonomy_toml(data.taxonomy_toml(engine))
    spec = TaxonomySpec(
        tuple(
            dataclasses.replace(
                main,
                sub_classes=tuple(dataclasses.replace(sub, key="qwet"[i]) for i, sub in enumerate(main.sub_classes)),
            )
            for main in spec.main_classes
        )
    )
    text = taxonomy_to_toml(spec)
    data.apply_taxonomy_toml(engine, text, role=Role.ADMIN)
    return data.taxonomy_toml(engine)  # what `labeller taxonomy --show` prints and the Data page edits


def test_keys_shown_are_the_taxonomy_files_and_question_mark_lists_them(app_server: AppServer, page: Page) -> None:
    shown_file = demo_style_keys(app_server)
    open_label_page(page, app_server, "keys-kai")
    spec = tomllib.loads(shown_file)
    from_file = [(main["name"], main.get("key")) for main in spec["main"]]
    from_file += [(f"{main['name']} / {sub['name']}", sub.get("key")) for main in spec["main"] for sub in main["sub"]]
    assert all(key for _, key in from_file)
    shown = (
        card(page)
        .locator(".lc-main")
        .evaluate_all(
            "els => els.map(e => [e.querySelector('.lc-name').textContent, e.querySelector('kbd').textContent])"
        )
    )
    shown += (
        card(page)
        .locator(".lc-group")
        .evaluate_all(
            """groups => groups.flatMap(g => [...g.querySelectorAll('.lc-chip')].map(c =>
            [g.querySelector('.lc-main .lc-name').textContent + ' / ' + c.querySelector('span').textContent,
             c.querySelector('kbd').textContent]))"""
        )
    )
    assert sorted(map(tuple, shown)) == sorted(from_file)

    help_box = page.get_by_test_id("label-card-help")
    expect(help_box).to_be_hidden()
    page.keyboard.press("?")
    expect(help_box).to_be_visible()
    rows = help_box.locator("tr").evaluate_all(
        "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent])"
    )
    listed = {(what, key) for key, what in rows}
    for name, key in from_file:
        verb = "tag" if " / " in name else "label"
        assert (f"{verb} {name}", key) in listed
    for key in ("s", "u", "z", "v", "Enter", "?"):
        assert key in {k for k, _ in rows}
    screenshot(page, "label-keys")
    before = shown_image_id(page)
    page.keyboard.press(MAIN_KEYS["loops"])  # the list covers the image: no decision
    page.keyboard.press("Escape")
    expect(help_box).to_be_hidden()
    assert shown_image_id(page) == before and decisions(app_server, "keys-kai") == []

    # "q" is a tag key of every main class: alone it labels nothing and says why; Shift + the main key
    # chooses the main class, then q tags its first sub-class and Enter labels.
    image = shown_image_id(page)
    page.keyboard.press("q")
    expect(card(page).locator(".lc-message")).to_contain_text("several main classes")
    page.keyboard.press(f"Shift+{MAIN_KEYS['strokes']}")
    page.keyboard.press("q")
    page.keyboard.press("Enter")
    expect(card(page)).not_to_have_attribute("data-image-id", str(image))
    wait_saved(page)
    assert decisions(app_server, "keys-kai") == [(image, "label", "strokes", (DIGIT_TAXONOMY["strokes"][0],))]
