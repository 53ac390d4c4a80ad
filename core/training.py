"""Training: ``fit(pool, taxonomy, config) -> TrainedModel``, checkpoints, and the progress callback.

One code path for every model: M1 and M1+M2 first train their VAE on every image (phase "m1"), then the
semi-supervised phase ("train") optimises the model's own loss with a labelled and an unlabelled stream
sampled separately, so every batch carries labelled images. Validation labels (a stratified slice of the
labelled images) drive early stopping and the temperature; the same seed repeats a cpu run exactly.
Under ``torchrun`` (torch.distributed initialised) the trained module is wrapped in
DistributedDataParallel and every rank takes its own shard of each batch stream.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.calibration import expected_calibration_error, fit_temperature, set_nll
from core.data import FeatureScaler, LabelledPool, augment, default_augmentation, stratified_split, to_float
from core.density import LatentDensity
from core.device import autocast, eval_mode, needs_grad_scaler, resolve_device
from core.features import VIEWS
from core.models import LIKELIHOODS, M2, VAE, M1Classifier, StackedM1M2, Supervised
from core.nets import arch_for, build_classifier, default_arch
from core.registry import AUTO, CLASSIFIER_KINDS, DEFAULT_MODEL, INPUT_KINDS, MODEL_KINDS, PIXELS
from core.taxonomy import Taxonomy

CLASSIFIERS = (AUTO, *CLASSIFIER_KINDS)
# Feature-space neighbours are sought in this many principal directions of the scaled features.
NEIGHBOUR_COMPONENTS = 64
# The prior-matching weight that measured best on balanced leaves (digits: with consistency, 89.9% -> 94.0%).
AUTO_BALANCE = 20.0
# Leaves count as balanced when the rarest labelled leaf has at least this share of the commonest's labels.
BALANCED_RATIO = 1 / 3
AUGMENTATIONS = ("auto", "none", "shift", "crop_flip")
CONSISTENCY_VIEWS = ("auto", "augment", "neighbour")
CHECKPOINT_FORMAT = 1


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
    feature_view: str = "centre"  # core.features.VIEWS
    epochs: int = 30  # semi-supervised (or supervised) phase
    m1_epochs: int | None = None  # VAE pre-training of m1 / m1m2; None: same as epochs
    batch_size: int = 64  # unlabelled images per step (and per rank under DDP)
    labelled_batch_size: int = 32  # labelled images per step, drawn with replacement
    lr: float = 1e-3
    weight_decay: float = 0.0
    alpha: float = 20.0  # weight of the classification term per labelled image (chosen by measurement)
    latent_dim: int = 32  # z of M2 (and of M1 when model == "m1")
    m1_latent_dim: int = 32  # M1's z in m1m2
    arch: str = "auto"  # a key of core.nets.ARCHITECTURES, or auto: conv for >= 32 px, else mlp
    # core.registry.CLASSIFIER_KINDS; auto: linear on features, cnn on pixels (3x3 convs under 32 px)
    classifier: str = AUTO
    vgg16_weights: str | None = None  # local VGG16 state_dict to start the classifier from
    dropout: float = 0.3
    # Weight of the consistency term of M2 (models.consistency_loss): q(y|x) of each unlabelled image is
    # pulled towards q(y|view), the view being one of its pixel-space nearest neighbours ("neighbour") or a
    # re-augmented copy ("augment"); auto: neighbours for tiny images, augmentation for photos.
    consistency: float = 0.0
    consistency_view: str = "auto"
    neighbours: int = 7
    # Weight of M2's prior-matching term (models.prior_mismatch): the mean q(y|x) of each unlabelled batch
    # is pulled towards p(y), uniform over the leaves. Use it when the leaves are roughly balanced; "auto":
    # AUTO_BALANCE when the labelled leaves are balanced (balanced_leaves), else 0.
    balance: float | str = 0.0
    likelihood: str = "auto"  # bernoulli or gaussian (learned scale); auto: gaussian (measured best on digits)
    augment: str = "auto"  # none, shift, crop_flip; auto: none for tiny images, crop_flip for photos
    device: str = "auto"
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


# ---------------------------------------------------------------------------------------------------------
# Building


def _resolved(config: TrainConfig, image_shape: tuple[int, ...]) -> dict[str, str]:
    vectors = len(image_shape) == 1
    tiny = vectors or image_shape[1] < 32
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
    the likelihood is an unbounded Gaussian (standardised features are not pixels in [0, 1])."""
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


