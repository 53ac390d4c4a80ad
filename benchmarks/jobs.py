"""Job pick-up latency and scoring throughput.

- Pick-up latency: seconds from ``enqueue_job`` to the job's ``started_at``, with one live ``labeller
  worker`` process polling a SQLite project (ping jobs, enqueued at random moments in the poll cycle),
  for the default poll interval and a short one. Expect about half the poll interval plus a few ms.
- Scoring throughput: images per second through ``core.scoring.score_pool`` (64 x 64 RGB, the project
  default; weights freshly initialised, which costs the same as trained ones), and rows per second
  through ``db.queries.models.write_predictions`` into SQLite: together the score job's work.

    python -m benchmarks.jobs [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent


def _worker(project_root: Path, poll: float) -> subprocess.Popen:
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": python_path}
    return subprocess.Popen(
        [sys.executable, "-m", "labeller.worker", str(project_root), "--poll", str(poll), "--kind", "ping"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def pickup_latency(poll: float, jobs: int, workdir: Path) -> dict[str, Any]:
    from db.engine import unit_of_work
    from db.queries import jobs as job_queries
    from db.schema import JobStatus
    from labeller.project import init_project

    project = init_project(workdir / f"pickup-{poll}")
    worker = _worker(project.root, poll)
    rng = np.random.default_rng(0)
    latencies = []
    try:
        # The first job also waits for the worker process to start; it is not counted.
        for index in range(jobs + 1):
            time.sleep(float(rng.uniform(0, poll)))
            with unit_of_work(project.engine) as session:
                job_id = job_queries.enqueue_job(session, "ping").id
            deadline = time.monotonic() + 60 + poll
            while True:
                with unit_of_work(project.engine) as session:
                    job = job_queries.get_job(session, job_id)
                    if job.status == JobStatus.SUCCEEDED:
                        if index:
                            latencies.append((job.started_at - job.created_at).total_seconds())
                        break
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited with code {worker.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job {job_id} was not run within {60 + poll} s")
                time.sleep(0.01)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        project.engine.dispose()
    return {
        "measure": "pick-up latency",
        "poll_seconds": poll,
        "jobs": len(latencies),
        "median_seconds": round(statistics.median(latencies), 4),
        "p90_seconds": round(float(np.percentile(latencies, 90)), 4),
        "max_seconds": round(max(latencies), 4),
    }


def scoring_throughput(images: int, model: str, device: str = "cpu") -> dict[str, Any]:
    import torch

    from core.scoring import score_pool
    from core.taxonomy import Taxonomy
    from core.training import TrainConfig, TrainedModel, build_model

    torch.manual_seed(0)
    taxonomy = Taxonomy.from_dict({"ants": [], "bees": ["honey", "bumble"]})
    shape = (3, 64, 64)
    config = TrainConfig(model=model, device=device, balance=0.0)  # amp=True: bf16 autocast on cuda, ignored on cpu
    trained = TrainedModel(
        model=build_model(config, taxonomy, shape).eval(),
        taxonomy=taxonomy,
        config=config,
        metrics={},
        temperature=1.0,
        image_shape=shape,
    )
    pool = np.random.default_rng(0).integers(0, 256, size=(images, *shape), dtype=np.uint8)
    score_pool(trained, pool[:256], device=device)  # warm-up: first-call allocations, cuDNN autotuning
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    scores = score_pool(trained, pool, device=device)  # returns numpy arrays: the GPU work is done
    seconds = time.perf_counter() - started
    return {
        "measure": "score_pool",
        "model": model,
        "images": images,
        "image_shape": "x".join(map(str, shape)),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "seconds": round(seconds, 2),
        "images_per_second": round(images / seconds, 1),
        "latent_dim": int(scores.latent_mean.shape[1]),
        "_scores": scores,
        "_taxonomy": taxonomy,
    }


def prediction_write_throughput(scoring: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from sqlalchemy import insert

    from db.engine import unit_of_work
    from db.queries import models as model_queries
    from db.schema import Image
    from labeller.jobs.score import class_ids, prediction_rows
    from labeller.project import init_project

    scores, taxonomy = scoring["_scores"], scoring["_taxonomy"]
    count = len(scores)
    project = init_project(workdir / "writes")
    with unit_of_work(project.engine) as session:
        session.execute(
            insert(Image),
            [
                {"sha256": f"{i:064x}", "path": f"{i}.png", "width": 64, "height": 64, "format": "PNG",
                 "file_size": 1, "random_key": i / count}
                for i in range(count)
            ],
        )  # fmt: skip
        version = model_queries.register_model_version(
            session, name="bench", model_kind="m2", checkpoint_path="models/bench.pt", config={},
            data_snapshot={}, metrics={}, label_count=0,
        )  # fmt: skip
    image_ids = list(range(1, count + 1))
    started = time.perf_counter()
    with unit_of_work(project.engine) as session:
        main_ids, sub_ids = class_ids(session)
        written = model_queries.write_predictions(
            session, version.id, prediction_rows(image_ids, scores, taxonomy, main_ids, sub_ids)
        )
    seconds = time.perf_counter() - started
    project.engine.dispose()
    return {
        "measure": "write_predictions (SQLite)",
        "images": written,
        "seconds": round(seconds, 2),
        "rows_per_second": round(written / seconds, 1),
    }


def main(out_dir: Path, quick: bool) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as temporary:
        workdir = Path(temporary)
        for poll in (0.25, 2.0):
            rows.append(pickup_latency(poll, jobs=6 if quick else 20, workdir=workdir))
        import torch

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            images = (200 if quick else 1_000) if device == "cpu" else (2_000 if quick else 20_000)
            for model in ("m2", "m1m2"):
                scoring = scoring_throughput(images, model, device)
                rows.append({k: v for k, v in scoring.items() if not k.startswith("_")})
            if device == "cpu":
                rows.append(prediction_write_throughput(scoring, workdir))
    result = {
        "name": "jobs",
        "quick": quick,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "note": (
            "Pick-up latency: enqueue -> started_at with one live worker process polling a SQLite project "
            "(ping jobs enqueued at random points of the poll cycle). Scoring: score_pool on random uint8 "
            "64x64 RGB images with freshly initialised weights (same cost as trained), 8 MC-dropout samples "
            "for BALD; write_predictions: the score job's rows (probabilities JSON, scores, float32 latent) "
            "into SQLite in batches of 2,000."
        ),
        "rows": rows,
    }
    (out_dir / "jobs.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    arguments = parser.parse_args()
    print(json.dumps(main(arguments.out, arguments.quick), indent=2))
