"""Model versions (register, promote, roll back, compare) and their predictions (bulk write, UMAP).

Exactly one version is active at a time. Promotion stamps ``promoted_at``; a rollback re-activates the
version promoted before the current one without re-stamping it, so repeated rollbacks walk back through
the promotion history instead of toggling between two versions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from core.registry import MIN_CALIBRATION_LABELS
from db.queries.annotations import current_labels
from db.schema import Image, InputEmbedding, ModelVersion, Prediction, utcnow

PREDICTION_BATCH_SIZE = 2_000
PREDICTION_COLUMNS = frozenset(c.name for c in Prediction.__table__.columns)


class ModelVersionError(Exception):
    """A model-version request that cannot be done; the message says why."""


def register_model_version(
    session: Session,
    *,
    name: str,
    model_kind: str,
    checkpoint_path: str,
    config: dict[str, Any],
    data_snapshot: dict[str, Any],
    metrics: dict[str, Any],
    label_count: int,
) -> ModelVersion:
    """A new, inactive version; ``promote_model_version`` makes it the one the queue uses."""
    version = ModelVersion(
        name=name,
        model_kind=model_kind,
        checkpoint_path=checkpoint_path,
        config=config,
        data_snapshot=data_snapshot,
        metrics=metrics,
        label_count=label_count,
        active=False,
        created_at=utcnow(),
    )
    session.add(version)
    session.flush()
    return version


def get_model_version(session: Session, version_id: int) -> ModelVersion:
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise ModelVersionError(f"no model version {version_id}")
    return version


def active_model_version(session: Session) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.active.is_(True)).limit(1))


def list_model_versions(session: Session) -> list[ModelVersion]:
    """Newest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc())))


def _lock_versions(session: Session) -> None:
    # PostgreSQL: without row locks two concurrent promotions could each deactivate the versions they
    # saw and leave two active. SQLite's BEGIN IMMEDIATE already serialises writers.
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(ModelVersion.id).with_for_update()).all()


def _activate(session: Session, version: ModelVersion) -> None:
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.active.is_(True), ModelVersion.id != version.id)
        .values(active=False)
        .execution_options(synchronize_session="fetch")
    )
    version.active = True
    session.flush()


def promote_model_version(session: Session, version_id: int) -> ModelVersion:
    _lock_versions(session)
    version = get_model_version(session, version_id)
    version.promoted_at = utcnow()
    _activate(session, version)
    return version


def rollback_model_version(session: Session) -> ModelVersion:
    """Re-activate the version that was promoted before the active one."""
    _lock_versions(session)
    current = active_model_version(session)
    if current is None or current.promoted_at is None:
        raise ModelVersionError("no active model version to roll back from")
    previous = session.scalar(
        select(ModelVersion)
        .where(
            ModelVersion.id != current.id,
            ModelVersion.promoted_at.is_not(None),
            ModelVersion.promoted_at < current.promoted_at,
        )
        .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc())
        .limit(1)
    )
    if previous is None:
        raise ModelVersionError(f"model version {current.id} is the first one promoted; nothing to roll back to")
    _activate(session, previous)
    return previous


