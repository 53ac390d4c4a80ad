"""Small real projects and real worker processes for the job and worker tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from db.engine import unit_of_work
from db.queries import jobs as job_queries
from db.queries.taxonomy import ensure_class
from db.schema import Job, JobStatus
from labeller.ingest import ImportOptions, import_images
from labeller.project import Project, init_project

REPO_ROOT = Path(__file__).resolve().parent.parent


def shape_image(path: Path, shape: str, rng: np.random.Generator, size: int = 24) -> None:
    """A bright disc or square at a random place and size on a noisy dark background."""
    background = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background, "RGB")
    draw = ImageDraw.Draw(image)
    radius = int(rng.integers(4, 8))
    cx, cy = (int(v) for v in rng.integers(radius + 1, size - radius - 1, size=2))
    colour = tuple(int(v) for v in rng.integers(170, 256, size=3))
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
    image.save(path)


def write_shapes(folder: Path, shape: str, count: int, seed: int, size: int = 24) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        shape_image(folder / f"{shape}-{seed}-{index:03d}.png", shape, rng, size)
    return folder


def train_device() -> str:
    """cpu unless LABELLER_TEST_TRAIN_DEVICE says otherwise (``auto`` on a GPU machine runs the same
    tests on cuda)."""
    return os.environ.get("LABELLER_TEST_TRAIN_DEVICE", "cpu")


def make_project(
    root: Path,
    *,
    labelled_per_class: int = 10,
    unlabelled: int = 24,
    classes: tuple[str, ...] = ("circle", "square"),
    extra_classes: tuple[str, ...] = (),
    audit_fraction: float = 0.0,
    database_url: str | None = None,
    heartbeat_timeout_seconds: int = 3,
    image_size: int = 24,
) -> Project:
    """A project of generated PNGs: ``labelled_per_class`` pre-labelled per class (from folder names),
    ``unlabelled`` more of both shapes unlabelled; tiny images and one epoch so training takes seconds."""
    project = init_project(root / "project", database_url=database_url)
    training = project.settings.training
    training.model, training.image_size, training.epochs, training.batch_size = "m2", 16, 1, 16
    training.device = train_device()
    training.heartbeat_timeout_seconds = heartbeat_timeout_seconds
    project.settings.labelling.audit_fraction = audit_fraction
    project.save_settings()
    with unit_of_work(project.engine) as session:
        for name in extra_classes:
            ensure_class(session, name)
    source = root / "images"
    for seed, shape in enumerate(classes):
        write_shapes(source / "labelled" / shape, shape, labelled_per_class, seed, image_size)
    if labelled_per_class:
        import_images(
            project,
            [source / "labelled"],
            options=ImportOptions(labels_from_folders=True, create_classes=True, progress=False),
        )
    for seed, shape in enumerate(("circle", "square"), start=10):
        write_shapes(source / "pool", shape, unlabelled // 2, seed, image_size)
    if unlabelled:
        import_images(project, [source / "pool"], options=ImportOptions(progress=False))
    return project


def worker_environment() -> dict[str, str]:
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": python_path, "PYTHONUNBUFFERED": "1"}
    env.setdefault("NUMBA_CACHE_DIR", str(REPO_ROOT / ".numba_cache"))
    return env


def start_worker(project: Project, *args: str, log: Path | None = None) -> subprocess.Popen:
    """A real ``labeller worker`` process (fast polling and heartbeats for tests)."""
    command = [
        sys.executable, "-m", "labeller", "worker", str(project.root), "--poll", "0.2", "--heartbeat", "0.3", *args,
    ]  # fmt: skip
    output = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(command, env=worker_environment(), stdout=output, stderr=subprocess.STDOUT)


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from labeller.cli import main; main()", *args],
        env=worker_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(condition: Callable[[], object], timeout: float, message: str, interval: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s: {message}")


def job_row(project: Project, job_id: int) -> Job:
    with unit_of_work(project.engine) as session:
        return job_queries.get_job(session, job_id)


def wait_for_status(project: Project, job_id: int, statuses: tuple[JobStatus, ...], timeout: float) -> Job:
    return wait_for(
        lambda: (job := job_row(project, job_id)).status in statuses and job,
        timeout,
        f"job {job_id} to become one of {[s.value for s in statuses]}",
    )


def enqueue(project: Project, kind: str, params: dict | None = None) -> int:
    with unit_of_work(project.engine) as session:
        return job_queries.enqueue_job(session, kind, params).id


@contextmanager
def running_worker(project: Project, *args: str, log: Path | None = None) -> Iterator[subprocess.Popen]:
    """A worker for the duration of a block, stopped with SIGTERM (and killed if it ignores that)."""
    process = start_worker(project, *args, log=log)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_job_here(project: Project, kind: str, params: dict | None = None) -> Job:
    """Queue a job and run it in this process as a worker would (claim, handler, completion), without a
    worker process: for job-level tests that need no heartbeat or signal."""
    job_id = enqueue(project, kind, params)
    job = run_queued_job(project, kind)
    assert job.id == job_id, "another job of this kind was queued first"
    return job


def run_queued_job(project: Project, kind: str) -> Job:
    """Claim the oldest queued job of ``kind`` and run it in this process as a worker would."""
    import threading

    from labeller.jobs import JobContext, JobFailed, StopFlags, job_handler

    with unit_of_work(project.engine) as session:
        claimed = job_queries.claim_next_job(session, "in-process", [kind])
    assert claimed is not None, f"no {kind} job queued"
    context = JobContext(project, claimed, train_device(), StopFlags(shutdown=threading.Event()))
    try:
        job_handler(kind)(context)
        if not context.completed:
            with context.completing():
                pass
    except JobFailed as error:
        with unit_of_work(project.engine) as session:
            job_queries.fail_job(session, claimed, str(error))
    return job_row(project, claimed.id)
