"""What the Train page shows beyond the job queue: the input decision, progress by stage, promotion
decisions, metrics apart from settings, per-class results, calibration warnings and follow-up jobs.

Pure functions where the data is already at hand (tested without a database); the rest read the database
once per call. Nothing here trains or scores: that is the worker's job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select

from core.registry import AUTO, INPUT_KINDS, choose_backbone
from db.engine import reading
from db.queries.annotations import current_labels
from db.queries.audit import MIN_AUDIT_LABELS
from db.queries.jobs import list_jobs
from db.queries.models import compare_model_versions
from db.queries.taxonomy import taxonomy_mapping
from db.schema import Image, MainClass, ModelVersion, Prediction, SubClass
from labeller.app.services.train import JobView, VersionView, _job_view
from labeller.project import Project

BACKBONE_CHOICES: tuple[str, ...] = (AUTO, *INPUT_KINDS)
# Calibration that flattens everything: a fitted temperature above this with (nearly) every top
# probability close to uniform (issue 13 item 8: T = 3.08 put ten images at entropy 0.693 at the top).
FLAT_TEMPERATURE = 2.5
# "Near uniform": the top main-class probability within this share of the way from 1/K to 1.
NEAR_UNIFORM = 0.15
FLAT_SHARE = 0.95
# Settings recorded among a version's metrics; everything else numeric is a measurement.
MEASURED_KEYS = frozenset(
    {
        "temperature",
        "num_images",
        "num_labelled",
        "num_train_labels",
        "num_val_labels",
        "train_seconds",
        "images_per_second",
        "best_epoch",
        "epochs_run",
    }
)
MEASURED_PREFIXES = ("val_", "audit_")


# ------------------------------------------------------------------------------------------ input


@dataclass(frozen=True)
class InputDecision:
    backbone: str
    reason: str


def input_decision(project: Project) -> InputDecision:
    """What the next train job learns from and why (decodes a few dozen images when the setting is auto)."""
    from labeller.inputs import choose_input

    choice = choose_input(project)
    return InputDecision(choice.backbone, choice.reason)


def backbone_param(project: Project, selected: str) -> str | None:
    """The train job's ``backbone`` param for the page's choice: None when it is the project's setting (the
    job decides as ``labeller train`` does), a concrete input kind otherwise ("auto" decided here from the
    images, since the job would decide it without their size)."""
    if selected == project.settings.training.backbone:
        return None
    if selected != AUTO:
        return selected
    from labeller.inputs import profile_images

    settings = project.settings.training
    profile = profile_images(project)
    channels = settings.channels or (1 if profile.greyscale else 3)
    return choose_backbone(AUTO, channels=channels, image_side=profile.median_side)[0]


# ------------------------------------------------------------------------------------------ jobs


def latest_train_job(engine: Engine) -> JobView | None:
    """The newest train job, whatever became of it: what a fresh session shows first."""
    with reading(engine) as session:
        jobs = list_jobs(session, kind="train", limit=1)
        return _job_view(jobs[0]) if jobs else None


def follow_up_jobs(engine: Engine, model_version_id: int | None) -> list[JobView]:
    """Score and embed jobs for a version (the map on Explore is ready once its embed job succeeds), oldest first."""
    if model_version_id is None:
        return []
    with reading(engine) as session:
        jobs = [
            _job_view(job)
            for kind in ("score", "embed")
            for job in list_jobs(session, kind=kind, limit=50)
            if (job.params or {}).get("model_version_id") == model_version_id
        ]
    return sorted(jobs, key=lambda job: job.id)


@dataclass(frozen=True)
class StageProgress:
    """The newest event of each stage of a train job: features, training, scoring."""

    stage: str | None
    features: dict[str, Any] | None
    training: dict[str, Any] | None
    scoring: dict[str, Any] | None

    def epoch_text(self, epochs: object) -> str:
        """ "3/10" while training; "0/10" before the first training event (never "-/10")."""
        if self.training is not None:
            return f"{self.training.get('epoch', 0)}/{self.training.get('epochs', epochs)}"
        return f"0/{epochs}"


def stage_progress(rows: Sequence[Mapping[str, Any]]) -> StageProgress:
    """From flattened progress rows (services.flatten_progress), oldest first."""

    def newest(stage: str) -> dict[str, Any] | None:
        return next((dict(row) for row in reversed(rows) if row.get("stage") == stage), None)

    return StageProgress(
        stage=next((str(row["stage"]) for row in reversed(rows) if row.get("stage")), None),
        features=newest("features"),
        training=next((dict(row) for row in reversed(rows) if "epoch" in row), None),
        scoring=newest("scoring"),
    )


def features_text(event: Mapping[str, Any]) -> str:
    """'Features (efficientnet_lite2): 120/400 images · 31 images/s · ETA 0.2 min'."""
    done, total = event.get("done", 0), event.get("total", 0)
    parts = [f"Features ({event.get('backbone', 'backbone')}): {done}/{total} images"]
    speed, eta = event.get("images_per_second"), event.get("eta_seconds")
    if isinstance(speed, int | float):
        parts.append(f"{speed:.0f} images/s")
    if isinstance(eta, int | float) and done != total:
        parts.append(f"ETA {eta / 60:.1f} min")
    return " · ".join(parts)


def features_fraction(event: Mapping[str, Any]) -> float:
    total = event.get("total") or 0
    return min(1.0, float(event.get("done", 0)) / total) if total else 0.0


# ------------------------------------------------------------------------------------------ versions


def promotion_rows(versions: Sequence[VersionView]) -> list[dict[str, Any]]:
    """Every version's promotion decision with its reason and sample sizes, newest first."""
    rows = []
    for version in versions:
        promotion = version.metrics.get("promotion")
        if not isinstance(promotion, Mapping):
            continue
        rows.append(
            {
                "version": version.id,
                "promoted": bool(promotion.get("promoted")),
                "reason": promotion.get("reason"),
                "compared with": promotion.get("compared_with"),
                "audit labels (n)": version.metrics.get("audit_count"),
                "audit accuracy": version.metrics.get("audit_main_accuracy"),
                "audit 95% interval": audit_interval_text(version.metrics),
                "active's audit accuracy": promotion.get("active_audit_main_accuracy"),
                "validation labels (n)": version.metrics.get("num_val_labels"),
                "test": promotion.get("test"),
            }
        )
    return rows


