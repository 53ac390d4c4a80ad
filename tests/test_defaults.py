"""One set of product defaults: a TrainConfig built directly trains the model a new project would."""

from __future__ import annotations

import dataclasses

from core.training import TrainConfig
from labeller.project import TrainingSettings

# The project's backbone is a request ("auto" decides from the images), TrainConfig's the resolved input; "no
# weights file" is "" in TOML (which has no null) and None in TrainConfig.
_RESOLVED_LATER = {"backbone", "backbone_weights"}


def test_train_config_and_project_settings_share_every_default() -> None:
    settings = {f.name: f.default for f in dataclasses.fields(TrainingSettings)}
    config = TrainConfig()
    shared = (set(settings) & {f.name for f in dataclasses.fields(TrainConfig)}) - _RESOLVED_LATER
    assert {"model", "epochs", "batch_size", "consistency", "balance", "classifier", "device"} <= shared
    differing = {
        name: (settings[name], getattr(config, name)) for name in shared if settings[name] != getattr(config, name)
    }
    assert differing == {}, f"project settings vs TrainConfig() defaults differ: {differing}"
