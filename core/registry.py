"""The vocabulary of Latent Labeller, defined once: model kinds, classifier kinds, input kinds (backbones),
query strategies, and the defaults a fresh project gets.

Everything else (TrainConfig, the project settings, the CLI's choices, the app's selectors, the job
parameters, the database's queue) imports these names from here. The module imports nothing heavy, so
``db`` and the CLI may use it without loading torch.
"""

from __future__ import annotations

import re

from core.backbones import BACKBONES

AUTO = "auto"

# -- models ----------------------------------------------------------------------------------------------
# m2: Kingma et al.'s M2 over the taxonomy's leaves; on a pretrained backbone's features it is the paper's
# M1+M2 with M1 = the pretrained encoder. m1m2: M2 on the latent means of a pixel VAE. m1: a VAE, then a
# classifier on its latent means. supervised: the same classifier on the labelled images alone.
MODEL_KINDS: tuple[str, ...] = ("m2", "m1m2", "m1", "supervised")
DEFAULT_MODEL = "m2"
# What a project or a train job may ask for: a kind, or auto, which compares AUTO_MODEL_CANDIDATES by
# cross-validation on the current labels in every train job and trains the best (core.training.selection).
MODEL_CHOICES: tuple[str, ...] = (AUTO, *MODEL_KINDS)
# M2 and the same q(y|x) trained on the labels alone (on features: a linear probe, the logistic-regression
# baseline as a model version). Each measured best somewhere: M2 on features and on digits, supervised on
# hymenoptera pixels. m1 and m1m2 pre-train a VAE first: too slow to fit once per fold in every train job.
AUTO_MODEL_CANDIDATES: tuple[str, ...] = ("m2", "supervised")

# -- training defaults -------------------------------------------------------------------------------------
# One set: core.training.TrainConfig() and a new project's [training] settings both read these
# (tests/test_defaults.py fails if they drift apart), so a TrainConfig built directly (a benchmark, a
# notebook) trains the model a project would.
DEFAULT_EPOCHS = 30
DEFAULT_BATCH_SIZE = 64
# M2's consistency weight: 20 measured best on digits (pixels: 89.9% -> 94.0% at 50 random labels) and on
# hymenoptera features (94.4 -> 94.8% at 20).
DEFAULT_CONSISTENCY = 20.0
# M2's prior-matching weight; auto turns it on only when the labelled leaves are balanced.
DEFAULT_BALANCE: float | str = AUTO
DEFAULT_CLASSIFIER = AUTO
DEFAULT_DEVICE = AUTO
# Upper bounds for a project setting or a train job: 10^20 epochs was accepted and queued a job that never
# ends; a real run here takes tens to a few hundred epochs.
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
DEVICE_CHOICES_TEXT = "auto, cpu, cuda, cuda:N or mps"
DEFAULT_FEATURE_VIEW = "centre"

# Held-out labels a version's calibration must rest on before its temperature may sharpen and before people
# see its percentages (core.calibration.calibrate; the Label card and the Grid).
MIN_CALIBRATION_LABELS = 30

# -- q(y|x) ----------------------------------------------------------------------------------------------
# cnn, mlp, colour and cnn_colour are built in core.nets; vgg16 is torchvision's VGG16 (a local checkpoint);
# linear is a single layer (with dropout) on feature vectors.
CLASSIFIER_KINDS: tuple[str, ...] = ("cnn", "mlp", "linear", "vgg16", "colour", "cnn_colour")

# -- what the model sees -----------------------------------------------------------------------------------
# pixels: the image itself, resized (the pixel VAEs); any other name: that pretrained network's pooled
# features (core.backbones). auto decides per project from its images (core.registry.choose_backbone).
PIXELS = "pixels"
BACKBONE_NAMES: tuple[str, ...] = tuple(BACKBONES)
INPUT_KINDS: tuple[str, ...] = (PIXELS, *BACKBONE_NAMES)
# Measured on the hymenoptera photos (benchmarks/results/label_efficiency/ANALYSIS.md, session 4).
DEFAULT_BACKBONE = "efficientnet_lite2"
# Below this side, or for greyscale images, pixels measured best (digits: 98.0% active at 50 labels). Pixel
# models treat images under it as small: the 3x3 CNN, neighbour consistency, no crops or flips.
SMALL_IMAGE_SIDE = 32

# -- acquisition -------------------------------------------------------------------------------------------
# Uncertainty strategies read a score column of the same name (core.scoring.PoolScores, db predictions);
# larger = label sooner.
SCORE_STRATEGIES: tuple[str, ...] = (
    "entropy",
    "leaf_entropy",
    "margin",
    "least_confidence",
    "bald",
    "disagreement",
    "novelty",
)
STRATEGIES: tuple[str, ...] = ("random", *SCORE_STRATEGIES)
DEFAULT_STRATEGY = "entropy"
COVERAGE_METHODS: tuple[str, ...] = ("farthest", "typical")
# The product's active setting: entropy, k-centre diversified, 20% of each batch for typical coverage
# (measured best on digits and hymenoptera; benchmarks/results/label_efficiency/ANALYSIS.md).
DEFAULT_EXPLORATION = 0.2
DEFAULT_COVERAGE = "typical"
# Images per queue round: the app's queue (labeller.jobs.score) and `labeller evaluate` both draw each round
# from the DIVERSITY_FACTOR x round most uncertain images not yet handed out (core.acquisition.rank_pool).
DEFAULT_ROUND_SIZE = 20
DIVERSITY_FACTOR = 5


def choose_backbone(requested: str, *, channels: int, image_side: int | None) -> tuple[str, str]:
    """(input kind, why) for a project: ``requested`` unless it is ``auto``; auto picks pixels for small or
    greyscale images (where the pixel VAEs measured best) and the default pretrained backbone for colour
    photos (where pixels from scratch lost by 16-20 points to a linear probe on its features)."""
    if requested != AUTO:
        if requested not in INPUT_KINDS:
            raise ValueError(f"unknown backbone {requested!r}; choose auto or one of {', '.join(INPUT_KINDS)}")
        return requested, "set in the project settings"
    if channels == 1:
        return PIXELS, "auto: greyscale images, where the pixel VAEs measured best (digits)"
    if image_side is not None and image_side < SMALL_IMAGE_SIDE:
        return PIXELS, f"auto: tiny images ({image_side} px), where the pixel VAEs measured best (digits)"
    return DEFAULT_BACKBONE, (
        f"auto: colour photos, so features of the pretrained {DEFAULT_BACKBONE} "
        "(hymenoptera: 16-20 points above learning from pixels)"
    )


def device_problem(spec: object) -> str | None:
    """None when ``spec`` names a device kind core.device.resolve_device accepts, else why not.

    Torch-free, so settings and the CLI can refuse ``tpu:9`` at once instead of in a failed job; whether
    this machine has that GPU is for the worker to say (core.device)."""
    if not isinstance(spec, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d{1,3})?", spec.strip().lower()):
        return f"must be {DEVICE_CHOICES_TEXT}, got {spec!r}"
    return None
