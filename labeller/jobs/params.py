"""Typed parameters of the jobs that take them, shared by the app, the CLI and the job itself.

A job row stores its parameters as JSON; ``to_params`` writes only what was set (the project's settings
fill the rest when the job runs), and ``from_params`` reads them back, refusing unknown keys and wrong
types with one message, so a typo in a queued job fails clearly instead of being ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from core.registry import AUTO, CLASSIFIER_KINDS, INPUT_KINDS, MAX_EPOCHS, MODEL_CHOICES, device_problem

PROMOTE_CHOICES = ("auto", "always", "never")


class JobParamsError(ValueError):
    """Parameters a job cannot run with; the message names each problem."""


@dataclass(frozen=True)
class TrainParams:
    """What a train job may override; None: the project's setting.

    promote: auto (when at least as good as the active version on the same audit labels), always or never;
    warm_start: start from the active version's weights when compatible; config: any other
    core.training.TrainConfig field; reason, new_labels, newest_annotation_id: why it was queued (shown)."""

    model: str | None = None
    backbone: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    consistency: float | None = None
    balance: float | str | None = None
    classifier: str | None = None
    image_size: int | None = None
    channels: int | None = None
    device: str | None = None
    promote: str = "auto"
    warm_start: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    reason: str = "manual"
    new_labels: int | None = None
    newest_annotation_id: int | None = None

    def problems(self) -> list[str]:
        found = []
        if self.model is not None and self.model not in MODEL_CHOICES:
            found.append(f"model must be one of {', '.join(MODEL_CHOICES)}, got {self.model!r}")
        if self.backbone is not None and self.backbone not in (AUTO, *INPUT_KINDS):
            found.append(f"backbone must be auto or one of {', '.join(INPUT_KINDS)}, got {self.backbone!r}")
        if self.promote not in PROMOTE_CHOICES:
            found.append(f"promote must be one of {PROMOTE_CHOICES}, got {self.promote!r}")
        for name in ("epochs", "batch_size", "image_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                found.append(f"{name} must be a whole number >= 1, got {value!r}")
        if isinstance(self.epochs, int) and self.epochs > MAX_EPOCHS:
            found.append(f"epochs must be at most {MAX_EPOCHS}, got {self.epochs}")
        if self.classifier is not None and self.classifier not in (AUTO, *CLASSIFIER_KINDS):
            found.append(f"classifier must be auto or one of {', '.join(CLASSIFIER_KINDS)}, got {self.classifier!r}")
        if self.device is not None and (problem := device_problem(self.device)):
            found.append(f"device {problem}")
        if self.channels is not None and self.channels not in (1, 3):
            found.append(f"channels must be 1 or 3, got {self.channels!r}")
        if not isinstance(self.config, dict):
            found.append(f"config must be a table of TrainConfig fields, got {self.config!r}")
        return found

    def to_params(self) -> dict[str, Any]:
        """The job row's JSON: defaults left out."""
        defaults = TrainParams()
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(defaults, f.name)
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrainParams:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise JobParamsError(f"unknown train job parameters {unknown}; known: {sorted(known)}")
        typed = cls(**params)
        if found := typed.problems():
            raise JobParamsError("; ".join(found))
        return typed
