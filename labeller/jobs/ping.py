"""A job that does no work: checks that a worker is alive and measures how fast jobs are picked up.

Params: ``seconds`` (optional) keeps the job running that long, stopping early when cancelled.
"""

from __future__ import annotations

import time

from db.queries import jobs as job_queries
from labeller.jobs import JobContext

STEP_SECONDS = 0.05


def run(context: JobContext) -> None:
    deadline = time.monotonic() + float(context.params.get("seconds", 0))
    while time.monotonic() < deadline:
        context.raise_if_stopped()
        time.sleep(STEP_SECONDS)
    with context.completing() as session:
        job_queries.add_job_event(session, context.job.id, "log", {"message": f"pong from {context.job.worker_id}"})
