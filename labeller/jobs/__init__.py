"""Job kinds a worker runs, and the context each job gets from the worker.

A job handler is ``run(context: JobContext) -> None``. It reads its parameters from ``context.params``,
reports progress with ``context.report_progress``, checks ``context.should_stop()`` between steps
(raising ``JobInterrupted`` through ``context.raise_if_stopped()``), and writes its results inside
``with context.completing() as session:`` so that the results and the job's "succeeded" commit in one
transaction, or not at all when the job was cancelled or taken away meanwhile.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from db.engine import unit_of_work
from db.queries import jobs as job_queries
from db.queries.jobs import ClaimedJob
from labeller.project import Project

# Handlers are imported when a job of that kind runs, so that a worker that only scores never imports
# umap and ``labeller --help`` never imports torch.
JOB_HANDLERS: dict[str, str] = {
    "features": "labeller.jobs.features",
    "train": "labeller.jobs.train",
    "score": "labeller.jobs.score",
    "embed": "labeller.jobs.embed",
    "ping": "labeller.jobs.ping",
}
# Progress events are written at most this often, plus every event that carries validation metrics.
PROGRESS_INTERVAL_SECONDS = 1.0


class JobFailed(Exception):
    """A job that cannot run on this data; the message is shown to the user as it is."""


class JobInterrupted(Exception):
    """The job stopped early: cancelled, taken away (stale heartbeat), or its worker is shutting down."""


@dataclass
class StopFlags:
    """Set by the heartbeat thread (cancel, lost) and the signal handler (shutdown)."""

    shutdown: threading.Event
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)

    def reason(self) -> str | None:
        if self.lost.is_set():
            return "the job was taken away from this worker (its heartbeat went stale)"
        if self.cancel.is_set():
            return "cancelled on request"
        if self.shutdown.is_set():
            return "the worker is shutting down"
        return None


@dataclass
class JobContext:
    project: Project
    job: ClaimedJob
    device: str  # a device spec for core.device.resolve_device: auto, cpu, cuda, cuda:1
    stop: StopFlags
    completed: bool = False
    _last_progress_at: float = 0.0

    @property
    def params(self) -> dict[str, Any]:
        return self.job.params

    def should_stop(self) -> bool:
        return self.stop.reason() is not None

    def raise_if_stopped(self) -> None:
        reason = self.stop.reason()
        if reason is not None:
            raise JobInterrupted(reason)

    def report_progress(self, payload: dict[str, Any], *, force: bool = False) -> None:
        """A progress event, throttled to one a second unless ``force`` (e.g. end of an epoch)."""
        now = time.monotonic()
        if not force and now - self._last_progress_at < PROGRESS_INTERVAL_SECONDS:
            return
        self._last_progress_at = now
        with unit_of_work(self.project.engine) as session:
            job_queries.add_job_event(session, self.job.id, "progress", payload)

    def log(self, message: str, **details: Any) -> None:
        with unit_of_work(self.project.engine) as session:
            job_queries.add_job_event(session, self.job.id, "log", {"message": message, **details})

    @contextmanager
    def completing(self) -> Iterator[Session]:
        """A transaction that first marks the job succeeded (if it is still ours and not cancelled),
        then lets the handler write its results; all of it commits together."""
        self.raise_if_stopped()
        with unit_of_work(self.project.engine) as session:
            if not job_queries.complete_job(session, self.job):
                job = job_queries.get_job(session, self.job.id)
                raise JobInterrupted(
                    "cancelled on request"
                    if job.cancel_requested
                    else "the job was taken away from this worker (its heartbeat went stale)"
                )
            yield session
        self.completed = True


def job_handler(kind: str) -> Callable[[JobContext], None]:
    module_name = JOB_HANDLERS.get(kind)
    if module_name is None:
        raise JobFailed(f"unknown job kind {kind!r}; this worker runs {sorted(JOB_HANDLERS)}")
    return importlib.import_module(module_name).run
