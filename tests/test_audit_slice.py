"""The audit slice is big enough to measure on (issue 19, point 3): a minimum slice at import, a larger
queue share until MIN_AUDIT_LABELS audit images carry a label, promotions on too few labels recorded as
such, and n with a 95% interval wherever an audit accuracy is shown."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from db.engine import unit_of_work
from db.queries.annotations import record_annotation
from db.queries.annotators import get_or_create_annotator
from db.queries.audit import (
    AUDIT_EVERY_UNTIL_ENOUGH,
    DEFAULT_AUDIT_EVERY,
    MIN_AUDIT_LABELS,
    labelled_audit_images,
    minimum_audit_slice,
)
from db.queries.images import NewImage, add_images, top_up_audit_slice
from db.queries.models import register_model_version
from db.queries.queue import next_batch, release_claims, serve_next
from db.schema import Annotation, AnnotationKind, AnnotationSource, Image
from labeller.app.services import train_report
from labeller.app.services.train import VersionView
from labeller.cli import cli
from labeller.ingest import ImportOptions, import_images
from labeller.jobs.train import AuditResult, audit_comparison, promotion_decision
from labeller.project import Project, init_project
from tests.db_helpers import add_images as add_image_rows
from tests.db_helpers import add_taxonomy
from tests.e2e.project_factory import make_app_project
from tests.images import write_image
from tests.test_app_pages import open_page


def _new_images(start: int, count: int) -> list[NewImage]:
    rows = []
    for number in range(start, start + count):
        sha = hashlib.sha256(f"audit-slice-{number}".encode()).hexdigest()
        rows.append(NewImage(sha256=sha, path=f"/images/{number}.png", width=8, height=8, format="PNG", file_size=1))
    return rows


def _audit_ids(session) -> set[int]:
    return set(session.scalars(select(Image.id).where(Image.audit.is_(True))))


def _label(session, image_id: int, annotator_id: int, main_class_id: int) -> None:
    record_annotation(
        session, image_id=image_id, annotator_id=annotator_id, kind=AnnotationKind.LABEL, main_class_id=main_class_id
    )


def test_the_minimum_slice_is_30_images_or_half_a_smaller_project() -> None:
    assert MIN_AUDIT_LABELS == 30 and AUDIT_EVERY_UNTIL_ENOUGH == 10 and DEFAULT_AUDIT_EVERY == 20
    assert minimum_audit_slice(400) == 30  # 5% would be 20 (the measured project had 14)
    assert minimum_audit_slice(100) == 30  # 5% would be 5
    assert minimum_audit_slice(40) == 20  # at most half of a small project
    assert [minimum_audit_slice(n) for n in (0, 1, 2, 3)] == [0, 0, 1, 1]


def test_importing_100_images_makes_a_slice_of_30(tmp_path: Path, engine) -> None:
    project = init_project(tmp_path / "project", database_url=engine.url.render_as_string(hide_password=False))
    for seed in range(100):
        write_image(tmp_path / "in" / f"{seed}.png", seed, size=(8, 8))
    report = import_images(project, [tmp_path / "in"], options=ImportOptions(progress=False))
    assert report.added == 100
    with unit_of_work(project.engine) as session:
        images = list(session.scalars(select(Image)))
    # 5% of 100 would be about 5 images: never 30 labels to compare model versions on. The first batch of
    # 64 files is topped up to 30; a later batch's images with keys below 5% join as they always did.
    below = [image for image in images if image.random_key < project.settings.labelling.audit_fraction]
    assert all(image.audit for image in below)
    assert MIN_AUDIT_LABELS <= sum(image.audit for image in images) <= MIN_AUDIT_LABELS + len(below)


def test_a_first_import_of_labelled_photos_keeps_its_labels_for_training(tmp_path: Path, engine) -> None:
    # Topped up at insert, before the folder labels were recorded, 15 of a new project's 30 labelled photos
    # became audit images: half of the first labels never trained the model.
    project = init_project(tmp_path / "project", database_url=engine.url.render_as_string(hide_password=False))
    for seed in range(30):
        write_image(tmp_path / "labelled" / ("ants" if seed % 2 else "bees") / f"{seed}.png", seed, size=(8, 8))
    for seed in range(30, 130):
        write_image(tmp_path / "pool" / f"{seed}.png", seed, size=(8, 8))
    options = ImportOptions(labels_from_folders=True, create_classes=True, progress=False)
    assert import_images(project, [tmp_path / "labelled"], options=options).labelled == 30
    import_images(project, [tmp_path / "pool"], options=ImportOptions(progress=False))
    with unit_of_work(project.engine) as session:
        labelled = set(session.scalars(select(Annotation.image_id)))
        images = list(session.scalars(select(Image)))
    fraction = project.settings.labelling.audit_fraction
    # Only the random 5% below the fraction, as always; the top-up takes unlabelled images.
    assert {i.id for i in images if i.audit} & labelled == {i.id for i in images if i.random_key < fraction} & labelled
    assert sum(image.audit for image in images) >= MIN_AUDIT_LABELS


def test_the_slice_grows_with_unlabelled_images_only_and_never_shrinks(engine) -> None:
    taxonomy = add_taxonomy(engine)
    with unit_of_work(engine) as session:
        ada = get_or_create_annotator(session, "ada").id
        add_images(session, _new_images(0, 40), audit_fraction=0.05)
        first = _audit_ids(session)
        assert len(first) == 20  # half of 40
        # Training labels on the five non-audit images with the smallest keys: they would join next.
        outside = session.scalars(
            select(Image.id).where(Image.audit.is_(False)).order_by(Image.random_key).limit(5)
        ).all()
        for image_id in outside:
            _label(session, image_id, ada, taxonomy.loops)
    with unit_of_work(engine) as session:
        added = add_images(session, _new_images(40, 30), audit_fraction=0.05)
        audit = _audit_ids(session)
        assert len(audit) == 30  # 70 images: the minimum
        assert first <= audit  # nothing leaves the slice
        assert not audit & set(outside)  # a training label never silently becomes an audit label
        unlabelled = session.scalars(
            select(Image.id)
            .where(Image.id.not_in(first), Image.id.not_in(outside))
            .order_by(Image.random_key)
            .limit(10)
        ).all()
        assert audit - first == set(unlabelled)  # the smallest keys among the unlabelled images
        assert {image.id for image in added if image.audit} == audit & {image.id for image in added}
    # A project made under the old rule (5% of 70: a handful) reaches the minimum at its next import, even
    # one that adds nothing new.
    with unit_of_work(engine) as session:
        for image in session.scalars(select(Image).where(Image.id.not_in(sorted(first)[:5]))):
            image.audit = False
    with unit_of_work(engine) as session:
        assert add_images(session, [], audit_fraction=0.05) == []
        assert len(_audit_ids(session)) == 30
        assert not _audit_ids(session) & set(outside)
        assert top_up_audit_slice(session, audit_fraction=0.05) == 0
        # A fraction of 0 turns the slice off: nothing joins.
        image = session.scalars(select(Image).where(Image.audit.is_(True))).first()
        image.audit = False
        session.flush()
        assert top_up_audit_slice(session, audit_fraction=0.0) == 0


def test_a_large_project_keeps_its_fraction_of_the_images(engine) -> None:
    with unit_of_work(engine) as session:
        added = add_images(session, _new_images(0, 2000), audit_fraction=0.05)
        audit = _audit_ids(session)
    # Random keys below 5%: about 100, more than the minimum, so nothing is topped up.
    assert audit == {image.id for image in added if image.random_key < 0.05} and len(audit) > MIN_AUDIT_LABELS


def _decide(engine, annotator_id: int, main_class_id: int) -> bool:
    """Serve the annotator's next image as the Label page does (default share), label it; True if audit."""
    with unit_of_work(engine) as session:
        served = serve_next(session, annotator_id=annotator_id, strategy="random", model_version_id=None)
        assert served is not None
        _label(session, served.image_id, annotator_id, main_class_id)
        return served.source == AnnotationSource.AUDIT


