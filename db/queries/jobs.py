"""The job queue: train, score and embed jobs that worker processes claim, heartbeat and finish.

A job moves queued -> running -> succeeded | failed | cancelled. Every transition that a worker makes
is guarded by ``status = 'running' AND worker_id = <me> AND attempts = <my attempt>``, so a worker whose
job was declared dead (stale heartbeat) and handed to someone else can never finish or fail it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from db.schema import Annotation, AnnotationKind, Job, JobEvent, JobStatus, ModelVersion, Prediction, utcnow

# After this many claims a job whose worker keeps dying is failed instead of re-queued again.
MAX_ATTEMPTS = 3
# PostgreSQL advisory lock key that serialises "queue an automatic retrain unless one is pending".
AUTO_RETRAIN_LOCK_KEY = 7_410_001
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobError(Exception):
    """A job request that cannot be done (unknown id, cancelling a finished job, ...)."""


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run a job, detached from any session."""

    id: int
    kind: str
    params: dict[str, Any]
    attempt: int
    worker_id: str


class HeartbeatState(StrEnum):
    ALIVE = "alive"
    CANCEL_REQUESTED = "cancel_requested"
    LOST = "lost"  # no longer ours: declared stale and re-queued or failed


def enqueue_job(session: Session, kind: str, params: dict[str, Any] | None = None) -> Job:
    job = Job(kind=kind, params=dict(params or {}), status=JobStatus.QUEUED, created_at=utcnow())
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobError(f"no job {job_id}")
    return job


