"""Next-image query and label-write latency on SQLite with 10k, 100k and 1M image rows.

Each size gets a fresh database file (migrated with Alembic like a real project) holding N images
(5% audit slice), a two-level taxonomy, one model version with a prediction row per image, and 1% of
the images already labelled. Then an annotator works through the queue as the app does: one unit of
work claims the next image (``next_image``, entropy strategy, audit slice every 20th), the next records
a label on it (``record_annotation``); both are timed including their commit. Cold start (no model
version), a 24-image grid batch, and the next image after the top-ranked 10% (at most 20k) of the
pool were labelled under the same model version are timed too.

    python -m benchmarks.db_latency [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy
from sqlalchemy import Engine, insert, select, text

from db.engine import make_engine, sqlite_url, unit_of_work
from db.migrate import upgrade_to_head
from db.queries.annotations import label_counts, record_annotation
from db.queries.annotators import get_or_create_annotator
from db.queries.queue import mark_labelled_predictions, next_batch, next_image, release_claims
from db.schema import Annotation, AnnotationKind, Image, MainClass, ModelVersion, Prediction, SubClass

FULL_SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000,)
AUDIT_FRACTION = 0.05
LABELLED_FRACTION = 0.01
INSERT_BATCH = 50_000
TARGET_MS = 20.0
LOAD_CACHE_KIB = 512 * 1024
DEFAULT_CACHE_SIZE = -2000  # SQLite's compiled-in default (about 2 MB)


def main(out_dir: Path, quick: bool) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = QUICK_SIZES if quick else FULL_SIZES
    rows = []
    with tempfile.TemporaryDirectory(prefix="db_latency_") as scratch:
        for count in sizes:
            rows.append(measure(Path(scratch) / f"bench_{count}.db", count, iterations=100 if quick else 300))
            print(_row_line(rows[-1]), flush=True)
    result = {
        "benchmark": "db_latency",
        "quick": quick,
        "backend": "sqlite",
        "sqlite_version": sqlite3.sqlite_version,
        "sqlalchemy_version": sqlalchemy.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {_cpu_count()} CPU cores (shared)",
        "target_median_ms": TARGET_MS,
        "sizes": rows,
        "rows": summary_rows(rows),
        "meets_target": all(
            row["next_image_ms"]["median"] < TARGET_MS and row["label_write_ms"]["median"] < TARGET_MS for row in rows
        ),
    }
    (out_dir / "db_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def summary_rows(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per database size, for the markdown table."""
    return [
        {
            "images": size["images"],
            "next_image_median_ms": size["next_image_ms"]["median"],
            "next_image_p95_ms": size["next_image_ms"]["p95"],
            "label_write_median_ms": size["label_write_ms"]["median"],
            "label_write_p95_ms": size["label_write_ms"]["p95"],
            "cold_start_median_ms": size["cold_start_next_image_ms"]["median"],
            "grid_of_24_median_ms": size["next_batch_24_ms"]["median"],
            "database_mb": size["database_mb"],
        }
        for size in sizes
    ]


