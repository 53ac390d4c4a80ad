"""Scoring the pool: class probabilities (temperature applied), the uncertainty signals acquisition ranks
by, latent means for the embedding view, reconstruction error and novelty. Larger score = label sooner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from core.acquisition import UncertaintyScores
from core.data import MappedPages, rows_tensor
from core.device import autocast, eval_mode, resolve_device

if TYPE_CHECKING:
    from core.training import TrainedModel

EPS = 1e-12


@dataclass
class PoolScores:
    """One row per scored image; every array is numpy."""

    leaf_probs: np.ndarray  # (N, K)
    main_probs: np.ndarray  # (N, M), sums of leaf probabilities
    entropy: np.ndarray  # of the main-class probabilities (the default strategy)
    leaf_entropy: np.ndarray
    margin: np.ndarray  # 1 - (top main prob - second main prob)
    least_confidence: np.ndarray  # 1 - top main prob
    bald: np.ndarray  # mutual information between leaf and classifier weights (MC dropout)
    disagreement: np.ndarray  # Jensen-Shannon between q(y|x) and the generative p(y|x); 0 without one
    novelty: np.ndarray  # in [0, 1]: mean rank of low latent density and high reconstruction error
    reconstruction_error: np.ndarray  # mean squared error per pixel; 0 for models that do not reconstruct
    latent_mean: np.ndarray  # (N, D)
    latent_log_density: np.ndarray  # max over leaves of the per-leaf Gaussian log density

    def __len__(self) -> int:
        return len(self.leaf_probs)

    def uncertainty(self) -> UncertaintyScores:
        """The columns acquisition ranks by."""
        return UncertaintyScores(
            entropy=self.entropy,
            leaf_entropy=self.leaf_entropy,
            margin=self.margin,
            least_confidence=self.least_confidence,
            bald=self.bald,
            disagreement=self.disagreement,
            novelty=self.novelty,
        )


def entropy(probs: np.ndarray) -> np.ndarray:
    return -(probs * np.log(probs + EPS)).sum(axis=-1)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    mix = 0.5 * (p + q)
    return entropy(mix) - 0.5 * (entropy(p) + entropy(q))


def rank01(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1]: 1 for the largest value."""
    if len(values) < 2:
        return np.zeros(len(values))
    return np.argsort(np.argsort(values, kind="stable"), kind="stable") / (len(values) - 1)


def _enable_dropout(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Dropout):
            layer.train()


def _has_dropout(module: nn.Module) -> bool:
    return any(isinstance(layer, nn.Dropout) and layer.p > 0 for layer in module.modules())


def score_pool(
    trained: TrainedModel,
    images: np.ndarray,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    mc_samples: int = 8,
) -> PoolScores:
    """Score rows shaped like the training rows, in batches: uint8 images (N, C, H, W), or the backbone's
    raw feature vectors (N, D) for a model trained on features (its scaler is applied here)."""
    expected = tuple(trained.image_shape)
    if tuple(images.shape[1:]) != expected:
        raise ValueError(f"inputs must be (N, {', '.join(map(str, expected))}), got {images.shape}")
    if len(expected) == 3 and images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if device is None:
        device = resolve_device(trained.config.device)
    elif isinstance(device, str):
        device = resolve_device(device)
    model = trained.model.to(device)
    temperature = float(trained.temperature)
    use_amp = trained.config.amp
    generative = hasattr(model, "generative_log_posterior")
    mc_dropout = mc_samples > 0 and _has_dropout(model)

    logits_out, latent_out, recon_out, gen_out, bald_out = [], [], [], [], []
    pages = MappedPages(images)  # a memory-mapped pool's pages are handed back as they are scored
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            x = trained.inputs(rows_tensor(images[start : start + batch_size]).to(device))
            pages.read(len(x))
            with autocast(device, use_amp):
                logits = model.classify(x).float()
                latent_out.append(model.latent(x).float().cpu())
                recon = model.reconstruct(x) if hasattr(model, "reconstruct") else None
                if generative:
                    gen_out.append(model.generative_log_posterior(x).float().exp().cpu())
            logits_out.append(logits.cpu())
            if recon is not None:
                recon_out.append((recon.float() - x).pow(2).flatten(1).mean(1).cpu())
            if mc_dropout:
                _enable_dropout(model)
                samples = []
                for _ in range(mc_samples):
                    with autocast(device, use_amp):
                        samples.append((model.classify(x).float() / temperature).softmax(-1))
                stack = torch.stack(samples).cpu().numpy()  # (T, B, K)
                bald_out.append(entropy(stack.mean(0)) - entropy(stack).mean(0))
                model.eval()

    pages.release()
    logits = torch.cat(logits_out) if logits_out else torch.zeros(0, trained.taxonomy.num_leaves)
    leaf_probs = (logits / temperature).softmax(-1).numpy()
    main_probs = leaf_probs @ trained.taxonomy.leaf_to_main_matrix()
    n = len(images)
    top2 = -np.sort(-main_probs, axis=1)[:, :2] if main_probs.shape[1] > 1 else np.c_[main_probs, np.zeros(n)]
    latent = torch.cat(latent_out).numpy() if latent_out else np.zeros((0, 1), dtype=np.float32)
    recon_error = torch.cat(recon_out).numpy() if recon_out else np.zeros(n)
    disagreement = js_divergence(leaf_probs, torch.cat(gen_out).numpy()) if gen_out else np.zeros(n)
    bald = np.concatenate(bald_out) if bald_out else np.zeros(n)

    density = trained.latent_density.log_density(latent) if trained.latent_density else np.zeros(n)
    novelty = 0.5 * (rank01(-density) + rank01(recon_error)) if n else np.zeros(0)
    return PoolScores(
        leaf_probs=leaf_probs.astype(np.float32),
        main_probs=main_probs.astype(np.float32),
        entropy=entropy(main_probs),
        leaf_entropy=entropy(leaf_probs),
        margin=1.0 - (top2[:, 0] - top2[:, 1]),
        least_confidence=1.0 - main_probs.max(axis=1, initial=0.0),
        bald=np.maximum(bald, 0.0),
        disagreement=np.maximum(disagreement, 0.0),
        novelty=novelty,
        reconstruction_error=recon_error,
        latent_mean=latent.astype(np.float32),
        latent_log_density=density,
    )
