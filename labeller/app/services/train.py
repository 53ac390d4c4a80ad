"""The Train page's jobs and versions: start, follow, cancel, promote, roll back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from core.registry import MODEL_CHOICES
from db.engine import reading, unit_of_work
from db.queries import jobs as job_queries
from db.queries.jobs import enqueue_job, get_job, job_events, list_jobs, request_cancel
from db.queries.models import list_model_versions, rollback_model_version
from db.schema import Job
from labeller.app.services.common import Role, require_admin

TRAIN_MODELS = MODEL_CHOICES  # core.registry: auto and the model kinds
MODEL_LABELS = {
    "auto": "Auto (chosen by cross-validation)",
    "m1m2": "M1+M2",
    "m2": "M2",
    "m1": "M1 + classifier",
    "supervised": "Supervised only",
}


@dataclass(frozen=True)
class JobView:
    id: int
    kind: str
    status: str
    params: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    cancel_requested: bool
    model_version_id: int | None

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")


def _job_view(job: Job) -> JobView:
    return JobView(
        job.id,
        job.kind,
        str(job.status),
        dict(job.params or {}),
        job.created_at,
        job.started_at,
        job.finished_at,
        job.error,
        job.cancel_requested,
        job.model_version_id,
    )


class TrainingInProgress(ValueError):
    """A train job is already queued or running: one click, one job."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"train job {job_id} is already queued or running; it is shown below")
        self.job_id = job_id


def pending_training(engine: Engine) -> JobView | None:
    """The queued or running train job, if any (the oldest when there are several)."""
    from db.queries.jobs import pending_jobs

    with reading(engine) as session:
        pending = pending_jobs(session, kind="train")
        return _job_view(pending[0]) if pending else None


def start_training(
    engine: Engine, *, model: str, epochs: int, device: str, role: Role | None, backbone: str | None = None
) -> int:
    """Queue a train job for a worker (admins only); returns its id. The app never trains in its own process.

    Refused with TrainingInProgress while a train job is queued or running (a double click queues one job).
    ``backbone``: the job's input (pixels or a backbone name); None leaves it to the project's setting."""
    from sqlalchemy import text

    from db.queries.jobs import AUTO_RETRAIN_LOCK_KEY, pending_jobs
    from labeller.jobs.params import TrainParams

    require_admin(role, "start training")
    params = TrainParams(model=model, epochs=int(epochs), device=device, backbone=backbone, reason="app")
    if problems := params.problems():
        raise ValueError("; ".join(problems))
    with unit_of_work(engine) as session:
        if session.get_bind().dialect.name == "postgresql":
            # Two clicks in two sessions (or the worker's auto retrain) must not both see no job and queue one;
            # SQLite's BEGIN IMMEDIATE already serialises them.
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUTO_RETRAIN_LOCK_KEY})
        pending = pending_jobs(session, kind="train")
        if pending:
            raise TrainingInProgress(pending[0].id)
        return enqueue_job(session, "train", params.to_params()).id


def cancel(engine: Engine, job_id: int, *, role: Role | None) -> JobView:
    require_admin(role, "cancel a job")
    with unit_of_work(engine) as session:
        return _job_view(request_cancel(session, job_id))


def recent_jobs(engine: Engine, *, limit: int = 10) -> list[JobView]:
    with reading(engine) as session:
        return [_job_view(job) for job in list_jobs(session, limit=limit)]


def job_progress(engine: Engine, job_id: int) -> tuple[JobView, list[dict[str, Any]], list[str]]:
    """The job, its progress payloads (each with the event time) and its log messages, oldest first."""
    with reading(engine) as session:
        job = _job_view(get_job(session, job_id))
        events = job_events(session, job_id)
        progress = [{**event.payload, "time": event.created_at} for event in events if event.kind == "progress"]
        logs = [str(event.payload.get("message", event.payload)) for event in events if event.kind == "log"]
    return job, progress, logs


def flatten_progress(payloads: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per progress event: nested dicts (loss terms, validation metrics) become
    ``loss_terms.kl``-style keys; a running step counter ``global_step`` is added for plotting."""
    rows = []
    for index, payload in enumerate(payloads):
        row: dict[str, Any] = {"global_step": index}
        for key, value in payload.items():
            if isinstance(value, dict):
                row.update({f"{key}.{inner}": v for inner, v in value.items() if isinstance(v, int | float)})
            else:
                row[key] = value
        epoch, steps, step = row.get("epoch"), row.get("steps_per_epoch"), row.get("step")
        if isinstance(epoch, int | float) and isinstance(steps, int | float) and isinstance(step, int | float):
            row["global_step"] = (epoch - 1) * steps + step
        rows.append(row)
    return rows


@dataclass(frozen=True)
class VersionView:
    id: int
    name: str
    model_kind: str
    created_at: datetime
    active: bool
    label_count: int
    metrics: dict[str, Any]
    config: dict[str, Any]


def model_versions(engine: Engine) -> list[VersionView]:
    with reading(engine) as session:
        return [
            VersionView(
                v.id,
                v.name,
                v.model_kind,
                v.created_at,
                v.active,
                v.label_count,
                dict(v.metrics or {}),
                dict(v.config or {}),
            )
            for v in list_model_versions(session)
        ]


def promote(engine: Engine, version_id: int, *, role: Role | None) -> str:
    """Promote now if the version is scored, else queue the score job that promotes it; says which."""
    require_admin(role, "promote a model version")
    with unit_of_work(engine) as session:
        job = job_queries.promote_when_scored(session, version_id)
    if job is None:
        return f"Model version {version_id} is active."
    return f"Model version {version_id} is being scored (job {job.id}); it becomes active once its predictions are in."


def roll_back(engine: Engine, *, role: Role | None) -> int:
    require_admin(role, "roll back the model")
    with unit_of_work(engine) as session:
        return rollback_model_version(session).id
