"""The labelling queue on real databases (SQLite file and PostgreSQL): order, leases, audit slice, skips."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

from db.engine import unit_of_work
from db.queries.annotations import record_annotation, undo_annotation, undo_last_annotation
from db.queries.annotators import get_or_create_annotator
from db.queries.queue import (
    _SCORE_COLUMNS,
    STRATEGIES,
    QueueError,
    _by_score,
    _random_order,
    _returning,
    claimed_images,
    mark_labelled_predictions,
    next_batch,
    next_image,
    purge_expired_claims,
    release_claim,
    release_claims,
)
from db.schema import Annotation, AnnotationKind, Claim, Image, Prediction, utcnow
from tests.db_helpers import add_images, add_model_version, add_taxonomy

LABEL = AnnotationKind.LABEL


def _annotator(engine, name: str) -> int:
    with unit_of_work(engine) as session:
        return get_or_create_annotator(session, name).id


def _next(engine, annotator_id: int, strategy: str = "entropy", version: int | None = None, **options) -> int | None:
    with unit_of_work(engine) as session:
        return next_image(
            session, annotator_id=annotator_id, strategy=strategy, model_version_id=version, audit_every=0, **options
        )


def _label(engine, image_id: int, annotator_id: int, main_class_id: int, kind=LABEL) -> None:
    with unit_of_work(engine) as session:
        record_annotation(
            session,
            image_id=image_id,
            annotator_id=annotator_id,
            kind=kind,
            main_class_id=main_class_id if kind != AnnotationKind.SKIP else None,
        )


def _random_key_order(engine, *, audit: bool = False) -> list[int]:
    with unit_of_work(engine) as session:
        return list(session.scalars(select(Image.id).where(Image.audit.is_(audit)).order_by(Image.random_key)))


def test_cold_start_follows_random_key_and_leases_keep_annotators_apart(engine) -> None:
    add_images(engine, 30)
    ada, grace = _annotator(engine, "ada"), _annotator(engine, "grace")
    order = _random_key_order(engine)
    first = _next(engine, ada)
    assert first == order[0]
    assert _next(engine, ada) == first  # asking again (a page reload) resumes the same image
    assert _next(engine, grace) == order[1]  # ada's lease keeps grace off the first
    with unit_of_work(engine) as session:
        assert claimed_images(session, ada) == [first]
    # Once ada's lease has expired, grace may take the image over.
    later = utcnow() + timedelta(hours=1)
    with unit_of_work(engine) as session:
        assert (
            next_batch(
                session, annotator_id=grace, strategy="random", model_version_id=None, size=2, audit_every=0, now=later
            )
            == order[:2]
        )


def test_strategy_order_skips_labelled_images_and_the_audit_slice(engine) -> None:
    image_ids = add_images(engine, 40, audit_every=10)
    taxonomy = add_taxonomy(engine)
    version = add_model_version(engine, {image_id: image_id / 100 for image_id in image_ids})
    ada = _annotator(engine, "ada")
    audit = set(_random_key_order(engine, audit=True))
    by_score = [image_id for image_id in sorted(image_ids, reverse=True) if image_id not in audit]
    served = []
    for _ in range(5):
        image_id = _next(engine, ada, "margin", version)
        served.append(image_id)
        _label(engine, image_id, ada, taxonomy.loops)
    assert served == by_score[:5]
    # Another annotator's label removes an image from everyone's queue.
    grace = _annotator(engine, "grace")
    _label(engine, by_score[5], grace, taxonomy.lines)
    assert _next(engine, ada, "margin", version) == by_score[6]


def test_unscored_images_come_after_scored_ones(engine) -> None:
    image_ids = add_images(engine, 12)
    # Half the pool has a score for this strategy; the rest (NULL, or never scored) follows in random_key order.
    version = add_model_version(engine, {image_id: 0.5 for image_id in image_ids[:6]})
    with unit_of_work(engine) as session:
        session.query(Prediction).filter(Prediction.image_id.in_(image_ids[:3])).update({"bald": None})
    ada = _annotator(engine, "ada")
    with unit_of_work(engine) as session:
        batch = next_batch(session, annotator_id=ada, strategy="bald", model_version_id=version, size=12, audit_every=0)
    assert set(batch[:3]) == set(image_ids[3:6])
    assert batch[3:] == [image_id for image_id in _random_key_order(engine) if image_id not in image_ids[3:6]]


def test_skipped_and_unsure_images_return_last_to_their_annotator_but_at_once_to_others(engine) -> None:
    add_images(engine, 4)
    taxonomy = add_taxonomy(engine)
    ada, grace = _annotator(engine, "ada"), _annotator(engine, "grace")
    order = _random_key_order(engine)
    _label(engine, order[0], ada, taxonomy.loops, kind=AnnotationKind.SKIP)
    _label(engine, order[1], ada, taxonomy.loops, kind=AnnotationKind.UNSURE)
    assert _next(engine, grace) == order[0]  # a skip by ada does not hide the image from grace
    with unit_of_work(engine) as session:
        release_claims(session, grace)
    seen = []
    for _ in range(4):
        image_id = _next(engine, ada)
        seen.append(image_id)
        _label(engine, image_id, ada, taxonomy.lines)
    assert seen == [order[2], order[3], order[0], order[1]]
    assert _next(engine, ada) is None


def test_undo_puts_the_image_back_in_the_queue(engine) -> None:
    add_images(engine, 3)
    taxonomy = add_taxonomy(engine)
    ada = _annotator(engine, "ada")
    first = _next(engine, ada)
    _label(engine, first, ada, taxonomy.loops)
    assert _next(engine, ada) != first
    with unit_of_work(engine) as session:
        release_claims(session, ada)
        undo_last_annotation(session, ada)
    assert _next(engine, ada) == first


def test_every_nth_image_comes_from_the_audit_slice(engine) -> None:
    add_images(engine, 200, audit_every=10)
    taxonomy = add_taxonomy(engine)
    ada, grace = _annotator(engine, "ada"), _annotator(engine, "grace")
    audit_order = _random_key_order(engine, audit=True)
    served_audit = []
    for position in range(1, 16):
        with unit_of_work(engine) as session:
            image_id = next_image(session, annotator_id=ada, strategy="random", model_version_id=None, audit_every=5)
            is_audit = session.get(Image, image_id).audit
        assert is_audit == (position % 5 == 0), position
        if is_audit:
            served_audit.append(image_id)
        _label(engine, image_id, ada, taxonomy.loops)
    assert served_audit == audit_order[:3]
    # Audit images go to every annotator in the same order: grace's first audit image is ada's, labelled or not.
    with unit_of_work(engine) as session:
        batch = next_batch(
            session, annotator_id=grace, strategy="random", model_version_id=None, size=10, audit_every=5
        )
        audit_in_batch = [i for i in batch if session.get(Image, i).audit]
    assert audit_in_batch == audit_order[:2]
    assert len(set(batch)) == 10


def test_batches_of_two_annotators_never_overlap_and_release_returns_images(engine) -> None:
    image_ids = add_images(engine, 50, audit_every=7)
    version = add_model_version(engine, {image_id: (image_id * 37 % 50) / 50 for image_id in image_ids})
    ada, grace = _annotator(engine, "ada"), _annotator(engine, "grace")
    with unit_of_work(engine) as session:
        ada_batch = next_batch(session, annotator_id=ada, strategy="entropy", model_version_id=version, size=20)
    with unit_of_work(engine) as session:
        grace_batch = next_batch(session, annotator_id=grace, strategy="entropy", model_version_id=version, size=20)
    assert len(ada_batch) == len(set(ada_batch)) == 20
    assert len(grace_batch) == len(set(grace_batch)) == 20
    assert not set(ada_batch) & set(grace_batch)
    with unit_of_work(engine) as session:
        assert release_claim(session, ada_batch[0], ada)
        assert not release_claim(session, ada_batch[0], ada)
    with unit_of_work(engine) as session:
        rest = next_batch(session, annotator_id=grace, strategy="entropy", model_version_id=version, size=30)
    assert ada_batch[0] in rest
    assert not set(rest) & set(ada_batch[1:])
    with unit_of_work(engine) as session:
        held = session.scalar(select(func.count()).select_from(Claim))
        assert held == 49  # 19 of ada's, 30 of grace's
        assert purge_expired_claims(session) == 0
        assert purge_expired_claims(session, now=utcnow() + timedelta(days=1)) == held


def test_bad_requests_are_refused(engine) -> None:
    ada = _annotator(engine, "ada")
    with pytest.raises(QueueError, match="unknown strategy"), unit_of_work(engine) as session:
        next_image(session, annotator_id=ada, strategy="loudest", model_version_id=None)
    with pytest.raises(QueueError, match="lease"), unit_of_work(engine) as session:
        next_image(session, annotator_id=ada, strategy="random", model_version_id=None, lease_seconds=0)
    with unit_of_work(engine) as session:
        assert next_image(session, annotator_id=ada, strategy="random", model_version_id=None) is None


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "random"])
def test_sqlite_plan_walks_the_score_index(sqlite_engine, strategy) -> None:
    now = utcnow()
    query = _by_score(1, now, 1, [3], 1, _SCORE_COLUMNS[strategy])
    plan = _plan(sqlite_engine, query)
    assert f"SEARCH predictions USING INDEX ix_predictions_{strategy} (model_version_id=? AND labelled=?" in plan[0]
    assert all("SCAN" not in step for step in plan), plan
    assert any("ix_annotations_image_current" in step for step in plan)


def test_sqlite_plans_for_random_order_and_returning_images_use_indexes(sqlite_engine) -> None:
    now = utcnow()
    random_plan = _plan(sqlite_engine, _random_order(1, now, 1, [], audit=False))
    assert "ix_images_audit_random_key (audit=?)" in random_plan[0]
    returning_plan = _plan(sqlite_engine, _returning(1, now, 1, []))
    assert "ix_annotations_annotator_created (annotator_id=?)" in returning_plan[0]
    for plan in (random_plan, returning_plan):
        assert all("SCAN" not in step and "TEMP B-TREE" not in step for step in plan), plan


def _plan(engine, query) -> list[str]:
    sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    with engine.connect() as connection:
        return [row[3] for row in connection.execute(text("EXPLAIN QUERY PLAN " + sql))]


def _hints(engine) -> dict[tuple[int, int], bool]:
    with unit_of_work(engine) as session:
        rows = session.execute(select(Prediction.model_version_id, Prediction.image_id, Prediction.labelled))
        return {(version, image_id): labelled for version, image_id, labelled in rows}


def test_labelled_hint_follows_labels_undos_and_new_model_versions(engine) -> None:
    image_ids = add_images(engine, 4)
    taxonomy = add_taxonomy(engine)
    first = add_model_version(engine, dict.fromkeys(image_ids, 0.5))
    ada, grace = _annotator(engine, "ada"), _annotator(engine, "grace")
    _label(engine, image_ids[0], ada, taxonomy.loops)
    _label(engine, image_ids[1], ada, taxonomy.loops)
    _label(engine, image_ids[1], grace, taxonomy.lines)
    _label(engine, image_ids[1], ada, taxonomy.loops, kind=AnnotationKind.SKIP)  # grace's label still stands
    _label(engine, image_ids[2], ada, taxonomy.loops, kind=AnnotationKind.UNSURE)
    assert _hints(engine) == {(first, image_ids[0]): True, (first, image_ids[1]): True} | {
        (first, image_id): False for image_id in image_ids[2:]
    }
    with unit_of_work(engine) as session:
        undone = session.scalar(
            select(Annotation.id).where(Annotation.image_id == image_ids[0], Annotation.superseded.is_(False))
        )
        undo_annotation(session, undone, ada)
    assert not _hints(engine)[(first, image_ids[0])]
    # A new model version's rows arrive unmarked; marking them matches the current labels.
    second = add_model_version(engine, dict.fromkeys(image_ids, 0.5), name="v2")
    with unit_of_work(engine) as session:
        assert mark_labelled_predictions(session, second) == 1
        assert mark_labelled_predictions(session, second) == 0
    assert [image_id for (version, image_id), hint in _hints(engine).items() if version == second and hint] == [
        image_ids[1]
    ]


def test_a_stale_labelled_hint_never_serves_a_labelled_image(engine) -> None:
    image_ids = add_images(engine, 3)
    taxonomy = add_taxonomy(engine)
    ada, grace = _annotator(engine, "ada"), _annotator(engine, "grace")
    _label(engine, image_ids[2], grace, taxonomy.loops)  # labelled before the model version existed
    version = add_model_version(engine, {image_ids[0]: 0.1, image_ids[1]: 0.2, image_ids[2]: 0.9})
    assert not _hints(engine)[(version, image_ids[2])]
    assert _next(engine, ada, "entropy", version) == image_ids[1]