def measure(path: Path, count: int, *, iterations: int) -> dict[str, Any]:
    for stale in path.parent.glob(path.name + "*"):
        stale.unlink()
    engine = make_engine(sqlite_url(path))
    try:
        upgrade_to_head(engine)
        started = time.perf_counter()
        setup = populate(engine, count)
        load_seconds = time.perf_counter() - started
        annotator_id = _annotator(engine, "bench")

        next_ms, write_ms = [], []
        for _ in range(iterations):
            with _timer(next_ms), unit_of_work(engine) as session:
                image_id = next_image(
                    session, annotator_id=annotator_id, strategy="entropy", model_version_id=setup["version_id"]
                )
            if image_id is None:
                raise RuntimeError("the queue ran dry during the benchmark")
            with _timer(write_ms), unit_of_work(engine) as session:
                record_annotation(
                    session,
                    image_id=image_id,
                    annotator_id=annotator_id,
                    kind=AnnotationKind.LABEL,
                    main_class_id=setup["main_class_id"],
                    sub_class_ids=[setup["sub_class_id"]],
                    model_version_id=setup["version_id"],
                )

        cold_ms = _repeat(engine, iterations // 3, "cold", lambda s, a: _next(s, a, None))
        batch_ms = _repeat(
            engine,
            iterations // 10,
            "grid",
            lambda s, a: next_batch(
                s, annotator_id=a, strategy="entropy", model_version_id=setup["version_id"], size=24
            ),
        )
        top_labelled, top_ms = _after_top_labelled(engine, setup, count, iterations // 3)
        counts_ms: list[float] = []
        for _ in range(3):
            with _timer(counts_ms), unit_of_work(engine) as session:
                label_counts(session)
        return {
            "images": count,
            "predictions": count,
            "labelled_before": setup["labelled"],
            "iterations": iterations,
            "bulk_load_seconds": round(load_seconds, 2),
            "bulk_rows_per_second": round(setup["rows"] / load_seconds),
            "database_mb": round(sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20, 1),
            "next_image_ms": _summary(next_ms),
            "label_write_ms": _summary(write_ms),
            "cold_start_next_image_ms": _summary(cold_ms),
            "next_batch_24_ms": _summary(batch_ms),
            "label_counts_ms": _summary(counts_ms),
            "top_ranked_labelled": top_labelled,
            "next_image_after_top_ranked_labelled_ms": _summary(top_ms),
            "query_plan": _plan(engine, setup["version_id"]),
        }
    finally:
        engine.dispose()


def populate(engine: Engine, count: int, *, seed: int = 0) -> dict[str, int]:
    """Bulk-load the rows with Core executemany in batches (no ORM objects)."""
    generator = np.random.default_rng(seed)
    with unit_of_work(engine) as session:
        main = MainClass(name="loops", position=0, sub_classes=[SubClass(name="0"), SubClass(name="8", position=1)])
        other = MainClass(name="lines", position=1, sub_classes=[SubClass(name="1"), SubClass(name="7", position=1)])
        version = ModelVersion(name="bench", model_kind="m2", checkpoint_path="models/bench.pt", active=True)
        session.add_all([main, other, version])
        session.flush()
        ids = {"main_class_id": main.id, "sub_class_id": main.sub_classes[0].id, "version_id": version.id}
        importer_id = get_or_create_annotator(session, "importer").id

    rows_written = 0
    for start in range(0, count, INSERT_BATCH):
        stop = min(start + INSERT_BATCH, count)
        with unit_of_work(engine) as session:
            # A large page cache while loading only: the random-order index inserts stop thrashing the
            # disk. The timed queries below run with SQLite's default cache, as a real project does.
            session.execute(text(f"PRAGMA cache_size=-{LOAD_CACHE_KIB}"))
            session.execute(insert(Image), list(_image_rows(start, stop, generator)))
            session.execute(insert(Prediction), list(_prediction_rows(ids["version_id"], start, stop, generator)))
        rows_written += 2 * (stop - start)

    labelled = generator.choice(np.arange(1, count + 1), size=int(count * LABELLED_FRACTION), replace=False)
    with unit_of_work(engine) as session:
        session.execute(
            insert(Annotation),
            [
                {
                    "image_id": int(image_id),
                    "annotator_id": importer_id,
                    "kind": AnnotationKind.LABEL,
                    "main_class_id": ids["main_class_id"],
                    "superseded": False,
                    "source": "import",
                }
                for image_id in labelled
            ],
        )
    rows_written += len(labelled)
    with unit_of_work(engine) as session:
        mark_labelled_predictions(session, ids["version_id"])  # as the worker does after scoring
        session.execute(text(f"PRAGMA cache_size={DEFAULT_CACHE_SIZE}"))
    return {**ids, "labelled": len(labelled), "rows": rows_written}


def _after_top_labelled(engine: Engine, setup: dict[str, int], count: int, times: int) -> tuple[int, list[float]]:
    """Label the top-ranked images under the model version (a busy day without retraining), then time
    the next-image query: it must not walk past them one by one."""
    top_count = min(count // 10, 20_000)
    importer_id = _annotator(engine, "importer")
    with unit_of_work(engine) as session:
        top = session.scalars(
            select(Prediction.image_id)
            .where(Prediction.model_version_id == setup["version_id"], Prediction.labelled.is_(False))
            .order_by(Prediction.entropy.desc())
            .limit(top_count)
        ).all()
        session.execute(
            insert(Annotation),
            [
                {
                    "image_id": image_id,
                    "annotator_id": importer_id,
                    "kind": AnnotationKind.LABEL,
                    "main_class_id": setup["main_class_id"],
                    "superseded": False,
                    "source": "import",
                }
                for image_id in top
            ],
        )
        mark_labelled_predictions(session, setup["version_id"])
    return top_count, _repeat(engine, times, "after-top", lambda s, a: _next(s, a, setup["version_id"]))


def _image_rows(start: int, stop: int, generator: np.random.Generator) -> Iterator[dict[str, Any]]:
    audit = generator.random(stop - start) < AUDIT_FRACTION
    for offset, number in enumerate(range(start, stop)):
        digest = hashlib.sha256(number.to_bytes(8, "little")).hexdigest()
        yield {
            "id": number + 1,
            "sha256": digest,
            "path": f"images/{number // 1000:04d}/{number}.jpg",
            "width": 640,
            "height": 480,
            "format": "JPEG",
            "file_size": 120_000,
            "random_key": int(digest[:13], 16) / 16**13,
            "audit": bool(audit[offset]),
        }


def _prediction_rows(version_id: int, start: int, stop: int, generator: np.random.Generator) -> Iterator[dict]:
    scores = generator.random((stop - start, 7))
    for offset, number in enumerate(range(start, stop)):
        entropy, leaf_entropy, margin, least, bald, disagreement, novelty = scores[offset].tolist()
        yield {
            "model_version_id": version_id,
            "image_id": number + 1,
            "confidence": 1.0 - least,
            "probabilities": {},
            "entropy": entropy,
            "leaf_entropy": leaf_entropy,
            "margin": margin,
            "least_confidence": least,
            "bald": bald,
            "disagreement": disagreement,
            "novelty": novelty,
        }


def _annotator(engine: Engine, name: str) -> int:
    with unit_of_work(engine) as session:
        return get_or_create_annotator(session, name).id


def _next(session, annotator_id: int, version_id: int | None) -> int | None:  # type: ignore[no-untyped-def]
    return next_image(session, annotator_id=annotator_id, strategy="entropy", model_version_id=version_id)


def _repeat(engine: Engine, times: int, name: str, call: Callable[[Any, int], object]) -> list[float]:
    """Time ``call`` for a fresh annotator each round (so every call claims new images)."""
    timings: list[float] = []
    for round_number in range(max(times, 3)):
        annotator_id = _annotator(engine, f"{name}-{round_number}")
        with _timer(timings), unit_of_work(engine) as session:
            call(session, annotator_id)
        with unit_of_work(engine) as session:
            release_claims(session, annotator_id)
    return timings


class _timer:
    def __init__(self, into: list[float]) -> None:
        self.into = into

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc_info: object) -> None:
        self.into.append((time.perf_counter() - self.started) * 1000.0)


def _summary(milliseconds: list[float]) -> dict[str, float]:
    ordered = sorted(milliseconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "median": round(statistics.median(ordered), 3),
        "p95": round(p95, 3),
        "max": round(ordered[-1], 3),
        "n": len(ordered),
    }


def _plan(engine: Engine, version_id: int) -> list[str]:
    from db.queries.queue import _SCORE_COLUMNS, _by_score
    from db.schema import utcnow

    query = _by_score(2, utcnow(), 1, [], version_id, _SCORE_COLUMNS["entropy"])
    sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    with engine.connect() as connection:
        return [row[3] for row in connection.execute(text("EXPLAIN QUERY PLAN " + sql))]


def _cpu_count() -> int:
    return os.cpu_count() or 0


def _row_line(row: dict[str, Any]) -> str:
    return (
        f"{row['images']:>9,} images: next image {row['next_image_ms']['median']:.2f} ms median "
        f"({row['next_image_ms']['p95']:.2f} p95), label write {row['label_write_ms']['median']:.2f} ms "
        f"({row['label_write_ms']['p95']:.2f} p95), cold start {row['cold_start_next_image_ms']['median']:.2f} ms, "
        f"grid of 24 {row['next_batch_24_ms']['median']:.2f} ms, after {row['top_ranked_labelled']:,} top-ranked "
        f"labelled {row['next_image_after_top_ranked_labelled_ms']['median']:.2f} ms; load {row['bulk_load_seconds']} s"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k rows only (CI smoke)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    arguments = parser.parse_args()
    summary = main(arguments.out, arguments.quick)
    print("meets target:", summary["meets_target"])
