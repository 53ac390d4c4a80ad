"""The Train page through AppTest on a real project database (issue 13 items 6-8 and 10, issue 10), and the
pure functions behind it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from db.engine import unit_of_work
from db.queries.annotations import record_annotation
from db.queries.annotators import get_or_create_annotator
from db.queries.jobs import add_job_event, enqueue_job, list_jobs
from db.queries.models import register_model_version, write_predictions
from db.queries.taxonomy import list_main_classes
from db.schema import AnnotationKind, Image, Job, JobStatus
from labeller.app.services import train, train_report
from labeller.app.services.common import Role
from labeller.app.services.train import TrainingInProgress, VersionView
from labeller.project import Project
from tests.e2e.project_factory import add_active_model, make_app_project
from tests.test_app_pages import open_page

START = "FormSubmitter:retrain-Start retrain"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    project = make_app_project(tmp_path / "project", images=30)
    monkeypatch.setenv("LABELLER_PROJECT", str(project.root))
    return project


def _job(project: Project, status: JobStatus, params: dict | None = None, events: list[dict] | None = None) -> int:
    with unit_of_work(project.engine) as session:
        job = enqueue_job(session, "train", {"model": "m2", "epochs": 10, **(params or {})})
        job.status = status
        for payload in events or []:
            add_job_event(session, job.id, "progress", payload)
        return job.id


def _texts(app: AppTest) -> str:
    parts = [m.value for m in app.markdown] + [c.value for c in app.caption]
    parts += [e.value for e in (*app.info, *app.error, *app.success, *app.warning)]
    return "\n".join(str(p) for p in parts)


def test_fresh_session_shows_the_newest_job_and_a_cancelled_one_is_neutral(project: Project) -> None:
    job_id = _job(project, JobStatus.QUEUED)
    with unit_of_work(project.engine) as session:
        session.get(Job, job_id).status = JobStatus.CANCELLED
        session.get(Job, job_id).error = "cancelled by request"
    app = open_page(project, "train")
    assert app.session_state["watched_job"] == job_id
    assert "No training job yet" not in _texts(app)
    assert not app.error
    assert [i.value for i in app.info if "Cancelled" in i.value] == ["Cancelled: cancelled by request."]


def test_a_job_queued_without_a_model_shows_the_projects_model(project: Project) -> None:
    with unit_of_work(project.engine) as session:
        job_id = enqueue_job(session, "train", {"epochs": 3}).id  # as `labeller train` without --model
    app = open_page(project, "train")
    assert f"**Job {job_id}** ({project.settings.training.model}, 3 epochs" in _texts(app)


def test_no_job_ever_says_so(project: Project) -> None:
    app = open_page(project, "train")
    assert "No training job yet." in _texts(app)


def test_features_progress_then_epoch_zero_before_training(project: Project) -> None:
    events = [
        {"stage": "loading images", "input": {"backbone": "efficientnet_lite2"}},
        {
            "stage": "features",
            "backbone": "efficientnet_lite2",
            "done": 120,
            "total": 400,
            "images_per_second": 31.0,
            "eta_seconds": 9.0,
        },
    ]
    _job(project, JobStatus.RUNNING, events=events)
    app = open_page(project, "train")
    (bar,) = app.get("progress")
    assert bar.proto.value == 30  # percent
    assert "Features (efficientnet_lite2): 120/400 images · 31 images/s · ETA 0.1 min" in bar.proto.text
    epoch = next(m for m in app.metric if m.label == "Epoch")
    assert epoch.value == "0/10"  # never "-/10"
    assert "running · features" in _texts(app)


def test_training_epochs_and_scoring_and_follow_up_jobs(project: Project) -> None:
    events = [
        {"stage": "features", "backbone": "pixels", "done": 30, "total": 30},
        {"stage": "training", "epoch": 2, "epochs": 10, "step": 3, "steps_per_epoch": 3, "loss": {"elbo": 1.5}},
        {"stage": "scoring", "images": 30},
    ]
    job_id = _job(project, JobStatus.RUNNING, events=events)
    version = add_active_model(project)
    with unit_of_work(project.engine) as session:
        job = session.get(Job, job_id)
        job.status, job.model_version_id = JobStatus.SUCCEEDED, version
        enqueue_job(session, "embed", {"model_version_id": version})
    app = open_page(project, "train")
    assert next(m for m in app.metric if m.label == "Epoch").value == "2/10"
    text = _texts(app)
    assert "Pool scored: 30 images." in text
    assert "Latent map for Explore: job" in text and "waiting for a worker" in text


def test_one_click_one_job_and_the_button_is_disabled_while_one_is_pending(project: Project) -> None:
    app = open_page(project, "train")
    assert not app.button(key=START).disabled
    app.button(key=START).click().run()
    with unit_of_work(project.engine) as session:
        (job,) = list_jobs(session)
    assert app.button(key=START).disabled
    # A second click that reached the server anyway (two tabs, a double click): refused, the same job shown.
    with pytest.raises(TrainingInProgress) as refused:
        train.start_training(project.engine, model="m2", epochs=3, device="cpu", role=Role.ADMIN)
    assert refused.value.job_id == job.id
    with unit_of_work(project.engine) as session:
        assert len(list_jobs(session, kind="train")) == 1


def test_backbone_choice_and_input_decision(project: Project) -> None:
    decision = train_report.input_decision(project)
    assert decision.reason.startswith("auto: ")
    app = open_page(project, "train")
    assert f"Input: **{decision.backbone}** ({decision.reason})." in _texts(app)
    box = next(b for b in app.selectbox if b.label == "Input (backbone)")
    assert box.value == "auto" and box.options[:2] == ["auto", "pixels"]
    app.button(key=START).click().run()  # the project's own setting: the job decides as labeller train does
    with unit_of_work(project.engine) as session:
        first = list_jobs(session)[0]
        assert "backbone" not in first.params
        first.status = JobStatus.SUCCEEDED
    app = open_page(project, "train")
    next(b for b in app.selectbox if b.label == "Input (backbone)").select("efficientnet_lite0")
    app.button(key=START).click().run()
    with unit_of_work(project.engine) as session:
        assert list_jobs(session)[0].params["backbone"] == "efficientnet_lite0"


def test_backbone_param_resolves_auto_from_the_images(project: Project) -> None:
    assert train_report.backbone_param(project, "auto") is None  # the project's setting
    decided = train_report.input_decision(project).backbone  # from the images
    project.settings.training.backbone = "efficientnet_lite0"
    assert train_report.backbone_param(project, "auto") == decided
    assert train_report.backbone_param(project, "efficientnet_lite0") is None


def _label(project: Project, image_id: int, main: str) -> None:
    with unit_of_work(project.engine) as session:
        who = get_or_create_annotator(session, "ann")
        main_id = next(m.id for m in list_main_classes(session) if m.name == main)
        record_annotation(
            session, image_id=image_id, annotator_id=who.id, kind=AnnotationKind.LABEL, main_class_id=main_id
        )


def _version(project: Project, metrics: dict, confidence: float, label_count: int = 20) -> int:
    with unit_of_work(project.engine) as session:
        version = register_model_version(
            session,
            name="v",
            model_kind="m2",
            checkpoint_path="x.pt",
            config={"model": "m2", "epochs": 5, "input": {"backbone": "pixels"}},
            data_snapshot={"newest_annotation_id": 5},
            metrics=metrics,
            label_count=label_count,
        )
        loops = next(m.id for m in list_main_classes(session) if m.name == "loops")
        rows = [
            {
                "image_id": image_id,
                "main_class_id": loops,
                "confidence": confidence,
                "entropy": 0.69,
                "leaf_entropy": 1.0,
                "margin": 0.99,
                "least_confidence": 0.5,
            }
            for image_id in session.scalars(select(Image.id))
        ]
        write_predictions(session, version.id, rows)
        return version.id


def test_promotion_reasons_metrics_per_class_comparison_and_flat_calibration(project: Project) -> None:
    for image_id in range(1, 9):
        _label(project, image_id, "loops" if image_id % 2 else "strokes")
    first = _version(project, {"val_main_accuracy": 0.9, "num_val_labels": 9, "temperature": 1.1}, 0.9)
    reason = (
        "not worse, within the noise, than the active version on the same 12 held-out audit labels: main-class "
        "accuracy 0.833 vs 0.917, difference -0.083 (95% interval -0.38 to +0.22); promoted as the newer version"
    )
    promotion = {"promoted": True, "reason": reason, "compared_with": first, "active_audit_main_accuracy": 0.917}
    metrics = {
        "val_main_accuracy": 0.85,
        "num_val_labels": 20,
        "audit_count": 12,
        "audit_main_accuracy": 0.833,
        "temperature": 3.08,
        "alpha": 0.1,
        "classifier": "tiny_cnn",
        "promotion": promotion,
    }
    second = _version(project, metrics, 0.36, label_count=105)  # three main classes: uniform is 0.333
    train.promote(project.engine, second, role=Role.ADMIN)
    app = open_page(project, "train")
    assert not app.exception
    tables = [frame.value for frame in app.dataframe]
    decisions = next(f for f in tables if "reason" in f.columns)
    row = decisions.iloc[0]
    assert (row["version"], row["audit labels (n)"], row["validation labels (n)"]) == (second, 12, 20)
    assert row["reason"] == reason and list(decisions.columns[:3]) == ["version", "promoted", "reason"]
    assert f"Version {second} promoted: {reason}" in [m.value for m in app.markdown]  # readable without scrolling
    metric_table = next(f for f in tables if "val_main_accuracy" in f.columns and "labels" in f.columns)
    assert "alpha" not in metric_table.columns and "classifier" not in metric_table.columns
    settings_table = next(f for f in tables if "classifier" in f.columns)
    assert settings_table.loc[settings_table["version"] == second, "alpha"].tolist() == ["0.1"]
    # Per class: the version predicts "loops" everywhere; labels 1-5 are in-sample (annotation ids <= 5).
    accuracy = next(f for f in tables if "accuracy" in f.columns and "class" in f.columns)
    assert accuracy.set_index("class").loc["loops", "accuracy"] == 1.0
    confusions = [f for f in tables if list(f.columns) == list(f.index) and "loops" in f.columns]
    assert len(confusions) == 2 and sum(int(f.to_numpy().sum()) for f in confusions) == 8  # held out, in-sample
    assert all(int(f.drop(columns="loops").to_numpy().sum()) == 0 for f in confusions)
    assert any("In-sample" in c.value and "optimistic" in c.value for c in app.caption)
    compare = next(f for f in tables if "B - A" in f.columns)
    labels_row = compare[compare[""] == "labels"].iloc[0]
    assert (labels_row["A"], labels_row["B"], labels_row["B - A"]) == ("20", "105", "85")
    (warning,) = [w.value for w in app.warning if "Calibration flattened" in w.value]
    assert "3.08" in warning and f"Model version {second}" in warning


def test_flat_calibration_needs_a_high_temperature_and_near_uniform_predictions() -> None:
    assert train_report.flat_calibration_warning(3.08, 1.0, 100) is not None
    assert train_report.flat_calibration_warning(1.2, 1.0, 100) is None
    assert train_report.flat_calibration_warning(3.08, 0.5, 100) is None
    assert train_report.flat_calibration_warning(None, 1.0, 100) is None


def test_stage_progress_and_metric_split_are_pure() -> None:
    rows = train.flatten_progress(
        [
            {"stage": "features", "done": 5, "total": 10},
            {"stage": "training", "epoch": 1, "epochs": 4, "step": 1, "steps_per_epoch": 2},
            {"stage": "evaluating on the audit slice", "audit_images": 3},
        ]
    )
    stages = train_report.stage_progress(rows)
    assert stages.stage == "evaluating on the audit slice" and stages.features["done"] == 5
    assert stages.epoch_text(4) == "1/4" and train_report.stage_progress([]).epoch_text(4) == "0/4"
    measured, settings = train_report.split_metrics(
        {"val_ece": 0.1, "audit_count": 3, "temperature": 1.5, "alpha": 0.1, "amp": False, "promotion": {}}
    )
    assert set(measured) == {"val_ece", "audit_count", "temperature"} and set(settings) == {"alpha", "amp"}
    version = VersionView(1, "v", "m2", None, True, 3, {"promotion": {"promoted": False, "reason": "r"}}, {})  # type: ignore[arg-type]
    assert train_report.promotion_rows([version])[0]["reason"] == "r"
    assert np.array_equal(train_report.ClassReport([], np.zeros((0, 0)), np.zeros((0, 0))).held_out, np.zeros((0, 0)))


def test_learning_curve_has_intervals_and_sample_sizes() -> None:
    def version(id_: int, labels: int, metrics: dict) -> VersionView:
        return VersionView(id_, "v", "m2", None, False, labels, metrics, {})  # type: ignore[arg-type]

    curve = train_report.learning_curve(
        [
            version(2, 105, {"audit_main_accuracy": 0.9, "audit_count": 40, "val_main_accuracy": 0.85}),
            version(1, 30, {"val_main_accuracy": 1.0, "num_val_labels": 9}),
            version(3, 200, {"val_main_accuracy": 0.9}),  # no sample size: no point
        ]
    )
    assert [(p.version, p.source, p.n) for p in curve] == [(1, "validation", 9), (2, "audit", 40)]
    assert curve[0].low == pytest.approx(0.701, abs=1e-3) and curve[0].high == 1.0
    assert curve[1].low < 0.9 < curve[1].high


def test_a_version_trained_with_model_auto_says_why_and_auto_is_offered(project: Project) -> None:
    reason = "m2 kept: supervised 0.80 ± 0.05 vs m2 0.85 ± 0.04 over 5 folds of 40 labels"
    version = VersionView(1, "v", "m2", None, True, 40, {"model_selection": {"reason": reason}}, {})  # type: ignore[arg-type]
    _, settings = train_report.version_tables([version])
    assert settings[0]["model auto"] == reason
    assert train.TRAIN_MODELS[0] == "auto" and "m2" in train.TRAIN_MODELS


def test_the_metrics_table_shows_each_versions_ece_with_the_labels_it_rests_on() -> None:
    def version(id_: int, metrics: dict) -> VersionView:
        return VersionView(id_, "v", "m2", None, False, 30, metrics, {})  # type: ignore[arg-type]

    few = {"val_ece": 0.031, "num_val_labels": 6, "temperature": 1.0, "calibration": {"trusted": False}}
    enough = {"val_ece": 0.02, "num_val_labels": 45, "temperature": 1.3, "calibration": {"trusted": True}}
    rows, settings = train_report.version_tables([version(2, enough), version(1, few)])
    assert rows[0]["calibration"] == "ECE 0.020 on 45 labels, T = 1.30"
    assert rows[1]["calibration"] == "ECE 0.031 on 6 labels, T = 1.00; percentages hidden (fewer than 30)"
    assert "calibration" not in settings[1]  # a decision, shown as such, not a setting
