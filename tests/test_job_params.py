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
