"""Training configuration and results: ``TrainConfig`` (every knob, validated), the progress record and
the trained model with everything scoring needs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.data import FeatureScaler, to_float
from core.density import LatentDensity
from core.features import VIEWS
from core.models import LIKELIHOODS
from core.registry import (
    AUTO,
    CLASSIFIER_KINDS,
    DEFAULT_BALANCE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CLASSIFIER,
    DEFAULT_CONSISTENCY,
    DEFAULT_DEVICE,
    DEFAULT_EPOCHS,
    DEFAULT_FEATURE_VIEW,
    DEFAULT_MODEL,
    INPUT_KINDS,
    MODEL_KINDS,
    PIXELS,
)
from core.taxonomy import Taxonomy

CLASSIFIERS = (AUTO, *CLASSIFIER_KINDS)
AUGMENTATIONS = ("auto", "none", "shift", "crop_flip")
CONSISTENCY_VIEWS = ("auto", "augment", "neighbour")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where and what to try."""


class TrainingCancelled(RuntimeError):
    """``should_stop`` returned True; nothing was produced."""


@dataclass
class TrainConfig:
    model: str = DEFAULT_MODEL  # core.registry.MODEL_KINDS
    # What the pool's rows are: "pixels" (uint8 images) or the backbone whose pooled features they are
    # (core.backbones; computed by core.features before fit). Recorded so that scoring feeds the same input.
    backbone: str = PIXELS
    backbone_weights: str | None = None  # a local weights file the features were computed with
    feature_view: str = DEFAULT_FEATURE_VIEW  # core.features.VIEWS
    epochs: int = DEFAULT_EPOCHS  # semi-supervised (or supervised) phase
    m1_epochs: int | None = None  # VAE pre-training of m1 / m1m2; None: same as epochs
    batch_size: int = DEFAULT_BATCH_SIZE  # unlabelled images per step (and per rank under DDP)
    labelled_batch_size: int = 32  # labelled images per step, drawn with replacement
    lr: float = 1e-3
    weight_decay: float = 0.0
    alpha: float = 20.0  # weight of the classification term per labelled image (chosen by measurement)
    latent_dim: int = 32  # z of M2 (and of M1 when model == "m1")
    m1_latent_dim: int = 32  # M1's z in m1m2
    arch: str = "auto"  # a key of core.nets.ARCHITECTURES, or auto: conv for >= 32 px, else mlp
    # core.registry.CLASSIFIER_KINDS; auto: linear on features, cnn on pixels (3x3 convs under 32 px)
    classifier: str = DEFAULT_CLASSIFIER
    vgg16_weights: str | None = None  # local VGG16 state_dict to start the classifier from
    dropout: float = 0.3
    # Weight of the consistency term of M2 (models.consistency_loss): q(y|x) of each unlabelled image is
    # pulled towards q(y|view), the view being one of its pixel-space nearest neighbours ("neighbour") or a
    # re-augmented copy ("augment"); auto: neighbours for tiny images, augmentation for photos.
    consistency: float = DEFAULT_CONSISTENCY
    consistency_view: str = "auto"
    neighbours: int = 7
    # Weight of M2's prior-matching term (models.prior_mismatch): the mean q(y|x) of each unlabelled batch
    # is pulled towards p(y), uniform over the leaves. Use it when the leaves are roughly balanced; "auto":
    # AUTO_BALANCE when the labelled leaves are balanced (balanced_leaves), else 0.
    balance: float | str = DEFAULT_BALANCE
    likelihood: str = "auto"  # bernoulli or gaussian (learned scale); auto: gaussian (measured best on digits)
    augment: str = "auto"  # none, shift, crop_flip; auto: none under SMALL_IMAGE_SIDE px, crop_flip for photos
    device: str = DEFAULT_DEVICE
    amp: bool = True  # mixed precision on cuda (bf16 where supported); ignored on cpu
    seed: int = 0
    patience: int = 10  # epochs without validation improvement before stopping
    val_fraction: float = 0.2
    grad_clip: float = 10.0
    progress_every: int = 10  # steps between progress callbacks (and one at every epoch end)

    def __post_init__(self) -> None:
        if isinstance(self.vgg16_weights, Path):
            self.vgg16_weights = str(self.vgg16_weights)

    def validate(self) -> None:
        problems = []
        if self.model not in MODEL_KINDS:
            problems.append(f"model must be one of {MODEL_KINDS}, got {self.model!r}")
        if self.backbone not in INPUT_KINDS:
            problems.append(f"backbone must be one of {INPUT_KINDS}, got {self.backbone!r}")
        if self.feature_view not in VIEWS:
            problems.append(f"feature_view must be one of {VIEWS}, got {self.feature_view!r}")
        if self.classifier not in CLASSIFIERS:
            problems.append(f"classifier must be one of {CLASSIFIERS}, got {self.classifier!r}")
        if self.likelihood not in ("auto", *LIKELIHOODS):
            problems.append(f"likelihood must be auto or one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.augment not in AUGMENTATIONS:
            problems.append(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        if self.consistency_view not in CONSISTENCY_VIEWS:
            problems.append(f"consistency_view must be one of {CONSISTENCY_VIEWS}, got {self.consistency_view!r}")
        if self.consistency < 0:
            problems.append(f"consistency must be >= 0, got {self.consistency}")
        if self.balance != AUTO and not (isinstance(self.balance, int | float) and self.balance >= 0):
            problems.append(f"balance must be auto or a number >= 0, got {self.balance!r}")
        for name in ("epochs", "batch_size", "labelled_batch_size", "latent_dim", "m1_latent_dim", "neighbours"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr must be a positive number, got {self.lr}")
        if self.alpha < 0:
            problems.append(f"alpha must be >= 0, got {self.alpha}")
        if not 0 <= self.val_fraction < 1:
            problems.append(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Progress:
    phase: str  # "m1" (VAE pre-training) or "train"
    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based within the epoch
    steps_per_epoch: int
    loss_terms: dict[str, float]
    validation: dict[str, float]  # latest epoch-end metrics; empty before the first
    images_per_second: float
    eta_seconds: float  # for the whole fit, both phases


@dataclass
class TrainedModel:
    model: nn.Module
    taxonomy: Taxonomy
    config: TrainConfig
    metrics: dict[str, Any]
    temperature: float
    image_shape: tuple[int, ...]  # (C, H, W) for pixels, (D,) for features
    latent_density: LatentDensity | None = None
    scaler: FeatureScaler | None = None  # features -> model inputs (None for pixels)
    extra: dict[str, Any] = field(default_factory=dict)

    def inputs(self, batch: torch.Tensor) -> torch.Tensor:
        """Stored rows (uint8 pixels or raw features) -> what the model takes."""
        x = to_float(batch)
        return self.scaler(x) if self.scaler is not None else x