def model_version_summary(version: ModelVersion) -> dict[str, Any]:
    return {
        "id": version.id,
        "name": version.name,
        "model_kind": version.model_kind,
        "created_at": version.created_at.isoformat(timespec="seconds"),
        "active": version.active,
        "label_count": version.label_count,
        "metrics": dict(version.metrics or {}),
        "config": dict(version.config or {}),
        "data_snapshot": dict(version.data_snapshot or {}),
        "checkpoint_path": version.checkpoint_path,
    }


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def compare_model_versions(session: Session, first_id: int, second_id: int) -> dict[str, Any]:
    """Side by side: every metric (with the difference where both are numbers), label counts, the config
    and data-snapshot entries that differ, and ``held_out``: both versions' stored predictions on the same
    held-out labels (``held_out_outcomes``), for a paired test."""
    first, second = get_model_version(session, first_id), get_model_version(session, second_id)
    metrics_a, metrics_b = _flatten(first.metrics or {}), _flatten(second.metrics or {})
    metrics: dict[str, dict[str, Any]] = {}
    for key in sorted(metrics_a.keys() | metrics_b.keys()):
        a, b = metrics_a.get(key), metrics_b.get(key)
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
        metrics[key] = {"a": a, "b": b, "difference": (b - a) if numeric else None}

    def differences(left: Mapping[str, Any], right: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        left, right = _flatten(left), _flatten(right)
        return {
            key: {"a": left.get(key), "b": right.get(key)}
            for key in sorted(left.keys() | right.keys())
            if left.get(key) != right.get(key)
        }

    return {
        "a": model_version_summary(first),
        "b": model_version_summary(second),
        "metrics": metrics,
        "label_count": {"a": first.label_count, "b": second.label_count},
        "held_out": held_out_outcomes(session, first.id, second.id),
        "config_differences": differences(first.config or {}, second.config or {}),
        "data_snapshot_differences": differences(first.data_snapshot or {}, second.data_snapshot or {}),
    }


def held_out_outcomes(session: Session, first_id: int, second_id: int) -> dict[str, int]:
    """Whether each version's stored main-class prediction is right on the same labelled images that neither
    trained on (the audit slice, and labels given after both were trained), as a 2x2 table: ``images``,
    ``both_right``, ``only_a_right`` (``first_id``), ``only_b_right`` (``second_id``), ``neither_right``.
    Images that either version has no prediction for are left out."""
    versions = [get_model_version(session, first_id), get_model_version(session, second_id)]
    newest = max(int((v.data_snapshot or {}).get("newest_annotation_id", 0)) for v in versions)
    labels = {label.image_id: label for label in current_labels(session)}
    ids = sorted(labels)
    predicted: dict[tuple[int, int], int | None] = {}
    audit: set[int] = set()
    for start in range(0, len(ids), 900):
        chunk = ids[start : start + 900]
        rows = session.execute(
            select(Prediction.model_version_id, Prediction.image_id, Prediction.main_class_id).where(
                Prediction.model_version_id.in_([first_id, second_id]), Prediction.image_id.in_(chunk)
            )
        )
        predicted.update(((version_id, image_id), main_id) for version_id, image_id, main_id in rows)
        audit.update(session.scalars(select(Image.id).where(Image.id.in_(chunk), Image.audit.is_(True))))
    table = {"images": 0, "both_right": 0, "only_a_right": 0, "only_b_right": 0, "neither_right": 0}
    for image_id, label in labels.items():
        if image_id not in audit and label.annotation_id <= newest:
            continue  # at least one of the two trained on it
        if (first_id, image_id) not in predicted or (second_id, image_id) not in predicted:
            continue
        a = predicted[(first_id, image_id)] == label.main_class_id
        b = predicted[(second_id, image_id)] == label.main_class_id
        table["images"] += 1
        table["both_right" if a and b else "only_a_right" if a else "only_b_right" if b else "neither_right"] += 1
    return table


def encode_latent(latent: np.ndarray) -> bytes:
    """A latent mean as little-endian float32 bytes, the storage format of ``predictions.latent_mean``."""
    return np.ascontiguousarray(latent, dtype="<f4").tobytes()


def decode_latents(blobs: Sequence[bytes]) -> np.ndarray:
    return np.stack([np.frombuffer(blob, dtype="<f4") for blob in blobs]) if blobs else np.zeros((0, 0), "<f4")


def _batches(rows: Iterable[dict[str, Any]], size: int) -> Iterable[list[dict[str, Any]]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, size)):
        yield batch


@dataclass(frozen=True)
class CalibrationView:
    """How far a version's probabilities may be read as percentages: ``trusted`` once its calibration rests
    on at least MIN_CALIBRATION_LABELS held-out labels (core.calibration.calibrate records it)."""

    trusted: bool
    labels: int
    ece: float | None

    def note(self) -> str | None:
        """Why percentages are hidden, or None when they may be shown."""
        if self.trusted:
            return None
        return (
            f"confidence not shown: calibrated on {self.labels} held-out label{'s' if self.labels != 1 else ''}, "
            f"fewer than the {MIN_CALIBRATION_LABELS} that make its percentages meaningful"
        )