def audit_interval_text(metrics: Mapping[str, Any]) -> str | None:
    """A version's audit accuracy interval for a table cell, e.g. "0.207 to 1.000 (too few: n < 30)"."""
    from labeller.promotion import audit_summary

    summary = audit_summary(metrics)
    if summary is None:
        return None
    low, high = summary["interval"]
    return f"{low:.3f} to {high:.3f}" + ("" if summary["enough"] else f" (too few: n < {MIN_AUDIT_LABELS})")


@dataclass(frozen=True)
class CurvePoint:
    version: int
    labels: int
    accuracy: float
    n: int
    low: float
    high: float
    source: str  # "audit" (the unbiased slice) or "validation"

    @property
    def few(self) -> bool:
        """Measured on fewer than MIN_AUDIT_LABELS labels: drawn hollow, not as a confident value."""
        return self.n < MIN_AUDIT_LABELS


def learning_curve(versions: Sequence[VersionView]) -> list[CurvePoint]:
    """Main-class accuracy per version with its sample size and 95% Wilson interval, by label count: on the
    audit slice where a version has one, else on its validation labels."""
    from labeller.promotion import wilson_interval

    points = []
    for version in versions:
        metrics = version.metrics
        for source, accuracy_key, count_key in (
            ("audit", "audit_main_accuracy", "audit_count"),
            ("validation", "val_main_accuracy", "num_val_labels"),
        ):
            accuracy, n = metrics.get(accuracy_key), metrics.get(count_key)
            if isinstance(accuracy, int | float) and isinstance(n, int) and n > 0:
                low, high = wilson_interval(float(accuracy), n)
                points.append(CurvePoint(version.id, version.label_count, float(accuracy), n, low, high, source))
                break
    return sorted(points, key=lambda point: (point.labels, point.version))


