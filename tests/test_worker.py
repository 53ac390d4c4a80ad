"""Real ``labeller worker`` processes on a real project database: racing, cancel, SIGTERM, SIGKILL."""

from __future__ import annotations

import os
import signal
import time

from db.engine import unit_of_work
from db.queries import jobs as job_queries
from db.schema import JobStatus
from tests.worker_helpers import (
    enqueue,
    job_row,
    make_project,
    run_cli,
    running_worker,
    start_worker,
    wait_for_status,
)


def _pongs(project, job_id: int) -> list[str]:
    with unit_of_work(project.engine) as session:
        return [
            e.payload["message"]
            for e in job_queries.job_events(session, job_id, kinds=["log"])
            if e.payload["message"].startswith("pong")
        ]


def test_two_worker_processes_never_run_the_same_job(tmp_path, database_url) -> None:
    project = make_project(tmp_path, labelled_per_class=0, unlabelled=0, database_url=database_url)
    job_ids = [enqueue(project, "ping") for _ in range(40)]
    workers = [start_worker(project, "--once") for _ in range(2)]
    for process in workers:
        assert process.wait(timeout=120) == 0
    ran_by: dict[str, int] = {}
    for job_id in job_ids:
        job = job_row(project, job_id)
        assert job.status == JobStatus.SUCCEEDED and job.attempts == 1
        pongs = _pongs(project, job_id)
        assert pongs == [f"pong from {job.worker_id}"]  # ran exactly once, by the worker that claimed it
        ran_by[job.worker_id] = ran_by.get(job.worker_id, 0) + 1
    assert sum(ran_by.values()) == 40 and len(ran_by) <= 2


def test_cancel_a_queued_job_and_a_running_one(tmp_path) -> None:
    project = make_project(tmp_path, labelled_per_class=0, unlabelled=0)
    queued = enqueue(project, "ping")
    result = run_cli("jobs", str(project.root), "cancel", str(queued))
    assert result.returncode == 0 and "cancelled" in result.stdout
    assert job_row(project, queued).status == JobStatus.CANCELLED

    with running_worker(project) as worker:
        running = enqueue(project, "ping", {"seconds": 120})
        wait_for_status(project, running, (JobStatus.RUNNING,), timeout=60)
        asked = time.monotonic()
        result = run_cli("jobs", str(project.root), "cancel", str(running))
        assert result.returncode == 0 and "cancel requested" in result.stdout
        job = wait_for_status(project, running, (JobStatus.CANCELLED,), timeout=20)
        assert time.monotonic() - asked < 20
        assert job.error == "cancelled on request"
        assert worker.poll() is None  # the worker carries on
    assert _pongs(project, queued) == [] and _pongs(project, running) == []
    again = run_cli("jobs", str(project.root), "cancel", str(running))
    assert again.returncode != 0 and "already cancelled" in again.stderr


def test_sigterm_stops_the_worker_and_hands_its_job_back(tmp_path) -> None:
    project = make_project(tmp_path, labelled_per_class=0, unlabelled=0)
    worker = start_worker(project)
    job_id = enqueue(project, "ping", {"seconds": 120})
    wait_for_status(project, job_id, (JobStatus.RUNNING,), timeout=60)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    job = job_row(project, job_id)
    assert job.status == JobStatus.QUEUED and job.worker_id is None
    assert "shutting down" in job.error


def test_sigkilled_worker_job_is_requeued_and_a_new_worker_finishes_it(tmp_path) -> None:
    project = make_project(tmp_path, labelled_per_class=0, unlabelled=0, heartbeat_timeout_seconds=2)
    project.settings.training.requeue_stale_jobs = True
    project.save_settings()
    doomed = start_worker(project)
    job_id = enqueue(project, "ping", {"seconds": 3})
    first = wait_for_status(project, job_id, (JobStatus.RUNNING,), timeout=60)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=10)
    killed_at = time.monotonic()
    with running_worker(project):
        job = wait_for_status(project, job_id, (JobStatus.SUCCEEDED,), timeout=60)
    assert job.attempts == 2 and job.worker_id != first.worker_id
    assert time.monotonic() - killed_at < 30
    assert _pongs(project, job_id) == [f"pong from {job.worker_id}"]
    with unit_of_work(project.engine) as session:
        logs = [e.payload["message"] for e in job_queries.job_events(session, job_id, kinds=["log"])]
    assert any(f"re-queued: worker {first.worker_id} stopped heartbeating" in m for m in logs)


def test_unknown_job_kind_fails_with_a_clear_message(tmp_path) -> None:
    project = make_project(tmp_path, labelled_per_class=0, unlabelled=0)
    job_id = enqueue(project, "defragment")
    assert start_worker(project, "--once").wait(timeout=60) == 0
    job = job_row(project, job_id)
    assert job.status == JobStatus.FAILED
    assert job.error.startswith("unknown job kind 'defragment'")
    listing = run_cli("jobs", str(project.root))
    assert "defragment" in listing.stdout and "unknown job kind" in listing.stdout


def test_an_idle_worker_queues_one_automatic_retrain(tmp_path) -> None:
    from labeller.worker import Worker, WorkerConfig

    project = make_project(tmp_path, labelled_per_class=3, unlabelled=2)
    project.settings.training.auto_retrain_every = 5
    assert not Worker(project, WorkerConfig(kinds=("ping",))).queue_auto_retrain()  # not a training worker
    worker = Worker(project, WorkerConfig())
    assert worker.queue_auto_retrain()
    assert not worker.queue_auto_retrain()  # one is queued already
    with unit_of_work(project.engine) as session:
        (job,) = job_queries.list_jobs(session, kind="train")
        assert job.params["reason"] == "auto" and job.params["new_labels"] == 6
    project.settings.training.auto_retrain_every = 0
    with unit_of_work(project.engine) as session:
        job_queries.request_cancel(session, job.id)
    assert not Worker(project, WorkerConfig()).queue_auto_retrain()


def test_orphan_checkpoints_of_dead_jobs_are_removed_and_nothing_else(tmp_path) -> None:
    from db.queries import models as model_queries
    from labeller.worker import ORPHAN_MIN_AGE_SECONDS, discard_orphan_checkpoints

    project = make_project(tmp_path, labelled_per_class=0, unlabelled=0)
    old = time.time() - ORPHAN_MIN_AGE_SECONDS - 10
    names = ("m2-1-job7-a1.pt", ".m2-1-job8-a1.pt.x1y2.tmp", "m2-1-job9-a1.pt", "m2-1-job10-a1.pt", "notes.txt")
    for name in names:
        (project.models_dir / name).write_bytes(b"weights")
        os.utime(project.models_dir / name, (old, old))
    os.utime(project.models_dir / "m2-1-job10-a1.pt")  # just written: maybe a job claimed a moment ago
    with unit_of_work(project.engine) as session:
        model_queries.register_model_version(
            session, name="kept", model_kind="m2", checkpoint_path="models/m2-1-job9-a1.pt", config={},
            data_snapshot={}, metrics={}, label_count=0,
        )  # fmt: skip
    removed = {path.name for path in discard_orphan_checkpoints(project)}
    assert removed == {"m2-1-job7-a1.pt", ".m2-1-job8-a1.pt.x1y2.tmp"}
    assert sorted(p.name for p in project.models_dir.iterdir() if p.is_file()) == [
        "m2-1-job10-a1.pt", "m2-1-job9-a1.pt", "notes.txt",
    ]  # fmt: skip
