"""With blur on, the browser never holds a full picture the annotator has not revealed (issue 12 item 8):
every image the pages put in an ``<img>`` (data URLs and files the server hands out) is recorded and
compared with the full pictures; a reveal brings the full one, and only that one."""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from playwright.sync_api import Page, Response, expect

from db.engine import unit_of_work
from db.queries import app_views
from labeller.app.services import common
from tests.e2e.conftest import AppServer, screenshot, sign_in, start_server, stop_server, wait_idle
from tests.e2e.project_factory import MAIN_KEYS, make_app_project

pytestmark = pytest.mark.browser
IMAGES = 40
# A veiled picture differs from its full one by far more than this (mean absolute difference, 0-255 grey
# levels, scaled to the full one's size); a JPEG copy of the full one by far less.
SAME_PICTURE = 4.0

# Every src given to an <img>, by property or attribute, in any document or shadow root of the page.
RECORDER = """
window.__images = [];
const record = (value) => { if (typeof value === 'string' && value) window.__images.push(value); };
const src = Object.getOwnPropertyDescriptor(HTMLImageElement.prototype, 'src');
Object.defineProperty(HTMLImageElement.prototype, 'src', {
  configurable: true,
  enumerable: src.enumerable,
  get() { return src.get.call(this); },
  set(value) { record(String(value)); src.set.call(this, value); },
});
const setAttribute = Element.prototype.setAttribute;
Element.prototype.setAttribute = function (name, value) {
  if (this instanceof HTMLImageElement && String(name).toLowerCase() === 'src') record(String(value));
  return setAttribute.call(this, name, value);
};
"""


@pytest.fixture(scope="module")
def blur_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """A server on a project that blurs images by default: nothing is shown plainly before sign-in."""
    root = tmp_path_factory.mktemp("veiled") / "project"
    project = make_app_project(root, images=IMAGES, blur=True)
    server = start_server(project, root.parent / "streamlit.log")
    try:
        yield server
    finally:
        stop_server(server)