def list_jobs(
    session: Session,
    *,
    statuses: Sequence[JobStatus] | None = None,
    kind: str | None = None,
    limit: int = 50,
) -> list[Job]:
    """Newest first."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if statuses:
        query = query.where(Job.status.in_(statuses))
    if kind:
        query = query.where(Job.kind == kind)
    return list(session.scalars(query))


def pending_jobs(session: Session, kind: str | None = None) -> list[Job]:
    """Queued and running jobs, oldest first."""
    query = select(Job).where(Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING))).order_by(Job.id)
    if kind:
        query = query.where(Job.kind == kind)
    return list(session.scalars(query))


def claim_next_job(session: Session, worker_id: str, kinds: Sequence[str] | None = None) -> ClaimedJob | None:
    """Atomically take the oldest queued job (of ``kinds`` when given) for ``worker_id``.

    SQLite: one guarded UPDATE ... RETURNING inside the BEGIN IMMEDIATE transaction that db.engine opens.
    PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED, so concurrent workers take different rows.
    """
    now = utcnow()
    oldest_queued = select(Job.id).where(Job.status == JobStatus.QUEUED)
    if kinds:
        oldest_queued = oldest_queued.where(Job.kind.in_(kinds))
    oldest_queued = oldest_queued.order_by(Job.created_at, Job.id).limit(1)
    if session.get_bind().dialect.name == "postgresql":
        job_id = session.scalar(oldest_queued.with_for_update(skip_locked=True))
        if job_id is None:
            return None
    else:
        job_id = oldest_queued.scalar_subquery()
    claimed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.RUNNING,
            worker_id=worker_id,
            started_at=now,
            heartbeat_at=now,
            finished_at=None,
            attempts=Job.attempts + 1,
        )
        .returning(Job.id, Job.kind, Job.params, Job.attempts)
        .execution_options(synchronize_session=False)
    ).first()
    if claimed is None:
        return None
    return ClaimedJob(
        id=claimed.id,
        kind=claimed.kind,
        params=dict(claimed.params or {}),
        attempt=claimed.attempts,
        worker_id=worker_id,
    )


def _owned(job: ClaimedJob) -> tuple[Any, ...]:
    return (
        Job.id == job.id,
        Job.status == JobStatus.RUNNING,
        Job.worker_id == job.worker_id,
        Job.attempts == job.attempt,
    )


def heartbeat(session: Session, job: ClaimedJob) -> HeartbeatState:
    """Record that the worker is alive; tell it whether to stop (cancel) or that the job was taken away."""
    cancel_requested = session.scalar(
        update(Job)
        .where(*_owned(job))
        .values(heartbeat_at=utcnow())
        .returning(Job.cancel_requested)
        .execution_options(synchronize_session=False)
    )
    if cancel_requested is None:
        return HeartbeatState.LOST
    return HeartbeatState.CANCEL_REQUESTED if cancel_requested else HeartbeatState.ALIVE


def _transition(session: Session, job: ClaimedJob, **values: Any) -> bool:
    result = session.execute(
        update(Job).where(*_owned(job)).values(**values).execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def complete_job(session: Session, job: ClaimedJob, *, model_version_id: int | None = None) -> bool:
    """Mark the job succeeded; False when it is no longer ours or its cancel was requested meanwhile.

    Call it first in the transaction that writes the job's results, so results and status commit
    together (and on PostgreSQL the row lock keeps a stale-job sweep from interleaving).
    """
    result = session.execute(
        update(Job)
        .where(*_owned(job), Job.cancel_requested.is_(False))
        .values(status=JobStatus.SUCCEEDED, finished_at=utcnow(), model_version_id=model_version_id)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def set_job_model_version(session: Session, job_id: int, model_version_id: int) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(model_version_id=model_version_id)
        .execution_options(synchronize_session=False)
    )


def fail_job(session: Session, job: ClaimedJob, error: str) -> bool:
    return _transition(session, job, status=JobStatus.FAILED, finished_at=utcnow(), error=error)


def acknowledge_cancel(session: Session, job: ClaimedJob) -> bool:
    """The worker stopped a running job whose cancel was requested."""
    return _transition(session, job, status=JobStatus.CANCELLED, finished_at=utcnow(), error="cancelled on request")


def requeue_job(session: Session, job: ClaimedJob, reason: str) -> bool:
    """Give a running job back to the queue (e.g. its worker is shutting down)."""
    return _transition(session, job, status=JobStatus.QUEUED, worker_id=None, heartbeat_at=None, error=reason)


def request_cancel(session: Session, job_id: int) -> Job:
    """A queued job is cancelled at once; a running one is flagged and its worker stops at the next step."""
    now = utcnow()
    cancelled_now = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, cancel_requested=True, finished_at=now, error="cancelled")
        .execution_options(synchronize_session=False)
    ).rowcount
    if not cancelled_now:
        flagged = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
            .values(cancel_requested=True)
            .execution_options(synchronize_session=False)
        ).rowcount
        if not flagged:
            job = get_job(session, job_id)
            raise JobError(f"job {job_id} has already {job.status.value}; nothing to cancel")
    job = get_job(session, job_id)
    session.refresh(job)
    return job


def fail_stale_jobs(session: Session, timeout_seconds: float, *, requeue: bool = False) -> list[int]:
    """Running jobs whose worker has not heartbeaten for ``timeout_seconds``: fail or re-queue them.

    Returns the ids handled. A job with a cancel request is cancelled; a job that has been claimed
    ``MAX_ATTEMPTS`` times is failed even when ``requeue`` is set, so a job that kills its worker
    (out of memory, say) cannot loop forever.
    """
    now = utcnow()
    cutoff = now - timedelta(seconds=timeout_seconds)
    query = select(Job).where(Job.status == JobStatus.RUNNING, func.coalesce(Job.heartbeat_at, Job.started_at) < cutoff)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    handled: list[int] = []
    for job in session.scalars(query):
        silent_for = (now - (job.heartbeat_at or job.started_at or now)).total_seconds()
        reason = f"worker {job.worker_id} stopped heartbeating ({silent_for:.0f} s without a heartbeat)"
        if job.cancel_requested:
            job.status, job.finished_at, job.error = JobStatus.CANCELLED, now, f"cancelled; {reason}"
        elif requeue and job.attempts < MAX_ATTEMPTS:
            job.status, job.worker_id, job.heartbeat_at = JobStatus.QUEUED, None, None
            job.error = f"re-queued: {reason}"
        else:
            job.status, job.finished_at = JobStatus.FAILED, now
            job.error = f"{reason}; the job was abandoned after {job.attempts} attempt(s)"
        session.add(JobEvent(job_id=job.id, kind="log", payload={"message": job.error}, created_at=now))
        handled.append(job.id)
    session.flush()
    return handled


def add_job_event(session: Session, job_id: int, kind: str, payload: dict[str, Any]) -> JobEvent:
    """``kind``: progress (epoch, losses, validation, images_per_second, eta_seconds), log, metric."""
    event = JobEvent(job_id=job_id, kind=kind, payload=payload, created_at=utcnow())
    session.add(event)
    session.flush()
    return event


def job_events(
    session: Session, job_id: int, *, after_id: int = 0, kinds: Sequence[str] | None = None
) -> list[JobEvent]:
    """Events in order; ``after_id`` lets a poller read only what is new."""
    query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id).order_by(JobEvent.id)
    if kinds:
        query = query.where(JobEvent.kind.in_(kinds))
    return list(session.scalars(query))


def latest_job_event(session: Session, job_id: int, kind: str = "progress") -> JobEvent | None:
    return session.scalar(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == kind).order_by(JobEvent.id.desc()).limit(1)
    )


def newest_annotation_id(session: Session) -> int:
    return session.scalar(select(func.coalesce(func.max(Annotation.id), 0))) or 0


def maybe_queue_auto_retrain(session: Session, every_n_labels: int) -> Job | None:
    """Queue a train job when ``every_n_labels`` labels arrived since the newest training data.

    "Since" counts annotations newer than both the newest model version's data snapshot and the last
    automatic train job (whatever became of it, so a job that fails on the same data is not re-queued
    in a loop). Never queues while a train job is queued or running.
    """
    if every_n_labels <= 0:
        return None
    if session.get_bind().dialect.name == "postgresql":
        # Two workers' idle loops must not both decide to queue one.
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUTO_RETRAIN_LOCK_KEY})
    if pending_jobs(session, kind="train"):
        return None
    baseline = 0
    for snapshot in session.scalars(select(ModelVersion.data_snapshot)):
        baseline = max(baseline, int((snapshot or {}).get("newest_annotation_id", 0)))
    last_train_params = session.scalar(select(Job.params).where(Job.kind == "train").order_by(Job.id.desc()).limit(1))
    if last_train_params:
        baseline = max(baseline, int(last_train_params.get("newest_annotation_id", 0)))
    new_labels = session.scalar(
        select(func.count())
        .select_from(Annotation)
        .where(Annotation.id > baseline, Annotation.kind == AnnotationKind.LABEL)
    )
    if (new_labels or 0) < every_n_labels:
        return None
    return enqueue_job(
        session,
        "train",
        {"reason": "auto", "new_labels": new_labels, "newest_annotation_id": newest_annotation_id(session)},
    )


def promote_when_scored(session: Session, model_version_id: int) -> Job | None:
    """Make a version active now if its predictions are written; otherwise queue a score job that promotes
    it once they are (and return that job), so the queue never serves a version without an order."""
    from db.queries.models import get_model_version, promote_model_version

    get_model_version(session, model_version_id)  # raises for an unknown id
    if session.scalar(select(Prediction.image_id).where(Prediction.model_version_id == model_version_id).limit(1)):
        promote_model_version(session, model_version_id)
        return None
    for job in pending_jobs(session, kind="score"):
        if job.params.get("model_version_id") == model_version_id:
            job.params = {**job.params, "promote": True}
            return job
    return enqueue_job(session, "score", {"model_version_id": model_version_id, "then_embed": True, "promote": True})


def queue_scoring_if_missing(session: Session, model_version_id: int) -> Job | None:
    """After a promotion or rollback: the queue ranks by the version's predictions, so queue a score
    (then embed) job when it has none and none is pending."""
    if session.scalar(select(Prediction.image_id).where(Prediction.model_version_id == model_version_id).limit(1)):
        return None
    for job in pending_jobs(session, kind="score"):
        if job.params.get("model_version_id") == model_version_id:
            return None
    return enqueue_job(session, "score", {"model_version_id": model_version_id, "then_embed": True})