def version_metrics(session: Session, version_id: int) -> dict[str, Any] | None:
    """The version's stored metrics: that column alone (its data_snapshot may hold thousands of image ids, and
    the Label card reads this for every new image)."""
    return session.scalar(select(ModelVersion.metrics).where(ModelVersion.id == version_id))


def version_calibration(session: Session, version_id: int) -> CalibrationView | None:
    """The version's calibration as its train job measured it (``calibration_view``)."""
    metrics = version_metrics(session, version_id)
    return None if metrics is None else calibration_view(metrics)


def calibration_view(metrics: Mapping[str, Any]) -> CalibrationView:
    """The calibration recorded in a version's metrics; versions trained before it was recorded are judged by
    their number of validation labels."""
    recorded = metrics.get("calibration") or {}
    labels = int(recorded.get("labels", metrics.get("num_val_labels", 0)) or 0)
    ece = metrics.get("val_ece")
    trusted = bool(recorded.get("trusted", labels >= MIN_CALIBRATION_LABELS))
    return CalibrationView(trusted, labels, float(ece) if isinstance(ece, int | float) else None)


def update_version_metrics(session: Session, version_id: int, **entries: Any) -> None:
    """Add or replace top-level entries of a version's metrics (e.g. how its queue was ranked)."""
    version = get_model_version(session, version_id)
    version.metrics = {**(version.metrics or {}), **entries}


def write_predictions(
    session: Session,
    model_version_id: int,
    rows: Iterable[Mapping[str, Any]],
    *,
    batch_size: int = PREDICTION_BATCH_SIZE,
) -> int:
    """Replace the version's predictions with ``rows`` (dicts of ``predictions`` columns, ``image_id``
    required); executemany in batches. Returns the number written."""
    written = 0
    for batch in _batches(({**row, "model_version_id": model_version_id} for row in rows), batch_size):
        unknown = set().union(*batch) - PREDICTION_COLUMNS
        if unknown:
            raise ValueError(f"not prediction columns: {sorted(unknown)}")
        if not written:
            session.execute(delete(Prediction).where(Prediction.model_version_id == model_version_id))
        session.execute(insert(Prediction.__table__), batch)
        written += len(batch)
    if not written:
        session.execute(delete(Prediction).where(Prediction.model_version_id == model_version_id))
    return written


def prediction_count(session: Session, model_version_id: int) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(Prediction).where(Prediction.model_version_id == model_version_id)
        )
        or 0
    )


def latent_means(session: Session, model_version_id: int) -> tuple[list[int], np.ndarray]:
    """Image ids and their latent means (N, D) under a version, in image-id order."""
    rows = session.execute(
        select(Prediction.image_id, Prediction.latent_mean)
        .where(Prediction.model_version_id == model_version_id, Prediction.latent_mean.is_not(None))
        .order_by(Prediction.image_id)
    ).all()
    return [row.image_id for row in rows], decode_latents([row.latent_mean for row in rows])


def set_embedding_coords(
    session: Session,
    model_version_id: int,
    image_ids: Sequence[int],
    coords: np.ndarray,
    *,
    batch_size: int = PREDICTION_BATCH_SIZE,
) -> int:
    """Store UMAP coordinates (N, 2) for the version's predictions of ``image_ids``."""
    if len(image_ids) != len(coords):
        raise ValueError(f"{len(image_ids)} image ids but {len(coords)} coordinates")
    table = Prediction.__table__
    statement = (
        update(table)
        .where(table.c.model_version_id == bindparam("version"), table.c.image_id == bindparam("image"))
        .values(umap_x=bindparam("x"), umap_y=bindparam("y"))
    )
    rows = (
        {"version": model_version_id, "image": int(image_id), "x": float(x), "y": float(y)}
        for image_id, (x, y) in zip(image_ids, coords, strict=True)
    )
    updated = 0
    for batch in _batches(rows, batch_size):
        session.execute(statement, batch)
        updated += len(batch)
    return updated


