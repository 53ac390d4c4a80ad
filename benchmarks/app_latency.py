"""Server time per key press on the Label page, with 100k images.

The Label card decides in the browser and sends each decision to its fragment, which reruns on the server:
``LabelSession.receive`` applies the decision, ``refill`` renews the window's claims and claims one more
image, and ``card_data`` builds what the card gets, the newly preloaded image included. ``work`` is the
time of those three calls per press, exactly as ``labeller/app/views/label.py`` makes them; what the
annotator sees (key-down to the next image painted, in Chromium) is ``benchmarks/label_latency.py``.

Scenarios: an active model with predictions for every image (strategy ``entropy``) and cold start (no
model, ``random_key`` order); display files either already cached (the normal case: the import makes
thumbnails and the large view is made once) or made on demand ("cold file": decode, resize, encode).

    python -m benchmarks.app_latency [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from benchmarks.concurrent_labelling import git_commit, machine, versions
from db.engine import unit_of_work
from db.queries import app_views
from db.queries.annotators import get_or_create_annotator
from db.queries.images import NewImage, add_images
from db.queries.models import promote_model_version, register_model_version, write_predictions
from db.queries.taxonomy import MainClassEntry, SubClassEntry, TaxonomySpec, apply_taxonomy_spec
from labeller.app.services import common
from labeller.app.services.label_session import WINDOW_SIZE, LabelSession
from labeller.project import Project, init_project

FULL_IMAGES = 100_000
QUICK_IMAGES = 10_000
PRESSES_FULL = 60
PRESSES_QUICK = 20
SOURCE_FILES = 64  # distinct photo-sized files the image rows point to
TARGET_MS = 150.0
LEASE_SECONDS = 600
TAXONOMY = {"target": ("salute", "flag", "poster"), "other": ()}


def _photo(seed: int) -> bytes:
    """A 500x375 JPEG with smooth structure and noise, about the size of a hymenoptera photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:375, 0:500] / 100.0
    base = np.stack([np.sin(x * (c + 1) + seed) + np.cos(y * (2 - c * 0.5)) for c in range(3)], axis=-1)
    pixels = ((base - base.min()) / np.ptp(base) * 200 + rng.normal(0, 20, base.shape)).clip(0, 255)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels.astype(np.uint8), "RGB").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def build_project(root: Path, count: int, *, with_model: bool) -> Project:
    project = init_project(root, name=f"latency-{count}")
    files = []
    for index in range(SOURCE_FILES):
        path = root / "images" / f"photo_{index:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_photo(index))
        files.append(path)
    spec = TaxonomySpec(
        tuple(
            MainClassEntry(name=main, key=str(i + 1), sub_classes=tuple(SubClassEntry(s) for s in subs))
            for i, (main, subs) in enumerate(TAXONOMY.items())
        )
    )
    with unit_of_work(project.engine) as session:
        apply_taxonomy_spec(session, spec)
    # Each row has its own content hash (so its own thumbnail), pointing at one of the source files.
    for start in range(0, count, 10_000):
        with unit_of_work(project.engine) as session:
            rows = [
                NewImage(
                    sha256=hashlib.sha256(f"image-{i}".encode()).hexdigest(),
                    path=project.stored_image_path(files[i % SOURCE_FILES]),
                    width=500,
                    height=375,
                    format="JPEG",
                    file_size=files[i % SOURCE_FILES].stat().st_size,
                )
                for i in range(start, min(start + 10_000, count))
            ]
            add_images(session, rows, audit_fraction=0.02)
    if with_model:
        _add_predictions(project, count)
    return project