def test_one_in_ten_from_the_audit_slice_until_enough_are_labelled_then_one_in_twenty(engine) -> None:
    add_image_rows(engine, 400, audit_every=4)  # 100 audit images
    taxonomy = add_taxonomy(engine)
    with unit_of_work(engine) as session:
        ada = get_or_create_annotator(session, "ada").id
        grace = get_or_create_annotator(session, "grace").id
        linus = get_or_create_annotator(session, "linus").id
        # A batch (the grid): 2 of 20 while the slice has too few labels.
        batch = next_batch(session, annotator_id=linus, strategy="random", model_version_id=None, size=20)
        assert sum(session.get(Image, image_id).audit for image_id in batch) == 2
        release_claims(session, linus)

    # Fresh project: the first 9 decisions are training labels, then one in ten.
    audit_positions = [position for position in range(1, 31) if _decide(engine, ada, taxonomy.loops)]
    assert audit_positions == [10, 20, 30]
    # Another annotator labels 27 other audit images: 30 audit images now carry a label.
    with unit_of_work(engine) as session:
        others = session.scalars(
            select(Image.id).where(Image.audit.is_(True)).order_by(Image.random_key.desc()).limit(27)
        ).all()
        for image_id in others:
            _label(session, image_id, grace, taxonomy.lines)
        assert labelled_audit_images(session) == MIN_AUDIT_LABELS
    # Enough: one in twenty, as before the minimum existed.
    audit_positions = [position for position in range(31, 71) if _decide(engine, ada, taxonomy.loops)]
    assert audit_positions == [50, 70]
    with unit_of_work(engine) as session:
        batch = next_batch(session, annotator_id=linus, strategy="random", model_version_id=None, size=20)
        assert sum(session.get(Image, image_id).audit for image_id in batch) == 1


