"""Score job: one model version's class probabilities, uncertainty scores and latent means for every
image, written to ``predictions`` so that "next image" is one indexed query.

Params: ``model_version_id`` (default: the active version), ``then_embed`` (queue an embed job for the
same version once the predictions are in; the train job sets it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.registry import DEFAULT_COVERAGE, DEFAULT_EXPLORATION, DIVERSITY_FACTOR
from core.scoring import PoolScores
from core.taxonomy import Taxonomy
from db.engine import unit_of_work
from db.queries import jobs as job_queries
from db.queries import models as model_queries
from db.queries.queue import mark_labelled_predictions
from db.schema import MainClass, SubClass
from labeller.jobs import JobContext, JobFailed

SCORE_BATCH_SIZE = 256
PROBABILITY_DIGITS = 4
# The queue's ranked head: enough for a day of labelling between retrains; past it, score order.
QUEUE_RANK_LIMIT = 2_000


def class_ids(session: Session) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """Main-class ids by name and sub-class ids by (main name, sub name), as the database has them now."""
    mains: dict[str, int] = {name: main_id for name, main_id in session.execute(select(MainClass.name, MainClass.id))}
    subs = {
        (main_name, sub_name): sub_id
        for sub_id, sub_name, main_name in session.execute(
            select(SubClass.id, SubClass.name, MainClass.name).join(MainClass, SubClass.main_class_id == MainClass.id)
        )
    }
    return mains, subs


@dataclass(frozen=True)
class QueueRanking:
    """What the version's ``queue_rank`` holds: ``ranks[i]`` for pool row i (-1: not ranked) and how
    (``info``, stored as the version's ``metrics["queue"]``: the strategy, the round size, the ranked
    candidates' count, and which queue places are coverage picks)."""

    ranks: np.ndarray
    info: dict[str, Any]


def rank_queue(
    strategy_name: str, scores: PoolScores, labelled: np.ndarray, audit: np.ndarray, seed: int, *, round_size: int
) -> QueueRanking:
    """The order the app serves for ``strategy_name``: core.acquisition.rank_pool over the unlabelled images
    outside the audit slice (those come through the audit share), in rounds of ``round_size`` with the
    product's diversity and coverage settings, the very rounds `labeller evaluate` simulates. Random needs
    no ranking (the queue reads images in random-key order)."""
    from core.acquisition import get_strategy, rank_pool

    ranks = np.full(len(scores), -1, dtype=np.int64)
    if strategy_name == "random":
        return QueueRanking(ranks, {"strategy": None})
    strategy = get_strategy(strategy_name, diversify=True, exploration=DEFAULT_EXPLORATION, coverage=DEFAULT_COVERAGE)
    candidates = np.flatnonzero(~labelled & ~audit)
    try:
        ranking = rank_pool(
            strategy,
            scores.uncertainty(),
            candidates,
            rng=np.random.default_rng(seed),
            limit=QUEUE_RANK_LIMIT,
            round_size=round_size,
            latent=scores.latent_mean,
            labelled=np.flatnonzero(labelled),
        )
    except ValueError:  # a strategy this model has no score for (BALD without dropout): score order then
        return QueueRanking(ranks, {"strategy": None})
    ranks[ranking.order] = np.arange(len(ranking.order))
    info = {
        "strategy": strategy_name,
        "ranked": len(ranking.order),
        "candidates": len(candidates),
        "round_size": round_size,
        "diversity_factor": DIVERSITY_FACTOR,
        "exploration": DEFAULT_EXPLORATION,
        "coverage": DEFAULT_COVERAGE,
        # Queue places (ranks) of the coverage picks: the card says "coverage pick" for them.
        "coverage_ranks": sorted(int(rank) for rank in ranks[ranking.coverage]),
        "seed": seed,
    }
    return QueueRanking(ranks, info)


def prediction_rows(
    image_ids: Sequence[int],
    scores: PoolScores,
    taxonomy: Taxonomy,
    main_ids: dict[str, int],
    sub_ids: dict[tuple[str, str], int],
    ranks: np.ndarray | None = None,
) -> Iterator[dict[str, Any]]:
    """``predictions`` rows for a scored pool. Classes are matched by name, so a checkpoint trained
    before a class was renamed away still writes its scores, with that class id left empty."""
    leaves = taxonomy.leaves
    main_names, leaf_names = taxonomy.main_names, taxonomy.leaf_names
    main_of_leaf = taxonomy.main_of_leaf()
    predicted_main = scores.main_probs.argmax(axis=1)
    # The most probable leaf inside the predicted main class (not the overall top leaf, which may
    # belong to another main class when that class's mass is spread over many sub-classes).
    within_main = np.where(main_of_leaf[None, :] == predicted_main[:, None], scores.leaf_probs, -1.0)
    predicted_leaf = within_main.argmax(axis=1)

    def optional(values: np.ndarray, index: int) -> float | None:
        return float(values[index]) if len(values) else None

    for row, image_id in enumerate(image_ids):
        main_name = main_names[predicted_main[row]]
        leaf_main, leaf_sub = leaves[predicted_leaf[row]]
        yield {
            "image_id": int(image_id),
            "main_class_id": main_ids.get(main_name),
            "sub_class_id": sub_ids.get((leaf_main, leaf_sub)) if leaf_sub is not None else None,
            "confidence": float(scores.main_probs[row, predicted_main[row]]),
            "probabilities": {
                "main": {
                    n: round(float(p), PROBABILITY_DIGITS)
                    for n, p in zip(main_names, scores.main_probs[row], strict=True)
                },
                "leaf": {
                    n: round(float(p), PROBABILITY_DIGITS)
                    for n, p in zip(leaf_names, scores.leaf_probs[row], strict=True)
                },
            },
            "entropy": float(scores.entropy[row]),
            "leaf_entropy": float(scores.leaf_entropy[row]),
            "margin": float(scores.margin[row]),
            "least_confidence": float(scores.least_confidence[row]),
            "bald": optional(scores.bald, row),
            "disagreement": optional(scores.disagreement, row),
            "novelty": optional(scores.novelty, row),
            "reconstruction_error": optional(scores.reconstruction_error, row),
            "latent_mean": model_queries.encode_latent(scores.latent_mean[row]),
            "queue_rank": int(ranks[row]) if ranks is not None and ranks[row] >= 0 else None,
        }


def run(context: JobContext) -> None:
    from core.training import load_checkpoint
    from labeller.inputs import InputChoice
    from labeller.jobs.train import load_inputs

    project = context.project
    with unit_of_work(project.engine) as session:
        version_id = context.params.get("model_version_id")
        version = (
            model_queries.get_model_version(session, int(version_id))
            if version_id is not None
            else model_queries.active_model_version(session)
        )
        if version is None:
            raise JobFailed("no model version to score with: train one first (labeller train PROJECT)")
        checkpoint = project.resolve_image_path(version.checkpoint_path)
        version_id = version.id
    if not checkpoint.is_file():
        raise JobFailed(f"model version {version_id}: checkpoint {checkpoint} is missing")
    trained = load_checkpoint(checkpoint, device="cpu")
    config = trained.config
    pixels = len(trained.image_shape) == 3
    # The version's own input: the pixels it was trained at, or its backbone's features.
    choice = InputChoice(
        backbone=config.backbone,
        image_size=trained.image_shape[1] if pixels else 0,
        channels=trained.image_shape[0] if pixels else 3,
        view=config.feature_view,
        weights=config.backbone_weights,
        reason=f"model version {version_id}'s input",
    )
    data = load_inputs(context, choice)
    if not len(data.image_ids):
        raise JobFailed("the project has no images to score: import some first (labeller import PROJECT PATH)")
    context.report_progress({"stage": "scoring", "images": len(data.image_ids)}, force=True)
    from core.device import resolve_device, small_model_threads, torch_threads

    on_cpu = resolve_device(context.device).type == "cpu"
    with torch_threads(small_model_threads(tuple(trained.image_shape)) if on_cpu else None):
        scores = score_in_chunks(context, trained, data.pool.images)
    labelling = project.settings.labelling
    ranking = rank_queue(
        labelling.default_strategy,
        scores,
        data.pool.labelled,
        data.audit,
        seed=version_id,
        round_size=labelling.round_size,
    )
    with context.completing() as session:
        main_ids, sub_ids = class_ids(session)
        rows = prediction_rows(data.image_ids, scores, trained.taxonomy, main_ids, sub_ids, ranking.ranks)
        written = model_queries.write_predictions(session, version_id, rows)
        mark_labelled_predictions(session, version_id)
        model_queries.update_version_metrics(session, version_id, queue=ranking.info)
        if context.params.get("promote"):  # promoted only now that its predictions and order exist
            model_queries.promote_model_version(session, version_id)
        job_queries.set_job_model_version(session, context.job.id, version_id)
        if context.params.get("then_embed"):
            job_queries.enqueue_job(session, "embed", {"model_version_id": version_id})
    context.log(f"scored {written} images with model version {version_id}")


def score_in_chunks(context: JobContext, trained: Any, images: np.ndarray, chunk: int = 4_096) -> PoolScores:
    """score_pool over chunks so that a cancel is honoured and progress shows on large pools. Each chunk's
    scores go straight into arrays for the whole pool (a list of parts concatenated at the end held the
    scores twice). Novelty ranks over the whole pool, so it is recomputed once all chunks are in."""
    from core.device import resolve_device
    from core.scoring import rank01, score_pool

    device = resolve_device(context.device)
    if not len(images):
        return score_pool(trained, images, batch_size=SCORE_BATCH_SIZE, device=device)
    merged: dict[str, np.ndarray] = {}
    for start in range(0, len(images), chunk):
        context.raise_if_stopped()
        part = score_pool(trained, images[start : start + chunk], batch_size=SCORE_BATCH_SIZE, device=device)
        for name, values in vars(part).items():
            if name not in merged:
                merged[name] = np.empty((len(images), *values.shape[1:]), dtype=values.dtype)
            merged[name][start : start + len(part)] = values
        context.report_progress({"stage": "scoring", "scored": start + len(part), "images": len(images)})
    scores = PoolScores(**merged)
    if len(images) > chunk:
        scores.novelty = 0.5 * (rank01(-scores.latent_log_density) + rank01(scores.reconstruction_error))
    return scores
