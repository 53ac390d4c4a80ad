"""Soak: minutes of mixed labelling, training and exporting on one SQLite project, then the same checks as
``benchmarks.concurrent_labelling`` plus the exports' and the jobs'.

What runs, all at once, for ``--minutes`` (default 30) on one project of small generated PNGs (circles and
squares, some imported pre-labelled from their folders, the rest unlabelled):

- ``--labellers`` annotator processes (the first two are one annotator in two tabs) working through the Label
  page's code as in ``benchmarks.concurrent_labelling``, with a human pace (a pause between steps);
- one real ``labeller worker`` process; this driver queues a train job (fast settings: few epochs, 16 px,
  promote always, so a score job follows) whenever none is queued or running;
- exports by this driver every ``--export-every`` seconds, rotating csv, jsonl and coco, every fourth one
  through the ``labeller export`` command instead of ``labeller.export``.

At the end (the worker is stopped with SIGTERM, as a person would):

- the labelling invariants of ``benchmarks.concurrent_labelling.check`` (nothing lost or doubled, histories
  consistent, no image handed to two annotators);
- every export parses (``labeller.manifest.read_manifest``, the importer's reader), has as many rows as it
  said it wrote, and holds exactly the consensus labels (main class, tags, annotator) that the database had
  at one moment during the export: the annotation history is replayed in id order (SQLite commits writers
  one at a time, so the ids are in commit order) and some state between the newest row before the export
  and the newest row after it must equal the file;
- no "database is locked" anywhere (the processes' errors, the exports, the worker's log);
- job states: none left running, every finished job has its times in order, every succeeded train job names
  an existing model version, at most one active version, no failed job.

    python -m benchmarks.soak [--minutes 30] [--labellers 4] [--images 3000] [--keep DIR]

Run it outside CI (it takes the minutes it is given). Writes ``benchmarks/results/soak.json`` and ``soak.md``
with the duration it really ran, and exits non-zero when any check failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw
from sqlalchemy import Engine, func, select

from benchmarks.concurrent_labelling import (
    Config,
    Ledger,
    Mix,
    Row,
    Verdict,
    annotator_specs,
    check,
    git_commit,
    load_rows,
    machine,
    start_annotators,
    versions,
)
from db.engine import reading, unit_of_work
from db.schema import Annotation, Annotator, Image, Job, JobStatus, MainClass, ModelVersion, SubClass
from labeller.project import Project

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
LOCKED = "database is locked"
EXPORT_FORMATS = ("csv", "jsonl", "coco")
SUFFIXES = {"csv": "csv", "jsonl": "jsonl", "coco": "json"}
SHAPES = ("circle", "square")
SUB_CLASSES = ("small", "big")


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 30.0
    labellers: int = 4  # processes; the first two are one annotator (two tabs)
    images: int = 3000  # unlabelled pool
    prelabelled: int = 30  # per shape, imported with their folder's class
    image_px: int = 24
    epochs: int = 2
    train_image_size: int = 16
    export_every_s: float = 20.0
    cli_export_every: int = 4  # every n-th export goes through `labeller export`
    think_s: tuple[float, float] = (0.3, 1.5)
    mix: Mix = field(default_factory=Mix)
    seed: int = 0


# ----------------------------------------------------------------------------------------- the project


def write_shapes(folder: Path, shape: str, count: int, rng: np.random.Generator, size: int) -> None:
    """A bright disc or square at a random place and size on a noisy dark background."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = PILImage.fromarray(rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        radius = int(rng.integers(3, size // 3))
        cx, cy = (int(v) for v in rng.integers(radius + 1, size - radius - 1, size=2))
        colour = tuple(int(v) for v in rng.integers(170, 256, size=3))
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
        image.save(folder / f"{shape}-{index:05d}.png")


