"""Explore in the browser: hovering a point of the latent map shows that image's thumbnail, hidden as the
annotator's settings say (with blur on, a thumbnail blurred on the server); holding Shift reveals it."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from db.engine import unit_of_work
from db.queries.annotators import get_or_create_annotator
from db.queries.wellbeing import save_settings
from tests.e2e.conftest import AppServer, screenshot, sign_in, wait_for_hover_layer, wait_idle

pytestmark = pytest.mark.browser
WITH_MODEL = True
IMAGES = 30
LABELLED = 6

POINT_POSITION = """(index) => {
  const gd = document.querySelector('[class*="st-key-explore-map"] .js-plotly-plot');
  const trace = gd._fullData[0];
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const box = gd.getBoundingClientRect();
  const i = index < 0 ? trace.x.length + index : index;
  return {x: box.left + xa._offset + xa.l2p(trace.x[i]), y: box.top + ya._offset + ya.l2p(trace.y[i]),
          id: trace.customdata[i]};
}"""


def test_hovering_a_point_shows_its_thumbnail_blurred_and_shift_reveals_it(app_server: AppServer, page: Page) -> None:
    sign_in(page, app_server.url, "hover-hal")
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Explore").click()
    page.locator("h1", has_text="Explore").wait_for()
    wait_idle(page)
    page.locator('[class*="st-key-explore-map"] .js-plotly-plot .nsewdrag').first.wait_for()
    wait_for_hover_layer(page)
    point = page.evaluate(POINT_POSITION, -1)  # the last point: a labelled one, drawn on top
    page.mouse.move(point["x"] - 30, point["y"] - 30)
    page.mouse.move(point["x"], point["y"], steps=5)
    tip = page.get_by_test_id("explore-hover-thumb")
    expect(tip).to_be_visible(timeout=15_000)
    expect(tip).to_have_attribute("data-image-id", str(point["id"]))
    plain = tip.locator("img").get_attribute("src") or ""
    assert plain.startswith("data:image/")
    expect(tip).to_have_attribute("data-hide", "plain")  # this project does not blur by default
    page.mouse.move(5, 5)
    expect(tip).to_be_hidden()
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_text("Image safety").click()
    sidebar.get_by_text("Blur images until revealed").click()
    wait_idle(page)
    wait_for_hover_layer(page)
    point = page.evaluate(POINT_POSITION, -1)
    page.mouse.move(point["x"] - 30, point["y"] - 30)
    page.mouse.move(point["x"], point["y"], steps=5)
    expect(tip).to_be_visible(timeout=15_000)
    # Blurred on the server: another picture than the full thumbnail, nothing for CSS to filter.
    expect(tip).to_have_attribute("data-hide", "veiled")
    assert tip.locator("img").get_attribute("src") != plain
    assert tip.locator("img").evaluate("img => img.style.filter") == "none"
    screenshot(page, "explore-hover")
    page.keyboard.down("Shift")  # asks for the full thumbnail: it shows once it arrives
    expect(tip).to_have_attribute("data-hide", "plain", timeout=15_000)
    assert tip.locator("img").get_attribute("src") == plain
    page.keyboard.up("Shift")
    expect(tip).to_have_attribute("data-hide", "veiled")
    assert tip.locator("img").get_attribute("src") != plain
    page.mouse.move(5, 5)
    expect(tip).to_be_hidden()


def test_a_blurred_grid_tile_is_revealed_while_the_mouse_button_is_held(app_server: AppServer, page: Page) -> None:
    # The annotator's own blur strength, kept in the database, makes the tiles and the CSS blur alike.
    with unit_of_work(app_server.project.engine) as session:
        save_settings(session, get_or_create_annotator(session, "holding-hana").id, blur_px=40)
    sign_in(page, app_server.url, "holding-hana")
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_text("Image safety").click()
    sidebar.get_by_text("Blur images until revealed").click()
    wait_idle(page)
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Grid").click()
    page.locator("h1", has_text="Grid").wait_for()
    wait_idle(page)
    holder = page.locator('[class*="st-key-hide-veiled-tile-"]').first
    image_id = (holder.get_attribute("class") or "").split("st-key-hide-veiled-tile-")[1].split()[0]
    expect(holder.locator("img")).to_be_visible()
    assert holder.locator("img").evaluate("e => getComputedStyle(e).filter") == "none"  # blurred on the server
    assert list((app_server.project.thumbs_dir / "veiled").rglob("*-thumb-b40.jpg"))
    box = holder.locator("img").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()  # asks for the full thumbnail, shown while the button is held
    image = page.locator(f'[class*="st-key-hide-blurred-tile-{image_id}"] img')
    expect(image).to_be_visible(timeout=15_000)
    expect(page.locator("[data-ll-held] img")).to_have_count(1)
    assert image.evaluate("e => getComputedStyle(e).filter") == "none"
    page.mouse.up()
    expect(page.locator("[data-ll-held]")).to_have_count(0)
    assert image.evaluate("e => getComputedStyle(e).filter") == "blur(40px)"


EXTREME_POINTS = """() => {
  const gd = document.querySelector('[class*="st-key-explore-map"] .js-plotly-plot');
  const trace = gd._fullData[0];
  const index = (values, better) => values.reduce((best, v, i) => (better(v, values[best]) ? i : best), 0);
  const xs = Array.from(trace.x), ys = Array.from(trace.y);
  return [index(xs, (a, b) => a < b), index(xs, (a, b) => a > b), index(ys, (a, b) => a > b),
          index(ys, (a, b) => a < b), xs.length - 1];
}"""


def intersects(a: dict, b: dict) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def test_the_thumbnail_never_covers_plotlys_hover_label_and_stays_on_the_chart(
    app_server: AppServer, page: Page
) -> None:
    sign_in(page, app_server.url, "label-lou")
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Explore").click()
    page.locator("h1", has_text="Explore").wait_for()
    wait_idle(page)
    chart = page.locator('[class*="st-key-explore-map"] .js-plotly-plot')
    chart.locator(".nsewdrag").first.wait_for()
    wait_for_hover_layer(page)
    tip = page.get_by_test_id("explore-hover-thumb")
    label = chart.locator("g.hovertext").first
    # The leftmost, rightmost, topmost and bottommost points, and a labelled one: Plotly puts its label on
    # either side of the point, and the thumbnail must find room on the chart for each.
    for index in page.evaluate(EXTREME_POINTS):
        point = page.evaluate(POINT_POSITION, index)
        page.mouse.move(5, 5)
        expect(tip).to_be_hidden()
        page.mouse.move(point["x"] - 20, point["y"] + 20)
        page.mouse.move(point["x"], point["y"], steps=5)
        expect(tip).to_have_attribute("data-image-id", str(point["id"]), timeout=15_000)
        expect(tip).to_be_visible()
        expect(label).to_be_visible()
        page.wait_for_timeout(100)  # placed after the label is drawn
        tip_box, label_box, chart_box = tip.bounding_box(), label.bounding_box(), chart.bounding_box()
        assert tip_box and label_box and chart_box
        assert not intersects(tip_box, label_box), (point, tip_box, label_box)
        assert chart_box["x"] <= tip_box["x"] and tip_box["x"] + tip_box["width"] <= chart_box["x"] + chart_box["width"]
        assert (
            chart_box["y"] <= tip_box["y"] and tip_box["y"] + tip_box["height"] <= chart_box["y"] + chart_box["height"]
        )
    screenshot(page, "explore-hover-beside-label")


def test_the_colour_bar_title_clears_the_mode_bar(app_server: AppServer, page: Page) -> None:
    sign_in(page, app_server.url, "toolbar-tom")
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Explore").click()
    page.locator("h1", has_text="Explore").wait_for()
    wait_idle(page)
    chart = page.locator('[class*="st-key-explore-map"] .js-plotly-plot')
    for colouring in ("Uncertainty (entropy)", "Predicted class"):  # a continuous scale, then categories
        page.get_by_test_id("stMain").locator("button").filter(has_text=colouring).click()
        wait_idle(page)
        title = chart.locator(".colorbar .cbtitle text")
        expect(title).to_have_text(colouring)
        chart.hover(position={"x": 40, "y": 300})  # the mode bar shows while the pointer is on the chart
        mode_bar = chart.locator(".modebar")
        expect(mode_bar).to_be_visible()
        title_box, bar_box = title.bounding_box(), mode_bar.bounding_box()
        assert title_box and bar_box
        assert not intersects(title_box, bar_box), (colouring, title_box, bar_box)
    screenshot(page, "explore-colour-bar")
