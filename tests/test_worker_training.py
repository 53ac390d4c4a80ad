"""Training, scoring and embedding through real worker processes on a small generated project (cpu,
16 px images, one epoch): the happy path end to end, cancel, SIGKILL mid-training, and jobs that fail
with a message the user can act on."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from sqlalchemy import func, select

from db.engine import unit_of_work
from db.queries import jobs as job_queries
from db.queries import models as model_queries
from db.queries.annotators import get_or_create_annotator
from db.queries.queue import next_batch, release_claims
from db.schema import Annotation, Image, Job, JobStatus, Prediction
from tests.worker_helpers import (
    enqueue,
    job_row,
    make_project,
    run_cli,
    running_worker,
    start_worker,
    train_device,
    wait_for,
    wait_for_status,
)

pytestmark = pytest.mark.slow
# Long enough to be interrupted even on a GPU, where early stopping would otherwise end it in seconds.
LONG_TRAINING = {"epochs": 5_000, "config": {"patience": 10_000}}


def _jobs(project, kind: str) -> list[Job]:
    with unit_of_work(project.engine) as session:
        return job_queries.list_jobs(session, kind=kind)


def _queue_order(project, version_id: int | None, size: int = 5) -> list[int]:
    with unit_of_work(project.engine) as session:
        annotator = get_or_create_annotator(session, "alice").id
        order = next_batch(
            session, annotator_id=annotator, strategy="entropy", model_version_id=version_id, size=size, audit_every=0
        )
        release_claims(session, annotator)
    return order


def _model_files(project) -> list[str]:
    return sorted(path.name for path in project.models_dir.iterdir() if path.name != "cache")


def test_train_score_embed_promote_and_the_queue_follows_the_model(tmp_path) -> None:
    project = make_project(tmp_path, labelled_per_class=10, unlabelled=24, audit_fraction=0.3)
    cold_start = _queue_order(project, None)

    with running_worker(project, log=tmp_path / "worker.log"):
        trained = run_cli("train", str(project.root), "--wait")
        assert trained.returncode == 0, trained.stderr + (tmp_path / "worker.log").read_text()
        assert "model version 1" in trained.stdout and "promoted" in trained.stdout
        embed = wait_for(lambda: _jobs(project, "embed"), 60, "the embed job to be queued")[0]
        embed = wait_for_status(project, embed.id, (JobStatus.SUCCEEDED, JobStatus.FAILED), timeout=240)
        assert embed.status == JobStatus.SUCCEEDED, embed.error

    train_job = _jobs(project, "train")[0]
    # The train job scores the pool before it registers and promotes: no separate score job, no version
    # without predictions.
    assert train_job.status == JobStatus.SUCCEEDED and not _jobs(project, "score")
    with unit_of_work(project.engine) as session:
        version = model_queries.active_model_version(session)
        assert version is not None and version.id == train_job.model_version_id
        assert version.config["input"]["backbone"] == "pixels"  # 24 px images: auto keeps pixels
        assert version.model_kind == "m2" and version.label_count == 20
        uses_cuda = train_device() != "cpu" and torch.cuda.is_available()
        assert version.metrics["device"].startswith("cuda" if uses_cuda else "cpu")
        assert version.metrics["promotion"]["promoted"] and version.metrics["audit_count"] >= 1
        assert 0.0 <= version.metrics["audit_main_accuracy"] <= 1.0
        assert version.data_snapshot["taxonomy"] == {"circle": [], "square": []}
        assert version.data_snapshot["newest_annotation_id"] == session.scalar(
            select(Annotation.id).order_by(Annotation.id.desc())
        )
        assert (project.root / version.checkpoint_path).is_file()
        progress = [e.payload for e in job_queries.job_events(session, train_job.id, kinds=["progress"])]
        epochs = [p for p in progress if p.get("stage") == "training"]
        assert epochs and {"epoch", "loss", "validation", "images_per_second", "eta_seconds"} <= set(epochs[-1])
        assert epochs[-1]["loss"] and epochs[-1]["images_per_second"] > 0
        predictions = session.scalars(select(Prediction).where(Prediction.model_version_id == version.id)).all()
        assert len(predictions) == session.query(Image).count() == 44
        assert all(p.umap_x is not None and p.latent_mean for p in predictions)
        labelled = set(session.scalars(select(Annotation.image_id)))
        audit = set(session.scalars(select(Image.id).where(Image.audit.is_(True))))
        queue = version.metrics["queue"]
        assert queue["strategy"] == "entropy" and queue["round_size"] == project.settings.labelling.round_size
        candidates = [p for p in predictions if p.image_id not in labelled | audit]
        assert queue["candidates"] == len(candidates) == sum(p.queue_rank is not None for p in predictions)
        expected = [p.image_id for p in sorted(candidates, key=lambda p: p.queue_rank)]
        version_id = version.id
    assert _model_files(project) == [os.path.basename(version.checkpoint_path)]  # no temporary files left

    ranked = _queue_order(project, version_id)
    # The app's queue serves the stored ranking (whose uncertainty-first rounds tests/test_acquisition.py checks).
    assert ranked == expected[:5]
    assert ranked != cold_start

    # A second version that is not promoted, then promote it and roll back, all from the command line.
    with running_worker(project):
        second = run_cli("train", str(project.root), "--wait", "--promote", "never", "--warm-start")
        assert second.returncode == 0 and "not promoted" in second.stdout
        assert "warm start from model version 1" in second.stdout + second.stderr
    listing = run_cli("models", str(project.root))
    assert listing.returncode == 0 and "* " in listing.stdout
    assert run_cli("models", str(project.root), "promote", "2").returncode == 0
    with unit_of_work(project.engine) as session:
        assert model_queries.active_model_version(session).id == 2
    rolled = run_cli("models", str(project.root), "rollback")
    assert rolled.returncode == 0 and "model version 1 is active" in rolled.stdout
    compared = run_cli("models", str(project.root), "compare", "1", "2")
    assert compared.returncode == 0 and "val_main_accuracy" in compared.stdout


def test_a_photo_project_trains_on_pretrained_features_computed_once(tmp_path) -> None:
    """Colour images of 48 px with default settings: auto picks the pretrained backbone, the features are
    computed in the train job (with progress) and cached, and a second training computes none."""
    from core.registry import DEFAULT_BACKBONE

    project = make_project(tmp_path, labelled_per_class=6, unlabelled=8, image_size=48)
    training = project.settings.training
    training.image_size = training.channels = 0  # as a fresh project has them: read from the images
    project.save_settings()
    with running_worker(project, log=tmp_path / "worker.log"):
        first = run_cli("train", str(project.root), "--wait")
        assert first.returncode == 0, first.stderr + (tmp_path / "worker.log").read_text()
        assert f"input: {DEFAULT_BACKBONE} (auto: colour photos" in first.stdout
        second = run_cli("train", str(project.root), "--wait", "--promote", "never")
        assert second.returncode == 0, second.stderr
    train_jobs = _jobs(project, "train")
    with unit_of_work(project.engine) as session:
        progress = [
            [e.payload for e in job_queries.job_events(session, job.id, kinds=["progress"])] for job in train_jobs
        ]
        version = model_queries.get_model_version(session, train_jobs[-1].model_version_id)
        assert version.config["backbone"] == DEFAULT_BACKBONE and version.metrics["classifier"] == "linear"
        scored = session.scalar(select(func.count()).where(Prediction.model_version_id == version.id))
        assert scored == session.scalar(select(func.count(Image.id))) == 20
    features = {tuple(p.get(k) for k in ("stage", "total")) for p in progress[-1]}  # the first job: newest last
    assert ("features", 20) in features and "images_per_second" in next(
        p for p in progress[-1] if p.get("stage") == "features"
    )
    assert not any(p.get("stage") == "features" for p in progress[0])  # the second job found them cached


def test_the_features_job_fills_the_cache_once_and_refuses_pixels(tmp_path) -> None:
    from core.features import FeatureSpec
    from labeller.training_data import feature_cache

    project = make_project(tmp_path, labelled_per_class=3, unlabelled=4, image_size=48)
    with running_worker(project):
        first = wait_for_status(project, enqueue(project, "features", {"backbone": "efficientnet_lite0"}), _ENDED, 180)
        again = wait_for_status(project, enqueue(project, "features", {"backbone": "efficientnet_lite0"}), _ENDED, 60)
        pixels = wait_for_status(project, enqueue(project, "features", {"backbone": "pixels"}), _ENDED, 60)
    assert first.status == again.status == JobStatus.SUCCEEDED, first.error or again.error
    assert pixels.status == JobStatus.FAILED and "pixels input has no features" in pixels.error
    with unit_of_work(project.engine) as session:
        hashes = list(session.scalars(select(Image.sha256)))
        logs = [
            [e.payload.get("message", "") for e in job_queries.job_events(session, job.id, kinds=["log"])]
            for job in (first, again)
        ]
    _, found = feature_cache(project, FeatureSpec("efficientnet_lite0")).get(hashes)
    assert found.all() and len(hashes) == 10
    assert any("computed features of 10 image(s)" in line for line in logs[0])
    assert any("computed features of 0 image(s)" in line for line in logs[1])


_ENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED)


def test_cancel_running_training_leaves_no_model_and_sigkill_is_recovered(tmp_path) -> None:
    project = make_project(tmp_path, labelled_per_class=8, unlabelled=16, heartbeat_timeout_seconds=3)

    def training_started(job_id: int) -> bool:
        with unit_of_work(project.engine) as session:
            return any(
                e.payload.get("stage") == "training"
                for e in job_queries.job_events(session, job_id, kinds=["progress"])
            )

    with running_worker(project) as worker:
        cancelled = enqueue(project, "train", LONG_TRAINING)
        wait_for(lambda: training_started(cancelled), 120, "training to start")
        assert run_cli("jobs", str(project.root), "cancel", str(cancelled)).returncode == 0
        job = wait_for_status(project, cancelled, (JobStatus.CANCELLED,), timeout=30)
        assert job.error == "cancelled on request"
        assert worker.poll() is None

    doomed = start_worker(project)
    killed = enqueue(project, "train", LONG_TRAINING)
    wait_for(lambda: training_started(killed), 120, "training to start")
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=10)
    with running_worker(project):
        job = wait_for_status(project, killed, (JobStatus.FAILED,), timeout=30)
        assert f"worker {job.worker_id} stopped heartbeating" in job.error
        with unit_of_work(project.engine) as session:
            assert model_queries.list_model_versions(session) == []
        assert _model_files(project) == []
        # The new worker carries on with the next job.
        fresh = enqueue(project, "train", {"epochs": 1})
        done = wait_for_status(project, fresh, (JobStatus.SUCCEEDED, JobStatus.FAILED), timeout=120)
        assert done.status == JobStatus.SUCCEEDED, done.error
    assert job_row(project, killed).status == JobStatus.FAILED


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        (
            {"classes": ("circle",), "extra_classes": ("square",), "labelled_per_class": 8, "unlabelled": 8},
            "only one main class ('circle') has labels",
        ),
        (
            {"classes": (), "extra_classes": ("circle", "square"), "labelled_per_class": 0, "unlabelled": 0},
            "the project has no images",
        ),
    ],
    ids=["one-class", "no-images"],
)
def test_a_job_that_cannot_train_fails_with_a_clear_message(tmp_path, layout, message) -> None:
    project = make_project(tmp_path, **layout)
    with running_worker(project):
        result = run_cli("train", str(project.root), "--wait")
    assert result.returncode != 0
    assert message in result.stderr
    job = _jobs(project, "train")[0]
    assert job.status == JobStatus.FAILED and message in job.error
    with unit_of_work(project.engine) as session:
        assert model_queries.list_model_versions(session) == []


@pytest.mark.parametrize(
    ("channels", "error"), [(3, None), (1, "colour histograms need RGB images")], ids=["rgb", "grey"]
)
def test_the_project_classifier_setting_reaches_training(tmp_path, channels, error) -> None:
    project = make_project(tmp_path, labelled_per_class=6, unlabelled=8)
    project.settings.training.classifier, project.settings.training.channels = "colour", channels
    project.save_settings()
    with running_worker(project):
        result = run_cli("train", str(project.root), "--wait")
    job = _jobs(project, "train")[0]
    if error is None:
        assert result.returncode == 0, result.stderr
        with unit_of_work(project.engine) as session:
            assert model_queries.active_model_version(session).config["classifier"] == "colour"
    else:
        assert result.returncode != 0 and error in result.stderr
        assert job.status == JobStatus.FAILED and error in job.error
