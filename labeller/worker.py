"""The worker process: claims jobs from the database and runs them, one at a time.

Each loop: declare jobs whose worker stopped heartbeating failed (or re-queued, by project setting),
claim the oldest queued job, run it while a thread heartbeats, and record how it ended. When idle it
queues an automatic retrain if the project asks for one. SIGTERM or SIGINT stops it cleanly: a running
job is interrupted at its next step and handed back to the queue; a second signal kills at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from db.engine import unit_of_work
from db.queries import jobs as job_queries
from db.queries.jobs import ClaimedJob, HeartbeatState
from db.schema import Job, JobStatus, ModelVersion
from labeller.jobs import JobContext, JobFailed, JobInterrupted, StopFlags, job_handler
from labeller.project import Project, ProjectError

log = logging.getLogger("labeller.worker")

# core.training.save_checkpoint writes ".<name>.<random>.tmp", then renames; a job's files carry "job<id>-a<n>".
PARTIAL_SUFFIX = ".tmp"
# A file this fresh may belong to a job claimed after we looked at the running jobs: leave it.
ORPHAN_MIN_AGE_SECONDS = 120


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class WorkerConfig:
    poll_seconds: float = 2.0
    heartbeat_seconds: float = 5.0
    drain_and_exit: bool = False  # --once: run what is queued, then exit
    device: str | None = None  # overrides the job's and the project's device
    kinds: tuple[str, ...] | None = None  # None: every kind
    worker_id: str = field(default_factory=default_worker_id)


class HeartbeatThread(threading.Thread):
    """Heartbeats one job from its own session (sessions are never shared between threads) and turns
    a cancel request or a lost job into a stop flag the job checks between steps."""

    def __init__(self, project: Project, job: ClaimedJob, interval: float, flags: StopFlags) -> None:
        super().__init__(name=f"heartbeat-job-{job.id}", daemon=True)
        self.project, self.job, self.interval, self.flags = project, job, interval, flags
        self.finished = threading.Event()

    def run(self) -> None:
        while not self.finished.wait(self.interval):
            try:
                with unit_of_work(self.project.engine) as session:
                    state = job_queries.heartbeat(session, self.job)
            except Exception:  # a database hiccup: try again next beat; staleness covers a real outage
                log.warning("heartbeat for job %s failed", self.job.id, exc_info=True)
                continue
            if state == HeartbeatState.CANCEL_REQUESTED:
                self.flags.cancel.set()
            elif state == HeartbeatState.LOST:
                self.flags.lost.set()
                return

    def stop(self) -> None:
        self.finished.set()
        self.join(timeout=30)


def _job_files(project: Project, job_id: int) -> list[Path]:
    return sorted(project.models_dir.glob(f"*job{job_id}-a*"))


def discard_orphan_checkpoints(project: Project) -> list[Path]:
    """Delete checkpoint files left by jobs that are no longer running and that no model version uses:
    a worker killed between writing a checkpoint and registering it leaves such a file."""
    if not project.models_dir.is_dir():
        return []
    with unit_of_work(project.engine) as session:
        running = {job.id for job in job_queries.pending_jobs(session) if job.status == JobStatus.RUNNING}
        referenced = {(project.root / path).resolve() for path in session.scalars(select(ModelVersion.checkpoint_path))}
    removed = []
    for path in project.models_dir.glob("*job*-a*"):
        job_id = _job_id_of(path)
        if job_id is None or job_id in running or path.resolve() in referenced:
            continue
        if time.time() - path.stat().st_mtime < ORPHAN_MIN_AGE_SECONDS:
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _job_id_of(path: Path) -> int | None:
    for part in path.name.split("-"):
        if part.startswith("job") and part[3:].isdigit():
            return int(part[3:])
    return None


# A job is declared dead after this many missed heartbeats at the least: one late beat is not a death.
MISSED_HEARTBEATS_BEFORE_STALE = 3


class Worker:
    def __init__(self, project: Project, config: WorkerConfig | None = None) -> None:
        self.project = project
        self.config = config or WorkerConfig()
        self.shutdown = threading.Event()
        self.jobs_run = 0

    def request_shutdown(self, *_: object) -> None:
        log.info("worker %s: shutting down after the current step", self.config.worker_id)
        self.shutdown.set()
        # A second Ctrl-C or SIGTERM ends the process at once.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def run(self) -> int:
        """Loop until shut down (or, with drain_and_exit, until the queue is empty); returns jobs run."""
        timeout = self.project.settings.training.heartbeat_timeout_seconds
        if timeout < MISSED_HEARTBEATS_BEFORE_STALE * self.config.heartbeat_seconds:
            # Otherwise this worker would fail healthy jobs (its own included) as dead.
            raise ProjectError(
                f"[training] heartbeat_timeout_seconds = {timeout} is below {MISSED_HEARTBEATS_BEFORE_STALE} of this "
                f"worker's {self.config.heartbeat_seconds:g} s heartbeats: raise it in labeller.toml "
                f"(or start the worker with a shorter --heartbeat)"
            )
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = {}
        if in_main_thread:
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self.request_shutdown)
        try:
            discard_orphan_checkpoints(self.project)
            while not self.shutdown.is_set():
                self.reclaim_stale_jobs()
                job = self.claim()
                if job is not None:
                    self.run_job(job)
                    continue
                if self.queue_auto_retrain():
                    continue
                if self.config.drain_and_exit:
                    break
                self.shutdown.wait(self.config.poll_seconds)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.jobs_run

    def reclaim_stale_jobs(self) -> list[int]:
        training = self.project.settings.training
        with unit_of_work(self.project.engine) as session:
            stale = job_queries.fail_stale_jobs(
                session, training.heartbeat_timeout_seconds, requeue=training.requeue_stale_jobs
            )
        if stale:
            log.warning("jobs %s had a dead worker", stale)
            for job_id in stale:
                for path in _job_files(self.project, job_id):
                    if path.name.endswith(PARTIAL_SUFFIX):
                        path.unlink(missing_ok=True)
            discard_orphan_checkpoints(self.project)
        return stale

    def claim(self) -> ClaimedJob | None:
        with unit_of_work(self.project.engine) as session:
            return job_queries.claim_next_job(session, self.config.worker_id, self.config.kinds)

    def queue_auto_retrain(self) -> bool:
        every = self.project.settings.training.auto_retrain_every
        if every <= 0 or (self.config.kinds and "train" not in self.config.kinds):
            return False
        with unit_of_work(self.project.engine) as session:
            job = job_queries.maybe_queue_auto_retrain(session, every)
            if job is not None:
                log.info("queued automatic retrain job %s", job.id)
        return job is not None

    def device_for(self, job: ClaimedJob) -> str:
        return self.config.device or job.params.get("device") or self.project.settings.training.device

    def run_job(self, job: ClaimedJob) -> None:
        flags = StopFlags(shutdown=self.shutdown)
        context = JobContext(self.project, job, self.device_for(job), flags)
        beat = HeartbeatThread(self.project, job, self.config.heartbeat_seconds, flags)
        beat.start()
        log.info("job %s (%s) started, attempt %s", job.id, job.kind, job.attempt)
        try:
            job_handler(job.kind)(context)
            if not context.completed:
                with context.completing():
                    pass
            log.info("job %s succeeded", job.id)
        except JobInterrupted as interrupted:
            self._record_interruption(job, flags, str(interrupted))
        except Exception as error:
            if flags.reason() is not None:  # the failure is a side effect of being stopped
                self._record_interruption(job, flags, flags.reason() or str(error))
            else:
                self._record_failure(job, error)
        finally:
            beat.stop()
            self.jobs_run += 1
            for path in _job_files(self.project, job.id):
                if path.name.endswith(PARTIAL_SUFFIX):
                    path.unlink(missing_ok=True)

    def _record_interruption(self, job: ClaimedJob, flags: StopFlags, reason: str) -> None:
        with unit_of_work(self.project.engine) as session:
            current = session.get(Job, job.id)
            if flags.lost.is_set() or current is None:
                log.warning("job %s: %s", job.id, reason)
            elif current.cancel_requested:
                job_queries.acknowledge_cancel(session, job)
                log.info("job %s cancelled", job.id)
            else:
                job_queries.requeue_job(session, job, f"re-queued: {reason}")
                log.info("job %s handed back to the queue: %s", job.id, reason)

    def _record_failure(self, job: ClaimedJob, error: Exception) -> None:
        message = str(error) if isinstance(error, JobFailed) else f"{type(error).__name__}: {error}"
        log.error("job %s failed: %s", job.id, message)
        with unit_of_work(self.project.engine) as session:
            if job_queries.fail_job(session, job, message):
                job_queries.add_job_event(
                    session, job.id, "log", {"message": message, "traceback": traceback.format_exc()}
                )


def run_worker(project: Project, config: WorkerConfig | None = None) -> int:
    return Worker(project, config).run()
