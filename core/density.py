"""Class-conditional latent density for the novelty score (after Ghosh et al. 2019): fitted by training,
kept in the checkpoint, read by scoring. Its own module so that training and scoring do not import each
other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class LatentDensity:
    """A Gaussian per leaf over latent means with one shared diagonal covariance (after Ghosh et al.
    2019's class-conditional latent density); leaves without labelled images are left out."""

    means: np.ndarray  # (L, D) for the leaves that had data
    variance: np.ndarray  # (D,)

    @classmethod
    def fit(cls, latent: np.ndarray, leaf: np.ndarray) -> LatentDensity:
        """``leaf[i]`` is image i's leaf, or -1 for unlabelled; with no labels at all, one Gaussian."""
        labelled = leaf >= 0
        if not labelled.any():
            means = latent.mean(axis=0, keepdims=True)
            residual = latent - means
        else:
            leaves = np.unique(leaf[labelled])
            means = np.stack([latent[leaf == k].mean(axis=0) for k in leaves])
            lookup = {k: i for i, k in enumerate(leaves)}
            residual = latent[labelled] - means[[lookup[k] for k in leaf[labelled]]]
        # Few labels per leaf: pool the spread, and keep a floor from the whole pool's spread.
        variance = residual.var(axis=0) if len(residual) > 1 else np.ones(latent.shape[1])
        variance = np.maximum(variance, 0.05 * latent.var(axis=0) + 1e-6)
        return cls(means=means.astype(np.float64), variance=variance.astype(np.float64))

    def log_density(self, latent: np.ndarray) -> np.ndarray:
        """max over leaves of log N(latent; mean_leaf, diag(variance)), shape (N,)."""
        diff = latent[:, None, :].astype(np.float64) - self.means[None]
        log_norm = -0.5 * np.log(2 * np.pi * self.variance).sum()
        log_densities = log_norm - 0.5 * (diff**2 / self.variance).sum(-1)
        return log_densities.max(axis=1)

    def to_state(self) -> dict[str, torch.Tensor]:
        return {"means": torch.from_numpy(self.means), "variance": torch.from_numpy(self.variance)}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> LatentDensity:
        return cls(means=state["means"].numpy(), variance=state["variance"].numpy())
