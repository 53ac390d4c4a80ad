"""2-D map of the latent space for the explorer view: UMAP of the latent means.

UMAP's fit grows worse than linearly and runs out of memory near a million points, so a large pool is
fitted on a random sample and the rest is placed with ``transform``. umap-learn compiles with numba on
first use (about a minute): callers that run it repeatedly should set ``NUMBA_CACHE_DIR`` to a lasting
folder (``numba_cache_dir`` below helps) and do it in the worker, never in the app process.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DEFAULT_SAMPLE_SIZE = 20_000
# transform() in chunks so memory stays flat on large pools.
TRANSFORM_CHUNK = 50_000


def use_numba_cache(folder: Path) -> None:
    """Let numba keep compiled UMAP kernels in ``folder`` across processes (set before importing umap)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(folder))


def fit_umap(
    latent: np.ndarray,
    *,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int | None = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
) -> np.ndarray:
    """2-D coordinates (N, 2) float32 for ``latent`` (N, D).

    With more than ``sample_size`` rows, UMAP is fitted on a random sample of that size (seeded) and
    the other rows are placed with ``transform``; the result keeps the input's row order. A ``seed``
    makes the map reproducible but single-threaded; ``None`` lets numba use every core.
    """
    latent = np.asarray(latent, dtype=np.float32)
    if latent.ndim != 2:
        raise ValueError(f"expected latent means of shape (N, D), got {latent.shape}")
    if not np.isfinite(latent).all():
        raise ValueError("latent means contain NaN or inf; the model that produced them is broken")
    count = len(latent)
    if count == 0:
        return np.empty((0, 2), dtype=np.float32)
    if count <= 2:
        # UMAP needs a neighbourhood; place one or two points on a line.
        return np.column_stack([np.arange(count), np.zeros(count)]).astype(np.float32)
    if sample_size < 3:
        raise ValueError(f"sample_size must be at least 3, got {sample_size}")

    import umap  # slow import (numba); only when a map is actually wanted

    rng = np.random.default_rng(seed)
    fitted_rows = np.sort(rng.choice(count, sample_size, replace=False)) if count > sample_size else None
    sample = latent if fitted_rows is None else latent[fitted_rows]
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=min(n_neighbors, len(sample) - 1),
        min_dist=min_dist,
        random_state=seed,
        # Seeded UMAP runs single-threaded anyway; say so rather than let it warn.
        n_jobs=1 if seed is not None else -1,
    )
    coords = np.empty((count, 2), dtype=np.float32)
    sample_coords = reducer.fit_transform(sample).astype(np.float32)
    if fitted_rows is None:
        return sample_coords
    coords[fitted_rows] = sample_coords
    rest = np.setdiff1d(np.arange(count), fitted_rows, assume_unique=True)
    for start in range(0, len(rest), TRANSFORM_CHUNK):
        rows = rest[start : start + TRANSFORM_CHUNK]
        coords[rows] = reducer.transform(latent[rows]).astype(np.float32)
    return coords
