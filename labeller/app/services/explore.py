"""The Explore page: the latent map and the decoder's reconstructions and samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine

from db.engine import reading
from db.queries import app_views
from db.queries.annotations import (
    current_labels,
)
from db.queries.models import active_model_version
from labeller.app.services.common import TaxonomyView, active_model_version_id
from labeller.project import Project

COLOUR_BY = {
    "human": "Human label",
    "predicted": "Predicted class",
    "predicted_sub": "Predicted sub-class",
    "entropy": "Uncertainty (entropy)",
    "novelty": "Novelty",
    "disagreement": "Disagreement",
}


@dataclass(frozen=True)
class EmbeddingView:
    model_version_id: int
    image_ids: list[int]
    x: list[float]
    y: list[float]
    colour: list[float]  # numeric: a score, or a category index (NaN: none)
    categories: list[str]  # names of the category indices; empty for a score
    hover: list[str]
    labelled: list[bool]  # a human label exists; these points come last, so they are drawn on top


def labelled_last(labelled: Sequence[bool]) -> list[int]:
    """Row order that draws labelled points above unlabelled ones (a scatter paints in row order), keeping
    the order within each group."""
    return [i for i, flag in enumerate(labelled) if not flag] + [i for i, flag in enumerate(labelled) if flag]


def embedding_view(engine: Engine, taxonomy: TaxonomyView, colour_by: str) -> EmbeddingView | None:
    """The active version's UMAP points, coloured by one of ``COLOUR_BY``; None without coordinates."""
    if colour_by not in COLOUR_BY:
        raise ValueError(f"unknown colouring {colour_by!r}; expected one of {sorted(COLOUR_BY)}")
    with reading(engine) as session:
        version_id = active_model_version_id(session)
        if version_id is None:
            return None
        points = app_views.embedding_points(session, version_id)
        human = app_views.human_main_labels(session) if points.image_ids else {}
    if not points.image_ids:
        return None
    nan = float("nan")
    categories: list[str] = []
    if colour_by in ("human", "predicted"):
        categories = [m.name for m in taxonomy.main_classes]
        index = {m.id: i for i, m in enumerate(taxonomy.main_classes)}
        source = [human.get(i) for i in points.image_ids] if colour_by == "human" else points.predicted_main_id
        colour = [float(index[c]) if c in index else nan for c in source]
    elif colour_by == "predicted_sub":
        subs = [s for m in taxonomy.main_classes for s in m.sub_classes]
        categories = [f"{taxonomy.main_name(s.main_class_id)}/{s.name}" for s in subs]
        index = {s.id: i for i, s in enumerate(subs)}
        colour = [float(index[c]) if c in index else nan for c in points.predicted_sub_id]
    else:
        values = {"entropy": points.entropy, "novelty": points.novelty, "disagreement": points.disagreement}[colour_by]
        colour = [nan if v is None else float(v) for v in values]
    hover = [
        f"image {image_id}<br>label: {taxonomy.main_name(human.get(image_id))}"
        f"<br>predicted: {taxonomy.main_name(main)} ({confidence:.0%})<br>entropy {entropy:.2f}"
        for image_id, main, confidence, entropy in zip(
            points.image_ids, points.predicted_main_id, points.confidence, points.entropy, strict=True
        )
    ]
    labelled = [image_id in human for image_id in points.image_ids]
    order = labelled_last(labelled)

    def ordered(values: Sequence[Any]) -> list[Any]:
        return [values[i] for i in order]

    return EmbeddingView(
        version_id,
        ordered(points.image_ids),
        ordered(points.x),
        ordered(points.y),
        ordered(colour),
        categories,
        ordered(hover),
        ordered(labelled),
    )


def active_checkpoint(engine: Engine, project: Project) -> tuple[int, Path] | None:
    """(version id, checkpoint file) of the active model version, if there is one and its file exists."""
    with reading(engine) as session:
        version = active_model_version(session)
        if version is None:
            return None
        path = project.resolve_image_path(version.checkpoint_path)
        return (version.id, path) if path.is_file() else None


def examples_per_sub_class(engine: Engine, *, per_class: int = 4) -> dict[str, list[int]]:
    """Up to ``per_class`` human-labelled images per sub-class tag (``main/sub``), in label order."""
    examples: dict[str, list[int]] = {}
    with reading(engine) as session:
        for label in current_labels(session):
            for tag in label.tags or (None,):
                name = label.main_class if tag is None else f"{label.main_class}/{tag}"
                bucket = examples.setdefault(name, [])
                if len(bucket) < per_class:
                    bucket.append(label.image_id)
    return dict(sorted(examples.items()))


def decoder_samples(trained: Any, per_leaf: int = 8) -> dict[str, np.ndarray]:
    """What the active model imagines for each sub-class: uint8 HxWxC images drawn from its decoder."""
    from core.generation import samples_per_leaf

    return samples_per_leaf(trained, per_leaf)


def reconstructions(
    engine: Engine, project: Project, trained: Any, image_ids: Sequence[int]
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(image id, input, decoder reconstruction) as uint8 HxWxC arrays at the model's input size."""
    from core.data import load_images
    from core.generation import reconstruct

    channels, size, _ = trained.image_shape
    with reading(engine) as session:
        images = {image.id: image for image in app_views.images_by_ids(session, image_ids)}
    ids = [image_id for image_id in image_ids if image_id in images]
    pixels = load_images([project.resolve_image_path(images[i].path) for i in ids], size, channels)
    decoded = reconstruct(trained, pixels)
    return [(i, pixels[n].transpose(1, 2, 0), decoded[n]) for n, i in enumerate(ids)]
