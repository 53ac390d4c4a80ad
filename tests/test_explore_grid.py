"""Explore (labelled points on top, image ids for the hover tip) and Grid (selection across pages, keys):
pure functions first, pages through AppTest on a real project database."""

from __future__ import annotations

import json

import pytest

from labeller.app.selection import hovered_image_id
from labeller.app.services.explore import labelled_last
from labeller.project import Project
from tests.e2e.project_factory import add_active_model
from tests.test_app_pages import label, open_page, project  # noqa: F401  (fixture)


def test_labelled_points_come_last_in_their_own_order() -> None:
    assert labelled_last([True, False, True, False, False]) == [1, 3, 4, 0, 2]
    assert labelled_last([]) == []


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"hover": 12}, 12),
        ({"hover": "7"}, 7),
        ({"hover": 3.0}, 3),
        ({"hover": None}, None),
        ({"hover": -1}, None),
        ({"hover": True}, None),
        ({"hover": "1; drop table"}, None),
        ({"hover": [1]}, None),
        (None, None),
        ({}, None),
    ],
)
def test_hovered_image_id_takes_only_a_positive_integer(state: object, expected: int | None) -> None:
    assert hovered_image_id(state) == expected


def test_hovered_image_id_reads_an_attribute_too() -> None:
    class State:
        hover = 5

    assert hovered_image_id(State()) == 5


def test_explore_draws_labelled_points_on_top_with_their_ids(project: Project) -> None:  # noqa: F811
    add_active_model(project)
    label(project, "someone", 3, "loops")
    label(project, "someone", 1, "strokes")
    app = open_page(project, "explore")
    trace = json.loads(app.get("plotly_chart")[0].proto.spec)["data"][0]
    ids = trace["customdata"]
    assert sorted(ids) == list(range(1, 31))
    assert ids[-2:] == [1, 3]  # drawn last: on top
    sizes = trace["marker"]["size"]
    assert sizes[-1] > sizes[0] and trace["marker"]["line"]["width"][-1] > 0 == trace["marker"]["line"]["width"][0]
    assert any("2 labelled" in caption.value for caption in app.caption)


# ----------------------------------------------------------------------------------------- grid


def test_a_shift_click_range_runs_either_way_and_ignores_stale_ids() -> None:
    from labeller.app.grid_selection import parse_range, range_ids, select_range

    page = [10, 11, 12, 13, 14]
    assert range_ids(page, 11, 13) == [11, 12, 13]
    assert range_ids(page, 13, 11) == [11, 12, 13]
    assert range_ids(page, 99, 11) == []
    assert select_range({1}, page, {"from": 14, "to": 12, "nonce": 3}) == {1, 12, 13, 14}
    for bad in (None, [], {"from": 1}, {"from": "1", "to": 2, "nonce": 1}, {"from": True, "to": 2, "nonce": 1}):
        assert parse_range(bad) is None
        assert select_range({1}, page, bad) == {1}


def test_select_all_that_match_adds_and_removes_across_pages() -> None:
    from labeller.app.grid_selection import select_matching

    assert select_matching({1, 500}, range(2, 200), True) == set(range(1, 200)) | {500}
    assert select_matching(set(range(1, 200)) | {500}, range(2, 200), False) == {1, 500}


def test_an_explore_selection_larger_than_a_page_is_labelled_in_one_go(project: Project) -> None:  # noqa: F811
    from db.engine import unit_of_work
    from db.queries.annotations import current_labels

    add_active_model(project)
    label(project, "someone", 2, "loops")
    chosen = list(range(1, 27))  # 26 images: more than the 24 a page shows
    with unit_of_work(project.engine) as session:
        from db.queries.annotators import get_or_create_annotator

        get_or_create_annotator(session, "ann")
    app = open_page(project, "explore")
    app.session_state["explore_selection"] = chosen
    app.session_state["grid_from_explore"] = True
    app.switch_page("views/grid.py").run()
    assert not app.exception, app.exception
    captions = [c.value for c in app.caption]
    assert captions.count(":green[**✓ labelled**]") == 1 and captions.count("unlabelled") == 23
    next(b for b in app.button if b.label == "Select all 26 that match").click().run()
    assert app.session_state["grid_selected"] == set(chosen)
    assert any("**26** selected" in m.value for m in app.markdown)
    app.button(key="FormSubmitter:bulk_label-Apply").click().run()
    assert not app.exception, app.exception
    with unit_of_work(project.engine) as session:
        labelled = {row.image_id for row in current_labels(session) if row.annotator == "ann"}
    assert labelled == set(chosen)
