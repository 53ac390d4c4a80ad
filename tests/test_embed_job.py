"""The embed job on a real database: a second model version's map starts from and is aligned onto the
map of the version promoted before it, so clusters stay where they were."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine

from db.engine import unit_of_work
from db.queries import jobs as job_queries
from db.queries import models as model_queries
from tests.db_helpers import add_images


@dataclass
class _Job:
    id: int


@dataclass
class _Project:
    engine: Engine


@dataclass
class _Context:
    """What ``labeller.jobs.embed.run`` uses of a worker's JobContext."""

    project: _Project
    job: _Job
    params: dict[str, Any]
    logs: list[str] = field(default_factory=list)

    def report_progress(self, payload: dict[str, Any], *, force: bool = False) -> None:
        pass

    def log(self, message: str, **details: Any) -> None:
        self.logs.append(message)

    @contextmanager
    def completing(self):  # type: ignore[no-untyped-def]
        with unit_of_work(self.project.engine) as session:
            yield session


def _version(engine: Engine, image_ids: list[int], latent: np.ndarray, *, promote: bool) -> int:
    with unit_of_work(engine) as session:
        version = model_queries.register_model_version(
            session,
            name="v",
            model_kind="m2",
            checkpoint_path="missing.pt",
            config={},
            data_snapshot={},
            metrics={},
            label_count=0,
        )
        rows = [
            {
                "image_id": image_id,
                "confidence": 0.9,
                "entropy": 0.1,
                "leaf_entropy": 0.1,
                "margin": 0.2,
                "least_confidence": 0.1,
                "latent_mean": model_queries.encode_latent(vector),
            }
            for image_id, vector in zip(image_ids, latent, strict=True)
        ]
        model_queries.write_predictions(session, version.id, rows)
        if promote:
            model_queries.promote_model_version(session, version.id)
        return version.id


def _embed(engine: Engine, version_id: int) -> list[str]:
    from labeller.jobs import embed

    with unit_of_work(engine) as session:
        job = job_queries.enqueue_job(session, "embed", {"model_version_id": version_id})
        job_id = job.id
    context = _Context(_Project(engine), _Job(job_id), {"model_version_id": version_id})
    embed.run(context)  # type: ignore[arg-type]
    return context.logs


@pytest.mark.slow
def test_a_new_versions_map_keeps_the_previous_layout(sqlite_engine: Engine) -> None:
    image_ids = add_images(sqlite_engine, 240)
    generator = np.random.default_rng(0)
    centres = generator.normal(0, 4, size=(3, 8))
    cluster = np.arange(240) % 3
    first_latent = (centres[cluster] + generator.normal(0, 0.3, size=(240, 8))).astype(np.float32)
    first = _version(sqlite_engine, image_ids, first_latent, promote=True)
    assert not any("aligned" in line for line in _embed(sqlite_engine, first))
    second_latent = (first_latent + generator.normal(0, 0.2, size=first_latent.shape)).astype(np.float32)
    second = _version(sqlite_engine, image_ids, second_latent, promote=False)
    with unit_of_work(sqlite_engine) as session:
        assert model_queries.previous_embedded_version(session, second) == first
    logs = _embed(sqlite_engine, second)
    assert any(f"aligned with model version {first}" in line for line in logs), logs
    with unit_of_work(sqlite_engine) as session:
        ids_1, coords_1 = model_queries.embedding_coords(session, first)
        ids_2, coords_2 = model_queries.embedding_coords(session, second)
    assert ids_1 == ids_2 == image_ids
    size = np.ptp(coords_1, axis=0).max()
    for label in range(3):
        moved = np.linalg.norm(coords_2[cluster == label].mean(axis=0) - coords_1[cluster == label].mean(axis=0))
        assert moved < 0.15 * size, (label, moved, size)
