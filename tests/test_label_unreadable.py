"""An image whose file went missing or became a non-image never traps an annotator (issue 12 item 11): the
Label card gets a placeholder it can Skip, and the image is marked unreadable, so nobody is offered it again."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from db.engine import unit_of_work
from db.queries import app_views, unreadable
from db.queries.annotators import get_or_create_annotator
from labeller.app.services import common, label_session
from labeller.app.services.label_session import LabelSession
from labeller.project import Project
from labeller.thumbnails import placeholder_file
from tests.e2e.project_factory import make_app_project

LEASE = 600
_ids = itertools.count(1)


@pytest.fixture
def project(tmp_path: Path, database_url: str) -> Project:
    return make_app_project(tmp_path / "project", images=10, database_url=database_url)


def _session(project: Project, name: str) -> LabelSession:
    with unit_of_work(project.engine) as session:
        annotator_id = get_or_create_annotator(session, name).id
    label_session = LabelSession(annotator_id, "random")
    label_session.refill(project.engine, lease_seconds=LEASE)
    return label_session


def _taxonomy(project: Project) -> common.TaxonomyView:
    with unit_of_work(project.engine) as session:
        return common.load_taxonomy(session)


def _card(project: Project, label_session: LabelSession) -> dict[str, Any]:
    return label_session.card_data(
        project.engine, project, _taxonomy(project), acks=[], hide="none", storage="test-outbox"
    )


def _break_file(project: Project, image_id: int, how: str) -> None:
    with unit_of_work(project.engine) as session:
        image = app_views.image_by_id(session, image_id)
        assert image is not None
        path = project.resolve_image_path(image.path)
    if how == "missing":
        path.unlink()
    else:
        path.write_text("this is not a PNG any more\n")


def _decide_everything(project: Project, label_session: LabelSession, kind: str = "skip") -> list[int]:
    """Skip every image the queue offers until it has none; returns them in order."""
    seen = []
    for _ in range(50):
        label_session.refill(project.engine, lease_seconds=LEASE)
        if not label_session.window:
            return seen
        image = label_session.window[0].image_id
        seen.append(image)
        op = {"op": f"unreadable-{next(_ids)}", "kind": kind, "image": image, "after": 0, "step": 1}
        if kind == "label":
            op["main"] = _taxonomy(project).main_classes[0].id
        [result] = label_session.receive(project.engine, {"ops": [op]}, _taxonomy(project), lease_seconds=LEASE)
        assert result.status in ("applied", "duplicate"), result
    raise AssertionError("the queue never ran out")


@pytest.mark.parametrize("how", ["missing", "not an image"])
def test_unreadable_image_shows_a_placeholder_and_is_passed_over_by_everyone(project: Project, how: str) -> None:
    a = _session(project, "a")
    broken = a.window[0].image_id
    _break_file(project, broken, how)

    card = _card(project, a)  # the old code raised FileNotFoundError / UnidentifiedImageError here
    [item] = [entry for entry in card["items"] if entry["id"] == broken]
    assert item["src"] == label_session.image_data_url(placeholder_file(project.thumbs_dir))
    with unit_of_work(project.engine) as session:
        assert unreadable.unreadable_ids(session, [broken]) == {broken}

    # Skip works on it, and A's queue does not hand it back, even when everything else is done.
    skip = {"op": f"unreadable-{next(_ids)}", "kind": "skip", "image": broken, "after": 0, "step": 1}
    assert a.receive(project.engine, {"ops": [skip]}, _taxonomy(project), lease_seconds=LEASE)[0].status == "applied"
    assert broken not in _decide_everything(project, a, kind="label")  # then its own skips come back: not this one

    # B (and C, who starts with no claims) are never offered it.
    b = _session(project, "b")
    assert broken not in _decide_everything(project, b, kind="label")
    c = _session(project, "c")
    assert broken not in [item.image_id for item in c.window]


def test_restored_file_can_be_cleared(project: Project) -> None:
    a = _session(project, "a")
    broken = a.window[0].image_id
    with unit_of_work(project.engine) as session:
        assert unreadable.mark_unreadable(session, broken)
        assert not unreadable.mark_unreadable(session, broken)  # once
    with unit_of_work(project.engine) as session:
        assert unreadable.clear_unreadable(session, broken)
        assert unreadable.unreadable_ids(session, [broken]) == set()
    a.release_window(project.engine)
    b = _session(project, "b")
    assert broken in _decide_everything(project, b, kind="label")


@pytest.mark.parametrize("kind", ["label", "unsure"])
def test_a_class_key_on_the_placeholder_is_refused_and_skip_is_not(project: Project, kind: str) -> None:
    """Issue 23 item 5: a key pressed on the placeholder of an unreadable image recorded a label for an image
    nobody saw."""
    a = _session(project, "a")
    broken = a.window[0].image_id
    _break_file(project, broken, "missing")
    _card(project, a)  # shows the placeholder and marks the image
    main = _taxonomy(project).main_classes[0].id
    op = {"op": f"unreadable-{next(_ids)}", "kind": kind, "image": broken, "after": 0, "step": 1, "main": main}
    [result] = a.receive(project.engine, {"ops": [op]}, _taxonomy(project), lease_seconds=LEASE)
    assert result.status == "rejected"
    assert "missing or unreadable" in result.message and "only Skip" in result.message
    with unit_of_work(project.engine) as session:
        annotator_id = get_or_create_annotator(session, "a").id
        assert app_views.image_by_id(session, broken) is not None
        assert (
            label_session.label_history.rows_after(session, image_id=broken, annotator_id=annotator_id, after=0) == []
        )
    skip = {"op": f"unreadable-{next(_ids)}", "kind": "skip", "image": broken, "after": 0, "step": 1}
    assert a.receive(project.engine, {"ops": [skip]}, _taxonomy(project), lease_seconds=LEASE)[0].status == "applied"
