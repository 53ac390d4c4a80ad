"""The job queue and model-version queries on real SQLite files and PostgreSQL databases."""

from __future__ import annotations

import multiprocessing
import time
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import update

from db.engine import make_engine, unit_of_work
from db.queries import jobs as job_queries
from db.queries import models as model_queries
from db.queries.jobs import HeartbeatState, JobError
from db.queries.models import ModelVersionError
from db.schema import Annotation, AnnotationKind, Annotator, Image, Job, JobStatus, utcnow


def _claim(engine, worker_id: str = "w1", kinds=None):
    with unit_of_work(engine) as session:
        return job_queries.claim_next_job(session, worker_id, kinds)


def test_jobs_are_claimed_oldest_first_and_only_once(engine) -> None:
    with unit_of_work(engine) as session:
        first = job_queries.enqueue_job(session, "train", {"epochs": 2}).id
        second = job_queries.enqueue_job(session, "score", {"model_version_id": 1}).id
    claimed = _claim(engine)
    assert (claimed.id, claimed.kind, claimed.params, claimed.attempt) == (first, "train", {"epochs": 2}, 1)
    assert _claim(engine, "w2").id == second
    assert _claim(engine, "w3") is None
    with unit_of_work(engine) as session:
        job = job_queries.get_job(session, first)
        assert job.status == JobStatus.RUNNING and job.worker_id == "w1" and job.heartbeat_at is not None


def test_claim_can_be_restricted_to_kinds(engine) -> None:
    with unit_of_work(engine) as session:
        job_queries.enqueue_job(session, "train")
        embed_id = job_queries.enqueue_job(session, "embed").id
    assert _claim(engine, kinds=["embed", "score"]).id == embed_id


def test_completion_is_guarded_by_ownership(engine) -> None:
    with unit_of_work(engine) as session:
        job_queries.enqueue_job(session, "train")
    claimed = _claim(engine)
    impostor = job_queries.ClaimedJob(claimed.id, claimed.kind, {}, claimed.attempt, "someone-else")
    with unit_of_work(engine) as session:
        assert not job_queries.complete_job(session, impostor)
        assert job_queries.heartbeat(session, impostor) == HeartbeatState.LOST
        assert job_queries.heartbeat(session, claimed) == HeartbeatState.ALIVE
        assert job_queries.complete_job(session, claimed)
    with unit_of_work(engine) as session:
        assert job_queries.get_job(session, claimed.id).status == JobStatus.SUCCEEDED
        # A finished job is no longer anyone's to fail.
        assert not job_queries.fail_job(session, claimed, "late error")


def test_cancel_queued_is_immediate_and_running_is_flagged(engine) -> None:
    with unit_of_work(engine) as session:
        running_id = job_queries.enqueue_job(session, "train").id
        queued_id = job_queries.enqueue_job(session, "train").id
    claimed = _claim(engine)
    assert claimed.id == running_id
    with unit_of_work(engine) as session:
        assert job_queries.request_cancel(session, queued_id).status == JobStatus.CANCELLED
        job = job_queries.request_cancel(session, running_id)
        assert job.status == JobStatus.RUNNING and job.cancel_requested
    with unit_of_work(engine) as session:
        assert job_queries.heartbeat(session, claimed) == HeartbeatState.CANCEL_REQUESTED
        # A cancel requested while the worker was finishing wins: the results are not committed.
        assert not job_queries.complete_job(session, claimed)
        assert job_queries.acknowledge_cancel(session, claimed)
    with unit_of_work(engine) as session:
        assert job_queries.get_job(session, running_id).status == JobStatus.CANCELLED
        with pytest.raises(JobError, match="already cancelled"):
            job_queries.request_cancel(session, running_id)
        with pytest.raises(JobError, match="no job 999"):
            job_queries.request_cancel(session, 999)
    assert _claim(engine) is None


def _age_heartbeat(engine, job_id: int, seconds: float) -> None:
    with unit_of_work(engine) as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


def test_stale_jobs_fail_or_requeue_and_the_old_worker_cannot_finish(engine) -> None:
    with unit_of_work(engine) as session:
        failing_id = job_queries.enqueue_job(session, "train").id
    dead = _claim(engine, "dead-worker")
    with unit_of_work(engine) as session:
        assert job_queries.fail_stale_jobs(session, 60) == []  # fresh heartbeat: left alone
    _age_heartbeat(engine, failing_id, 120)
    with unit_of_work(engine) as session:
        assert job_queries.fail_stale_jobs(session, 60) == [failing_id]
    with unit_of_work(engine) as session:
        job = job_queries.get_job(session, failing_id)
        assert job.status == JobStatus.FAILED
        assert "dead-worker stopped heartbeating" in job.error
        assert not job_queries.complete_job(session, dead)

    with unit_of_work(engine) as session:
        requeued_id = job_queries.enqueue_job(session, "train").id
    first = _claim(engine, "dead-worker")
    _age_heartbeat(engine, requeued_id, 120)
    with unit_of_work(engine) as session:
        assert job_queries.fail_stale_jobs(session, 60, requeue=True) == [requeued_id]
    second = _claim(engine, "new-worker")
    assert (second.id, second.attempt) == (requeued_id, 2)
    with unit_of_work(engine) as session:
        assert job_queries.heartbeat(session, first) == HeartbeatState.LOST
        assert job_queries.complete_job(session, second)


