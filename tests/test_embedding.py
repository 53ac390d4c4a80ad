"""UMAP of latent means: finite 2-D coordinates in input order, fitted on a sample plus transform when
the pool is larger than the sample size. Kept to a few hundred points: numba compiles on first use."""

from __future__ import annotations

import numpy as np
import pytest

from core.embedding import fit_umap


def _latents(count: int, dim: int = 8) -> np.ndarray:
    generator = np.random.default_rng(0)
    centres = generator.normal(0, 4, size=(3, dim))
    return (centres[np.arange(count) % 3] + generator.normal(0, 0.3, size=(count, dim))).astype(np.float32)


def test_fit_umap_returns_finite_coordinates_for_every_point() -> None:
    latent = _latents(300)
    coords = fit_umap(latent, seed=0)
    assert coords.shape == (300, 2) and coords.dtype == np.float32
    assert np.isfinite(coords).all()
    # The three well-separated clusters stay apart: each point is nearer its own cluster's centre.
    labels = np.arange(300) % 3
    centres = np.stack([coords[labels == k].mean(axis=0) for k in range(3)])
    nearest = np.argmin(((coords[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels).mean() > 0.95


def test_fit_umap_on_a_sample_places_the_rest_with_transform() -> None:
    latent = _latents(300)
    coords = fit_umap(latent, sample_size=120, seed=1)
    assert coords.shape == (300, 2) and np.isfinite(coords).all()
    labels = np.arange(300) % 3
    centres = np.stack([coords[labels == k].mean(axis=0) for k in range(3)])
    nearest = np.argmin(((coords[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels).mean() > 0.95


def test_fit_umap_rejects_bad_input_and_handles_tiny_pools() -> None:
    with pytest.raises(ValueError, match="NaN"):
        fit_umap(np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(ValueError, match="shape"):
        fit_umap(np.zeros(5))
    assert fit_umap(np.zeros((0, 4))).shape == (0, 2)
    assert fit_umap(np.zeros((2, 4))).shape == (2, 2)
