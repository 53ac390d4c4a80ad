"""The annotation history on real databases (SQLite file and PostgreSQL): record, correct, undo, read."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from db.engine import unit_of_work
from db.queries.annotations import (
    AnnotationError,
    annotation_history,
    current_labels,
    record_annotation,
    undo_annotation,
    undo_last_annotation,
)
from db.queries.annotators import AnnotatorError, get_or_create_annotator
from db.schema import Annotation, AnnotationKind, Claim
from tests.db_helpers import add_images, add_taxonomy

LABEL = AnnotationKind.LABEL


@pytest.fixture
def taxonomy(engine):
    return add_taxonomy(engine)


@pytest.fixture
def image_ids(engine):
    return add_images(engine, 10)


def _annotator(engine, name: str) -> int:
    with unit_of_work(engine) as session:
        return get_or_create_annotator(session, name).id


def test_get_or_create_annotator_returns_the_same_row(engine) -> None:
    first = _annotator(engine, "ada")
    assert _annotator(engine, "  ada ") == first
    assert _annotator(engine, "grace") != first
    with pytest.raises(AnnotatorError), unit_of_work(engine) as session:
        get_or_create_annotator(session, "   ")


def test_correction_supersedes_and_keeps_history(engine, taxonomy, image_ids) -> None:
    ada = _annotator(engine, "ada")
    with unit_of_work(engine) as session:
        first = record_annotation(
            session, image_id=image_ids[0], annotator_id=ada, kind=LABEL, main_class_id=taxonomy.loops
        )
    with unit_of_work(engine) as session:
        second = record_annotation(
            session,
            image_id=image_ids[0],
            annotator_id=ada,
            kind=LABEL,
            main_class_id=taxonomy.lines,
            sub_class_ids=[taxonomy.seven, taxonomy.one, taxonomy.seven],
        )
    with unit_of_work(engine) as session:
        history = annotation_history(session, image_ids[0])
        assert [row.id for row in history] == [first.id, second.id]
        assert [row.current for row in history] == [False, True]
        assert history[1].supersedes_id == first.id
        assert history[1].tags == ("1", "7")  # display order, duplicates dropped
        labels = list(current_labels(session))
    assert [(label.image_id, label.main_class, label.tags) for label in labels] == [(image_ids[0], "lines", ("1", "7"))]
    assert labels[0].annotator == "ada"


def test_undo_of_a_correction_restores_the_earlier_decision(engine, taxonomy, image_ids) -> None:
    ada = _annotator(engine, "ada")
    with unit_of_work(engine) as session:
        first = record_annotation(
            session, image_id=image_ids[0], annotator_id=ada, kind=LABEL, main_class_id=taxonomy.loops
        )
        second = record_annotation(
            session, image_id=image_ids[0], annotator_id=ada, kind=LABEL, main_class_id=taxonomy.lines
        )
    with unit_of_work(engine) as session:
        undo = undo_annotation(session, second.id, ada)
        assert undo.kind == AnnotationKind.UNDO and undo.supersedes_id == second.id
    with unit_of_work(engine) as session:
        assert [label.main_class for label in current_labels(session)] == ["loops"]
        undo_annotation(session, first.id, ada)
    with unit_of_work(engine) as session:
        assert list(current_labels(session)) == []
        # Nothing was deleted: two decisions and two undos.
        assert session.scalar(select(func.count()).select_from(Annotation)) == 4
        with pytest.raises(AnnotationError, match="no longer current"):
            undo_annotation(session, second.id, ada)


def test_undo_last_annotation_walks_back_one_decision_at_a_time(engine, taxonomy, image_ids) -> None:
    ada = _annotator(engine, "ada")
    with unit_of_work(engine) as session:
        for image_id in image_ids[:3]:
            record_annotation(session, image_id=image_id, annotator_id=ada, kind=LABEL, main_class_id=taxonomy.loops)
    with unit_of_work(engine) as session:
        assert undo_last_annotation(session, ada).image_id == image_ids[2]
    with unit_of_work(engine) as session:
        assert {label.image_id for label in current_labels(session)} == set(image_ids[:2])
        # The newest decision is now withdrawn, so a second press has nothing newer to undo.
        assert undo_last_annotation(session, ada) is None


def test_only_the_author_undoes(engine, taxonomy, image_ids) -> None:
    ada, grace = _annotator(engine, "ada"), _annotator(engine, "grace")
    with unit_of_work(engine) as session:
        label = record_annotation(
            session, image_id=image_ids[0], annotator_id=ada, kind=LABEL, main_class_id=taxonomy.loops
        )
    with pytest.raises(AnnotationError, match="another annotator"), unit_of_work(engine) as session:
        undo_annotation(session, label.id, grace)


@pytest.mark.parametrize(
    ("kind", "main_class", "tags", "message"),
    [
        (LABEL, None, (), "names a main class"),
        (AnnotationKind.SKIP, "loops", (), "carries no class"),
        (LABEL, "loops", ("seven",), "does not belong"),
        (LABEL, "loops", (999,), "no sub-class"),
        (AnnotationKind.UNSURE, None, ("zero",), "need their main class"),
        (AnnotationKind.UNDO, None, (), "undo_annotation"),
    ],
)
def test_bad_decisions_are_refused_and_write_nothing(engine, taxonomy, image_ids, kind, main_class, tags, message):
    ada = _annotator(engine, "ada")
    main_class_id = getattr(taxonomy, main_class) if main_class else None
    tag_ids = [getattr(taxonomy, tag) if isinstance(tag, str) else tag for tag in tags]
    with pytest.raises(AnnotationError, match=message), unit_of_work(engine) as session:
        record_annotation(
            session,
            image_id=image_ids[0],
            annotator_id=ada,
            kind=kind,
            main_class_id=main_class_id,
            sub_class_ids=tag_ids,
        )
    with unit_of_work(engine) as session:
        assert session.scalar(select(func.count()).select_from(Annotation)) == 0


def test_unknown_image_or_annotator_is_a_clear_error(engine, taxonomy, image_ids) -> None:
    ada = _annotator(engine, "ada")
    with pytest.raises(AnnotationError, match="no image"), unit_of_work(engine) as session:
        record_annotation(session, image_id=12345, annotator_id=ada, kind=LABEL, main_class_id=taxonomy.loops)
    with pytest.raises(AnnotationError, match="no annotator"), unit_of_work(engine) as session:
        record_annotation(session, image_id=image_ids[0], annotator_id=999, kind=LABEL, main_class_id=taxonomy.loops)


def test_consensus_is_the_newest_current_label_across_annotators(engine, taxonomy, image_ids) -> None:
    ada, grace = _annotator(engine, "ada"), _annotator(engine, "grace")
    with unit_of_work(engine) as session:
        record_annotation(session, image_id=image_ids[0], annotator_id=ada, kind=LABEL, main_class_id=taxonomy.loops)
        record_annotation(
            session,
            image_id=image_ids[0],
            annotator_id=grace,
            kind=LABEL,
            main_class_id=taxonomy.lines,
            sub_class_ids=[taxonomy.one],
        )
        # Unsure and skip are not labels: image 1 has no consensus, image 2 keeps ada's label.
        record_annotation(
            session, image_id=image_ids[1], annotator_id=ada, kind=AnnotationKind.UNSURE, main_class_id=taxonomy.loops
        )
        record_annotation(session, image_id=image_ids[2], annotator_id=ada, kind=LABEL, main_class_id=taxonomy.loops)
        record_annotation(
            session, image_id=image_ids[2], annotator_id=grace, kind=AnnotationKind.SKIP, main_class_id=None
        )
    with unit_of_work(engine) as session:
        labels = {label.image_id: label for label in current_labels(session)}
        assert set(labels) == {image_ids[0], image_ids[2]}
        assert (labels[image_ids[0]].annotator, labels[image_ids[0]].main_class) == ("grace", "lines")
        assert labels[image_ids[0]].tags == ("1",)
        assert labels[image_ids[2]].main_class == "loops"
        only_first = list(current_labels(session, image_ids=[image_ids[0], image_ids[1]]))
        assert [label.image_id for label in only_first] == [image_ids[0]]


def test_recording_a_decision_releases_the_annotators_claim(engine, taxonomy, image_ids) -> None:
    from datetime import timedelta

    from db.schema import utcnow

    ada = _annotator(engine, "ada")
    with unit_of_work(engine) as session:
        session.add(Claim(image_id=image_ids[0], annotator_id=ada, expires_at=utcnow() + timedelta(minutes=5)))
    with unit_of_work(engine) as session:
        record_annotation(session, image_id=image_ids[0], annotator_id=ada, kind=LABEL, main_class_id=taxonomy.loops)
    with unit_of_work(engine) as session:
        assert session.scalar(select(func.count()).select_from(Claim)) == 0
