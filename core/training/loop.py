"""The fitting loop. One code path for every model: M1 and M1+M2 first train their VAE on every image
(phase "m1"), then the semi-supervised phase ("train") optimises the model's own loss with a labelled and an
unlabelled stream sampled separately, so every batch carries labelled images. Validation labels (a stratified
slice of the labelled images) drive early stopping and the temperature; the same seed repeats a cpu run
exactly. Under ``torchrun`` (torch.distributed initialised) the trained module is wrapped in
DistributedDataParallel and every rank takes its own shard of each batch stream."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.calibration import Calibration, calibrate, expected_calibration_error, set_nll
from core.data import FeatureScaler, LabelledPool, MappedPages, augment, rows_tensor, stratified_split, to_float
from core.density import LatentDensity
from core.device import autocast, eval_mode, needs_grad_scaler, resolve_device
from core.models import M2, VAE, M1Classifier, StackedM1M2
from core.taxonomy import Taxonomy
from core.training.build import _resolved, build_model, resolve_balance
from core.training.config import (
    Progress,
    TrainConfig,
    TrainedModel,
    TrainingCancelled,
    TrainingDiverged,
)

# Feature-space neighbours are sought in this many principal directions of the scaled features.
NEIGHBOUR_COMPONENTS = 64


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
        # A memory-mapped pool stays on disk on the cpu: only the pages read recently stay resident.
        self.feature_scaler = FeatureScaler.fit(pool.images) if pool.is_features else None
        self.images = rows_tensor(pool.images).to(self.device)
        self.pages = MappedPages(pool.images if self.device.type == "cpu" else None)
        if self.device.type != "cpu":
            MappedPages(pool.images).release()  # copied to the device whole
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
                pages=self.pages,
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
        x = to_float(self.pages.gather(self.images, torch.from_numpy(indices).to(self.device)))
        if self.feature_scaler is not None:
            x = self.feature_scaler(x)
        if train:
            x = augment(x, self.chosen["augment"], self.generator)
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x

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
    # Channels-last convolutions (oneDNN on the cpu, tensor cores on cuda): in NCHW the convolution backward
    # was 63% of the small CNN's forward and backward at 28 px (torch.profiler); step times for both formats
    # are in benchmarks/results/train_speed.
    model = build_model(config, taxonomy, pool.image_shape).to(fitter.device, memory_format=torch.channels_last)
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
    calibration = Calibration(1.0, 0, 0, False, False, "no held-out labels: T = 1")
    if len(fitter.val_labelled):
        before = fitter.validation_metrics(model)
        logits, admissible = fitter.evaluate(model, fitter.val_labelled)
        calibration = calibrate(logits, admissible)
        metrics.update(fitter.validation_metrics(model, calibration.temperature))
        metrics["val_ece_uncalibrated"] = before["val_ece"]
        metrics["val_nll_uncalibrated"] = before["val_nll"]
    temperature = calibration.temperature
    metrics["temperature"] = temperature
    metrics["calibration"] = calibration.as_metrics()
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
    chunk: int = 256,
    max_reference: int = 50_000,
    rng: np.random.Generator | None = None,
    scaler: FeatureScaler | None = None,
    components: int | None = None,
    pages: MappedPages | None = None,
) -> np.ndarray:
    """(N, k) indices of each image's k nearest other images by Euclidean distance between model inputs
    (pixels, or scaled features), measured in their top ``components`` principal directions when given
    (fitted on a sample: for a million 1,280-d feature rows it turns hours of distances into a minute).

    Beyond ``max_reference`` images the neighbours are sought among a random sample of that many, so the
    cost grows as N x max_reference rather than N squared. ``pages`` (of a memory-mapped pool) reads the
    rows so that the pages read are handed back as the pass goes."""
    count = len(images)
    device = images.device
    reader = pages if pages is not None else MappedPages(None)

    projection: torch.Tensor | None = None

    def model_inputs(index: torch.Tensor | slice) -> torch.Tensor:
        # Converted a chunk at a time: a million float16 feature rows must not become 5 GB of float32.
        if isinstance(index, slice):
            rows = to_float(images[index].flatten(1))
            reader.read(len(rows))
        else:
            rows = to_float(reader.gather(images, index).flatten(1))
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
    candidates = torch.cat([model_inputs(reference[at : at + chunk]) for at in range(0, len(reference), chunk)])
    candidate_norms = candidates.pow(2).sum(1)
    # Written in place: a small result kept per chunk between the chunk's large temporaries fragmented the
    # heap so that it grew by a temporary per chunk (4 GB over 100k feature rows).
    found = np.empty((count, k), dtype=np.int64)
    for start in range(0, count, chunk):
        rows = model_inputs(slice(start, start + chunk))
        distances = rows.pow(2).sum(1, keepdim=True) - 2 * rows @ candidates.T + candidate_norms[None, :]
        # Never itself: the chunk's rows that are references, at their places in the (sorted) reference.
        row_index = torch.arange(start, start + len(rows), device=device)
        place = torch.searchsorted(reference, row_index).clamp_(max=len(reference) - 1)
        own = (reference[place] == row_index).nonzero().squeeze(1)
        distances[own, place[own]] = float("inf")
        found[start : start + len(rows)] = reference[distances.topk(k, largest=False).indices].cpu().numpy()
    return found


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
