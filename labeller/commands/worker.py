"""``labeller worker``: run jobs; ``labeller jobs``: list or cancel them."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from db.engine import unit_of_work
from db.queries import jobs as job_queries
from db.queries.jobs import JobError
from labeller.commands.project import ROW_ID, load_project
from labeller.project import ProjectError

PROJECT_ARGUMENT = click.argument("project", type=click.Path(file_okay=False, exists=True, path_type=Path))


@click.command("worker")
@PROJECT_ARGUMENT
@click.option("--once", is_flag=True, help="Run the jobs that are queued, then exit.")
@click.option("--poll", "poll_seconds", type=float, default=2.0, show_default=True, help="Seconds between polls.")
@click.option("--heartbeat", "heartbeat_seconds", type=float, default=5.0, show_default=True)
@click.option("--device", help="auto, cpu, cuda, cuda:N; default: the job's, else the project setting.")
@click.option("--kind", "kinds", multiple=True, help="Only run jobs of this kind (repeatable).")
def worker_command(
    project: Path, once: bool, poll_seconds: float, heartbeat_seconds: float, device: str | None, kinds: tuple[str, ...]
) -> None:
    """Claim queued jobs (train, score, embed) and run them on cuda if present, else cpu."""
    from labeller.worker import WorkerConfig, run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    config = WorkerConfig(
        poll_seconds=poll_seconds,
        heartbeat_seconds=heartbeat_seconds,
        drain_and_exit=once,
        device=device,
        kinds=kinds or None,
    )
    click.echo(f"worker {config.worker_id} on {project}", err=True)
    try:
        count = run_worker(load_project(project), config)
    except ProjectError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"worker {config.worker_id} stopped after {count} job(s)", err=True)


@click.group("jobs", invoke_without_command=True)
@PROJECT_ARGUMENT
@click.pass_context
def jobs_command(context: click.Context, project: Path) -> None:
    """List recent jobs (default) or cancel one."""
    context.obj = load_project(project)
    if context.invoked_subcommand is None:
        context.invoke(list_jobs_command)


@jobs_command.command("list")
@click.option("--limit", type=ROW_ID, default=20, show_default=True)
@click.pass_obj
def list_jobs_command(project, limit: int = 20) -> None:
    """Newest first: id, kind, status, attempts, worker, error."""
    with unit_of_work(project.engine) as session:
        jobs = job_queries.list_jobs(session, limit=limit)
        if not jobs:
            click.echo("no jobs")
            return
        for job in jobs:
            progress = job_queries.latest_job_event(session, job.id)
            epoch = f" epoch {progress.payload.get('epoch')}" if progress and "epoch" in progress.payload else ""
            error = f"  {job.error}" if job.error else ""
            click.echo(
                f"{job.id:>5}  {job.kind:<6} {job.status.value:<10} attempts={job.attempts}"
                f" worker={job.worker_id or '-'}{epoch}{error}"
            )


@jobs_command.command("cancel")
@click.argument("job_id", type=ROW_ID)
@click.pass_obj
def cancel_job_command(project, job_id: int) -> None:
    """Cancel a queued job at once, or ask a running job's worker to stop at its next step."""
    try:
        with unit_of_work(project.engine) as session:
            job = job_queries.request_cancel(session, job_id)
            status = job.status.value
    except JobError as error:
        raise click.ClickException(str(error)) from error
    click.echo(
        f"job {job_id}: {'cancelled' if status == 'cancelled' else 'cancel requested; it stops at its next step'}"
    )