def test_a_promotion_on_one_audit_label_says_there_were_too_few() -> None:
    new, active = AuditResult(1, 1.0, 1.0, (True,)), AuditResult(1, 1.0, 1.0, (True,))
    promoted, reason = promotion_decision("auto", new, active, 0.9, 0.8)
    assert promoted
    assert reason.startswith("promoted as the newest: too few held-out audit labels to compare (n = 1, fewer than 30)")
    assert "1.000 (95% interval 0.207 to 1.000)" in reason
    assert "not worse" not in reason
    stored = audit_comparison(new, active).as_metrics()
    assert stored["n"] == 1 and stored["too_few_labels"] is True
    assert stored["new_interval"] == [pytest.approx(0.2065, abs=1e-4), 1.0]
    # Enough labels: the comparison decides as before, and the stored metrics say so.
    right = (True,) * 36 + (False,) * 4
    enough = AuditResult(40, 0.9, 0.85, right)
    promoted, reason = promotion_decision("auto", enough, enough, None, None)
    assert promoted and reason.startswith("not worse, within the noise, than the active version on the same 40")
    assert audit_comparison(enough, enough).as_metrics()["too_few_labels"] is False
    # Clearly worse even on few labels: not promoted, and the reason says how few.
    worse = AuditResult(20, 0.5, 0.5, (True,) * 10 + (False,) * 10)
    promoted, reason = promotion_decision("auto", worse, AuditResult(20, 1.0, 1.0, (True,) * 20), None, None)
    assert not promoted and reason.startswith("worse than") and "only 20 labels (fewer than 30)" in reason


def _project_with_versions(tmp_path: Path) -> Project:
    project = init_project(tmp_path / "project", name="audit")
    with unit_of_work(project.engine) as session:
        for label_count, metrics in (
            (24, {"audit_main_accuracy": 1.0, "audit_count": 1, "val_main_accuracy": 0.9}),
            (120, {"audit_main_accuracy": 0.9, "audit_count": 40}),
        ):
            register_model_version(
                session, name="m2", model_kind="m2", checkpoint_path="v.pt", config={}, data_snapshot={},
                metrics=metrics, label_count=label_count,
            )  # fmt: skip
    return project