def is_measurement(key: str, value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return key in MEASURED_KEYS or key.startswith(MEASURED_PREFIXES)


def split_metrics(metrics: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(measurements, settings): accuracies, counts, timings apart from the choices the run was made with.
    The promotion decision, the queue ranking and the calibration have their own columns or sections and are
    left out."""
    measured, settings = {}, {}
    for key, value in metrics.items():
        if key in ("promotion", "queue", "calibration"):
            continue
        (measured if is_measurement(key, value) else settings)[key] = value
    return measured, settings


def version_tables(versions: Sequence[VersionView]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows for the metrics table and the settings table, one per version, newest first."""
    metric_rows, setting_rows = [], []
    for version in versions:
        measured, settings = split_metrics(version.metrics)
        head = {"version": version.id, "active": version.active}
        interval = audit_interval_text(version.metrics)
        audit = {"audit 95% interval": interval} if interval is not None else {}
        calibration = {"calibration": text} if (text := calibration_text(version.metrics)) else {}
        metric_rows.append({**head, "labels": version.label_count, **measured, **audit, **calibration})
        config = {k: v for k, v in version.config.items() if not isinstance(v, Mapping | list)}
        selection = version.metrics.get("model_selection")
        why = {"model auto": str(selection.get("reason", ""))} if isinstance(selection, Mapping) else {}
        setting_rows.append(
            {**head, "model": version.model_kind, **why, **{k: str(v) for k, v in {**settings, **config}.items()}}
        )
    return metric_rows, setting_rows


def calibration_text(metrics: Mapping[str, Any]) -> str | None:
    """A version's calibration for a table cell: its ECE with the held-out labels it rests on, the
    temperature, and whether its percentages are shown, e.g. "ECE 0.031 on 6 labels, T = 1.00; percentages
    hidden (fewer than 30)"."""
    from core.registry import MIN_CALIBRATION_LABELS

    ece, labels = metrics.get("val_ece"), metrics.get("num_val_labels")
    if not isinstance(ece, int | float) or not isinstance(labels, int):
        return None
    recorded = metrics.get("calibration")
    trusted = recorded.get("trusted") if isinstance(recorded, Mapping) else labels >= MIN_CALIBRATION_LABELS
    temperature = metrics.get("temperature")
    text = f"ECE {ece:.3f} on {labels} label{'s' if labels != 1 else ''}"
    if isinstance(temperature, int | float):
        text += f", T = {temperature:.2f}"
    return text + ("" if trusted else f"; percentages hidden (fewer than {MIN_CALIBRATION_LABELS})")


def compare_versions(engine: Engine, first: int, second: int) -> dict[str, Any]:
    """As ``labeller models compare A B``."""
    with reading(engine) as session:
        return compare_model_versions(session, first, second)


def held_out_comparison(comparison: Mapping[str, Any]) -> str:
    """B vs A on the same held-out labels, paired on their stored predictions (as the CLI prints it)."""
    from labeller.promotion import held_out_text

    return held_out_text(comparison.get("held_out") or {})


# A data_snapshot list longer than this is shown by its length, not element by element.
LIST_IN_FULL = 8


def snapshot_list_text(key: str, value: object, against: object = None) -> str | None:
    """A data_snapshot list as a comparison shows it, or None when ``value`` is no list (show it as is).

    A list of ids (a key ending in ``_ids``: ``trained_image_ids`` holds thousands) is shown by its length,
    "1,234 images", and beside B (``against``: A's list) how many ids it adds and drops; any other list
    longer than LIST_IN_FULL by its length, "12 items"; a short one (a taxonomy's sub-classes) in full."""
    if not isinstance(value, list | tuple):
        return None
    if not key.endswith("_ids") and len(value) <= LIST_IN_FULL:
        return repr(list(value))
    noun = ("image" if "image" in key else "id") if key.endswith("_ids") else "item"
    text = f"{len(value):,} {noun}{'' if len(value) == 1 else 's'}"
    if key.endswith("_ids") and isinstance(against, list | tuple):
        try:
            mine, theirs = set(value), set(against)
        except TypeError:  # unhashable elements: the length alone
            return text
        text += f" (+{len(mine - theirs):,}, -{len(theirs - mine):,} vs A)"
    return text


def comparison_rows(comparison: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(metric rows with B - A, differing config and data rows), as the CLI prints them, as strings; a
    data_snapshot list by its length (``snapshot_list_text``)."""

    def text(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    def snapshot_text(key: str, value: object, against: object = None) -> str:
        shown = snapshot_list_text(key, value, against)
        return text(value) if shown is None else shown

    labels = comparison["label_count"]
    metrics = [{"": "labels", "A": text(labels["a"]), "B": text(labels["b"]), "B - A": text(labels["b"] - labels["a"])}]
    for key, row in comparison["metrics"].items():
        if any(isinstance(v, dict | list) for v in (row["a"], row["b"])):
            continue
        metrics.append({"": key, "A": text(row["a"]), "B": text(row["b"]), "B - A": text(row["difference"])})
    differences = [
        {"": f"config: {key}", "A": text(row["a"]), "B": text(row["b"])}
        for key, row in comparison["config_differences"].items()
    ] + [
        {"": f"data_snapshot: {key}", "A": snapshot_text(key, row["a"]), "B": snapshot_text(key, row["b"], row["a"])}
        for key, row in comparison["data_snapshot_differences"].items()
    ]
    return metrics, differences


# ------------------------------------------------------------------------------------------ per class


@dataclass(frozen=True)
class ClassReport:
    """Confusion matrices (rows: label, columns: prediction) of one version's predictions against the current
    labels, over main classes and over leaves (sub-classes, or main classes without any). ``in_sample``:
    labels the version trained on (its accuracy there is optimistic); ``held_out``: audit-slice labels and
    labels given after it was trained.

    Every label counts over main classes; over leaves only a label that names one leaf (a main class with
    one sub-class tag, or a main class without sub-classes) and whose prediction names one. The others
    (a main class alone, several tags) are counted in ``leaf_skipped_in_sample`` / ``leaf_skipped_held_out``."""

    classes: list[str]
    in_sample: np.ndarray
    held_out: np.ndarray
    leaves: list[str] = field(default_factory=list)
    leaf_in_sample: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    leaf_held_out: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    leaf_skipped_in_sample: int = 0
    leaf_skipped_held_out: int = 0

    @property
    def has_sub_classes(self) -> bool:
        return len(self.leaves) > len(self.classes)

    def leaf_note(self, title: str, held_out: bool) -> str | None:
        """The caption over a split's sub-class matrix; None when the taxonomy has no sub-classes or the
        split no labels."""
        matrix = self.leaf_held_out if held_out else self.leaf_in_sample
        skipped = self.leaf_skipped_held_out if held_out else self.leaf_skipped_in_sample
        if not self.has_sub_classes or not (matrix.sum() or skipped):
            return None
        text = f"{title}, by sub-class: {int(matrix.sum())} images whose label names one sub-class"
        if skipped:
            text += f"; {skipped} labels with a main class only (or several sub-classes) count above only"
        return text + " (rows: label, columns: prediction)."

    @staticmethod
    def accuracy_rows(classes: Sequence[str], matrix: np.ndarray, what: str = "class") -> list[dict[str, Any]]:
        """Per row of ``matrix``: its name, its number of labels (n) and the share predicted right."""
        rows = []
        for index, name in enumerate(classes):
            n = int(matrix[index].sum())
            rows.append({what: name, "labels": n, "accuracy": float(matrix[index, index]) / n if n else None})
        return rows


@dataclass(frozen=True)
class LabelledPrediction:
    """One labelled image as ``build_class_report`` sees it: its label, the version's prediction (main class
    and the best sub-class inside it; None where unknown) and whether the version trained on the label."""

    main: str
    tags: tuple[str, ...]
    predicted_main: str | None
    predicted_sub: str | None
    held_out: bool


def _leaf_name(main: str, sub: str | None) -> str:
    return main if sub is None else f"{main}/{sub}"


def build_class_report(taxonomy: Mapping[str, Sequence[str]], rows: Iterable[LabelledPrediction]) -> ClassReport:
    """The confusion matrices of ``rows`` over ``taxonomy`` (``{main: [sub, ...]}`` in display order)."""
    classes = list(taxonomy)
    leaves = [_leaf_name(main, sub) for main, subs in taxonomy.items() for sub in (list(subs) or [None])]
    index = {name: i for i, name in enumerate(classes)}
    leaf_index = {name: i for i, name in enumerate(leaves)}
    in_sample = np.zeros((len(classes), len(classes)), dtype=np.int64)
    held_out = np.zeros_like(in_sample)
    leaf_in_sample = np.zeros((len(leaves), len(leaves)), dtype=np.int64)
    leaf_held_out = np.zeros_like(leaf_in_sample)
    skipped = {True: 0, False: 0}

    def leaf_of(main: str, subs: Sequence[str | None]) -> int | None:
        """The one leaf of a main class and sub-class names (none for a main class without sub-classes)."""
        if taxonomy[main]:
            return leaf_index.get(_leaf_name(main, subs[0])) if len(subs) == 1 and subs[0] is not None else None
        return leaf_index[main] if not any(subs) else None

    for row in rows:
        if row.main not in index or row.predicted_main not in index:
            continue
        (held_out if row.held_out else in_sample)[index[row.main], index[row.predicted_main]] += 1
        label_leaf = leaf_of(row.main, row.tags)
        predicted_leaf = leaf_of(row.predicted_main, [row.predicted_sub])
        if label_leaf is None or predicted_leaf is None:
            skipped[row.held_out] += 1
            continue
        (leaf_held_out if row.held_out else leaf_in_sample)[label_leaf, predicted_leaf] += 1
    return ClassReport(
        classes, in_sample, held_out, leaves, leaf_in_sample, leaf_held_out, skipped[False], skipped[True]
    )


def class_report(engine: Engine, model_version_id: int) -> ClassReport:
    with reading(engine) as session:
        version = session.get(ModelVersion, model_version_id)
        newest = int((version.data_snapshot or {}).get("newest_annotation_id", 0)) if version else 0
        taxonomy = taxonomy_mapping(session)
        main_names = {main_id: name for main_id, name in session.execute(select(MainClass.id, MainClass.name))}
        sub_names = {sub_id: name for sub_id, name in session.execute(select(SubClass.id, SubClass.name))}
        labels = {label.image_id: label for label in current_labels(session)}
        predicted: dict[int, tuple[int | None, int | None]] = {}
        audit: set[int] = set()
        ids = sorted(labels)
        for start in range(0, len(ids), 900):
            chunk = ids[start : start + 900]
            rows = session.execute(
                select(Prediction.image_id, Prediction.main_class_id, Prediction.sub_class_id).where(
                    Prediction.model_version_id == model_version_id, Prediction.image_id.in_(chunk)
                )
            )
            predicted.update((image_id, (main_id, sub_id)) for image_id, main_id, sub_id in rows)
            audit.update(session.scalars(select(Image.id).where(Image.id.in_(chunk), Image.audit.is_(True))))
    rows = []
    for image_id, label in labels.items():
        main_id, sub_id = predicted.get(image_id, (None, None))
        rows.append(
            LabelledPrediction(
                main=label.main_class,
                tags=tuple(label.tags),
                predicted_main=main_names.get(main_id) if main_id is not None else None,
                predicted_sub=sub_names.get(sub_id) if sub_id is not None else None,
                held_out=image_id in audit or label.annotation_id > newest,
            )
        )
    return build_class_report(taxonomy, rows)


# ------------------------------------------------------------------------------------------ calibration


def flat_calibration_warning(temperature: object, near_uniform_share: float, scored: int) -> str | None:
    """A warning when the fitted temperature flattened (nearly) every prediction toward uniform."""
    if not isinstance(temperature, int | float) or temperature <= FLAT_TEMPERATURE or scored == 0:
        return None
    if near_uniform_share < FLAT_SHARE:
        return None
    return (
        f"Calibration flattened the predictions: the fitted temperature is {temperature:.2f} and "
        f"{near_uniform_share:.0%} of the {scored} scored images have a top probability near uniform. "
        "Uncertainty ranks are then mostly ties and the queue leans on its diversity order; the validation "
        "labels may be too few or the model underfit. Label more (or check the model) and retrain."
    )


def calibration_warning(engine: Engine, version: VersionView) -> str | None:
    """flat_calibration_warning on the version's stored predictions (one aggregate query)."""
    temperature = version.metrics.get("temperature")
    if not isinstance(temperature, int | float) or temperature <= FLAT_TEMPERATURE:
        return None
    with reading(engine) as session:
        classes = session.scalar(select(func.count()).select_from(MainClass)) or 0
        if classes < 2:
            return None
        threshold = 1 / classes + NEAR_UNIFORM * (1 - 1 / classes)
        scored, near = session.execute(
            select(func.count(), func.count().filter(Prediction.confidence < threshold)).where(
                Prediction.model_version_id == version.id
            )
        ).one()
    return flat_calibration_warning(temperature, (near or 0) / scored if scored else 0.0, int(scored or 0))
