"""Undo never puts one image on two annotators' screens (issue 12 item 15): A labels an image, B claims it,
A undoes. A's undo is refused (nothing withdrawn) while B holds the image, and A's window does not get it."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from db.engine import unit_of_work
from db.queries import app_views
from db.queries.annotations import AnnotationError, current_labels, record_annotation
from db.queries.annotators import get_or_create_annotator
from db.queries.queue import release_claim
from db.schema import Annotation, Claim, Image
from labeller.app.services import common, label_session
from labeller.app.services.label_session import LabelSession
from labeller.project import Project
from tests.e2e.project_factory import make_app_project

LEASE = 600
_ids = itertools.count(1)


@pytest.fixture
def project(tmp_path: Path, database_url: str) -> Project:
    return make_app_project(tmp_path / "project", images=12, database_url=database_url)


def _annotator(project: Project, name: str) -> int:
    with unit_of_work(project.engine) as session:
        return get_or_create_annotator(session, name).id


def _op(kind: str, image: int, **extra: Any) -> dict[str, Any]:
    return {"op": f"undo-claims-{next(_ids)}", "kind": kind, "image": image, "after": 0, **extra}


def _labelled_by_a_then_claimed_by_b(project: Project) -> tuple[LabelSession, int, int, common.TaxonomyView]:
    with unit_of_work(project.engine) as session:
        tax = common.load_taxonomy(session)
    a = LabelSession(_annotator(project, "a"), "entropy")
    a.refill(project.engine, lease_seconds=LEASE)
    image = a.window[0].image_id
    main = tax.main_classes[0].id
    [result] = a.receive(project.engine, {"ops": [_op("label", image, step=1, main=main)]}, tax, lease_seconds=LEASE)
    assert result.status == "applied"
    b = _annotator(project, "b")
    with unit_of_work(project.engine) as session:
        claim = session.get(Claim, image)
        if claim is not None:  # A's lease on a decided image may linger: let it run out, as time would
            session.delete(claim)
        assert app_views.claim_image(session, image_id=image, annotator_id=b, lease_seconds=LEASE)
    return a, image, b, tax


def _holder(project: Project, image: int) -> int | None:
    with unit_of_work(project.engine) as session:
        claim = session.get(Claim, image)
        return None if claim is None else claim.annotator_id


def _labelled(project: Project, image: int) -> bool:
    with unit_of_work(project.engine) as session:
        return any(label.image_id == image for label in current_labels(session))


def _annotation_of(project: Project, image: int, annotator_id: int) -> int:
    with unit_of_work(project.engine) as session:
        return session.scalars(
            select(Annotation.id).where(Annotation.image_id == image, Annotation.annotator_id == annotator_id)
        ).one()


def test_card_undo_while_another_annotator_holds_the_image(project: Project) -> None:
    a, image, b, tax = _labelled_by_a_then_claimed_by_b(project)
    undo = {"ops": [_op("undo", image, step=2, target=1)]}
    [result] = a.receive(project.engine, undo, tax, lease_seconds=LEASE)
    assert result.status == "rejected" and "someone else" in result.message
    assert _holder(project, image) == b  # B keeps it
    assert _labelled(project, image)  # A's label stands: nothing was withdrawn behind B's back
    a.refill(project.engine, lease_seconds=LEASE)
    assert image not in [item.image_id for item in a.window]


def test_card_undo_by_annotation_while_another_annotator_holds_the_image(project: Project) -> None:
    a, image, b, tax = _labelled_by_a_then_claimed_by_b(project)
    annotation = _annotation_of(project, image, a.annotator_id)
    undo = {"ops": [_op("undo_annotation", image, step=0, annotation=annotation)]}
    reset = a.reset
    [result] = a.receive(project.engine, undo, tax, lease_seconds=LEASE)
    assert result.status == "rejected"
    assert a.reset == reset and image not in [item.image_id for item in a.window]
    assert _holder(project, image) == b and _labelled(project, image)


def test_recent_list_undo_while_another_annotator_holds_the_image(project: Project) -> None:
    a, image, b, _ = _labelled_by_a_then_claimed_by_b(project)
    annotation = _annotation_of(project, image, a.annotator_id)
    with pytest.raises(AnnotationError, match="someone else"):
        label_session.undo_from_history(
            project.engine, annotator_id=a.annotator_id, annotation_id=annotation, lease_seconds=LEASE
        )
    assert _holder(project, image) == b and _labelled(project, image)
    # Once B lets it go, the same undo works and brings the image back to A.
    with unit_of_work(project.engine) as session:
        assert release_claim(session, image, b)
    assert (
        label_session.undo_from_history(
            project.engine, annotator_id=a.annotator_id, annotation_id=annotation, lease_seconds=LEASE
        )
        == image
    )
    assert _holder(project, image) == a.annotator_id and not _labelled(project, image)


def test_a_decision_on_an_image_handed_to_someone_else_meanwhile_is_refused(project: Project) -> None:
    """A's window still shows an image whose lease ran out and that the queue then gave to B (found by
    benchmarks/concurrent_labelling.py): A's label is refused and writes nothing; B's claim stays."""
    with unit_of_work(project.engine) as session:
        tax = common.load_taxonomy(session)
    a = LabelSession(_annotator(project, "a"), "entropy")
    a.refill(project.engine, lease_seconds=LEASE)
    image = a.window[0].image_id
    b = _annotator(project, "b")
    with unit_of_work(project.engine) as session:
        session.delete(session.get(Claim, image))  # A's lease runs out
        session.flush()
        assert app_views.claim_image(session, image_id=image, annotator_id=b, lease_seconds=LEASE)
    main = tax.main_classes[0].id
    [result] = a.receive(project.engine, {"ops": [_op("label", image, step=1, main=main)]}, tax, lease_seconds=LEASE)
    assert result.status == "rejected" and "someone else" in result.message
    assert not _labelled(project, image) and _holder(project, image) == b


def test_an_image_decided_in_another_tab_leaves_this_tabs_window_and_is_not_claimed_again(project: Project) -> None:
    """Two tabs of one annotator share a window (a new tab resumes the annotator's claims). One tab skips an
    image, the queue gives it to B, who labels it: the other tab's refill drops it instead of claiming it
    again as if the queue had served it (found by benchmarks/concurrent_labelling.py: 'handed twice')."""
    with unit_of_work(project.engine) as session:
        tax = common.load_taxonomy(session)
    a = _annotator(project, "a")
    first, second = LabelSession(a, "entropy"), LabelSession(a, "entropy")
    first.refill(project.engine, lease_seconds=LEASE)
    second.refill(project.engine, lease_seconds=LEASE)
    image = first.window[0].image_id
    assert image in [item.image_id for item in second.window]
    [skipped] = first.receive(project.engine, {"ops": [_op("skip", image, step=1)]}, tax, lease_seconds=LEASE)
    assert skipped.status == "applied" and _holder(project, image) is None
    b = _annotator(project, "b")
    with unit_of_work(project.engine) as session:
        assert app_views.claim_image(session, image_id=image, annotator_id=b, lease_seconds=LEASE)
        record_annotation(session, image_id=image, annotator_id=b, kind="label", main_class_id=tax.main_classes[0].id)
    second.refill(project.engine, lease_seconds=LEASE)
    assert image not in [item.image_id for item in second.window]
    assert _holder(project, image) is None


def test_a_refill_leaves_the_images_the_annotators_other_tabs_hold(project: Project) -> None:
    """Two tabs of one annotator label different images: a refill passes over the annotator's claims that
    are not in its window (two tabs on one image would both decide it, and their claims deadlocked on
    PostgreSQL: found by benchmarks/concurrent_labelling.py)."""
    with unit_of_work(project.engine) as session:
        tax = common.load_taxonomy(session)
    a = _annotator(project, "a")
    tab = LabelSession(a, "entropy")
    tab.refill(project.engine, lease_seconds=LEASE)
    window = [item.image_id for item in tab.window]
    with unit_of_work(project.engine) as session:  # the other tab holds every other image
        elsewhere = set(session.scalars(select(Image.id).where(Image.id.not_in(window))))
        for image in elsewhere:
            assert app_views.claim_image(session, image_id=image, annotator_id=a, lease_seconds=LEASE)
    label = _op("label", window[0], step=1, main=tax.main_classes[0].id)
    assert tab.receive(project.engine, {"ops": [label]}, tax, lease_seconds=LEASE)[0].status == "applied"
    tab.refill(project.engine, lease_seconds=LEASE)
    assert [item.image_id for item in tab.window] == window[1:]


def test_an_undo_is_refused_once_someone_else_labelled_the_image_except_on_the_audit_slice(project: Project) -> None:
    """A skips an image, the queue hands it to B, B labels it: A's undo (card or Recent list) is refused and
    withdraws nothing, since it would put the image back on A's card as served (found by
    benchmarks/concurrent_labelling.py: 'handed twice'). Audit images are everyone's: the undo applies."""
    with unit_of_work(project.engine) as session:
        tax = common.load_taxonomy(session)
    a = LabelSession(_annotator(project, "a"), "entropy")
    a.refill(project.engine, lease_seconds=LEASE)
    image, audit = a.window[0].image_id, a.window[1].image_id
    with unit_of_work(project.engine) as session:
        session.get(Image, audit).audit = True
    b = _annotator(project, "b")
    main = tax.main_classes[0].id
    skips = {}
    for target in (image, audit):
        with unit_of_work(project.engine) as session:
            app_views.claim_image(session, image_id=target, annotator_id=a.annotator_id, lease_seconds=LEASE)
            skips[target] = record_annotation(
                session, image_id=target, annotator_id=a.annotator_id, kind="skip", main_class_id=None
            ).id
            assert app_views.claim_image(session, image_id=target, annotator_id=b, lease_seconds=LEASE)
            record_annotation(session, image_id=target, annotator_id=b, kind="label", main_class_id=main)

    [card] = a.receive(
        project.engine, {"ops": [_op("undo_annotation", image, annotation=skips[image])]}, tax, lease_seconds=LEASE
    )
    assert card.status == "rejected" and "labelled by someone else" in card.message
    with pytest.raises(AnnotationError, match="labelled by someone else"):
        label_session.undo_from_history(
            project.engine, annotator_id=a.annotator_id, annotation_id=skips[image], lease_seconds=LEASE
        )
    assert _annotation_of(project, image, a.annotator_id) == skips[image] and _holder(project, image) is None

    assert (
        label_session.undo_from_history(
            project.engine, annotator_id=a.annotator_id, annotation_id=skips[audit], lease_seconds=LEASE
        )
        == audit
    )
    assert _holder(project, audit) == a.annotator_id


def test_undoing_my_label_is_not_refused_by_a_later_label_of_someone_else(project: Project) -> None:
    """The queue never hands on a labelled image, so a later label by B (through a link, say) does not stop
    A from withdrawing A's own label."""
    a, image, b, tax = _labelled_by_a_then_claimed_by_b(project)
    labelled = _annotation_of(project, image, a.annotator_id)
    with unit_of_work(project.engine) as session:
        record_annotation(session, image_id=image, annotator_id=b, kind="label", main_class_id=tax.main_classes[0].id)
    assert (
        label_session.undo_from_history(
            project.engine, annotator_id=a.annotator_id, annotation_id=labelled, lease_seconds=LEASE
        )
        == image
    )
    assert _holder(project, image) == a.annotator_id