# ---------------------------------------------------------------------------------------------------------
# Fitting


@dataclass
class _Distributed:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> _Distributed:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when any rank says True (cancel, divergence)."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)


def _strata(pool: LabelledPool, taxonomy: Taxonomy, indices: np.ndarray) -> np.ndarray:
    """Stratify the validation split by main class (of the first admissible leaf)."""
    first_leaf = pool.admissible[indices].argmax(axis=1)
    return taxonomy.main_of_leaf()[first_leaf]


def _diverged(loss: torch.Tensor, phase: str, epoch: int, step: int, config: TrainConfig) -> TrainingDiverged:
    return TrainingDiverged(
        f"loss became {float(loss.detach().float())} in phase {phase!r}, epoch {epoch}, step {step} "
        f"(lr={config.lr}; on this or another rank): lower the learning rate, or check the images"
    )


class _Fitter:
    """State of one fit: data on the device, random streams, timing, callbacks."""

    def __init__(
        self,
        pool: LabelledPool,
        taxonomy: Taxonomy,
        config: TrainConfig,
        on_progress: Callable[[Progress], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.pool, self.taxonomy, self.config = pool, taxonomy, config
        self.on_progress, self.should_stop = on_progress, should_stop
        self.dist = _Distributed.current()
        self.device = resolve_device(config.device)
        self.use_amp = config.amp and self.device.type == "cuda"
        self.chosen = _resolved(config, pool.image_shape)
        # Stored rows (uint8 pixels, or float16 features) stay compact on the device; inputs are made per batch.
        self.feature_scaler = FeatureScaler.fit(pool.images) if pool.is_features else None
        self.images = torch.from_numpy(np.ascontiguousarray(pool.images)).to(self.device)
        self.admissible = torch.from_numpy(pool.admissible).to(self.device)
        # Model init uses the global seed (identical on every rank); the data streams are per rank.
        self.generator = torch.Generator().manual_seed(config.seed * 1009 + self.dist.rank)
        self.rng = np.random.default_rng([config.seed, self.dist.rank])
        labelled = np.flatnonzero(pool.labelled)
        split_rng = np.random.default_rng([config.seed, 7])
        if len(labelled) and config.val_fraction > 0:
            train_pos, val_pos = stratified_split(_strata(pool, taxonomy, labelled), config.val_fraction, split_rng)
        else:
            train_pos, val_pos = np.arange(len(labelled)), np.empty(0, dtype=np.int64)
        self.train_labelled = labelled[train_pos]
        self.val_labelled = labelled[val_pos]
        # Images whose label is used for training are not in the unlabelled stream; validation images are.
        self.unlabelled = np.setdiff1d(np.arange(pool.num_images), self.train_labelled)
        self.neighbours = (
            nearest_neighbours(
                self.images,
                config.neighbours,
                rng=np.random.default_rng([config.seed, 13]),
                scaler=self.feature_scaler,
                components=NEIGHBOUR_COMPONENTS if pool.is_features else None,
            )
            if config.consistency > 0 and self.chosen["consistency_view"] == "neighbour"
            else None
        )
        self.validation: dict[str, float] = {}
        self.started = time.perf_counter()
        self.total_steps = 0
        self.done_steps = 0
        self.images_seen = 0

    # -- batches -------------------------------------------------------------------------------------
    def batch(self, indices: np.ndarray, train: bool) -> torch.Tensor:
        x = to_float(self.images[torch.from_numpy(indices).to(self.device)])
        if self.feature_scaler is not None:
            x = self.feature_scaler(x)
        if train:
            x = augment(x, self.chosen["augment"], self.generator)
        return x

    def epoch_order(self, indices: np.ndarray, epoch: int) -> np.ndarray:
        """The same permutation on every rank, then each rank takes its shard."""
        order = np.random.default_rng([self.config.seed, epoch, 11]).permutation(indices)
        return order[self.dist.rank :: self.dist.world_size]

    def view_batch(self, indices: np.ndarray) -> torch.Tensor | None:
        """The consistency term's view of each image: a random nearest neighbour, or itself, re-augmented."""
        if self.config.consistency <= 0:
            return None
        if self.neighbours is not None:
            pick = self.rng.integers(0, self.neighbours.shape[1], size=len(indices))
            indices = self.neighbours[indices, pick]
        return self.batch(indices, train=True)

    def labelled_batch(self) -> np.ndarray:
        return self.rng.choice(self.train_labelled, size=self.config.labelled_batch_size, replace=True)

    # -- one optimisation step -----------------------------------------------------------------------
    def step(self, trainable: nn.Module, optimiser: torch.optim.Optimizer, scaler: Any, inputs: tuple) -> dict:
        optimiser.zero_grad(set_to_none=True)
        with autocast(self.device, self.use_amp):
            out = trainable(*inputs)
        loss = out.loss.float()
        # Every rank must stop together, or the others would wait forever in the gradient all-reduce.
        if self.dist.any(not bool(torch.isfinite(loss.detach())), self.device):
            raise _diverged(loss, self.phase, self.epoch, self.step_no, self.config)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimiser)
        else:
            loss.backward()
        params = [p for group in optimiser.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        if scaler is not None:
            scaler.step(optimiser)
            scaler.update()
        else:
            optimiser.step()
        terms = {"loss": float(loss.detach())}
        terms.update({k: float(v) for k, v in out.terms.items()})
        return terms

    def poll_stop(self) -> None:
        stop = bool(self.should_stop()) if self.should_stop is not None else False
        if self.dist.any(stop, self.device):
            raise TrainingCancelled(f"training cancelled in phase {self.phase!r}, epoch {self.epoch}")

    def report(self, terms: dict[str, float], steps_per_epoch: int, epochs: int) -> None:
        if self.on_progress is None or self.dist.rank != 0:
            return
        elapsed = time.perf_counter() - self.started
        per_step = elapsed / max(self.done_steps, 1)
        self.on_progress(
            Progress(
                phase=self.phase,
                epoch=self.epoch,
                epochs=epochs,
                step=self.step_no,
                steps_per_epoch=steps_per_epoch,
                loss_terms=dict(terms),
                validation=dict(self.validation),
                images_per_second=self.images_seen * self.dist.world_size / max(elapsed, 1e-9),
                eta_seconds=per_step * max(self.total_steps - self.done_steps, 0),
            )
        )

    def wrap(self, module: nn.Module) -> nn.Module:
        if not self.dist.active:
            return module
        device_ids = [self.device.index or 0] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def optimiser(self, module: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in module.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.config.lr, weight_decay=self.config.weight_decay)

    def scaler(self) -> Any:
        return torch.amp.GradScaler("cuda") if needs_grad_scaler(self.device, self.use_amp) else None

    # -- phases --------------------------------------------------------------------------------------
    def steps_m1(self) -> int:
        per_rank = math.ceil(self.pool.num_images / self.dist.world_size)
        return max(1, math.ceil(per_rank / self.config.batch_size))

    def steps_main(self, semi_supervised: bool) -> int:
        if semi_supervised:
            per_rank = math.ceil(len(self.unlabelled) / self.dist.world_size)
            return max(1, math.ceil(per_rank / self.config.batch_size))
        per_rank = math.ceil(len(self.train_labelled) / self.dist.world_size)
        return max(1, math.ceil(per_rank / self.config.labelled_batch_size))

    def pretrain_vae(self, vae: VAE, epochs: int) -> None:
        self.phase = "m1"
        trainable = self.wrap(vae)
        optimiser, scaler = self.optimiser(vae), self.scaler()
        steps = self.steps_m1()
        vae.train()
        for self.epoch in range(1, epochs + 1):
            order = self.epoch_order(np.arange(self.pool.num_images), self.epoch)
            terms: dict[str, float] = {}
            for self.step_no in range(1, steps + 1):
                self.poll_stop()
                chunk = order[(self.step_no - 1) * self.config.batch_size : self.step_no * self.config.batch_size]
                if len(chunk) == 0:
                    chunk = self.rng.choice(order, size=min(len(order), self.config.batch_size))
                terms = self.step(trainable, optimiser, scaler, (self.batch(chunk, train=True),))
                self.done_steps += 1
                self.images_seen += len(chunk)
                if self.step_no % self.config.progress_every == 0 or self.step_no == steps:
                    self.report(terms, steps, epochs)
        for p in vae.parameters():
            p.requires_grad_(False)
        vae.eval()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Leaf logits and admissible masks of ``indices`` (float32, on the cpu)."""
        logits = []
        with eval_mode(model):
            for start in range(0, len(indices), 512):
                chunk = indices[start : start + 512]
                with autocast(self.device, self.use_amp):
                    logits.append(model.classify(self.batch(chunk, train=False)).float().cpu())
        return torch.cat(logits), self.admissible[torch.from_numpy(indices).to(self.device)].cpu()

    def validation_metrics(self, model: nn.Module, temperature: float = 1.0) -> dict[str, float]:
        logits, admissible = self.evaluate(model, self.val_labelled)
        logits = logits / temperature
        set_correct = admissible.gather(1, logits.argmax(1, keepdim=True)).float().mean()
        main_of_leaf = torch.from_numpy(self.taxonomy.main_of_leaf())
        main_probs = logits.softmax(-1).numpy() @ self.taxonomy.leaf_to_main_matrix()
        true_main = main_of_leaf[admissible.float().argmax(1)].numpy()
        return {
            "val_accuracy": float(set_correct),
            "val_main_accuracy": float((main_probs.argmax(1) == true_main).mean()),
            "val_nll": float(set_nll(logits, admissible)),
            "val_ece": expected_calibration_error(main_probs, true_main),
        }

    def train_main(self, model: nn.Module, epochs: int, semi_supervised: bool) -> dict[str, Any]:
        """The semi-supervised (or supervised) phase with early stopping on the validation labels."""
        self.phase = "train"
        trainable = self.wrap(model)
        optimiser, scaler = self.optimiser(model), self.scaler()
        steps = self.steps_main(semi_supervised)
        best_key: tuple[float, ...] | None = None
        best_state, best_epoch, waited = None, 0, 0
        model.train()
        if isinstance(model, (StackedM1M2, M1Classifier)):
            model.vae.eval()  # frozen; no dropout in it anyway, but keep it honest
        for self.epoch in range(1, epochs + 1):
            order = self.epoch_order(self.unlabelled, self.epoch) if semi_supervised else None
            terms: dict[str, float] = {}
            for self.step_no in range(1, steps + 1):
                self.poll_stop()
                x_unlabelled = x_view = None
                if order is not None and len(order):
                    chunk = order[(self.step_no - 1) * self.config.batch_size : self.step_no * self.config.batch_size]
                    if len(chunk) == 0:
                        chunk = self.rng.choice(order, size=min(len(order), self.config.batch_size))
                    x_unlabelled = self.batch(chunk, train=True)
                    x_view = self.view_batch(chunk)
                    self.images_seen += len(chunk)
                labelled = self.labelled_batch()
                x_labelled = self.batch(labelled, train=True)
                admissible = self.admissible[torch.from_numpy(labelled).to(self.device)]
                terms = self.step(trainable, optimiser, scaler, (x_unlabelled, x_labelled, admissible, x_view))
                self.images_seen += len(labelled)
                self.done_steps += 1
                if self.step_no % self.config.progress_every == 0 and self.step_no != steps:
                    self.report(terms, steps, epochs)
            if len(self.val_labelled):
                self.validation = self.validation_metrics(model)
                # A few validation labels are soon all correct: a tie keeps training and takes the later
                # epoch. Stopping at the first best (or on the NLL, which rises as q sharpens) cost 2-3
                # points on digits (50 labels: 86.4% / 87.3% vs 89.7% without early stopping).
                key = (self.validation["val_accuracy"],)
                if best_key is None or key >= best_key:
                    best_key, best_epoch, waited = key, self.epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    waited += 1
            self.report(terms, steps, epochs)
            if len(self.val_labelled) and waited >= self.config.patience:
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        return {"best_epoch": best_epoch or self.epoch, "epochs_run": self.epoch}


def fit(
    pool: LabelledPool,
    taxonomy: Taxonomy,
    config: TrainConfig,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    init: TrainedModel | None = None,
) -> TrainedModel:
    """Train ``config.model`` on ``pool`` and return it calibrated, with its metrics.

    init: warm start from an earlier model of the same taxonomy and architecture (its weights are
    copied; for m1/m1m2 the VAE is then not pre-trained again).
    Raises TrainingDiverged on a NaN/inf loss, TrainingCancelled when ``should_stop()`` says so,
    ValueError on a pool or config that cannot be trained.
    """
    config.validate()
    config = resolve_balance(config, pool)
    if pool.num_leaves != taxonomy.num_leaves:
        raise ValueError(f"pool has {pool.num_leaves} leaves per image, taxonomy has {taxonomy.num_leaves}")
    if not pool.labelled.any():
        raise ValueError("no labelled images: label a few images before training a classifier")
    torch.manual_seed(config.seed)
    fitter = _Fitter(pool, taxonomy, config, on_progress, should_stop)
    if len(fitter.train_labelled) == 0:
        raise ValueError("every labelled image went to validation; lower val_fraction")
    model = build_model(config, taxonomy, pool.image_shape).to(fitter.device)
    warm = init is not None
    if init is not None:
        if init.taxonomy.to_dict() != taxonomy.to_dict() or tuple(init.image_shape) != pool.image_shape:
            raise ValueError("init model was trained on another taxonomy or image size; train from scratch")
        try:
            model.load_state_dict(init.model.state_dict())
        except RuntimeError as error:
            raise ValueError(f"init model does not match this config's architecture: {error}") from error

    has_vae = isinstance(model, (StackedM1M2, M1Classifier))
    m1_epochs = 0 if (not has_vae or warm) else (config.m1_epochs if config.m1_epochs is not None else config.epochs)
    semi_supervised = isinstance(model, (M2, StackedM1M2))
    fitter.total_steps = m1_epochs * fitter.steps_m1() + config.epochs * fitter.steps_main(semi_supervised)

    started = time.perf_counter()
    if has_vae:
        if m1_epochs:
            fitter.pretrain_vae(model.vae, m1_epochs)
        for p in model.vae.parameters():
            p.requires_grad_(False)
    schedule = fitter.train_main(model, config.epochs, semi_supervised)
    seconds = time.perf_counter() - started

    metrics: dict[str, Any] = {
        "model": config.model,
        **fitter.chosen,
        "alpha": config.alpha,
        "consistency": config.consistency,
        "balance": config.balance,
        "num_images": pool.num_images,
        "num_labelled": int(pool.labelled.sum()),
        "num_train_labels": len(fitter.train_labelled),
        "num_val_labels": len(fitter.val_labelled),
        "train_seconds": seconds,
        "images_per_second": fitter.images_seen * fitter.dist.world_size / max(seconds, 1e-9),
        "device": str(fitter.device),
        "amp": fitter.use_amp,
        "world_size": fitter.dist.world_size,
        **schedule,
    }
    temperature = 1.0
    if len(fitter.val_labelled):
        before = fitter.validation_metrics(model)
        logits, admissible = fitter.evaluate(model, fitter.val_labelled)
        temperature = fit_temperature(logits, admissible)
        after = fitter.validation_metrics(model, temperature)
        metrics.update(after)
        metrics["val_ece_uncalibrated"] = before["val_ece"]
        metrics["val_nll_uncalibrated"] = before["val_nll"]
    metrics["temperature"] = temperature
    density = _fit_latent_density(fitter, model)
    return TrainedModel(
        model=model.eval(),
        taxonomy=taxonomy,
        config=config,
        metrics=metrics,
        temperature=temperature,
        image_shape=pool.image_shape,
        latent_density=density,
        scaler=fitter.feature_scaler,
    )


@torch.no_grad()
def nearest_neighbours(
    images: torch.Tensor,
    k: int,
    *,
    chunk: int = 1024,
    max_reference: int = 50_000,
    rng: np.random.Generator | None = None,
    scaler: FeatureScaler | None = None,
    components: int | None = None,
) -> np.ndarray:
    """(N, k) indices of each image's k nearest other images by Euclidean distance between model inputs
    (pixels, or scaled features), measured in their top ``components`` principal directions when given
    (fitted on a sample: for a million 1,280-d feature rows it turns hours of distances into a minute).

    Beyond ``max_reference`` images the neighbours are sought among a random sample of that many, so the
    cost grows as N x max_reference rather than N squared."""
    count = len(images)
    device = images.device

    projection: torch.Tensor | None = None

    def model_inputs(index: torch.Tensor | slice) -> torch.Tensor:
        # Converted a chunk at a time: a million float16 feature rows must not become 5 GB of float32.
        rows = to_float(images[index].flatten(1))
        rows = scaler(rows) if scaler is not None else rows
        return rows @ projection if projection is not None else rows

    if components is not None and components < images[0].numel():
        sample_rng = rng if rng is not None else np.random.default_rng(0)
        sample = torch.from_numpy(np.sort(sample_rng.choice(count, min(count, 10_000), replace=False))).to(device)
        centred = model_inputs(sample)
        centred = centred - centred.mean(0, keepdim=True)
        projection = torch.linalg.svd(centred, full_matrices=False).Vh[:components].T.contiguous()

    k = min(k, count - 1)
    if k < 1:
        return np.arange(count)[:, None]  # a single image is its own neighbour
    if count > max_reference:
        rng = rng if rng is not None else np.random.default_rng(0)
        reference = torch.from_numpy(np.sort(rng.choice(count, max_reference, replace=False))).to(device)
    else:
        reference = torch.arange(count, device=device)
    candidates = model_inputs(reference)
    candidate_norms = candidates.pow(2).sum(1)
    found = []
    for start in range(0, count, chunk):
        rows = model_inputs(slice(start, start + chunk))
        distances = rows.pow(2).sum(1, keepdim=True) - 2 * rows @ candidates.T + candidate_norms[None, :]
        row_index = torch.arange(start, start + len(rows), device=device)
        distances.masked_fill_(reference[None, :] == row_index[:, None], float("inf"))  # never itself
        found.append(reference[distances.topk(k, largest=False).indices].cpu())
    return torch.cat(found).numpy()


@torch.no_grad()
def _fit_latent_density(fitter: _Fitter, model: nn.Module) -> LatentDensity:
    """Per-leaf Gaussians on the latent means of the labelled images (leaf = q's choice within S)."""
    labelled = np.flatnonzero(fitter.pool.labelled)
    latents, leaves = [], []
    with eval_mode(model):
        for start in range(0, len(labelled), 512):
            chunk = labelled[start : start + 512]
            x = fitter.batch(chunk, train=False)
            with autocast(fitter.device, fitter.use_amp):
                latent = model.latent(x).float()
                logits = model.classify(x).float()
            admissible = fitter.admissible[torch.from_numpy(chunk).to(fitter.device)]
            leaves.append(logits.masked_fill(~admissible, float("-inf")).argmax(1).cpu().numpy())
            latents.append(latent.cpu().numpy())
    return LatentDensity.fit(np.concatenate(latents), np.concatenate(leaves))


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(trained: TrainedModel, path: Path | str) -> Path:
    """Write atomically: a temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": trained.config.to_dict(),
        "taxonomy": trained.taxonomy.to_dict(),
        "image_shape": list(trained.image_shape),
        "metrics": trained.metrics,
        "temperature": float(trained.temperature),
        "latent_density": trained.latent_density.to_state() if trained.latent_density else None,
        "scaler": trained.scaler.to_state() if trained.scaler else None,
        "state_dict": {k: v.detach().cpu() for k, v in trained.model.state_dict().items()},
    }
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: Path | str, device: str | torch.device | None = None) -> TrainedModel:
    """A model saved by ``save_checkpoint``, on ``device`` (default: the config's device, resolved)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable checkpoint: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a Latent Labeller checkpoint (format {CHECKPOINT_FORMAT})")
    config = TrainConfig.from_dict(payload["config"])
    taxonomy = Taxonomy.from_dict(payload["taxonomy"])
    image_shape = tuple(int(v) for v in payload["image_shape"])
    model = build_model(config, taxonomy, image_shape, load_vgg_weights=False)
    model.load_state_dict(payload["state_dict"])
    # Default "auto", not the config's device: a model trained on a GPU box must load on a laptop.
    device = resolve_device(device or "auto") if not isinstance(device, torch.device) else device
    density = payload.get("latent_density")
    scaler = payload.get("scaler")
    return TrainedModel(
        model=model.to(device).eval(),
        taxonomy=taxonomy,
        config=config,
        metrics=payload["metrics"],
        temperature=float(payload["temperature"]),
        image_shape=image_shape,  # type: ignore[arg-type]
        latent_density=LatentDensity.from_state(density) if density else None,
        scaler=FeatureScaler.from_state(scaler) if scaler else None,
    )
