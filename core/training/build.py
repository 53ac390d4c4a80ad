"""Building a model from its config: the table of automatic choices (architecture, classifier, likelihood,
augmentation, consistency view) and the prior-matching decision made from the labels."""

from __future__ import annotations

import dataclasses

from torch import nn

from core.data import LabelledPool, default_augmentation
from core.models import M2, VAE, M1Classifier, StackedM1M2, Supervised
from core.nets import arch_for, build_classifier, default_arch
from core.registry import AUTO, SMALL_IMAGE_SIDE
from core.taxonomy import Taxonomy
from core.training.config import TrainConfig

# The prior-matching weight that measured best on balanced leaves (digits: with consistency, 89.9% -> 94.0%).
AUTO_BALANCE = 20.0
# Leaves count as balanced when the rarest labelled leaf has at least this share of the commonest's labels.
BALANCED_RATIO = 1 / 3


def _resolved(config: TrainConfig, image_shape: tuple[int, ...]) -> dict[str, str]:
    vectors = len(image_shape) == 1
    tiny = vectors or image_shape[1] < SMALL_IMAGE_SIDE
    return {
        "arch": default_arch(image_shape) if config.arch == "auto" else config.arch,
        # Tiny images get the 3x3-conv net: active M2 on digits reached 98.0 / 98.6% at 50 / 100 labels with
        # it, 96.9 / 97.2% with the MLP (benchmarks/results/label_efficiency/ANALYSIS.md). Features get a
        # linear q(y|x): a pretrained backbone already did the non-linear work, and few labels fit few weights.
        "classifier": ("linear" if vectors else "cnn") if config.classifier == "auto" else config.classifier,
        # Measured on digits (50 labels, M2, one seed): gaussian 90.0% vs bernoulli 88.2%.
        "likelihood": "gaussian" if config.likelihood == "auto" else config.likelihood,
        "augment": default_augmentation(image_shape) if config.augment == "auto" else config.augment,
        "consistency_view": ("neighbour" if tiny else "augment")
        if config.consistency_view == "auto"
        else config.consistency_view,
    }


def balanced_leaves(pool: LabelledPool) -> bool:
    """Every leaf has exact labels, and the rarest has at least BALANCED_RATIO of the commonest's: then a
    uniform p(y) is about right and the prior-matching term helps rather than distorts."""
    exact = pool.labelled & (pool.admissible.sum(axis=1) == 1)
    counts = pool.admissible[exact].sum(axis=0)
    return bool(counts.min() > 0 and counts.min() >= BALANCED_RATIO * counts.max())


def resolve_balance(config: TrainConfig, pool: LabelledPool) -> TrainConfig:
    """``config`` with ``balance = "auto"`` decided from the pool's labels."""
    if config.balance != AUTO:
        return config
    return dataclasses.replace(config, balance=AUTO_BALANCE if balanced_leaves(pool) else 0.0)


def build_model(
    config: TrainConfig, taxonomy: Taxonomy, image_shape: tuple[int, ...], *, load_vgg_weights: bool = True
) -> nn.Module:
    """A freshly initialised model as ``config`` describes it. For feature vectors (``image_shape == (D,)``)
    the likelihood is an unbounded Gaussian (standardised features are not pixels in [0, 1]).

    ``config.balance`` must be a number: "auto" depends on the labels (``resolve_balance``, which ``fit``
    calls)."""
    if config.balance == AUTO:
        raise ValueError('balance "auto" is decided from the labels: call resolve_balance(config, pool) first')
    chosen = _resolved(config, image_shape)
    bounded = len(image_shape) == 3
    arch = arch_for(chosen["arch"])
    k = taxonomy.num_leaves
    weights = config.vgg16_weights if load_vgg_weights else None

    def classifier(input_shape: tuple[int, ...], kind: str) -> nn.Module:
        return build_classifier(kind, input_shape, k, dropout=config.dropout, vgg16_weights=weights)

    if config.model == "supervised":
        return Supervised(classifier(image_shape, chosen["classifier"]))
    if config.model == "m2":
        return M2(
            arch,
            image_shape,
            k,
            config.latent_dim,
            chosen["likelihood"],
            classifier(image_shape, chosen["classifier"]),
            config.alpha,
            bounded=bounded,
            consistency=config.consistency,
            balance=config.balance,
        )
    if config.model == "m1":
        vae = VAE(arch, image_shape, config.latent_dim, chosen["likelihood"], bounded=bounded)
        return M1Classifier(vae, k, config.dropout, config.alpha)
    vae = VAE(arch, image_shape, config.m1_latent_dim, chosen["likelihood"], bounded=bounded)
    latent_shape = (config.m1_latent_dim,)
    m2 = M2(
        arch_for("mlp_small"),
        latent_shape,
        k,
        config.latent_dim,
        "gaussian",
        classifier(latent_shape, "mlp"),
        config.alpha,
        bounded=False,
        consistency=config.consistency,
        balance=config.balance,
    )
    return StackedM1M2(vae, m2)