def test_a_job_that_keeps_killing_workers_is_failed_not_requeued_forever(sqlite_engine) -> None:
    with unit_of_work(sqlite_engine) as session:
        job_id = job_queries.enqueue_job(session, "train").id
    for _ in range(job_queries.MAX_ATTEMPTS):
        assert _claim(sqlite_engine).id == job_id
        _age_heartbeat(sqlite_engine, job_id, 120)
        with unit_of_work(sqlite_engine) as session:
            job_queries.fail_stale_jobs(session, 60, requeue=True)
    with unit_of_work(sqlite_engine) as session:
        assert job_queries.get_job(session, job_id).status == JobStatus.FAILED


def test_events_are_read_incrementally(engine) -> None:
    with unit_of_work(engine) as session:
        job_id = job_queries.enqueue_job(session, "train").id
        first = job_queries.add_job_event(session, job_id, "progress", {"epoch": 1, "loss": 3.5}).id
        job_queries.add_job_event(session, job_id, "log", {"message": "hello"})
        job_queries.add_job_event(session, job_id, "progress", {"epoch": 2, "loss": 2.5})
    with unit_of_work(engine) as session:
        assert [e.payload["epoch"] for e in job_queries.job_events(session, job_id, kinds=["progress"])] == [1, 2]
        assert [e.kind for e in job_queries.job_events(session, job_id, after_id=first)] == ["log", "progress"]
        assert job_queries.latest_job_event(session, job_id).payload == {"epoch": 2, "loss": 2.5}


def _add_labels(engine, count: int) -> None:
    with unit_of_work(engine) as session:
        annotator = session.query(Annotator).first() or Annotator(name="ann")
        session.add(annotator)
        session.flush()
        start = session.query(Image).count()
        for index in range(start, start + count):
            image = Image(
                sha256=f"{index:064d}",
                path=f"{index}.png",
                width=8,
                height=8,
                format="PNG",
                file_size=1,
                random_key=index / 1000,
            )
            session.add(image)
            session.flush()
            session.add(Annotation(image_id=image.id, annotator_id=annotator.id, kind=AnnotationKind.LABEL))


def test_auto_retrain_queues_at_most_one_train_job(engine) -> None:
    _add_labels(engine, 4)
    with unit_of_work(engine) as session:
        assert job_queries.maybe_queue_auto_retrain(session, 5) is None
        assert job_queries.maybe_queue_auto_retrain(session, 0) is None
    _add_labels(engine, 1)
    with unit_of_work(engine) as session:
        job = job_queries.maybe_queue_auto_retrain(session, 5)
        assert job is not None and job.params["new_labels"] == 5
    _add_labels(engine, 10)
    with unit_of_work(engine) as session:
        assert job_queries.maybe_queue_auto_retrain(session, 5) is None  # one is already queued
    claimed = _claim(engine)
    with unit_of_work(engine) as session:
        assert job_queries.maybe_queue_auto_retrain(session, 5) is None  # and now running
        job_queries.fail_job(session, claimed, "boom")
    with unit_of_work(engine) as session:
        # Counted from the failed job's data, so the 10 newer labels queue exactly one new job.
        assert job_queries.maybe_queue_auto_retrain(session, 5).params["new_labels"] == 10


def _claim_until_empty(url: str, worker_id: str, results) -> None:
    engine = make_engine(url)
    claimed: list[int] = []
    while True:
        with unit_of_work(engine) as session:
            job = job_queries.claim_next_job(session, worker_id)
        if job is None:
            break
        claimed.append(job.id)
        with unit_of_work(engine) as session:
            job_queries.complete_job(session, job)
    engine.dispose()
    results.put((worker_id, claimed))


def test_racing_processes_never_claim_the_same_job(engine, database_url) -> None:
    with unit_of_work(engine) as session:
        ids = {job_queries.enqueue_job(session, "ping", {"n": n}).id for n in range(120)}
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_claim_until_empty, args=(database_url, f"w{n}", results)) for n in range(3)]
    for process in workers:
        process.start()
    claims = dict(results.get(timeout=120) for _ in workers)
    for process in workers:
        process.join(timeout=30)
    every_claim = [job_id for claimed in claims.values() for job_id in claimed]
    assert sorted(every_claim) == sorted(ids)  # each job exactly once
    with unit_of_work(engine) as session:
        done = job_queries.list_jobs(session, statuses=[JobStatus.SUCCEEDED], limit=1000)
        assert {job.id for job in done} == ids
        assert all(job.worker_id == next(w for w, c in claims.items() if job.id in c) for job in done)