def _add_predictions(project: Project, count: int) -> None:
    rng = np.random.default_rng(0)
    with unit_of_work(project.engine) as session:
        version = register_model_version(
            session, name="bench", model_kind="m2", checkpoint_path="none.pt", config={}, data_snapshot={},
            metrics={}, label_count=0,
        )  # fmt: skip
        main_ids = [m.id for m in app_views.taxonomy_rows(session)]
        p = rng.uniform(0.5, 1.0, count)
        entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p))

        def rows():  # type: ignore[no-untyped-def]
            for image_id in range(1, count + 1):
                q = float(p[image_id - 1])
                yield {
                    "image_id": image_id,
                    "main_class_id": main_ids[image_id % 2],
                    "confidence": q,
                    "probabilities": {"main": {"target": q, "other": 1 - q}},
                    "entropy": float(entropy[image_id - 1]),
                    "leaf_entropy": float(entropy[image_id - 1]),
                    "margin": 1 - abs(2 * q - 1),
                    "least_confidence": 1 - q,
                }

        write_predictions(session, version.id, rows())
        promote_model_version(session, version.id)


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def measure_work(project: Project, presses: int, *, annotator: str, warm_files: bool) -> list[float]:
    """Seconds per press: the card's decision received, the window refilled, the card's data built."""
    engine = project.engine
    with unit_of_work(engine) as session:
        annotator_id = get_or_create_annotator(session, annotator).id
        taxonomy = common.load_taxonomy(session)
    main_id = taxonomy.main_classes[0].id
    card = LabelSession(annotator_id, "entropy")

    def press(ops: list[dict[str, Any]]) -> None:
        acks = card.receive(engine, {"epoch": annotator, "ops": ops}, taxonomy, lease_seconds=LEASE_SECONDS)
        card.refill(engine, lease_seconds=LEASE_SECONDS)
        card.card_data(engine, project, taxonomy, acks=acks, hide="plain", storage=annotator)

    press([])  # the card's first load: the whole window
    if warm_files:
        # Cache the display files of the images this run will reach (the worker or the import does this).
        with unit_of_work(engine) as session:
            version_id = common.active_model_version_id(session)
            rows, _ = app_views.grid_images(
                session, mode="uncertain", model_version_id=version_id, limit=presses + 2 * WINDOW_SIZE
            )
            for image in app_views.images_by_ids(session, [row.image_id for row in rows]):
                common.large_view_file(project, image)
    samples = []
    for step in range(presses):
        shown = card.current_image()
        assert shown is not None
        op = {"op": f"{annotator}-{step}", "kind": "label", "image": shown, "after": 0, "step": 1, "main": main_id}
        started = time.perf_counter()
        press([op])
        samples.append(time.perf_counter() - started)
        if card.current_image() == shown:
            raise RuntimeError(f"the press on image {shown} did not advance the card: {card.messages}")
    return samples


def _scenario(name: str, count: int, samples: list[float], kind: str) -> dict[str, Any]:
    return {
        "scenario": name,
        "measure": kind,
        "images": count,
        "presses": len(samples),
        "median_ms": round(_median_ms(samples), 2),
        "p90_ms": round(float(np.percentile(samples, 90)) * 1000, 2),
        "max_ms": round(max(samples) * 1000, 2),
        "target_ms": TARGET_MS,
    }


def main(out_dir: Path, quick: bool) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    count = QUICK_IMAGES if quick else FULL_IMAGES
    presses = PRESSES_QUICK if quick else PRESSES_FULL
    workdir = Path(tempfile.mkdtemp(prefix="app_latency_"))
    rows: list[dict[str, Any]] = []
    setup: dict[str, float] = {}
    try:

        def with_model(project: Project) -> list[dict[str, Any]]:
            cached = measure_work(project, presses, annotator="a", warm_files=True)
            cold = measure_work(project, presses, annotator="b", warm_files=False)
            return [
                _scenario("model, cached file", count, cached, "work"),
                _scenario("model, cold file", count, cold, "work"),
            ]

        def cold_start(project: Project) -> list[dict[str, Any]]:
            return [
                _scenario("cold start", count, measure_work(project, presses, annotator="d", warm_files=True), "work")
            ]

        runs: list[tuple[str, bool, Callable[[Project], list[dict[str, Any]]]]] = [
            ("active model, entropy", True, with_model),
            ("cold start", False, cold_start),
        ]
        for name, with_model, run in runs:
            started = time.perf_counter()
            project = build_project(workdir / name.replace(" ", "_").replace(",", ""), count, with_model=with_model)
            setup[name] = round(time.perf_counter() - started, 1)
            rows += run(project)
            project.engine.dispose()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "name": "app_latency",
        "note": (
            "Server time per Label-page key press: the card fragment's receive (record the decision), refill "
            "(renew the window's claims, claim the next image) and card_data (the new image's display file, "
            "prediction and data URL), SQLite on local disk. "
            f"Target: median under {TARGET_MS:.0f} ms with 100k images."
        ),
        "commit": git_commit(),
        "versions": versions(None),
        "machine": machine(),
        "quick": quick,
        "setup_seconds": setup,
        "rows": rows,
    }
    (out_dir / "app_latency.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_IMAGES} images instead of {FULL_IMAGES}")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    arguments = parser.parse_args()
    print(json.dumps(main(arguments.out, arguments.quick)["rows"], indent=2))
