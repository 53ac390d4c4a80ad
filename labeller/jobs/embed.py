"""Embed job: UMAP coordinates of one model version's latent means, for the latent-space explorer; until a
model version exists, of the project's input (the backbone's features, or pixels: the input map).

Params: ``model_version_id`` (default: the active version; with none, the input map is made), ``source``
("input": make the input map, as the features job queues it while there is no model version),
``sample_size`` (UMAP is fitted on a sample of this many points and the rest placed with ``transform``).

The map keeps its layout across versions: the fit starts from the previous map's coordinates (see
``model_queries.previous_embedded_version``; for the first version, the input map's) and is then aligned
onto them (``core.embedding.align_to``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.registry import PIXELS
from db.engine import unit_of_work
from db.queries import jobs as job_queries
from db.queries import models as model_queries
from db.schema import Image, JobStatus
from labeller.jobs import JobContext, JobFailed

if TYPE_CHECKING:
    from labeller.inputs import InputChoice

NUMBA_CACHE_ENV = "NUMBA_CACHE_DIR"
INPUT_SOURCE = "input"


def numba_cache_folder() -> Path:
    """umap compiles its kernels with numba for about a minute; a lasting cache makes that once per machine."""
    return Path(os.environ.get(NUMBA_CACHE_ENV) or Path.home() / ".cache" / "latent-labeller" / "numba")


def run(context: JobContext) -> None:
    from core.embedding import DEFAULT_SAMPLE_SIZE, align_to, fit_umap, previous_layout, use_numba_cache

    use_numba_cache(numba_cache_folder())
    with unit_of_work(context.project.engine) as session:
        version_id = context.params.get("model_version_id")
        if version_id is None and (active := model_queries.active_model_version(session)) is not None:
            version_id = active.id
    if context.params.get("source") == INPUT_SOURCE or version_id is None:
        embed_input(context)
        return
    with unit_of_work(context.project.engine) as session:
        version_id = model_queries.get_model_version(session, int(version_id)).id
        image_ids, latent = model_queries.latent_means(session, version_id)
        previous_id = model_queries.previous_embedded_version(session, version_id)
        if previous_id is not None:
            previous = f"model version {previous_id}'s"
            previous_ids, previous_coords = model_queries.embedding_coords(session, previous_id)
        else:  # the first version's map keeps the layout of the input map, if one was made
            name, previous_ids, previous_coords = model_queries.input_embedding(session)
            previous = f"the map of {name}"
    if not image_ids:
        raise JobFailed(f"model version {version_id} has no scored images: run a score job for it first")
    context.report_progress({"stage": "umap", "images": len(image_ids)}, force=True)
    init = previous_layout(image_ids, latent, previous_ids, previous_coords) if previous_ids else None
    coords = fit_umap(latent, sample_size=int(context.params.get("sample_size", DEFAULT_SAMPLE_SIZE)), init=init)
    if init is not None:
        coords = align_to(coords, image_ids, previous_ids, previous_coords)
        context.log(f"map aligned with {previous} ({len(previous_ids)} images placed there)")
    with context.completing() as session:
        model_queries.set_embedding_coords(session, version_id, image_ids, coords)
        job_queries.set_job_model_version(session, context.job.id, version_id)
    context.log(f"embedded {len(image_ids)} images of model version {version_id}")


def input_map_name(choice: InputChoice) -> str:
    """What an input map is of, for people and to tell whether the project's input changed since."""
    if choice.uses_features:
        return f"{choice.backbone} features"
    return f"{PIXELS} ({choice.image_size}x{choice.image_size}, {choice.channels} channel(s))"


def queue_input_map(session: Session, name: str, *, changed: bool) -> int | None:
    """While no model version is active, queue (re)making the input map when it is missing, of another
    input, short of images, or ``changed`` (new features): the embed job's id, or None when not needed or
    one is queued already."""
    if model_queries.active_model_version(session) is not None:
        return None
    queued = job_queries.list_jobs(session, statuses=[JobStatus.QUEUED], kind="embed")
    if any(job.params.get("source") == INPUT_SOURCE for job in queued):
        return None
    mapped, placed = model_queries.input_embedding_size(session)
    if not changed and mapped == name and placed >= (session.scalar(select(func.count(Image.id))) or 0):
        return None
    return job_queries.enqueue_job(session, "embed", {"source": INPUT_SOURCE}).id


def embed_input(context: JobContext) -> None:
    """The input map: UMAP of what the models would see of every image (the project's backbone features,
    computing any missing, or pixels), shown on the Explore page until a model version has its own map."""
    from core.embedding import DEFAULT_SAMPLE_SIZE, fit_umap, input_vectors
    from labeller.jobs.params import TrainParams
    from labeller.jobs.train import input_choice, load_inputs

    choice = input_choice(context, TrainParams())
    data = load_inputs(context, choice)
    if not len(data.image_ids):
        raise JobFailed("no readable images to map: import some first (labeller import PROJECT PATH)")
    name = input_map_name(choice)
    context.report_progress({"stage": "umap", "images": len(data.image_ids), "input": name}, force=True)
    sample_size = int(context.params.get("sample_size", DEFAULT_SAMPLE_SIZE))
    coords = fit_umap(input_vectors(data.pool.images, sample_size=sample_size), sample_size=sample_size)
    with context.completing() as session:
        model_queries.set_input_embedding(session, name, data.image_ids.tolist(), coords)
    context.log(f"mapped {len(data.image_ids)} images by their {name} (no model version yet)")