class Recorder:
    """The pictures a page received: <img> sources (data URLs) and image files fetched over HTTP."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.fetched: dict[str, bytes] = {}
        page.add_init_script(RECORDER)
        page.on("response", self._response)

    def _response(self, response: Response) -> None:
        if response.request.resource_type == "image" or "/media/" in response.url:
            # A response the page dropped left nothing to look at.
            with contextlib.suppress(Exception):
                self.fetched[response.url] = response.body()

    def pictures(self) -> list[bytes]:
        found = list(self.fetched.values())
        for value in self.page.evaluate("window.__images"):
            if value.startswith("data:image/"):
                found.append(base64.b64decode(value.split(",", 1)[1]))
        return found


def full_pictures(server: AppServer) -> dict[Path, tuple[int, PILImage.Image]]:
    """Every full picture of the project (originals, thumbnails and large views, made here if not yet), with
    its image id."""
    project = server.project
    files: dict[Path, int] = {}
    with unit_of_work(project.engine) as session:
        for image in app_views.images_by_ids(session, list(range(1, IMAGES + 1))):
            files[project.resolve_image_path(image.path)] = image.id
            files[common.display_file(project, image)] = image.id
            files[common.large_view_file(project, image)] = image.id
    return {path: (image_id, PILImage.open(path).convert("RGB")) for path, image_id in files.items()}


def mean_difference(picture: PILImage.Image, full: PILImage.Image) -> float:
    scaled = picture.convert("RGB").resize(full.size, PILImage.Resampling.BILINEAR)
    return float(np.mean(np.abs(np.asarray(scaled, np.float64) - np.asarray(full, np.float64))))


def full_ones(received: list[bytes], fulls: dict[Path, tuple[int, PILImage.Image]]) -> set[int]:
    """The images whose full picture is among ``received``: the same bytes as a full file, or the same pixels."""
    by_bytes = {path.read_bytes(): image_id for path, (image_id, _) in fulls.items()}
    found = set()
    for data in received:
        if data in by_bytes:
            found.add(by_bytes[data])
            continue
        try:
            picture = PILImage.open(io.BytesIO(data))
            picture.load()
        except OSError:
            continue  # not a raster picture (an icon)
        for image_id, full in fulls.values():
            same_shape = abs(picture.width / picture.height - full.width / full.height) < 0.05
            if same_shape and mean_difference(picture, full) < SAME_PICTURE:
                found.add(image_id)
    return found


def card_image(page: Page):  # type: ignore[no-untyped-def]
    return page.locator("[data-testid='label-card'] img.lc-visible")


def test_the_label_page_sends_no_full_picture_until_one_is_revealed(blur_server: AppServer, page: Page) -> None:
    recorder = Recorder(page)
    sign_in(page, blur_server.url, "veiled-val")
    card = page.get_by_test_id("label-card")
    expect(page.get_by_test_id("label-card-caption")).to_contain_text("image ", timeout=20_000)
    # Label a few, so that the window refills and the Recent list shows thumbnails.
    for key in (MAIN_KEYS["loops"], MAIN_KEYS["strokes"], "s"):
        shown = card.get_attribute("data-image-id")
        page.keyboard.press(key)
        expect(card).not_to_have_attribute("data-image-id", shown or "")
    expect(page.locator("[class*='st-key-hide-veiled-recent-'] img")).to_have_count(3, timeout=20_000)
    wait_idle(page)
    expect(card_image(page)).to_be_visible()
    assert card_image(page).evaluate("e => getComputedStyle(e).filter") == "none"  # blurred by the server
    fulls = full_pictures(blur_server)
    received = recorder.pictures()
    assert len(received) >= 16 + 3  # the card's window and the Recent thumbnails
    assert full_ones(received, fulls) == set()
    screenshot(page, "label-veiled")

    # Reveal (v): the full large view of the image on screen comes, and only it.
    shown = int(card.get_attribute("data-image-id") or 0)
    page.locator("h1", has_text="Label").click()
    page.keyboard.press("v")
    expect(card).to_have_attribute("data-revealed", "full", timeout=15_000)
    with unit_of_work(blur_server.project.engine) as session:
        image = app_views.image_by_id(session, shown)
        assert image is not None
        large = common.large_view_file(blur_server.project, image)
    src = card_image(page).get_attribute("src") or ""
    assert base64.b64decode(src.split(",", 1)[1]) == large.read_bytes()
    assert full_ones(recorder.pictures(), fulls) == {shown}
    screenshot(page, "label-revealed")
    # Hide (v again): the veiled picture is back on screen.
    page.keyboard.press("v")
    expect(card).to_have_attribute("data-revealed", "")
    assert card_image(page).get_attribute("src") != src


def test_grid_tiles_are_veiled_and_a_held_one_comes_in_full(blur_server: AppServer, page: Page) -> None:
    recorder = Recorder(page)
    sign_in(page, blur_server.url, "holding-hal", "grid")
    page.locator("h1", has_text="Grid").wait_for()
    tiles = page.locator('[class*="st-key-hide-veiled-tile-"] img')
    expect(tiles).to_have_count(24, timeout=20_000)
    wait_idle(page)
    page.wait_for_timeout(500)
    fulls = full_pictures(blur_server)
    assert full_ones(recorder.pictures(), fulls) == set()

    # Hold the mouse button on a tile: that one image comes in full and shows while held.
    holder = page.locator('[class*="st-key-hide-veiled-tile-"]').first
    image_id = int((holder.get_attribute("class") or "").split("st-key-hide-veiled-tile-")[1].split()[0])
    box = tiles.first.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    held = page.locator(f'[class*="st-key-hide-blurred-tile-{image_id}"] img')
    expect(held).to_be_visible(timeout=15_000)
    expect(page.locator(f'[class*="st-key-hide-blurred-tile-{image_id}"][data-ll-held]')).to_have_count(1)
    assert held.evaluate("e => getComputedStyle(e).filter") == "none"
    page.mouse.up()
    # Released: the full picture stays in this one tile, under a CSS blur of the annotator's strength.
    expect(page.locator("[data-ll-held]")).to_have_count(0)
    assert held.evaluate("e => getComputedStyle(e).filter") == "blur(22px)"
    assert full_ones(recorder.pictures(), fulls) == {image_id}
    expect(tiles).to_have_count(23)
