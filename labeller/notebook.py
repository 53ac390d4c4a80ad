"""A project as pandas DataFrames, for notebooks: ``labeller.read_project(path)``.

Named ``read_project``, not ``open_project``: ``labeller.project.open_project`` returns a ``Project`` and
brings its schema up to date, which writes. This only reads, in one read-only transaction (a consistent
snapshot that never holds the write lock), and returns copies: editing a frame never touches the project.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sqlalchemy import select

from db.engine import make_engine, reading
from db.queries.annotations import current_labels
from db.schema import Image, MainClass, ModelVersion, Prediction, SubClass
from labeller.export import (
    LEAF_PROBABILITY_PREFIX,
    MAIN_PROBABILITY_PREFIX,
    SCORE_COLUMNS,
    Taxonomy,
    export_margin,
    label_leaf,
    leaf_name,
)
from labeller.project import SETTINGS_FILE, Project, ProjectError, ProjectSettings


@dataclass(frozen=True)
class ProjectFrames:
    """``images`` (one row per image), ``labels`` (current label per labelled image), ``predictions``
    (one row per model version and image, a column per main-class and leaf probability) and ``versions``.

    ``predictions["margin"]`` is the usual margin, as the exports write it: the top main-class probability
    minus the second (p1 - p2; small = uncertain). The database stores 1 - (p1 - p2) under that name (larger =
    more uncertain, the order the queue ranks by); it is used only for a prediction without main-class
    probabilities. The other score columns are the stored scores."""

    images: pd.DataFrame
    labels: pd.DataFrame
    predictions: pd.DataFrame
    versions: pd.DataFrame


def read_project(root: Path | str) -> ProjectFrames:
    """The project at ``root`` as DataFrames (``ProjectFrames``), read in one read-only transaction.
    ``predictions["margin"]`` is the usual p1 - p2, as exported, not the stored queue score 1 - (p1 - p2)."""
    root = Path(root).resolve()
    settings_path = root / SETTINGS_FILE
    if not settings_path.is_file():
        raise ProjectError(f"{root} is not a Latent Labeller project (no {SETTINGS_FILE})")
    project = Project(root, ProjectSettings.from_mapping(tomllib.loads(settings_path.read_text())))
    engine = make_engine(project.database_url)
    try:
        with reading(engine) as session:
            taxonomy = Taxonomy(
                {main.name: [sub.name for sub in main.sub_classes] for main in session.scalars(select(MainClass))}
            )
            images = pd.DataFrame(
                [
                    {
                        "image_id": image.id,
                        "sha256": image.sha256,
                        "path": str(project.resolve_image_path(image.path)),
                        "width": image.width,
                        "height": image.height,
                        "format": image.format,
                        "added_at": image.added_at,
                        "audit": image.audit,
                    }
                    for image in session.scalars(select(Image).order_by(Image.id))
                ],
                columns=["image_id", "sha256", "path", "width", "height", "format", "added_at", "audit"],
            )
            labels = pd.DataFrame(
                [
                    {
                        "image_id": label.image_id,
                        "main_class": label.main_class,
                        "leaf": label_leaf(label.main_class, label.tags, taxonomy) or None,
                        "sub_classes": list(label.tags),
                        "annotator": label.annotator,
                        "labelled_at": label.created_at,
                        "source": label.source,
                        "model_version_id": label.model_version_id,
                        "strategy": label.strategy,
                        "annotation_id": label.annotation_id,
                    }
                    for label in current_labels(session)
                ],
                columns=[
                    "image_id",
                    "main_class",
                    "leaf",
                    "sub_classes",
                    "annotator",
                    "labelled_at",
                    "source",
                    "model_version_id",
                    "strategy",
                    "annotation_id",
                ],
            )
            predictions = _predictions(session)
            versions = pd.DataFrame(
                [
                    {
                        "model_version_id": v.id,
                        "name": v.name,
                        "model_kind": v.model_kind,
                        "created_at": v.created_at,
                        "active": v.active,
                        "label_count": v.label_count,
                        "newest_annotation_id": (v.data_snapshot or {}).get("newest_annotation_id"),
                        "metrics": dict(v.metrics or {}),
                    }
                    for v in session.scalars(select(ModelVersion).order_by(ModelVersion.id))
                ],
                columns=[
                    "model_version_id",
                    "name",
                    "model_kind",
                    "created_at",
                    "active",
                    "label_count",
                    "newest_annotation_id",
                    "metrics",
                ],
            )
    finally:
        engine.dispose()
    return ProjectFrames(images=images, labels=labels, predictions=predictions, versions=versions)


def _predictions(session) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    statement = (
        select(Prediction, MainClass.name, SubClass.name)
        .outerjoin(MainClass, MainClass.id == Prediction.main_class_id)
        .outerjoin(SubClass, SubClass.id == Prediction.sub_class_id)
        .order_by(Prediction.model_version_id, Prediction.image_id)
    )
    records = []
    for prediction, main_name, sub_name in session.execute(statement):
        probabilities = prediction.probabilities or {}
        main = {str(k): float(v) for k, v in probabilities.get("main", {}).items()}
        records.append(
            {
                "model_version_id": prediction.model_version_id,
                "image_id": prediction.image_id,
                "predicted_main_class": main_name,
                "predicted_leaf": leaf_name(main_name, sub_name) if main_name else None,
                "confidence": prediction.confidence,
                **{name: getattr(prediction, name) for name in SCORE_COLUMNS},
                "margin": export_margin(main, prediction.margin),  # p1 - p2, not the stored 1 - (p1 - p2)
                **{MAIN_PROBABILITY_PREFIX + k: v for k, v in probabilities.get("main", {}).items()},
                **{LEAF_PROBABILITY_PREFIX + k: v for k, v in probabilities.get("leaf", {}).items()},
            }
        )
    base = ["model_version_id", "image_id", "predicted_main_class", "predicted_leaf", "confidence", *SCORE_COLUMNS]
    probability_columns = [k for k in dict.fromkeys(k for r in records for k in r) if k not in base]
    return pd.DataFrame(records, columns=base + probability_columns)
