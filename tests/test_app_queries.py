"""The app's read queries (db/queries/app_views.py) and services on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from db.engine import unit_of_work
from db.queries import app_views
from db.queries.annotations import record_annotation
from db.queries.annotators import get_or_create_annotator
from db.queries.taxonomy import list_main_classes
from db.schema import AnnotationKind
from labeller.app.services import common, explore, grid, review
from labeller.project import Project
from tests.e2e.project_factory import add_active_model, make_app_project


@pytest.fixture
def project(tmp_path: Path, database_url: str) -> Project:
    project = make_app_project(tmp_path / "project", images=20, database_url=database_url)
    add_active_model(project)
    yield project
    project.engine.dispose()


def _main_ids(project: Project) -> dict[str, int]:
    with unit_of_work(project.engine) as session:
        return {m.name: m.id for m in list_main_classes(session)}


def test_grid_modes_filter_order_and_count(project: Project) -> None:
    mains = _main_ids(project)
    with unit_of_work(project.engine) as session:
        ann = get_or_create_annotator(session, "ann").id
        record_annotation(
            session, image_id=1, annotator_id=ann, kind=AnnotationKind.LABEL, main_class_id=mains["loops"]
        )
    tiles, total = grid.grid_page(project.engine, project, mode="uncertain", page_size=12)
    assert total == 19 and len(tiles) == 12 and 1 not in [t.row.image_id for t in tiles]
    scores = [t.row.score for t in tiles]
    assert scores == sorted(scores, reverse=True)  # most uncertain first
    assert all(t.file.is_file() and t.file.is_relative_to(project.thumbs_dir.resolve()) for t in tiles)

    tiles, total = grid.grid_page(project.engine, project, mode="predicted", main_class_id=mains["curves"])
    assert total == len(tiles) > 0 and {t.row.predicted_main_id for t in tiles} == {mains["curves"]}

    tiles, total = grid.grid_page(project.engine, project, mode="labelled")
    assert [t.row.image_id for t in tiles] == [1] and tiles[0].row.labelled

    tiles, total = grid.grid_page(project.engine, project, mode="search", search="digit_0003_")
    assert [t.row.image_id for t in tiles] == [4]
    tiles, _ = grid.grid_page(project.engine, project, mode="search", search="%")
    assert tiles == []  # a wildcard character is matched literally

    tiles, total = grid.grid_page(project.engine, project, mode="ids", image_ids=[7, 3, 5])
    assert [t.row.image_id for t in tiles] == [7, 3, 5] and total == 3
    with pytest.raises(ValueError, match="unknown grid mode"):
        grid.grid_page(project.engine, project, mode="nope")


def test_claims_and_likely_mistakes(project: Project) -> None:
    mains = _main_ids(project)
    with unit_of_work(project.engine) as session:
        ann = get_or_create_annotator(session, "ann").id
        bob = get_or_create_annotator(session, "bob").id
        assert app_views.claim_image(session, image_id=5, annotator_id=ann, lease_seconds=60)
        assert not app_views.claim_image(session, image_id=5, annotator_id=bob, lease_seconds=60)
        assert app_views.claim_image(session, image_id=5, annotator_id=ann, lease_seconds=60)  # renew mine
        for image_id in range(1, 21):
            prediction = app_views.prediction_for(session, common.active_model_version_id(session), image_id)
            wrong = next(m for m in mains.values() if m != prediction.main_class_id)
            record_annotation(
                session, image_id=image_id, annotator_id=ann, kind=AnnotationKind.LABEL, main_class_id=wrong
            )
    found = review.likely_mistakes(project.engine, min_confidence=0.0, limit=50)
    assert len(found) == 20
    confidences = [m.confidence for m in found]
    assert confidences == sorted(confidences, reverse=True)
    assert review.likely_mistakes(project.engine, min_confidence=1.0) == []
    # An annotator reviews their own work: bob's own contradicted label only.
    with unit_of_work(project.engine) as session:
        prediction = app_views.prediction_for(session, common.active_model_version_id(session), 3)
        wrong = next(m for m in mains.values() if m != prediction.main_class_id)
        record_annotation(session, image_id=3, annotator_id=bob, kind=AnnotationKind.LABEL, main_class_id=wrong)
    bobs = review.likely_mistakes(project.engine, min_confidence=0.0, limit=50, annotator_id=bob)
    assert [(m.image_id, m.annotator) for m in bobs] == [(3, "bob")]


def test_embedding_view_colours(project: Project) -> None:
    with unit_of_work(project.engine) as session:
        taxonomy = common.load_taxonomy(session)
    view = explore.embedding_view(project.engine, taxonomy, "predicted")
    assert view is not None and len(view.image_ids) == len(view.x) == len(view.colour) == 20
    assert view.categories == ["loops", "strokes", "curves"]
    assert set(view.colour) <= {0.0, 1.0, 2.0}
    human = explore.embedding_view(project.engine, taxonomy, "human")
    assert all(c != c for c in human.colour)  # nothing labelled yet: NaN everywhere
    novelty = explore.embedding_view(project.engine, taxonomy, "novelty")
    assert novelty.categories == [] and all(0.0 <= c <= 1.0 for c in novelty.colour)
