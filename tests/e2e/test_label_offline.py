"""Nothing is fetched from outside: every request any page makes (scripts, styles, fonts, icons, the favicon,
images, websockets) goes to the app's own host. A tool for sensitive images must work offline and leak
nothing, not even which page an annotator has open."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.e2e.conftest import AppServer, sign_in, wait_idle

pytestmark = pytest.mark.browser
IMAGES = 40
WITH_MODEL = True
LABELLED = 12
PAGES = ("label", "grid", "review", "train", "explore", "data")
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def test_no_page_fetches_anything_from_another_host(app_server: AppServer, page: Page, context: BrowserContext) -> None:
    requested: list[str] = []
    context.on("request", lambda request: requested.append(request.url))
    page.on("websocket", lambda socket: requested.append(socket.url))
    sign_in(page, app_server.url, "offline-olga")
    expect(page.get_by_test_id("label-card-caption")).to_contain_text("image ", timeout=20_000)
    page.keyboard.press("1")
    page.keyboard.press("?")
    for path in PAGES:
        page.goto(f"{app_server.url}/{path}?annotator=offline-olga")
        wait_idle(page)
        page.wait_for_timeout(1_500)  # late requests: fonts, icons, the favicon, plots
    hosts = {urlsplit(url).hostname for url in requested if not url.startswith(("data:", "blob:"))}
    outside = sorted(url for url in requested if urlsplit(url).hostname not in LOCAL_HOSTS | {None})
    assert len(requested) > 20 and "127.0.0.1" in hosts  # the recorder saw the app's own traffic
    assert outside == [], f"requests to other hosts: {outside}"


def test_label_opens_by_url_and_nothing_hides_under_the_top_bar(app_server: AppServer, page: Page) -> None:
    page.goto(f"{app_server.url}/label")
    wait_idle(page)
    prompt = page.get_by_text("Pick or enter your name in the sidebar")
    expect(prompt).to_be_visible()
    expect(page.get_by_text("Page not found")).to_have_count(0)
    header = page.get_by_test_id("stHeader").bounding_box()
    assert header is not None and prompt.bounding_box()["y"] >= header["y"] + header["height"]
    page.goto(f"{app_server.url}/label?annotator=offline-olga")
    wait_idle(page)
    expect(page.get_by_test_id("label-card-caption")).to_contain_text("image ", timeout=20_000)
    expect(page.get_by_text("Page not found")).to_have_count(0)
    label = page.get_by_text("Queue order", exact=True)
    assert label.bounding_box()["y"] >= header["y"] + header["height"]