def _version(session, name: str) -> int:
    return model_queries.register_model_version(
        session,
        name=name,
        model_kind="m2",
        checkpoint_path=f"models/{name}.pt",
        config={"epochs": 1},
        data_snapshot={"newest_annotation_id": 3},
        metrics={"audit": {"accuracy": 0.5}},
        label_count=3,
    ).id


def test_promote_keeps_exactly_one_active_and_rollback_walks_back(engine) -> None:
    with unit_of_work(engine) as session:
        assert model_queries.active_model_version(session) is None
        first, second, third = (_version(session, name) for name in ("a", "b", "c"))
        assert model_queries.active_model_version(session) is None  # registered versions start inactive
    for version_id in (first, second, third):
        time.sleep(0.01)
        with unit_of_work(engine) as session:
            model_queries.promote_model_version(session, version_id)
    with unit_of_work(engine) as session:
        assert [v.id for v in model_queries.list_model_versions(session) if v.active] == [third]
        assert model_queries.rollback_model_version(session).id == second
    with unit_of_work(engine) as session:
        assert model_queries.rollback_model_version(session).id == first
    with unit_of_work(engine) as session:
        with pytest.raises(ModelVersionError, match="nothing to roll back to"):
            model_queries.rollback_model_version(session)
        assert model_queries.active_model_version(session).id == first
        with pytest.raises(ModelVersionError, match="no model version 42"):
            model_queries.promote_model_version(session, 42)


def test_compare_lists_metric_differences(engine) -> None:
    with unit_of_work(engine) as session:
        first = _version(session, "a")
        second = model_queries.register_model_version(
            session,
            name="b",
            model_kind="m1m2",
            checkpoint_path="models/b.pt",
            config={"epochs": 5},
            data_snapshot={"newest_annotation_id": 9},
            metrics={"audit": {"accuracy": 0.75}},
            label_count=9,
        ).id
        comparison = model_queries.compare_model_versions(session, first, second)
    assert comparison["metrics"]["audit.accuracy"] == {"a": 0.5, "b": 0.75, "difference": 0.25}
    assert comparison["config_differences"] == {"epochs": {"a": 1, "b": 5}}
    assert comparison["label_count"] == {"a": 3, "b": 9}


def test_predictions_bulk_write_latents_and_umap_coords(engine) -> None:
    _add_labels(engine, 30)
    rng = np.random.default_rng(0)
    latents = rng.normal(size=(30, 4)).astype(np.float32)
    with unit_of_work(engine) as session:
        version_id = _version(session, "a")
        image_ids = [image.id for image in session.query(Image).order_by(Image.id)]
        rows = [
            {
                "image_id": image_id,
                "confidence": 0.9,
                "entropy": float(i),
                "leaf_entropy": 0.1,
                "margin": 0.2,
                "least_confidence": 0.1,
                "probabilities": {"main": {"a": 0.9}},
                "latent_mean": model_queries.encode_latent(latents[i]),
            }
            for i, image_id in enumerate(image_ids)
        ]
        assert model_queries.write_predictions(session, version_id, rows, batch_size=7) == 30
        # Re-scoring replaces instead of duplicating.
        assert model_queries.write_predictions(session, version_id, rows, batch_size=7) == 30
        assert model_queries.prediction_count(session, version_id) == 30
        with pytest.raises(ValueError, match="not prediction columns"):
            model_queries.write_predictions(session, version_id, [{"image_id": 1, "colour": 3}])
    with unit_of_work(engine) as session:
        ids, means = model_queries.latent_means(session, version_id)
        assert ids == image_ids
        np.testing.assert_array_equal(means, latents)
        coords = rng.normal(size=(30, 2))
        assert model_queries.set_embedding_coords(session, version_id, ids, coords, batch_size=8) == 30
    with unit_of_work(engine) as session:
        from db.schema import Prediction

        stored = session.query(Prediction).filter_by(model_version_id=version_id).order_by(Prediction.image_id)
        np.testing.assert_allclose([[p.umap_x, p.umap_y] for p in stored], coords)


def test_promoting_an_unscored_version_waits_for_its_predictions(engine) -> None:
    with unit_of_work(engine) as session:
        version_id = _version(session, "a")
        job = job_queries.promote_when_scored(session, version_id)
        assert job.kind == "score" and job.params["promote"] is True
        assert model_queries.active_model_version(session) is None
        assert job_queries.promote_when_scored(session, version_id).id == job.id  # one job, not two


def test_a_promoted_version_without_predictions_gets_one_score_job(engine) -> None:
    with unit_of_work(engine) as session:
        version_id = _version(session, "a")
        job = job_queries.queue_scoring_if_missing(session, version_id)
        assert job.kind == "score" and job.params == {"model_version_id": version_id, "then_embed": True}
        assert job_queries.queue_scoring_if_missing(session, version_id) is None  # already pending
