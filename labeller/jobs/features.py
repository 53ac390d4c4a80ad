"""Features job: compute and cache a backbone's pooled features for every project image that lacks them.

Params: ``backbone`` (default: the project's input, decided from its images when set to auto). Batches are
written to the cache as they are computed, so a worker killed mid-way loses at most one batch, and a re-run
(or a train job after new imports) computes only the images still missing. Progress events carry the
images done, images/s and the ETA.
"""

from __future__ import annotations

from labeller.jobs import JobContext, JobFailed
from labeller.jobs.params import TrainParams


def run(context: JobContext) -> None:
    from core.backbones import BackboneUnavailable
    from labeller.jobs.train import features_progress, input_choice
    from labeller.training_data import ensure_features

    backbone = context.params.get("backbone")
    choice = input_choice(context, TrainParams(backbone=backbone))
    if not choice.uses_features:
        if backbone is not None:
            raise JobFailed("the pixels input has no features to compute: choose a backbone")
        with context.completing():
            pass
        context.log(f"input is {choice.backbone} ({choice.reason}): no features to compute")
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
    with context.completing():
        pass
    context.log(
        f"{choice.backbone}: computed features of {computed} image(s)"
        + (f"; {len(failures)} could not be read, e.g. {next(iter(failures.values()))}" if failures else "")
    )
