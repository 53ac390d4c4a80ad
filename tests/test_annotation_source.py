"""Each annotation records what actually served its image (issue 11): the queue source that claimed it
(ranked, score, random, cold start, audit, fallback, returning), or the tool that labelled it, never just
the strategy the annotator asked for. The claim carries it from the queue to the decision."""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, insert, inspect, select, update

from db.engine import make_engine, unit_of_work
from db.migrate import alembic_config, upgrade_to_head
from db.queries import app_views
from db.queries.annotations import AnnotationError, annotation_history, record_annotation
from db.queries.annotators import get_or_create_annotator
from db.queries.queue import Served, serve_next
from db.schema import Annotation, AnnotationKind, AnnotationSource, Claim, Image, ModelVersion, Prediction, utcnow
from labeller.app.services import common, label
from labeller.app.services.label_session import LabelSession
from labeller.manifest import imported_source
from labeller.project import Project
from tests.db_helpers import add_images, add_model_version, add_taxonomy
from tests.e2e.project_factory import add_active_model, make_app_project

LEASE = 600
BEFORE_CLAIM_SOURCE = "9d2c6b4e1a73"
_op_ids = itertools.count(1)


def _annotator(engine: Engine, name: str) -> int:
    with unit_of_work(engine) as session:
        return get_or_create_annotator(session, name).id


def _serve_and_decide(
    engine: Engine,
    annotator_id: int,
    main_class_id: int,
    *,
    strategy: str = "entropy",
    version: int | None = None,
    audit_every: int = 0,
    kind: AnnotationKind = AnnotationKind.LABEL,
) -> tuple[Served, Annotation]:
    """The queue's next image for the annotator, decided: what served it and the annotation recorded."""
    with unit_of_work(engine) as session:
        served = serve_next(
            session, annotator_id=annotator_id, strategy=strategy, model_version_id=version, audit_every=audit_every
        )
        assert served is not None
        annotation = record_annotation(
            session,
            image_id=served.image_id,
            annotator_id=annotator_id,
            kind=kind,
            main_class_id=None if kind == AnnotationKind.SKIP else main_class_id,
            model_version_id=version,
        )
        session.expunge(annotation)
    return served, annotation


def test_a_claim_from_the_audit_slice_records_audit_though_entropy_was_asked(engine) -> None:
    add_images(engine, 8, audit_every=4)
    version = add_model_version(engine, {image_id: image_id / 10 for image_id in range(1, 9)})
    taxonomy = add_taxonomy(engine)
    ada = _annotator(engine, "ada")
    served, annotation = _serve_and_decide(engine, ada, taxonomy.loops, version=version, audit_every=1)
    with unit_of_work(engine) as session:
        assert session.get(Image, served.image_id).audit
    assert served.source == AnnotationSource.AUDIT
    assert (annotation.source, annotation.strategy) == ("audit", None)
    assert annotation.model_version_id == version  # the version active when it was served


def test_every_queue_source_reaches_the_annotation(engine) -> None:
    """Ranked head, then score order, then unscored images (fallback), then the audit slice, then the
    annotator's own skipped image (returning): each decision records the source that served its image."""
    add_images(engine, 8, audit_every=4)  # images 1 and 5 are audit images
    taxonomy = add_taxonomy(engine)
    version = add_model_version(engine, {2: 0.9, 3: 0.1, 4: 0.5, 6: 0.2, 7: 0.3})  # 8 is not scored
    with unit_of_work(engine) as session:
        session.get(ModelVersion, version).metrics = {"queue": {"strategy": "entropy"}}
        for image_id, rank in ((3, 0), (6, 1)):
            session.execute(
                update(Prediction)
                .where(Prediction.model_version_id == version, Prediction.image_id == image_id)
                .values(queue_rank=rank)
            )
    ada = _annotator(engine, "ada")
    seen = []
    for step in range(9):
        kind = AnnotationKind.SKIP if step == 0 else AnnotationKind.LABEL
        served, annotation = _serve_and_decide(engine, ada, taxonomy.loops, version=version, kind=kind)
        assert (annotation.source, annotation.strategy) == (served.source, served.strategy)
        seen.append((served.image_id, annotation.source, annotation.strategy))
    assert seen[:6] == [
        (3, "ranked", "entropy"),
        (6, "ranked", "entropy"),
        (2, "score", "entropy"),
        (4, "score", "entropy"),
        (7, "score", "entropy"),
        (8, "fallback", None),
    ]
    assert sorted(image for image, _, _ in seen[6:8]) == [1, 5]
    assert [source for _, source, _ in seen[6:8]] == ["audit", "audit"]
    assert seen[8] == (3, "returning", None)  # the skipped image, handed back once nothing else is left


