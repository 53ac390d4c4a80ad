"""Train job parameters: one typed dataclass for the app, the CLI and the job."""

from __future__ import annotations

import pytest

from labeller.jobs.params import JobParamsError, TrainParams


def test_only_what_was_set_is_stored_and_reads_back_the_same() -> None:
    params = TrainParams(model="m2", backbone="efficientnet_lite0", epochs=5, reason="cli")
    stored = params.to_params()
    assert stored == {"model": "m2", "backbone": "efficientnet_lite0", "epochs": 5, "reason": "cli"}
    assert TrainParams.from_params(stored) == params


def test_typos_and_bad_values_are_refused_with_every_problem_named() -> None:
    with pytest.raises(JobParamsError, match="unknown train job parameters \\['epoch'\\]"):
        TrainParams.from_params({"epoch": 3})
    with pytest.raises(JobParamsError) as error:
        TrainParams.from_params({"model": "m3", "backbone": "resnet1000", "epochs": 0, "promote": "maybe"})
    message = str(error.value)
    for fragment in ("model must be", "backbone must be", "epochs must be", "promote must be"):
        assert fragment in message


def test_auto_is_a_model_choice_for_a_job_and_for_the_project_settings() -> None:
    from labeller.project import LabellingSettings, TrainingSettings
    from labeller.settings_check import settings_problems

    assert TrainParams.from_params({"model": "auto"}).model == "auto"
    sections = {"labelling": LabellingSettings, "training": TrainingSettings}
    assert settings_problems({"name": "p", "training": {"model": "auto"}}, sections) == []
    (problem,) = settings_problems({"name": "p", "training": {"model": "best"}}, sections)
    assert problem.startswith("[training] model must be one of auto, m2")
