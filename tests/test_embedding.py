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


def test_the_umap_kernels_a_fit_compiles_are_cached_for_the_next_process() -> None:
    """umap-learn declares them without numba's cache; fit_umap turns it on (10 s of compiling per process)."""
    import umap.umap_
    import umap.utils
    from numba.core.caching import NullCache

    fit_umap(_latents(30), seed=0)
    for kernel in (umap.utils.fast_knn_indices, umap.umap_.smooth_knn_dist, umap.umap_.compute_membership_strengths):
        assert not isinstance(kernel._cache, NullCache), kernel.py_func.__name__
        assert sum(kernel.stats.cache_hits.values()) + sum(kernel.stats.cache_misses.values()) >= 1


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


def _similar(coords: np.ndarray, angle: float, scale: float, shift: tuple[float, float], mirror: bool) -> np.ndarray:
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = scale * coords @ rotation + np.array(shift)
    return moved * np.array([-1.0, 1.0]) if mirror else moved


def test_align_to_undoes_rotation_reflection_scale_and_shift_on_shared_images() -> None:
    from core.embedding import align_to

    previous = np.random.default_rng(1).normal(size=(50, 2)) * 5
    ids = np.arange(100, 150)
    # The new map: the same points turned, mirrored, shrunk and moved, in another row order, plus 5 new ones.
    order = np.random.default_rng(2).permutation(50)
    new = np.vstack([_similar(previous, 2.1, 0.3, (40.0, -7.0), mirror=True)[order], np.zeros((5, 2))])
    new_ids = np.concatenate([ids[order], np.arange(900, 905)])
    aligned = align_to(new, new_ids, ids, previous)
    np.testing.assert_allclose(aligned[:50], previous[order], atol=1e-3)
    assert aligned.shape == (55, 2) and aligned.dtype == np.float32


def test_align_to_leaves_a_map_alone_without_enough_shared_images() -> None:
    from core.embedding import align_to

    coords = np.arange(8, dtype=np.float32).reshape(4, 2)
    np.testing.assert_array_equal(align_to(coords, [1, 2, 3, 4], [1, 9], np.zeros((2, 2))), coords)


def test_previous_layout_keeps_placed_images_and_puts_new_ones_by_their_latent_neighbours() -> None:
    from core.embedding import previous_layout

    latent = np.array([[0, 0], [0.1, 0], [10, 10], [10.1, 10], [0.05, 0.02], [10.05, 9.9]], dtype=np.float32)
    ids = [1, 2, 3, 4, 5, 6]
    previous_ids = [1, 2, 3, 4, 77]
    previous = np.array([[-5, -5], [-5, -4], [5, 5], [5, 4], [0, 0]], dtype=np.float32)
    layout = previous_layout(ids, latent, previous_ids, previous, neighbours=2)
    assert layout is not None
    np.testing.assert_allclose(layout[:4], previous[:4])
    np.testing.assert_allclose(layout[4], [-5, -4.5])  # image 5 sits by images 1 and 2
    np.testing.assert_allclose(layout[5], [5, 4.5])
    assert previous_layout(ids, latent, [1, 2], previous[:2]) is None


def test_a_refit_on_a_changed_model_keeps_the_previous_layout() -> None:
    """Version 2's latents differ (turned, noisier, 20 new images); its map, started from version 1's and
    aligned, stays where version 1's was: every cluster's centre moves by under 15% of the map's size
    (measured 11-13%; 11-18% without the start from version 1's layout)."""
    from core.embedding import align_to, previous_layout

    latent = _latents(300)
    first = fit_umap(latent, seed=0)
    generator = np.random.default_rng(5)
    turned = np.linalg.qr(generator.normal(size=(8, 8)))[0].astype(np.float32)
    second_latent = np.vstack(
        [latent @ turned + generator.normal(0, 0.2, size=latent.shape), _latents(320)[300:] @ turned]
    )
    ids = np.arange(320)
    init = previous_layout(ids, second_latent, ids[:300], first)
    second = align_to(fit_umap(second_latent.astype(np.float32), seed=1, init=init), ids, ids[:300], first)
    size = np.ptp(first, axis=0).max()
    for cluster in range(3):
        rows = np.arange(300)[np.arange(300) % 3 == cluster]
        moved = np.linalg.norm(second[rows].mean(axis=0) - first[rows].mean(axis=0))
        assert moved < 0.15 * size, (cluster, moved, size)