def test_without_a_model_the_queue_records_its_cold_start(engine) -> None:
    add_images(engine, 4)
    taxonomy = add_taxonomy(engine)
    ada = _annotator(engine, "ada")
    served, annotation = _serve_and_decide(engine, ada, taxonomy.loops, strategy="entropy")
    assert (served.source, annotation.source, annotation.strategy) == ("cold_start", "cold_start", None)
    served, annotation = _serve_and_decide(engine, ada, taxonomy.loops, strategy="random")
    assert (served.source, annotation.source, annotation.strategy) == ("random", "random", "random")


def test_a_decision_without_a_claim_records_unknown_and_a_strategy_needs_a_source(engine) -> None:
    image_ids = add_images(engine, 2)
    taxonomy = add_taxonomy(engine)
    ada = _annotator(engine, "ada")
    with unit_of_work(engine) as session:
        annotation = record_annotation(
            session, image_id=image_ids[0], annotator_id=ada, kind=AnnotationKind.LABEL, main_class_id=taxonomy.loops
        )
        assert (annotation.source, annotation.strategy) == ("unknown", None)
        with pytest.raises(AnnotationError, match="claim"):
            record_annotation(
                session,
                image_id=image_ids[1],
                annotator_id=ada,
                kind=AnnotationKind.LABEL,
                main_class_id=taxonomy.loops,
                strategy="entropy",
            )


def test_a_claim_keeps_what_served_it_when_renewed_and_a_takeover_records_anew(engine) -> None:
    image_ids = add_images(engine, 1)
    ada, grace = _annotator(engine, "ada"), _annotator(engine, "grace")
    with unit_of_work(engine) as session:
        assert app_views.claim_image(
            session, image_id=image_ids[0], annotator_id=ada, lease_seconds=LEASE, source=AnnotationSource.REQUESTED
        )
        assert app_views.claim_image(
            session, image_id=image_ids[0], annotator_id=ada, lease_seconds=LEASE, source=AnnotationSource.AUDIT
        )
        assert session.get(Claim, image_ids[0]).source == "requested"
        session.get(Claim, image_ids[0]).expires_at = utcnow() - timedelta(seconds=1)
        assert app_views.claim_image(
            session, image_id=image_ids[0], annotator_id=grace, lease_seconds=LEASE, source=AnnotationSource.AUDIT
        )
        claim = session.get(Claim, image_ids[0])
        assert (claim.annotator_id, claim.source) == (grace, "audit")


def test_bulk_labels_name_the_grid_or_explore_and_review_describes_sources(engine) -> None:
    image_ids = add_images(engine, 3)
    taxonomy = add_taxonomy(engine)
    ada = _annotator(engine, "ada")
    decision = label.Decision(AnnotationKind.LABEL, taxonomy.loops)
    label.label_many(engine, annotator_id=ada, image_ids=image_ids[:1], decision=decision)
    label.label_many(
        engine, annotator_id=ada, image_ids=image_ids[1:2], decision=decision, source=AnnotationSource.EXPLORE
    )
    with unit_of_work(engine) as session:
        assert [view.source for view in annotation_history(session, image_ids[0])] == ["grid"]
        assert [view.source for view in annotation_history(session, image_ids[1])] == ["explore"]
        session.execute(insert(Annotation), [_row(image_ids[2], ada, taxonomy.loops, source="app", strategy="margin")])
        [old] = annotation_history(session, image_ids[2])
    assert old.served_by == "margin (asked; what served it was not recorded)"
    assert AnnotationSource.RANKED.describe("entropy") == "entropy, ranked"
    assert AnnotationSource.SCORE.describe("entropy") == "entropy"
    assert AnnotationSource.COLD_START.describe() == "cold start"


