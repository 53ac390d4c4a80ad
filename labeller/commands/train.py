"""``labeller train``: queue a training job, and with ``--wait`` follow it to the end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from core.registry import AUTO, DEVICE_CHOICES_TEXT, INPUT_KINDS, MAX_EPOCHS, MODEL_CHOICES, device_problem
from db.engine import unit_of_work
from db.queries import jobs as job_queries
from db.queries import models as model_queries
from db.schema import JobStatus
from labeller.commands.project import load_project
from labeller.project import Project
from labeller.promotion import audit_summary, interval_text

POLL_SECONDS = 0.5
# Say so when nothing has picked the job up after this long: the usual cause is no running worker.
NO_WORKER_HINT_SECONDS = 15.0


def _checked_device(value: str | None) -> str | None:
    """Refuse a device no worker could use (tpu:9) before a job is queued for it."""
    if value is not None and (problem := device_problem(value)):
        raise click.BadParameter(problem, param_hint="'--device'")
    return value


@click.command("train")
@click.argument("project", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--model",
    type=click.Choice(MODEL_CHOICES),
    help="auto: the kind cross-validation on the current labels picks. Default: the project setting (training.model).",
)
@click.option(
    "--backbone",
    type=click.Choice([AUTO, *INPUT_KINDS]),
    help="pixels, or the pretrained backbone whose features the model learns from. Default: the project "
    "setting (training.backbone; auto decides from the images).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1, max=MAX_EPOCHS),
    help="Default: the project setting (training.epochs).",
)
@click.option(
    "--device",
    callback=lambda _context, _parameter, value: _checked_device(value),
    help=f"{DEVICE_CHOICES_TEXT}. Default: the project setting.",
)
@click.option(
    "--promote",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="auto: promote when at least as accurate as the active version on the audit slice.",
)
@click.option(
    "--warm-start",
    is_flag=True,
    help="Start from the active version's weights when compatible. Off by default: on digits, M2 continued "
    "from a model of few labels stayed in that model's clusters (benchmarks/results/label_efficiency/ANALYSIS.md).",
)
@click.option("--wait", is_flag=True, help="Follow the job with a progress bar until it ends.")
def train_command(
    project: Path,
    model: str | None,
    backbone: str | None,
    epochs: int | None,
    device: str | None,
    promote: str,
    warm_start: bool,
    wait: bool,
) -> None:
    """Queue a training job for a worker (start one with `labeller worker PROJECT`)."""
    from labeller.jobs.params import TrainParams

    opened = load_project(project)
    params = TrainParams(
        model=model,
        backbone=backbone,
        epochs=epochs,
        device=device,
        promote=promote,
        warm_start=warm_start,
        reason="cli",
    )
    with unit_of_work(opened.engine) as session:
        job_id = job_queries.enqueue_job(session, "train", params.to_params()).id
    click.echo(f"queued train job {job_id}")
    if wait:
        follow_job(opened, job_id)


def _postfix(payload: dict[str, Any]) -> dict[str, str]:
    shown: dict[str, str] = {}
    loss = payload.get("loss") or {}
    if "loss" in loss or loss:
        key = "loss" if "loss" in loss else next(iter(loss))
        shown[key] = f"{loss[key]:.3g}"
    accuracy = (payload.get("validation") or {}).get("val_main_accuracy")
    if accuracy is not None:
        shown["val_acc"] = f"{accuracy:.3f}"
    if payload.get("images_per_second"):
        shown["img/s"] = f"{payload['images_per_second']:.0f}"
    if payload.get("eta_seconds") is not None:
        shown["eta"] = f"{payload['eta_seconds']:.0f}s"
    return shown


def follow_job(project: Project, job_id: int) -> None:
    """A tqdm bar per training phase until the job ends; a failed or cancelled job exits non-zero."""
    from tqdm import tqdm

    bar: tqdm | None = None
    phase: str | None = None
    last_event = 0
    started = time.monotonic()
    hinted = False
    try:
        while True:
            with unit_of_work(project.engine) as session:
                job = job_queries.get_job(session, job_id)
                status, error, version_id = job.status, job.error, job.model_version_id
                events = job_queries.job_events(session, job_id, after_id=last_event)
            for event in events:
                last_event = event.id
                payload = event.payload
                if event.kind == "log":
                    (bar.write if bar else click.echo)(f"[job {job_id}] {payload.get('message', '')}")
                    continue
                if event.kind == "progress" and payload.get("stage") == "choosing the model":
                    fold = f"{payload['candidate']}, fold {payload['fold']}/{payload['folds']}"
                    (bar.write if bar else click.echo)(f"[job {job_id}] model auto: {fold}")
                    continue
                if event.kind != "progress" or "epoch" not in payload:
                    continue
                if payload.get("phase") != phase:
                    if bar is not None:
                        bar.close()
                    phase = payload.get("phase")
                    total = payload["epochs"] * payload["steps_per_epoch"]
                    bar = tqdm(total=total, desc=f"job {job_id} {phase}", unit="step", dynamic_ncols=True)
                done = (payload["epoch"] - 1) * payload["steps_per_epoch"] + payload["step"]
                bar.update(max(0, done - bar.n))
                bar.set_postfix(_postfix(payload))
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
                break
            if status == JobStatus.QUEUED and not hinted and time.monotonic() - started > NO_WORKER_HINT_SECONDS:
                hinted = True
                click.echo(f"job {job_id} is still queued: is a worker running? (labeller worker {project.root})")
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        raise click.ClickException(
            f"stopped following; job {job_id} goes on (cancel it with: labeller jobs {project.root} cancel {job_id})"
        ) from None
    finally:
        if bar is not None:
            bar.close()
    if status == JobStatus.FAILED:
        raise click.ClickException(f"job {job_id} failed: {error}")
    if status == JobStatus.CANCELLED:
        raise click.ClickException(f"job {job_id} was cancelled")
    with unit_of_work(project.engine) as session:
        if version_id is None:
            click.echo(f"job {job_id} succeeded")
            return
        version = model_queries.get_model_version(session, version_id)
        promotion = (version.metrics or {}).get("promotion", {})
        audit = audit_summary(version.metrics or {})
        click.echo(
            f"job {job_id} succeeded: model version {version.id} ({version.model_kind}, {version.label_count} labels"
            + (f", audit main-class accuracy {interval_text(audit['main_accuracy'], audit['n'])}" if audit else "")
            + f"); {'promoted' if version.active else 'not promoted'}: {promotion.get('reason', '')}"
        )
