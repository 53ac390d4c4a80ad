"""Embed job: UMAP coordinates of one model version's latent means, for the latent-space explorer.

Params: ``model_version_id`` (default: the active version), ``sample_size`` (UMAP is fitted on a sample
of this many points and the rest placed with ``transform``).

The map keeps its layout across versions: the fit starts from the previous map's coordinates (see
``model_queries.previous_embedded_version``) and is then aligned onto them (``core.embedding.align_to``).
"""

from __future__ import annotations

import os
from pathlib import Path

from db.engine import unit_of_work
from db.queries import jobs as job_queries
from db.queries import models as model_queries
from labeller.jobs import JobContext, JobFailed

NUMBA_CACHE_ENV = "NUMBA_CACHE_DIR"


def numba_cache_folder() -> Path:
    """umap compiles its kernels with numba for about a minute; a lasting cache makes that once per machine."""
    return Path(os.environ.get(NUMBA_CACHE_ENV) or Path.home() / ".cache" / "latent-labeller" / "numba")


def run(context: JobContext) -> None:
    from core.embedding import DEFAULT_SAMPLE_SIZE, align_to, fit_umap, previous_layout, use_numba_cache

    use_numba_cache(numba_cache_folder())
    with unit_of_work(context.project.engine) as session:
        version_id = context.params.get("model_version_id")
        if version_id is None:
            active = model_queries.active_model_version(session)
            if active is None:
                raise JobFailed("no model version to embed: train one first (labeller train PROJECT)")
            version_id = active.id
        version_id = model_queries.get_model_version(session, int(version_id)).id
        image_ids, latent = model_queries.latent_means(session, version_id)
        previous_id = model_queries.previous_embedded_version(session, version_id)
        previous_ids, previous_coords = (
            model_queries.embedding_coords(session, previous_id) if previous_id is not None else ([], None)
        )
    if not image_ids:
        raise JobFailed(f"model version {version_id} has no scored images: run a score job for it first")
    context.report_progress({"stage": "umap", "images": len(image_ids)}, force=True)
    init = previous_layout(image_ids, latent, previous_ids, previous_coords) if previous_coords is not None else None
    coords = fit_umap(latent, sample_size=int(context.params.get("sample_size", DEFAULT_SAMPLE_SIZE)), init=init)
    if init is not None:
        coords = align_to(coords, image_ids, previous_ids, previous_coords)
        context.log(f"map aligned with model version {previous_id}'s ({len(previous_ids)} images placed there)")
    with context.completing() as session:
        model_queries.set_embedding_coords(session, version_id, image_ids, coords)
        job_queries.set_job_model_version(session, context.job.id, version_id)
    context.log(f"embedded {len(image_ids)} images of model version {version_id}")