def test_imports_keep_a_source_of_ours_and_call_anything_else_import() -> None:
    assert imported_source("audit") == AnnotationSource.AUDIT  # export -> import keeps it
    assert imported_source("app") == AnnotationSource.APP
    assert imported_source("scraped from the web") == AnnotationSource.IMPORT
    assert imported_source(None) == AnnotationSource.IMPORT


def _row(image_id: int, annotator_id: int, main_class_id: int, **extra: Any) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "annotator_id": annotator_id,
        "kind": AnnotationKind.LABEL,
        "main_class_id": main_class_id,
        "superseded": False,
        **extra,
    }


# --- the Label card -------------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, database_url: str) -> Project:
    project = make_app_project(tmp_path / "project", images=12, database_url=database_url)
    add_active_model(project)
    return project


def _taxonomy(project: Project) -> common.TaxonomyView:
    with unit_of_work(project.engine) as session:
        return common.load_taxonomy(session)


def _op(kind: str, image: int, **extra: Any) -> dict[str, Any]:
    return {"op": f"source-{next(_op_ids)}", "kind": kind, "image": image, "after": 0, **extra}


def _annotations(project: Project, image_id: int) -> list[tuple[str, str, str | None]]:
    with unit_of_work(project.engine) as session:
        return [(str(view.kind), view.source, view.strategy) for view in annotation_history(session, image_id)]


def _audit_only(project: Project) -> None:
    with unit_of_work(project.engine) as session:
        session.execute(update(Image).values(audit=True))


def test_the_card_records_the_source_of_the_claim_not_of_the_op(project: Project) -> None:
    _audit_only(project)
    tax = _taxonomy(project)
    session = LabelSession(_annotator(project.engine, "ada"), "entropy")
    session.refill(project.engine, lease_seconds=LEASE)
    first = session.window[0]
    assert (first.strategy, first.source, first.served_strategy) == ("entropy", AnnotationSource.AUDIT, None)
    main = tax.main_classes[0].id
    # The op says what the card was told; a stale or forged one changes nothing.
    ops = {"ops": [_op("label", first.image_id, step=1, main=main, strategy="margin")]}
    [result] = session.receive(project.engine, ops, tax, lease_seconds=LEASE)
    assert result.status == "applied"
    assert _annotations(project, first.image_id) == [("label", "audit", None)]


def test_the_card_records_the_strategy_that_served_and_an_undo_keeps_it(project: Project) -> None:
    tax = _taxonomy(project)
    session = LabelSession(_annotator(project.engine, "ada"), "entropy")
    session.refill(project.engine, lease_seconds=LEASE)
    first = session.window[0]
    assert (first.source, first.served_strategy) == (AnnotationSource.SCORE, "entropy")
    main = tax.main_classes[0].id
    ops = [
        _op("label", first.image_id, step=1, main=main),
        _op("undo", first.image_id, step=2, target=1),
        _op("label", first.image_id, step=3, main=main),
    ]
    results = session.receive(project.engine, {"ops": ops}, tax, lease_seconds=LEASE)
    assert [r.status for r in results] == ["applied"] * 3
    assert _annotations(project, first.image_id) == [
        ("label", "score", "entropy"),
        ("undo", "score", "entropy"),
        ("label", "score", "entropy"),  # the undo's claim kept what served the image
    ]


