"""Train job: fit a model on the project's current labels, save it, register it as a model version,
promote it when it beats the active one on the audit slice (or on request), and queue re-scoring.

Params (all optional; defaults from the project's [training] settings): ``model`` (a kind, or auto: the
kind cross-validation on the training labels picks, recorded in the version's metrics), ``epochs``,
``batch_size``, ``device``, ``image_size``, ``channels``, ``config`` (any other core.training.TrainConfig
field), ``promote`` ("auto" | "always" | "never"), ``warm_start`` (start from the active version's weights
when it is the same kind of model on the same taxonomy and image size; otherwise from scratch).

Honest metrics: labelled images in the audit slice are held out of training (they stay in the pool as
unlabelled images), and both the new model and the active one are measured on them, so promotion
compares the two on the same unbiased sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.registry import AUTO
from db.engine import unit_of_work
from db.queries import jobs as job_queries
from db.queries import models as model_queries
from db.queries.annotations import label_counts
from db.queries.queue import mark_labelled_predictions
from labeller.inputs import InputChoice
from labeller.jobs import JobContext, JobFailed, JobInterrupted
from labeller.jobs.params import JobParamsError, TrainParams
from labeller.project import ProjectError
from labeller.promotion import Comparison, compare_on_same_labels, compare_paired, interval_text


@dataclasses.dataclass(frozen=True)
class AuditResult:
    count: int
    main_accuracy: float | None
    set_accuracy: float | None  # the top leaf lies in the label's admissible set
    # Whether the predicted main class was right, per held-out image in held-out order (for a paired
    # comparison of two versions on the same images); empty when not measured.
    main_right: tuple[bool, ...] = ()

    def as_metrics(self) -> dict[str, Any]:
        return {
            "audit_count": self.count,
            "audit_main_accuracy": self.main_accuracy,
            "audit_accuracy": self.set_accuracy,
        }


def train_params(context: JobContext) -> TrainParams:
    try:
        return TrainParams.from_params(context.params)
    except (JobParamsError, TypeError) as error:
        raise JobFailed(str(error)) from error


def input_choice(context: JobContext, params: TrainParams) -> InputChoice:
    """What the model learns from: the job's ``backbone``, else the project's (auto: from its images)."""
    from labeller.inputs import choose_input

    choice = choose_input(context.project, backbone=params.backbone)
    return dataclasses.replace(
        choice, image_size=params.image_size or choice.image_size, channels=params.channels or choice.channels
    )


def requested_model(context: JobContext, params: TrainParams) -> str:
    """The job's ``model``, else the project's: a kind, or auto (chosen by ``choose_model``)."""
    return params.model if params.model is not None else context.project.settings.training.model


def train_config(context: JobContext, choice: InputChoice, params: TrainParams) -> Any:
    """The TrainConfig for this job: project settings, then the job's params on top. With model auto it
    holds the default kind until ``choose_model`` replaces it."""
    from core.registry import DEFAULT_MODEL
    from core.training import TrainConfig

    settings = context.project.settings.training

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    model = requested_model(context, params)
    fields = {
        "model": DEFAULT_MODEL if model == AUTO else model,
        "backbone": choice.backbone,
        "backbone_weights": choice.weights,
        "feature_view": choice.view,
        "epochs": pick(params.epochs, settings.epochs),
        "batch_size": pick(params.batch_size, settings.batch_size),
        "consistency": float(pick(params.consistency, settings.consistency)),
        "balance": pick(params.balance, settings.balance),
        "classifier": pick(params.classifier, settings.classifier),
        "device": context.device,
        **params.config,
    }
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise JobFailed(f"unknown training settings {unknown}; known: {sorted(known)}")
    config = TrainConfig(**fields)
    try:
        config.validate()
    except ValueError as error:
        raise JobFailed(str(error)) from error
    return config


def check_trainable(pool: Any, taxonomy: Any, audit_held_out: int) -> None:
    """Clear messages for the data problems a researcher can fix, before any training starts."""
    if pool.num_images == 0:
        raise JobFailed("the project has no images: import some first (labeller import PROJECT PATH)")
    labelled = pool.labelled
    if not labelled.any():
        held = f" ({audit_held_out} labelled audit images are held out for measuring)" if audit_held_out else ""
        raise JobFailed(f"no labelled images to train on{held}: label a few images of each main class first")
    leaf_main = taxonomy.main_of_leaf()
    mains_seen = set()
    for row in np.flatnonzero(labelled):
        mains_seen.update(int(m) for m in np.unique(leaf_main[pool.admissible[row]]))
    if taxonomy.num_main > 1 and len(mains_seen) < 2:
        only = taxonomy.main_names[next(iter(mains_seen))]
        raise JobFailed(
            f"only one main class ({only!r}) has labels: label images of at least one other main class "
            "before training, or the classifier has nothing to tell apart"
        )


def hold_out_audit(pool: Any, audit: np.ndarray) -> tuple[Any, np.ndarray]:
    """The pool with labelled audit images turned unlabelled, and the indices held out."""
    from core.data import LabelledPool

    held_out = np.flatnonzero(audit & pool.labelled)
    labelled = pool.labelled.copy()
    admissible = pool.admissible.copy()
    labelled[held_out] = False
    admissible[held_out] = True
    return LabelledPool(images=pool.images, admissible=admissible, labelled=labelled), held_out


def evaluate_on_audit(trained: Any, images: np.ndarray, admissible: np.ndarray, device: Any) -> AuditResult:
    """Accuracy of ``trained`` on labelled audit images (uint8 images, admissible leaf masks)."""
    from core.scoring import score_pool

    if len(images) == 0:
        return AuditResult(0, None, None)
    scores = score_pool(trained, images, device=device, mc_samples=0)
    leaf_main = trained.taxonomy.main_of_leaf()
    true_main = np.array([leaf_main[np.flatnonzero(row)[0]] for row in admissible])
    top_leaf = scores.leaf_probs.argmax(axis=1)
    right = scores.main_probs.argmax(axis=1) == true_main
    return AuditResult(
        count=len(images),
        main_accuracy=float(right.mean()),
        set_accuracy=float(admissible[np.arange(len(images)), top_leaf].mean()),
        main_right=tuple(bool(x) for x in right),
    )


def audit_comparison(new: AuditResult, active: AuditResult | None) -> Comparison | None:
    """New vs active on the same held-out audit labels, or None when the active version was not measured
    on them. Paired (McNemar, Newcombe's paired interval) when both results say which images they got
    right, else the unpaired interval on the two accuracies."""
    if (
        active is None
        or new.count == 0
        or active.count != new.count
        or new.main_accuracy is None
        or active.main_accuracy is None
    ):
        return None
    if len(new.main_right) == len(active.main_right) == new.count:
        return compare_paired(new.main_right, active.main_right)
    return compare_on_same_labels(new.main_accuracy, active.main_accuracy, new.count)


def promotion_decision(
    mode: str, new: AuditResult, active: AuditResult | None, new_val: float | None, active_val: float | None
) -> tuple[bool, str]:
    """Whether to promote the new version, and why (stored with its metrics).

    ``active`` is the active version measured on the same held-out audit labels as ``new`` (count 0: there
    are none; accuracy None: it cannot read them), or None when there is no active version. The two are
    compared with a 95% interval on the difference (``audit_comparison``: paired when the per-image
    outcomes are known, and the reason names the test): promoted when better or not worse within the
    noise. On fewer than ``MIN_AUDIT_LABELS`` labels "not worse" is no evidence, and the reason says the
    version was promoted as the newest, with n and the intervals. Validation accuracies are measured on
    different labels for each version, so they are quoted, never compared."""
    if mode == "always":
        return True, "promotion requested"
    if mode == "never":
        return False, "promotion not requested"
    if active is None and active_val is None:
        return True, "no active model version"
    comparison = audit_comparison(new, active)
    if comparison is not None:
        return comparison.promote, comparison.describe("held-out audit labels")
    validation = (
        f" (validation main-class accuracy {new_val:.3f} vs {active_val:.3f} is measured on different labels "
        "for each version, so it is not compared)"
        if new_val is not None and active_val is not None
        else ""
    )
    if new.count == 0:
        return True, (
            "no labelled audit images held out, so the two versions cannot be compared on the same labels"
            f"{validation}; promoted as the newer version. Label audit images to compare versions fairly"
        )
    measured = (
        f" (the new version's main-class accuracy there: {interval_text(new.main_accuracy, new.count)})"
        if new.main_accuracy is not None
        else ""
    )
    return True, (
        f"the active version cannot be measured on the same {new.count} audit labels (its input, taxonomy or "
        f"image size differs, or its checkpoint is missing){validation}; promoted as the newer version{measured}"
    )


def choose_model(context: JobContext, pool: Any, taxonomy: Any, config: Any) -> Any:
    """model = "auto": the kind cross-validation on the training labels picks (core.training.selection),
    logged with why. The audit slice is already held out of ``pool``, so promotion still compares on
    labels neither the choice nor the fit has seen."""
    from core.training import select_model

    def on_fold(candidate: str, fold: int, folds: int) -> None:
        context.report_progress(
            {"stage": "choosing the model", "candidate": candidate, "fold": fold, "folds": folds}, force=True
        )

    selection = select_model(pool, taxonomy, config, on_fold=on_fold, should_stop=context.should_stop)
    context.log(f"model: auto chose {selection.chosen} ({selection.reason})")
    return selection


def checkpoint_name(config: Any, context: JobContext) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{config.model}-{stamp}-job{context.job.id}-a{context.job.attempt}.pt"


def features_progress(context: JobContext, backbone: str) -> Callable[[Any], None]:
    """Progress events of feature extraction (stage "features"), as the train and features jobs report them."""

    def report(progress: Any) -> None:
        context.report_progress(
            {
                "stage": "features",
                "backbone": backbone,
                "done": progress.done,
                "total": progress.total,
                "images_per_second": progress.images_per_second,
                "eta_seconds": progress.eta_seconds,
            },
            force=progress.done == progress.total,
        )

    return report


def load_inputs(context: JobContext, choice: InputChoice) -> Any:
    """The project's pool as ``choice`` says: pixels, or backbone features (computing the missing ones with
    progress events, stage "features")."""
    from core.backbones import BackboneUnavailable
    from labeller.training_data import load_project_features, load_project_pool

    on_features = features_progress(context, choice.backbone)
    context.report_progress({"stage": "loading images", "input": choice.as_dict()}, force=True)
    try:
        if choice.uses_features:
            data = load_project_features(
                context.project,
                choice.feature_spec(),
                device=context.device,
                on_progress=on_features,
                should_stop=context.should_stop,
            )
        else:
            data = load_project_pool(context.project, image_size=choice.image_size, channels=choice.channels)
    except (ProjectError, BackboneUnavailable, FileNotFoundError) as error:
        raise JobFailed(str(error)) from error
    context.raise_if_stopped()
    return data


def run(context: JobContext) -> None:
    from core.device import resolve_device, small_model_threads, torch_threads
    from core.training import Progress, TrainingCancelled, fit, save_checkpoint
    from labeller.jobs.score import class_ids, prediction_rows, rank_queue, score_in_chunks

    project = context.project
    params = train_params(context)
    promote = params.promote
    choice = input_choice(context, params)
    config = train_config(context, choice, params)
    device = resolve_device(config.device)
    image_size, channels = choice.image_size, choice.channels

    with unit_of_work(project.engine) as session:
        newest_annotation_id = job_queries.newest_annotation_id(session)
        counts = label_counts(session)
    data = load_inputs(context, choice)
    context.log(f"input: {choice.backbone} ({choice.reason})")
    audit = np.asarray(data.audit, dtype=bool)
    train_pool, held_out = hold_out_audit(data.pool, audit)
    check_trainable(train_pool, data.taxonomy, len(held_out))

    def on_progress(progress: Progress) -> None:
        payload = {
            "stage": "training",
            "phase": progress.phase,
            "epoch": progress.epoch,
            "epochs": progress.epochs,
            "step": progress.step,
            "steps_per_epoch": progress.steps_per_epoch,
            "loss": progress.loss_terms,
            "validation": progress.validation,
            "images_per_second": progress.images_per_second,
            "eta_seconds": progress.eta_seconds,
        }
        context.report_progress(payload, force=progress.step == progress.steps_per_epoch)

    # Small models train on one cpu thread (core.device.small_model_threads: 9x faster on a busy 2-core machine).
    threads = small_model_threads(train_pool.image_shape) if device.type == "cpu" else None
    try:
        selection = None
        with torch_threads(threads):
            if requested_model(context, params) == AUTO:
                selection = choose_model(context, train_pool, data.taxonomy, config)
                config = dataclasses.replace(config, model=selection.chosen)
            init = (
                warm_start_model(context, config, data.taxonomy, train_pool.image_shape) if params.warm_start else None
            )
            trained = fit(
                train_pool, data.taxonomy, config, on_progress=on_progress, should_stop=context.should_stop, init=init
            )
    except TrainingCancelled as cancelled:
        raise JobInterrupted(context.stop.reason() or str(cancelled)) from cancelled
    except ValueError as error:  # data or config the trainer rejects: the message is for the user
        raise JobFailed(str(error)) from error
    context.raise_if_stopped()

    context.report_progress({"stage": "evaluating on the audit slice", "audit_images": len(held_out)}, force=True)
    audit_images, audit_admissible = data.pool.images[held_out], data.pool.admissible[held_out]
    new_audit = evaluate_on_audit(trained, audit_images, audit_admissible, device)
    with unit_of_work(project.engine) as session:
        active = model_queries.active_model_version(session)
        active_summary = model_queries.model_version_summary(active) if active else None
    active_audit, active_val = None, None
    if active_summary is not None:
        active_val = active_summary["metrics"].get("val_main_accuracy")
        active_audit = _evaluate_active(project, active_summary, config, data, held_out, audit_admissible, device)
    promoted, reason = promotion_decision(
        promote, new_audit, active_audit, trained.metrics.get("val_main_accuracy"), active_val
    )
    metrics = {**trained.metrics, **new_audit.as_metrics()}
    if selection is not None:
        metrics["model_selection"] = selection.as_dict()
    metrics["promotion"] = {
        "promoted": promoted,
        "reason": reason,
        "compared_with": active_summary["id"] if active_summary else None,
        "active_audit_main_accuracy": active_audit.main_accuracy if active_audit else None,
    }
    if (comparison := audit_comparison(new_audit, active_audit)) is not None:
        metrics["promotion"].update(comparison.as_metrics())
    context.raise_if_stopped()

    # The pool is scored before the version is registered, so a promoted version never lacks predictions:
    # annotators never see a queue without an order.
    context.report_progress({"stage": "scoring", "images": int(data.pool.num_images)}, force=True)
    with torch_threads(threads):
        scores = score_in_chunks(context, trained, data.pool.images)
    labelling = project.settings.labelling
    ranking = rank_queue(
        labelling.default_strategy,
        scores,
        data.pool.labelled,
        np.asarray(data.audit),
        context.job.id,
        round_size=labelling.round_size,
    )
    metrics["queue"] = ranking.info

    checkpoint = project.models_dir / checkpoint_name(config, context)
    save_checkpoint(trained, checkpoint)
    try:
        with context.completing() as session:
            version = model_queries.register_model_version(
                session,
                name=f"{config.model} #{context.job.id}",
                model_kind=config.model,
                checkpoint_path=project.stored_image_path(checkpoint),
                config={**config.to_dict(), "image_size": image_size, "channels": channels, "input": choice.as_dict()},
                data_snapshot={
                    "newest_annotation_id": newest_annotation_id,
                    "labelled_images": counts.labelled_images,
                    "by_main_class": counts.by_main_class,
                    "by_sub_class": counts.by_sub_class,
                    "taxonomy": data.taxonomy.to_dict(),
                    "num_images": int(data.pool.num_images),
                    "num_train_labels": int(train_pool.labelled.sum()),
                    "audit_held_out": len(held_out),
                    # The images whose labels the fit saw (training or validation; audit held out): exports
                    # flag their predictions in-sample, which an annotation-id cut-off cannot tell.
                    "trained_image_ids": sorted(int(i) for i in np.asarray(data.image_ids)[train_pool.labelled]),
                },
                metrics=metrics,
                label_count=int(data.pool.labelled.sum()),
            )
            main_ids, sub_ids = class_ids(session)
            model_queries.write_predictions(
                session,
                version.id,
                prediction_rows(data.image_ids, scores, trained.taxonomy, main_ids, sub_ids, ranking.ranks),
            )
            mark_labelled_predictions(session, version.id)
            if promoted:
                model_queries.promote_model_version(session, version.id)
            job_queries.set_job_model_version(session, context.job.id, version.id)
            job_queries.enqueue_job(session, "embed", {"model_version_id": version.id})
    except BaseException:
        checkpoint.unlink(missing_ok=True)  # no version points at it
        raise
    context.log(f"model version {version.id} registered ({'promoted' if promoted else 'not promoted'}: {reason})")


def _evaluate_active(
    project: Any,
    active: dict[str, Any],
    config: Any,
    data: Any,
    held_out: np.ndarray,
    admissible: np.ndarray,
    device: Any,
) -> Any:
    """The active version measured on the same audit images; accuracies None when there are none or it
    cannot read them (another input, taxonomy or image size, or a missing checkpoint)."""
    from core.training import load_checkpoint

    unmeasured = AuditResult(len(held_out), None, None)
    if len(held_out) == 0:
        return unmeasured
    path = Path(project.resolve_image_path(active["checkpoint_path"]))
    try:
        trained = load_checkpoint(path, device=device)
    except (FileNotFoundError, ValueError):
        return unmeasured
    same_input = (trained.config.backbone, trained.config.backbone_weights, trained.config.feature_view) == (
        config.backbone,
        config.backbone_weights,
        config.feature_view,
    )
    if (
        not same_input
        or trained.taxonomy.to_dict() != data.taxonomy.to_dict()
        or tuple(trained.image_shape) != data.pool.image_shape
    ):
        return unmeasured
    return evaluate_on_audit(trained, data.pool.images[held_out], admissible, device)


def warm_start_model(context: JobContext, config: Any, taxonomy: Any, image_shape: tuple[int, ...]) -> Any:
    """The active version's model to start from, or None (logged) when it does not fit this job."""
    from core.training import load_checkpoint

    with unit_of_work(context.project.engine) as session:
        active = model_queries.active_model_version(session)
        summary = model_queries.model_version_summary(active) if active else None
    if summary is None:
        context.log("warm start skipped: no active model version")
        return None
    try:
        trained = load_checkpoint(context.project.resolve_image_path(summary["checkpoint_path"]), device="cpu")
    except (FileNotFoundError, ValueError) as error:
        context.log(f"warm start skipped: {error}")
        return None
    mismatch = [
        what
        for what, same in (
            ("model kind", trained.config.model == config.model),
            ("input", trained.config.backbone == config.backbone),
            ("taxonomy", trained.taxonomy.to_dict() == taxonomy.to_dict()),
            ("image size", tuple(trained.image_shape) == tuple(image_shape)),
        )
        if not same
    ]
    if mismatch:
        context.log(f"warm start skipped: the active version {summary['id']} differs in {', '.join(mismatch)}")
        return None
    context.log(f"warm start from model version {summary['id']}")
    return trained
