"""The input map: before any model version, the Explore page's map is UMAP of what the models see (the
backbone's features, or pixels). A features job queues it while no version is active; the embed job makes
it; the first version's map starts from and is aligned onto it."""

from __future__ import annotations

import numpy as np
import pytest

import core.embedding
from core.embedding import input_vectors
from db.engine import unit_of_work
from db.queries import app_views
from db.queries import jobs as job_queries
from db.queries import models as model_queries
from db.schema import Image, JobStatus
from labeller.jobs.embed import INPUT_SOURCE, queue_input_map
from tests.worker_helpers import make_project, run_job_here, run_queued_job

PIXELS_MAP = "pixels (16x16, 3 channel(s))"  # what make_project's 24 px colour images are mapped by


def _input_map_jobs(project) -> list:
    with unit_of_work(project.engine) as session:
        jobs = job_queries.list_jobs(session, kind="embed")
        return [(job.id, job.status) for job in jobs if job.params.get("source") == INPUT_SOURCE]


def _fake_version(project, image_ids: list[int], latent: np.ndarray, *, promote: bool) -> int:
    """A model version with scored images and latent means, as a train job leaves it."""
    with unit_of_work(project.engine) as session:
        version = model_queries.register_model_version(
            session, name="v", model_kind="m2", checkpoint_path="missing.pt", config={}, data_snapshot={},
            metrics={}, label_count=0,
        )  # fmt: skip
        rows = [
            {"image_id": i, "confidence": 0.9, "entropy": 0.1, "leaf_entropy": 0.1, "margin": 0.2,
             "least_confidence": 0.1, "latent_mean": model_queries.encode_latent(vector)}
            for i, vector in zip(image_ids, latent, strict=True)
        ]  # fmt: skip
        model_queries.write_predictions(session, version.id, rows)
        if promote:
            model_queries.promote_model_version(session, version.id)
        return version.id


def test_input_vectors_are_unit_rows_on_principal_components_chunk_by_chunk(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 64)).astype(np.float16)
    whole = input_vectors(features, components=10)
    monkeypatch.setattr(core.embedding, "TRANSFORM_CHUNK", 7)
    chunked = input_vectors(features, components=10)
    assert whole.shape == (300, 10) and whole.dtype == np.float32
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    pixels = rng.integers(0, 256, size=(40, 3, 8, 8), dtype=np.uint8)
    brighter = np.minimum(pixels.astype(np.int32) * 2, 255).astype(np.uint8)
    assert input_vectors(pixels, components=50).shape == (40, 40)  # no more components than rows
    assert np.isfinite(input_vectors(brighter, components=5)).all()
    assert input_vectors(features[:2]).shape == (2, 2)


def test_a_features_job_queues_the_input_map_only_while_no_model_is_active(tmp_path) -> None:
    project = make_project(tmp_path, labelled_per_class=3, unlabelled=4)  # 24 px colour: pixels input
    first = run_job_here(project, "features")
    assert first.status == JobStatus.SUCCEEDED, first.error
    ((queued, status),) = _input_map_jobs(project)
    assert status == JobStatus.QUEUED
    with unit_of_work(project.engine) as session:
        logs = [e.payload["message"] for e in job_queries.job_events(session, first.id, kinds=["log"])]
    assert f"no model version yet: embed job {queued} queued to map the images by their input" in logs
    run_job_here(project, "features")
    assert len(_input_map_jobs(project)) == 1  # one queued map is enough
    with unit_of_work(project.engine) as session:
        job_queries.request_cancel(session, queued)
    with unit_of_work(project.engine) as session:
        image_ids = list(session.scalars(Image.__table__.select().with_only_columns(Image.id)))
        # An up-to-date map of the same input is not made again; a missing image or another input is.
        model_queries.set_input_embedding(session, PIXELS_MAP, image_ids, np.zeros((len(image_ids), 2)))
        assert queue_input_map(session, PIXELS_MAP, changed=False) is None
        assert queue_input_map(session, "efficientnet_lite2 features", changed=False) is not None
        session.rollback()
    with unit_of_work(project.engine) as session:
        model_queries.set_input_embedding(session, PIXELS_MAP, image_ids[1:], np.zeros((len(image_ids) - 1, 2)))
        assert queue_input_map(session, PIXELS_MAP, changed=False) is not None
        session.rollback()
    _fake_version(project, image_ids, np.zeros((len(image_ids), 4), np.float32), promote=True)
    again = run_job_here(project, "features")
    assert again.status == JobStatus.SUCCEEDED and len(_input_map_jobs(project)) == 1  # a model is active


@pytest.mark.slow
def test_the_map_of_backbone_features_comes_before_any_model_and_the_first_version_keeps_its_layout(
    tmp_path,
) -> None:
    project = make_project(tmp_path, labelled_per_class=4, unlabelled=8, image_size=48)
    project.settings.training.backbone = "efficientnet_lite0"
    project.save_settings()
    features = run_job_here(project, "features")
    assert features.status == JobStatus.SUCCEEDED, features.error
    embed = run_queued_job(project, "embed")
    assert embed.status == JobStatus.SUCCEEDED, embed.error
    with unit_of_work(project.engine) as session:
        name, image_ids, coords = model_queries.input_embedding(session)
        shown_name, points = app_views.input_map_points(session)
        all_ids = sorted(session.scalars(Image.__table__.select().with_only_columns(Image.id)))
        logs = [e.payload["message"] for e in job_queries.job_events(session, embed.id, kinds=["log"])]
    assert name == shown_name == "efficientnet_lite0 features" and image_ids == all_ids == points.image_ids
    assert coords.shape == (16, 2) and np.isfinite(coords).all() and np.ptp(coords, axis=0).min() > 0
    assert points.predicted_main_id == [None] * 16 and points.x == pytest.approx(coords[:, 0].tolist())
    assert "mapped 16 images by their efficientnet_lite0 features (no model version yet)" in logs
    # The first model version's map starts from the input map and is aligned onto it.
    latent = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
    version = _fake_version(project, image_ids, latent, promote=True)
    mapped = run_job_here(project, "embed", {"model_version_id": version})
    assert mapped.status == JobStatus.SUCCEEDED, mapped.error
    with unit_of_work(project.engine) as session:
        logs = [e.payload["message"] for e in job_queries.job_events(session, mapped.id, kinds=["log"])]
        placed, _ = model_queries.embedding_coords(session, version)
    assert "map aligned with the map of efficientnet_lite0 features (16 images placed there)" in logs
    assert placed == image_ids