def test_a_held_claim_handed_back_after_a_restart_keeps_its_source(project: Project) -> None:
    _audit_only(project)
    ada = _annotator(project.engine, "ada")
    before = LabelSession(ada, "entropy")
    before.refill(project.engine, lease_seconds=LEASE)
    after = LabelSession(ada, "margin")  # a new browser session: it gets the claims ada holds first
    after.refill(project.engine, lease_seconds=LEASE)
    assert [(i.image_id, i.source) for i in after.window] == [(i.image_id, i.source) for i in before.window]
    assert {item.source for item in after.window} == {AnnotationSource.AUDIT}


def test_a_requested_image_records_requested(project: Project) -> None:
    tax = _taxonomy(project)
    ada = _annotator(project.engine, "ada")
    session = LabelSession(ada, "entropy")
    queued = label.claim_requested(
        project.engine, annotator_id=ada, image_id=7, strategy="entropy", lease_seconds=LEASE
    )
    assert queued is not None and queued.source == AnnotationSource.REQUESTED
    session.put_in_front(7)
    session.refill(project.engine, lease_seconds=LEASE)
    assert session.window[0].source == AnnotationSource.REQUESTED
    ops = {"ops": [_op("label", 7, step=1, main=tax.main_classes[0].id)]}
    [result] = session.receive(project.engine, ops, tax, lease_seconds=LEASE)
    assert result.status == "applied"
    assert _annotations(project, 7) == [("label", "requested", None)]


# --- the migration --------------------------------------------------------------------------------------


def _migrate(engine: Engine, revision: str, *, down: bool = False) -> None:
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def _claim_columns(engine: Engine) -> set[str]:
    return {column["name"] for column in inspect(engine).get_columns("claims")}


def test_claim_source_migration_keeps_old_rows_and_goes_down_and_up(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        _migrate(engine, BEFORE_CLAIM_SOURCE)
        assert not {"source", "strategy"} & _claim_columns(engine)
        image_ids = add_images(engine, 2)
        taxonomy = add_taxonomy(engine)
        ada = _annotator(engine, "ada")
        with unit_of_work(engine) as session:
            session.execute(
                insert(Annotation), [_row(image_ids[0], ada, taxonomy.loops, source="app", strategy="bald")]
            )
            session.execute(
                insert(Claim.__table__).values(
                    image_id=image_ids[1], annotator_id=ada, expires_at=utcnow() + timedelta(minutes=5)
                )
            )
        upgrade_to_head(engine)
        assert {"source", "strategy"} <= _claim_columns(engine)
        with unit_of_work(engine) as session:
            [old] = annotation_history(session, image_ids[0])
            assert (old.source, old.strategy) == ("app", "bald")  # kept as written: "app" still means it
            assert session.get(Claim, image_ids[1]).source is None
            # A claim taken before the upgrade says nothing of what served it: the decision says so.
            decided = record_annotation(
                session,
                image_id=image_ids[1],
                annotator_id=ada,
                kind=AnnotationKind.LABEL,
                main_class_id=taxonomy.loops,
            )
            assert (decided.source, decided.strategy) == ("unknown", None)
            app_views.claim_image(
                session, image_id=image_ids[0], annotator_id=ada, lease_seconds=LEASE, source=AnnotationSource.AUDIT
            )
        _migrate(engine, BEFORE_CLAIM_SOURCE, down=True)
        assert not {"source", "strategy"} & _claim_columns(engine)
        with unit_of_work(engine) as session:
            sources = session.execute(select(Annotation.image_id, Annotation.source).order_by(Annotation.id)).all()
            assert sources == [(image_ids[0], "app"), (image_ids[1], "unknown")]
            assert session.scalar(select(Claim.__table__.c.image_id)) == image_ids[0]
        upgrade_to_head(engine)
        assert {"source", "strategy"} <= _claim_columns(engine)
    finally:
        engine.dispose()
