"""The Explore page: the latent map and the decoder's reconstructions and samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine

from core.registry import PIXELS
from db.engine import reading
from db.queries import app_views
from db.queries import models as model_queries
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


# The maps the page can show: the active model version's (latent means) or the input map (the images'
# pretrained features, or pixels, made before any model version).
VERSION_MAP = "version"
INPUT_MAP = "input"


@dataclass(frozen=True)
class MapChoice:
    """Which maps exist: the active version (None without one), whether its map is made, and what the input
    map places the images by (None without an input map)."""

    version_id: int | None
    version_mapped: bool
    input_name: str | None

    @property
    def sources(self) -> list[str]:
        """The maps there are, the default first: a version's map once it exists, else the input map."""
        return ([VERSION_MAP] if self.version_mapped else []) + ([INPUT_MAP] if self.input_name else [])

    def label(self, source: str) -> str:
        if source == VERSION_MAP:
            return f"model version {self.version_id}"
        # The input map of a project without a backbone is of pixels (labeller.jobs.embed.input_map_name).
        return "image pixels" if (self.input_name or "").startswith(PIXELS) else "image features"

    def caption(self, view: EmbeddingView) -> str:
        """What the map shown places the images by, and why no model is involved."""
        if view.input_name is None:
            return f"Model version {view.model_version_id}"
        if self.version_id is None:
            why = "no model yet"
        elif not self.version_mapped:
            why = f"model version {self.version_id}'s map is not made yet"
        else:
            why = "no model involved"
        return f"Images placed by their {view.input_name}; {why}; coloured by human label"


@dataclass(frozen=True)
class EmbeddingView:
    model_version_id: int | None  # None on the input map
    image_ids: list[int]
    x: list[float]
    y: list[float]
    colour: list[float]  # numeric: a score, or a category index (NaN: none)
    categories: list[str]  # names of the category indices; empty for a score
    hover: list[str]
    labelled: list[bool]  # a human label exists; these points come last, so they are drawn on top
    input_name: str | None = None  # what the input map places images by; None on a version's map

    @property
    def chart_key(self) -> str:
        """The chart's widget key: one per map, so a selection on one map never shows up on another."""
        return "umap-input" if self.model_version_id is None else f"umap-{self.model_version_id}"


def labelled_last(labelled: Sequence[bool]) -> list[int]:
    """Row order that draws labelled points above unlabelled ones (a scatter paints in row order), keeping
    the order within each group."""
    return [i for i, flag in enumerate(labelled) if not flag] + [i for i, flag in enumerate(labelled) if flag]


def available_maps(engine: Engine) -> MapChoice:
    """The maps the Explore page can show, without reading their points."""
    with reading(engine) as session:
        version_id = active_model_version_id(session)
        mapped = version_id is not None and model_queries.has_embedding(session, version_id)
        return MapChoice(version_id, mapped, model_queries.input_embedding_name(session))


def hover_text(
    taxonomy: TaxonomyView,
    image_id: int,
    label: int | None,
    *,
    predicted: int | None,
    confidence: float | None,
    entropy: float | None,
) -> str:
    """A point's hover label; the input map (and a version's unscored image) has no predictions to show."""
    lines = [f"image {image_id}", f"label: {taxonomy.main_name(label)}"]
    if predicted is not None:
        share = f" ({confidence:.0%})" if confidence is not None else ""
        lines.append(f"predicted: {taxonomy.main_name(predicted)}{share}")
    if entropy is not None:
        lines.append(f"entropy {entropy:.2f}")
    return "<br>".join(lines)


def embedding_view(
    engine: Engine, taxonomy: TaxonomyView, colour_by: str, source: str = VERSION_MAP
) -> EmbeddingView | None:
    """The active version's UMAP points (``source`` "version") or the input map's ("input"), coloured by one
    of ``COLOUR_BY``; None without that map. On the input map every prediction is None: coloured by one,
    every point is "none"."""
    if colour_by not in COLOUR_BY:
        raise ValueError(f"unknown colouring {colour_by!r}; expected one of {sorted(COLOUR_BY)}")
    if source not in (VERSION_MAP, INPUT_MAP):
        raise ValueError(f"unknown map {source!r}; expected {VERSION_MAP!r} or {INPUT_MAP!r}")
    input_name = None
    with reading(engine) as session:
        version_id = active_model_version_id(session) if source == VERSION_MAP else None
        if source == VERSION_MAP and version_id is None:
            return None
        if source == VERSION_MAP:
            points = app_views.embedding_points(session, version_id)
        else:
            input_name, points = app_views.input_map_points(session)
        human = app_views.human_main_labels(session) if points.image_ids else {}
    if not points.image_ids:
        return None
    nan = float("nan")
    categories: list[str] = []
    if colour_by in ("human", "predicted"):
        categories = [m.name for m in taxonomy.main_classes]
        index = {m.id: i for i, m in enumerate(taxonomy.main_classes)}
        source_ids = [human.get(i) for i in points.image_ids] if colour_by == "human" else points.predicted_main_id
        colour = [float(index[c]) if c in index else nan for c in source_ids]
    elif colour_by == "predicted_sub":
        subs = [s for m in taxonomy.main_classes for s in m.sub_classes]
        categories = [f"{taxonomy.main_name(s.main_class_id)}/{s.name}" for s in subs]
        index = {s.id: i for i, s in enumerate(subs)}
        colour = [float(index[c]) if c in index else nan for c in points.predicted_sub_id]
    else:
        values = {"entropy": points.entropy, "novelty": points.novelty, "disagreement": points.disagreement}[colour_by]
        colour = [nan if v is None else float(v) for v in values]
    hover = [
        hover_text(taxonomy, image_id, human.get(image_id), predicted=main, confidence=confidence, entropy=entropy)
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
        input_name,
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
    from core.generation import reconstruct
    from core.images import load_images

    channels, size, _ = trained.image_shape
    with reading(engine) as session:
        images = {image.id: image for image in app_views.images_by_ids(session, image_ids)}
    ids = [image_id for image_id in image_ids if image_id in images]
    pixels = load_images([project.resolve_image_path(images[i].path) for i in ids], size, channels)
    decoded = reconstruct(trained, pixels)
    return [(i, pixels[n].transpose(1, 2, 0), decoded[n]) for n, i in enumerate(ids)]
