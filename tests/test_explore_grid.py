"""Explore (labelled points on top, image ids for the hover tip) and Grid (selection across pages, keys):
pure functions first, pages through AppTest on a real project database."""

from __future__ import annotations

import json

import pytest

from labeller.app.selection import hovered_image_id
from labeller.app.services import labelled_last
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