def build_project(root: Path, config: SoakConfig) -> Project:
    """A SQLite project: the taxonomy (two shapes with size tags, and "other"), pre-labelled and unlabelled
    images imported, and fast training settings."""
    from db.queries.taxonomy import ensure_class
    from labeller.ingest import ImportOptions, import_images
    from labeller.project import init_project

    project = init_project(root / "project")
    training = project.settings.training
    training.model, training.backbone, training.device = "m2", "pixels", "cpu"
    training.epochs, training.image_size, training.batch_size = config.epochs, config.train_image_size, 32
    project.settings.labelling.audit_fraction = 0.05
    project.save_settings()
    with unit_of_work(project.engine) as session:
        for shape in SHAPES:
            for sub in SUB_CLASSES:
                ensure_class(session, shape, sub)
        ensure_class(session, "other")
    rng = np.random.default_rng(config.seed)
    for shape in SHAPES:
        write_shapes(root / "images" / "labelled" / shape, shape, config.prelabelled, rng, config.image_px)
        write_shapes(root / "images" / "pool" / shape, shape, config.images // 2, rng, config.image_px)
    import_images(
        project,
        [root / "images" / "labelled"],
        options=ImportOptions(labels_from_folders=True, create_classes=True, progress=False),
    )
    import_images(project, [root / "images" / "pool"], options=ImportOptions(progress=False))
    return project


def environment() -> dict[str, str]:
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": python_path, "PYTHONUNBUFFERED": "1"}


def start_worker(project: Project, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "labeller", "worker", str(project.root), "--poll", "1", "--heartbeat", "5"]
    return subprocess.Popen(command, env=environment(), stdout=log.open("ab"), stderr=subprocess.STDOUT)


# ----------------------------------------------------------------------------------------- the driver


@dataclass
class ExportRecord:
    number: int
    format: str
    path: str
    via: str  # module | cli
    before_id: int  # the newest annotation row before the export started
    after_id: int  # ... and after it ended
    rows: int | None = None  # what the export said it wrote
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Driver:
    """Queues train jobs and exports while the labellers and the worker work."""

    project: Project
    config: SoakConfig
    exports_dir: Path
    exports: list[ExportRecord] = field(default_factory=list)
    train_jobs: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def run_until(self, deadline: float) -> None:
        next_export = time.time() + self.config.export_every_s / 2
        while time.time() < deadline:
            self._guarded(self.queue_training)
            if time.time() >= next_export:
                self._guarded(self.export)
                next_export = time.time() + self.config.export_every_s
            time.sleep(min(2.0, max(0.0, deadline - time.time())))

    def _guarded(self, action: Any) -> None:
        try:
            action()
        except Exception as error:  # recorded and judged at the end; the soak goes on
            self.errors.append(f"{action.__name__}: {type(error).__name__}: {str(error).splitlines()[0][:200]}")

    def queue_training(self) -> None:
        from db.queries import jobs as job_queries
        from labeller.jobs.params import TrainParams

        with unit_of_work(self.project.engine) as session:
            busy = session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.kind == "train", Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
            )
            if busy:
                return
            params = TrainParams(epochs=self.config.epochs, promote="always", reason="soak")
            self.train_jobs.append(job_queries.enqueue_job(session, "train", params.to_params()).id)

    def export(self) -> None:
        from labeller.export import export_labels

        number = len(self.exports) + 1
        format_ = EXPORT_FORMATS[(number - 1) % len(EXPORT_FORMATS)]
        out = self.exports_dir / f"export-{number:04d}.{SUFFIXES[format_]}"
        via = "cli" if number % self.config.cli_export_every == 0 else "module"
        record = ExportRecord(number, format_, str(out), via, newest_annotation_id(self.project.engine), 0)
        started = time.perf_counter()
        try:
            if via == "cli":
                command = [sys.executable, "-m", "labeller", "export", str(self.project.root)]
                done = subprocess.run(
                    [*command, "--format", format_, "--out", str(out)],
                    env=environment(),
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                if done.returncode != 0:
                    record.error = f"labeller export exited {done.returncode}: {done.stderr.strip()[-300:]}"
            else:
                record.rows = export_labels(self.project, format_, out).rows  # type: ignore[arg-type]
        except Exception as error:
            record.error = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        record.seconds = round(time.perf_counter() - started, 2)
        record.after_id = newest_annotation_id(self.project.engine)
        self.exports.append(record)


def newest_annotation_id(engine: Engine) -> int:
    with reading(engine) as session:
        return int(session.scalar(select(func.max(Annotation.id))) or 0)


def stop_worker(worker: subprocess.Popen, timeout_s: float = 600) -> int:
    """SIGTERM: the running job stops at its next step and goes back to the queue."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        return worker.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
        return -9


# ----------------------------------------------------------------------------------------- checks


@dataclass
class Names:
    mains: dict[int, str]
    subs: dict[int, str]
    annotators: dict[int, str]
    images_by_path: dict[str, int]


def load_names(session: Any) -> Names:
    return Names(
        dict(session.execute(select(MainClass.id, MainClass.name)).all()),
        dict(session.execute(select(SubClass.id, SubClass.name)).all()),
        dict(session.execute(select(Annotator.id, Annotator.name)).all()),
        {path: image_id for image_id, path in session.execute(select(Image.id, Image.path))},
    )


class Consensus:
    """The consensus labels (newest current LABEL of each image) as the history stood after each row, replayed
    in id order with the rules of ``db.queries.annotations``."""

    def __init__(self, rows: dict[int, Row]) -> None:
        self.rows = rows
        self.order = sorted(rows)
        self.position = 0  # rows[order[:position]] are applied
        self.current: dict[tuple[int, int], int | None] = {}
        self.labels: dict[int, set[int]] = defaultdict(set)

    def advance_to(self, newest_id: int) -> None:
        while self.position < len(self.order) and self.order[self.position] <= newest_id:
            self._apply(self.rows[self.order[self.position]])
            self.position += 1

    def next_id(self) -> int | None:
        return self.order[self.position] if self.position < len(self.order) else None

    def _apply(self, row: Row) -> None:
        pair = (row.image_id, row.annotator_id)
        previous = self.current.get(pair)
        if row.kind != "undo":
            self._set(pair, row.id)
            return
        target = self.rows.get(row.supersedes_id or 0)
        if target is None or previous != target.id:
            return  # an undo of a row that was not current: check() reports that history
        restored = self.rows.get(target.supersedes_id or 0)
        self._set(pair, restored.id if restored is not None and restored.kind != "undo" else None)

    def _set(self, pair: tuple[int, int], row_id: int | None) -> None:
        previous = self.current.get(pair)
        if previous is not None:
            self.labels[pair[0]].discard(previous)
        self.current[pair] = row_id
        if row_id is not None and self.rows[row_id].kind == "label":
            self.labels[pair[0]].add(row_id)

    def snapshot(self, names: Names) -> dict[int, tuple[str, tuple[str, ...], str]]:
        found = {}
        for image_id, row_ids in self.labels.items():
            if row_ids:
                row = self.rows[max(row_ids)]
                tags = tuple(sorted(names.subs[tag] for tag in row.tags))
                found[image_id] = (names.mains[row.main_class_id or 0], tags, names.annotators[row.annotator_id])
        return found


def read_export(project: Project, record: ExportRecord, names: Names) -> dict[int, tuple[str, tuple[str, ...], str]]:
    """The export's labels by image id, read back with the importer's own reader."""
    from labeller.manifest import read_manifest

    manifest = read_manifest(Path(record.path))
    if manifest.skipped:
        raise ValueError(f"{len(manifest.skipped)} rows skipped by the reader: {manifest.skipped[:2]}")
    found: dict[int, tuple[str, tuple[str, ...], str]] = {}
    for entry in manifest.entries:
        image_id = names.images_by_path.get(project.stored_image_path(entry.path.absolute()))
        if image_id is None:
            raise ValueError(f"{entry.origin}: no such image in the project")
        if image_id in found:
            raise ValueError(f"{entry.origin}: image {image_id} appears twice")
        found[image_id] = (entry.main or "", tuple(sorted(entry.tags)), entry.annotator or "")
    return found


def check_exports(project: Project, exports: Sequence[ExportRecord], rows: dict[int, Row], names: Names) -> list[str]:
    """Every export parses, counts what it said, and equals the consensus at a moment during it."""
    problems = []
    consensus = Consensus(rows)
    for record in sorted(exports, key=lambda r: r.before_id):
        where = f"export {record.number} ({record.format}, {record.via})"
        if record.error is not None:
            problems.append(f"{where}: {record.error}")
            continue
        try:
            exported = read_export(project, record, names)
        except Exception as error:
            problems.append(f"{where} does not parse: {error}")
            continue
        if record.rows is not None and record.rows != len(exported):
            problems.append(f"{where}: said {record.rows} rows, the file has {len(exported)}")
        consensus.advance_to(record.before_id)
        while consensus.snapshot(names) != exported:
            following = consensus.next_id()
            if following is None or following > record.after_id:
                problems.append(f"{where}: {len(exported)} labels match no state of the database during it")
                break
            consensus.advance_to(following)
    return problems


def check_jobs(engine: Engine) -> tuple[dict[str, int], list[str]]:
    problems = []
    with reading(engine) as session:
        jobs = list(session.scalars(select(Job).order_by(Job.id)))
        version_ids = set(session.scalars(select(ModelVersion.id)))
        active = session.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.active.is_(True)))
    counts = Counter(f"{job.kind} {JobStatus(job.status).value}" for job in jobs)
    for job in jobs:
        where = f"job {job.id} ({job.kind}, {JobStatus(job.status).value})"
        if job.status == JobStatus.RUNNING:
            problems.append(f"{where}: still running after the worker stopped")
        if job.status == JobStatus.FAILED:
            problems.append(f"{where}: {(job.error or '').splitlines()[0][:200] if job.error else 'no error'}")
        finished = job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
        if finished and job.started_at is not None and (job.finished_at is None or job.finished_at < job.started_at):
            problems.append(f"{where}: finished at {job.finished_at}, started at {job.started_at}")
        if job.kind == "train" and job.status == JobStatus.SUCCEEDED and job.model_version_id not in version_ids:
            problems.append(f"{where}: names model version {job.model_version_id}, which does not exist")
    if (active or 0) > 1:
        problems.append(f"{active} model versions are active at once")
    return {**dict(sorted(counts.items())), "model_versions": len(version_ids)}, problems


def locked_lines(log: Path) -> list[str]:
    if not log.exists():
        return []
    return [line.strip()[:200] for line in log.read_text(errors="replace").splitlines() if LOCKED in line]


# ----------------------------------------------------------------------------------------- the soak


def soak(config: SoakConfig, work: Path) -> dict[str, Any]:
    """Build the project, run everything for ``config.minutes``, stop, check; the results."""
    started = time.perf_counter()
    project = build_project(work, config)
    build_s = time.perf_counter() - started
    exports_dir = work / "exports"
    exports_dir.mkdir()
    log = work / "worker.log"
    baseline_id = newest_annotation_id(project.engine)
    labelling = Config(processes=config.labellers, twins=1 if config.labellers >= 2 else 0, mix=config.mix)
    specs = annotator_specs(labelling, labels=0, seconds=config.minutes * 60, think_s=config.think_s)
    driver = Driver(project, config, exports_dir)
    worker = start_worker(project, log)
    try:
        annotators = start_annotators(project.database_url, specs)
        driver.run_until(annotators.started + config.minutes * 60)
        ledgers = annotators.collect(timeout_s=900)
    finally:
        worker_exit = stop_worker(worker)
    ran_s = max(ledger.finished for ledger in ledgers) - annotators.started
    return judge(project, ledgers, driver, log, worker_exit, baseline_id, ran_s, build_s)


def judge(
    project: Project,
    ledgers: Sequence[Ledger],
    driver: Driver,
    log: Path,
    worker_exit: int,
    baseline_id: int,
    ran_s: float,
    build_s: float,
) -> dict[str, Any]:
    engine = project.engine
    verdict: Verdict = check(engine, ledgers, baseline_id=baseline_id)
    with reading(engine) as session:
        rows = load_rows(session)
        names = load_names(session)
    export_problems = check_exports(project, driver.exports, rows, names)
    jobs, job_problems = check_jobs(engine)
    errors = [error for ledger in ledgers for error in ledger.errors]
    locked = {
        "labellers": sum(LOCKED in error for error in errors),
        "exports": sum(LOCKED in (record.error or "") for record in driver.exports),
        "driver": sum(LOCKED in error for error in driver.errors),
        "worker_log": len(locked_lines(log)),
    }
    crashes = [f"process {ledger.index}: {ledger.crash}" for ledger in ledgers if ledger.crash]
    worker_problems = [] if worker_exit == 0 else [f"the worker exited with {worker_exit}"]
    problems = [
        *crashes,
        *verdict.problems[:20],
        *export_problems[:20],
        *job_problems[:20],
        *driver.errors[:20],
        *worker_problems,
        *[f"database is locked ({where}): {count}" for where, count in locked.items() if count],
    ]
    ok = verdict.ok and not (crashes or export_problems or job_problems or driver.errors or worker_problems)
    ok = ok and not any(locked.values())
    saved = sum(ledger.saved for ledger in ledgers)
    return {
        "ran_s": round(ran_s, 1),
        "build_project_s": round(build_s, 1),
        "labellers": len(ledgers),
        "saved": saved,
        "labels_per_s": round(saved / ran_s, 2) if ran_s > 0 else 0.0,
        "ops": sum(len(ledger.answers) for ledger in ledgers),
        "rejected": sum(ledger.rejected for ledger in ledgers),
        "restarts": sum(ledger.restarts for ledger in ledgers),
        "errors": len(errors),
        "error_kinds": sorted({error.split(":")[0] for error in errors}),
        "error_samples": sorted(set(errors))[:10],
        "retries": sum(ledger.retries for ledger in ledgers),
        "exhausted": sum(ledger.exhausted for ledger in ledgers),
        "exports": len(driver.exports),
        "exports_by": dict(Counter(f"{record.format} via {record.via}" for record in driver.exports)),
        "exports_checked": len(driver.exports) - len(export_problems),
        "export_rows_last": next((r.rows for r in reversed(driver.exports) if r.rows is not None), None),
        "export_seconds_max": max((record.seconds for record in driver.exports), default=None),
        "train_jobs_queued": len(driver.train_jobs),
        "jobs": jobs,
        "worker_exit": worker_exit,
        "locked": locked,
        "verdict": verdict.as_dict(),
        "problems": problems[:40],
        "ok": ok,
    }


def main(out_dir: Path, quick: bool, config: SoakConfig | None = None, keep: Path | None = None) -> dict[str, Any]:
    """``benchmarks.run_all``'s entry point (not in its default list: it takes the minutes it is given);
    ``quick`` is 3 minutes with 1000 images."""
    config = config or (SoakConfig(minutes=3, images=1000) if quick else SoakConfig())
    work = keep or Path(tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        found = soak(config, work)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "soak",
        "note": (
            f"{found['ran_s'] / 60:.1f} minutes (asked: {config.minutes:g}) on one SQLite project: "
            f"{config.labellers} labelling processes (two of them one annotator), a labeller worker training "
            f"({config.epochs} epochs, promote always; the job scores the pool, an embed job follows) again and "
            "again, an export every "
            f"{config.export_every_s:g} s. lost/doubled/history_errors/locked must be 0 and every export must "
            "parse and equal the database at a moment during it."
        ),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "config": dataclasses.asdict(config),
        **found,
        "versions": versions(None),
        "machine": machine(),
    }
    result["rows"] = [summary_row(config, found)]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "soak.md").write_text(markdown(result))
    if not result["ok"]:
        raise SystemExit(f"soak: a check failed: {result['problems'][:5]}")
    return result


def summary_row(config: SoakConfig, found: dict[str, Any]) -> dict[str, Any]:
    verdict, jobs = found["verdict"], found["jobs"]
    return {
        "minutes_asked": config.minutes,
        "minutes_ran": round(found["ran_s"] / 60, 1),
        "labellers": found["labellers"],
        "decisions": found["saved"],
        "labels_per_s": found["labels_per_s"],
        "exports": found["exports"],
        "exports_ok": found["exports_checked"],
        "train_succeeded": jobs.get("train succeeded", 0),
        "other_jobs_succeeded": sum(n for name, n in jobs.items() if name.endswith(" succeeded"))
        - jobs.get("train succeeded", 0),
        "errors": found["errors"],
        "locked": sum(found["locked"].values()),
        "lost": verdict["lost"],
        "doubled": verdict["doubled"],
        "history_errors": verdict["history_errors"],
        "handed_twice": verdict["handed_twice"] + verdict["claim_conflicts"],
        "decided_unleased": verdict["decided_unleased"],
        "ok": found["ok"],
    }


def markdown(result: dict[str, Any]) -> str:
    row = result["rows"][0]
    header = "| " + " | ".join(row) + " |"
    versions_text = ", ".join(f"{name} {value}" for name, value in result["versions"].items() if value)
    jobs = ", ".join(f"{name}: {count}" for name, count in result["jobs"].items())
    problems = result["problems"]
    return "\n".join(
        [
            "# Soak: labelling, training and exporting at once on one SQLite file",
            "",
            result["note"],
            "",
            header,
            "|" + "---|" * len(row),
            "| " + " | ".join(str(value) for value in row.values()) + " |",
            "",
            f"- exports: {result['exports_by']}; the last one held {result['export_rows_last']} labels; the slowest "
            f"took {result['export_seconds_max']} s",
            f"- jobs at the end: {jobs}; the worker exited with {result['worker_exit']} after SIGTERM",
            f"- database is locked: {result['locked']}",
            f"- errors the labellers retried: {result['errors']} {result['error_kinds']}; rejected ops (refused as "
            f"they should be, nothing written): {result['rejected']}; restarts (outbox resent to a fresh "
            f"session): {result['restarts']}",
            f"- decided without the lease (one tab of an annotator labelled an image the queue had given to someone "
            f"else after the other tab skipped it; reported, not failed): {result['verdict']['notes'][:3]}",
            f"- Result: {'OK' if result['ok'] else 'FAILED'}" + (f"; problems: {problems[:5]}" if problems else ""),
            "",
            f"- commit: `{result['commit']}`, {result['date']}",
            f"- versions: {versions_text}",
            f"- machine: {result['machine']}",
            "",
            "Run it with `python -m benchmarks.soak --minutes 30` (outside CI).",
            "",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=SoakConfig.minutes)
    parser.add_argument("--labellers", type=int, default=SoakConfig.labellers)
    parser.add_argument("--images", type=int, default=SoakConfig.images)
    parser.add_argument("--epochs", type=int, default=SoakConfig.epochs)
    parser.add_argument("--export-every", type=float, default=SoakConfig.export_every_s)
    parser.add_argument("--keep", type=Path, default=None, help="build the project here and keep it")
    parser.add_argument("--out", type=Path, default=RESULTS)
    arguments = parser.parse_args()
    chosen = SoakConfig(
        minutes=arguments.minutes,
        labellers=arguments.labellers,
        images=arguments.images,
        epochs=arguments.epochs,
        export_every_s=arguments.export_every,
    )
    outcome = main(arguments.out, False, chosen, arguments.keep)
    print(json.dumps(outcome["rows"], indent=2))