def embedding_coords(session: Session, model_version_id: int) -> tuple[list[int], np.ndarray]:
    """Image ids and their UMAP coordinates (N, 2) under a version, in image-id order (placed images only)."""
    rows = session.execute(
        select(Prediction.image_id, Prediction.umap_x, Prediction.umap_y)
        .where(
            Prediction.model_version_id == model_version_id,
            Prediction.umap_x.is_not(None),
            Prediction.umap_y.is_not(None),
        )
        .order_by(Prediction.image_id)
    ).all()
    coords = np.array([(row.umap_x, row.umap_y) for row in rows], dtype=np.float32).reshape(-1, 2)
    return [row.image_id for row in rows], coords


def has_embedding(session: Session, model_version_id: int) -> bool:
    """Whether any image has UMAP coordinates under the version (its map exists), without reading them."""
    placed = select(Prediction.image_id).where(
        Prediction.model_version_id == model_version_id, Prediction.umap_x.is_not(None), Prediction.umap_y.is_not(None)
    )
    return session.scalar(placed.limit(1)) is not None


def previous_embedded_version(session: Session, model_version_id: int) -> int | None:
    """The map a new version's map should keep the layout of: of the other versions with UMAP coordinates,
    the one promoted most recently (what annotators last looked at), else the newest."""
    placed = (
        select(Prediction.model_version_id)
        .where(Prediction.model_version_id != model_version_id, Prediction.umap_x.is_not(None))
        .distinct()
    )
    return session.scalar(
        select(ModelVersion.id)
        .where(ModelVersion.id.in_(placed))
        .order_by(ModelVersion.promoted_at.is_(None), ModelVersion.promoted_at.desc(), ModelVersion.id.desc())
        .limit(1)
    )


def set_input_embedding(
    session: Session,
    input_name: str,
    image_ids: Sequence[int],
    coords: np.ndarray,
    *,
    batch_size: int = PREDICTION_BATCH_SIZE,
) -> int:
    """Replace the project's input map (``InputEmbedding``: UMAP of a backbone's features, or pixels, made
    before any model version) with ``coords`` (N, 2) for ``image_ids``; ``input_name`` says what was mapped."""
    if len(image_ids) != len(coords):
        raise ValueError(f"{len(image_ids)} image ids but {len(coords)} coordinates")
    session.execute(delete(InputEmbedding))
    rows = (
        {"image_id": int(image_id), "input": input_name, "umap_x": float(x), "umap_y": float(y)}
        for image_id, (x, y) in zip(image_ids, coords, strict=True)
    )
    written = 0
    for batch in _batches(rows, batch_size):
        session.execute(insert(InputEmbedding.__table__), batch)
        written += len(batch)
    return written


def input_embedding(session: Session) -> tuple[str | None, list[int], np.ndarray]:
    """(what was mapped, image ids, coordinates (N, 2)) of the project's input map, in image-id order;
    (None, [], empty) when there is none."""
    rows = session.execute(
        select(InputEmbedding.image_id, InputEmbedding.input, InputEmbedding.umap_x, InputEmbedding.umap_y).order_by(
            InputEmbedding.image_id
        )
    ).all()
    coords = np.array([(row.umap_x, row.umap_y) for row in rows], dtype=np.float32).reshape(-1, 2)
    return (rows[0].input if rows else None), [row.image_id for row in rows], coords


def input_embedding_name(session: Session) -> str | None:
    """What the project's input map is of ("efficientnet_lite2 features"); None without one. Reads one row."""
    return session.scalar(select(InputEmbedding.input).limit(1))


def input_embedding_size(session: Session) -> tuple[str | None, int]:
    """(what the input map is of, how many images it places); (None, 0) without one."""
    row = session.execute(select(func.min(InputEmbedding.input), func.count()).select_from(InputEmbedding)).one()
    return row[0], int(row[1])
