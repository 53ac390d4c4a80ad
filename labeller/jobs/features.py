"""Features job: compute and cache a backbone's pooled features for every project image that lacks them.

Params: ``backbone`` (default: the project's input, decided from its images when set to auto). Batches are
written to the cache as they are computed, so a worker killed mid-way loses at most one batch, and a re-run
(or a train job after new imports) computes only the images still missing. Progress events carry the
images done, images/s and the ETA.

While no model version is active, a features job of the project's own input queues an embed job that maps
it (``labeller.jobs.embed.queue_input_map``), so the Explore page has a map before the first training.
"""

from __future__ import annotations

from labeller.jobs import JobContext, JobFailed
from labeller.jobs.embed import input_map_name, queue_input_map
from labeller.jobs.params import TrainParams


def run(context: JobContext) -> None:
    from core.backbones import BackboneUnavailable
    from labeller.jobs.train import features_progress, input_choice
    from labeller.training_data import ensure_features

    backbone = context.params.get("backbone")
    choice = input_choice(context, TrainParams(backbone=backbone))
    own_input = backbone is None or choice.backbone == input_choice(context, TrainParams()).backbone
    if not choice.uses_features:
        if backbone is not None:
            raise JobFailed("the pixels input has no features to compute: choose a backbone")
        with context.completing() as session:
            mapping = queue_input_map(session, input_map_name(choice), changed=False)
        context.log(f"input is {choice.backbone} ({choice.reason}): no features to compute")
        _log_map(context, mapping)
        return

    try:
        computed, failures = ensure_features(
            context.project,
            choice.feature_spec(),
            device=context.device,
            on_progress=features_progress(context, choice.backbone),
            should_stop=context.should_stop,
        )
    except (BackboneUnavailable, FileNotFoundError, ValueError) as error:
        raise JobFailed(str(error)) from error
    context.raise_if_stopped()
    with context.completing() as session:
        mapping = queue_input_map(session, input_map_name(choice), changed=computed > 0) if own_input else None
    context.log(
        f"{choice.backbone}: computed features of {computed} image(s)"
        + (f"; {len(failures)} could not be read, e.g. {next(iter(failures.values()))}" if failures else "")
    )
    _log_map(context, mapping)


def _log_map(context: JobContext, embed_job: int | None) -> None:
    if embed_job is not None:
        context.log(f"no model version yet: embed job {embed_job} queued to map the images by their input")