def test_status_json_and_text_carry_the_audit_n_and_interval(tmp_path: Path) -> None:
    project = _project_with_versions(tmp_path)
    result = CliRunner().invoke(cli, ["status", str(project.root), "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["audit"] == {"images": 0, "labelled": 0, "minimum_labels": MIN_AUDIT_LABELS}
    newest, oldest = status["model_versions"]
    assert oldest["audit"]["n"] == 1 and oldest["audit"]["main_accuracy"] == 1.0
    assert oldest["audit"]["interval"] == [pytest.approx(0.2065, abs=1e-4), 1.0] and not oldest["audit"]["enough"]
    assert newest["audit"]["n"] == 40 and newest["audit"]["enough"]
    low, high = newest["audit"]["interval"]
    assert low < 0.9 < high
    result = CliRunner().invoke(cli, ["status", str(project.root)])
    assert result.exit_code == 0, result.output
    assert "audit main-class accuracy 1.000 (n = 1, 95% interval 0.207 to 1.000, fewer than 30" in result.output
    assert "audit slice: 0 images, 0 of them labelled" in result.output


def test_models_list_and_the_train_page_show_n_and_the_interval(tmp_path: Path) -> None:
    project = _project_with_versions(tmp_path)
    result = CliRunner().invoke(cli, ["models", str(project.root), "list"])
    assert result.exit_code == 0, result.output
    assert "0.207-1.000*" in result.output
    assert "* fewer than 30 audit labels: too few to compare versions by" in result.output

    def version(id_: int, labels: int, metrics: dict) -> VersionView:
        return VersionView(id_, "v", "m2", None, False, labels, metrics, {})  # type: ignore[arg-type]

    few = {"audit_main_accuracy": 1.0, "audit_count": 1, "promotion": {"promoted": True, "reason": "r"}}
    versions = [version(2, 120, {"audit_main_accuracy": 0.9, "audit_count": 40}), version(1, 24, few)]
    curve = train_report.learning_curve(versions)
    assert [(p.version, p.n, p.few) for p in curve] == [(1, 1, True), (2, 40, False)]
    (row,) = train_report.promotion_rows(versions)
    assert row["audit labels (n)"] == 1 and row["audit 95% interval"] == "0.207 to 1.000 (too few: n < 30)"
    metric_rows, _ = train_report.version_tables(versions)
    assert (
        metric_rows[0]["audit 95% interval"].startswith("0.") and "too few" not in metric_rows[0]["audit 95% interval"]
    )


def test_the_train_page_marks_points_on_too_few_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_app_project(tmp_path / "project", images=30)
    monkeypatch.setenv("LABELLER_PROJECT", str(project.root))
    reason = promotion_decision("auto", AuditResult(1, 1.0, 1.0), AuditResult(1, 1.0, 1.0), None, None)[1]
    with unit_of_work(project.engine) as session:
        for label_count, metrics in (
            (12, {"audit_main_accuracy": 0.5, "audit_count": 2}),
            (24, {"audit_main_accuracy": 1.0, "audit_count": 1, "promotion": {"promoted": True, "reason": reason}}),
        ):
            register_model_version(
                session, name="m2", model_kind="m2", checkpoint_path="v.pt", config={}, data_snapshot={},
                metrics=metrics, label_count=label_count,
            )  # fmt: skip
    app = open_page(project, "train")
    assert not app.exception
    (caption,) = [c.value for c in app.caption if c.value.startswith("Hollow points")]
    assert "fewer than 30 labels (version 1: n = 2, version 2: n = 1)" in caption
    decisions = next(frame.value for frame in app.dataframe if "reason" in frame.value.columns)
    assert decisions.iloc[0]["audit 95% interval"] == "0.207 to 1.000 (too few: n < 30)"
    assert f"Version 2 promoted: {reason}" in [m.value for m in app.markdown]
