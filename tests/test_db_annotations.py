"""The annotation history on real databases (SQLite file and PostgreSQL): record, correct, undo, read."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import func, select

from db.engine import unit_of_work
from db.queries.annotations import (
    AnnotationError,
    agreement,
    annotation_history,
    cohen_kappa,
    current_labels,
    disagreements,
    label_counts,
    paired_labels,
    recent_annotations,
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


def test_label_counts_follow_the_consensus_and_list_every_class(engine, taxonomy, image_ids) -> None:
    ada, grace = _annotator(engine, "ada"), _annotator(engine, "grace")
    with unit_of_work(engine) as session:
        record_annotation(
            session,
            image_id=image_ids[0],
            annotator_id=ada,
            kind=LABEL,
            main_class_id=taxonomy.loops,
            sub_class_ids=[taxonomy.zero, taxonomy.eight],
        )
        record_annotation(session, image_id=image_ids[1], annotator_id=ada, kind=LABEL, main_class_id=taxonomy.loops)
        record_annotation(
            session,
            image_id=image_ids[2],
            annotator_id=ada,
            kind=LABEL,
            main_class_id=taxonomy.loops,
            sub_class_ids=[taxonomy.zero],
        )
        # grace's newer label of image 2 is the consensus: it counts as "lines/1", not "loops/0".
        record_annotation(
            session,
            image_id=image_ids[2],
            annotator_id=grace,
            kind=LABEL,
            main_class_id=taxonomy.lines,
            sub_class_ids=[taxonomy.one],
        )
        record_annotation(
            session, image_id=image_ids[3], annotator_id=ada, kind=AnnotationKind.UNSURE, main_class_id=taxonomy.lines
        )
    with unit_of_work(engine) as session:
        counts = label_counts(session)
    assert counts.labelled_images == 3
    assert counts.by_main_class == {"loops": 2, "lines": 1}
    assert counts.by_sub_class == {"loops": {"0": 1, "8": 1}, "lines": {"1": 1, "7": 0}}
    assert counts.main_class_only == {"loops": 1, "lines": 0}


def test_disagreements_and_recent_annotations(engine, taxonomy, image_ids) -> None:
    ada, grace = _annotator(engine, "ada"), _annotator(engine, "grace")
    with unit_of_work(engine) as session:
        for image_id, ada_main, grace_main, grace_tags in [
            (image_ids[0], taxonomy.loops, taxonomy.loops, ()),  # agree
            (image_ids[1], taxonomy.loops, taxonomy.lines, ()),  # main classes differ
            (image_ids[2], taxonomy.loops, taxonomy.loops, (taxonomy.eight,)),  # tags differ
        ]:
            record_annotation(session, image_id=image_id, annotator_id=ada, kind=LABEL, main_class_id=ada_main)
            record_annotation(
                session,
                image_id=image_id,
                annotator_id=grace,
                kind=LABEL,
                main_class_id=grace_main,
                sub_class_ids=grace_tags,
            )
    with unit_of_work(engine) as session:
        found = disagreements(session)
        assert [(d.image_id, d.main_classes_differ) for d in found] == [(image_ids[1], True), (image_ids[2], False)]
        assert found[0].labels == (("ada", "loops", ()), ("grace", "lines", ()))
        assert [d.image_id for d in disagreements(session, include_tags=False)] == [image_ids[1]]
        recent = recent_annotations(session, grace, limit=2)
        assert [view.image_id for view in recent] == [image_ids[2], image_ids[1]]
        assert recent[0].tags == ("8",) and recent[0].current


def test_cohen_kappa_on_a_textbook_example() -> None:
    # Two raters, 50 items: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no (the Wikipedia example):
    # p_o = 0.7, p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5, kappa = 0.4.
    pairs = [("yes", "yes")] * 20 + [("yes", "no")] * 5 + [("no", "yes")] * 10 + [("no", "no")] * 15
    result = cohen_kappa(pairs)
    assert result.images == 50
    assert result.observed_agreement == pytest.approx(0.7)
    assert result.expected_agreement == pytest.approx(0.5)
    assert result.kappa == pytest.approx(0.4)
    assert cohen_kappa([("a", "a"), ("b", "b")]).kappa == pytest.approx(1.0)
    assert math.isnan(cohen_kappa([]).kappa)
    assert math.isnan(cohen_kappa([("a", "a")] * 3).kappa)


def test_agreement_between_two_annotators_on_doubly_labelled_images(engine, taxonomy, image_ids) -> None:
    ada, grace, lin = _annotator(engine, "ada"), _annotator(engine, "grace"), _annotator(engine, "lin")
    plan = [  # (ada, grace) main classes; image 4 is labelled by ada only, image 5 by lin
        (taxonomy.loops, taxonomy.loops),
        (taxonomy.loops, taxonomy.loops),
        (taxonomy.lines, taxonomy.lines),
        (taxonomy.loops, taxonomy.lines),
    ]
    with unit_of_work(engine) as session:
        for image_id, (ada_main, grace_main) in zip(image_ids, plan, strict=False):
            record_annotation(session, image_id=image_id, annotator_id=ada, kind=LABEL, main_class_id=ada_main)
            record_annotation(session, image_id=image_id, annotator_id=grace, kind=LABEL, main_class_id=grace_main)
        record_annotation(session, image_id=image_ids[4], annotator_id=ada, kind=LABEL, main_class_id=taxonomy.loops)
        record_annotation(session, image_id=image_ids[5], annotator_id=lin, kind=LABEL, main_class_id=taxonomy.loops)
    with unit_of_work(engine) as session:
        pairs = paired_labels(session, ada, grace)
        result = agreement(session, ada, grace)
    assert [(p.label_a, p.label_b) for p in pairs] == [
        ("loops", "loops"),
        ("loops", "loops"),
        ("lines", "lines"),
        ("loops", "lines"),
    ]
    # p_o = 3/4; ada: loops 3/4, lines 1/4; grace: loops 2/4, lines 2/4; p_e = 3/8 + 1/8 = 1/2; kappa = 1/2.
    assert result.images == 4
    assert result.kappa == pytest.approx(0.5)
