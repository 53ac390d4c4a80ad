"""2-D map of the latent space for the explorer view: UMAP of the latent means.

UMAP's fit grows worse than linearly and runs out of memory near a million points, so a large pool is
fitted on a random sample and the rest is placed with ``transform``. umap-learn compiles with numba on
first use (about a minute), some of its kernels without numba's cache (``_cache_umap_kernels`` turns it on):
callers that run it repeatedly should set ``NUMBA_CACHE_DIR`` to a lasting folder (``use_numba_cache``) and
do it in the worker, never in the app process.

A map keeps its layout across model versions: ``previous_layout`` starts the new fit from the previous
version's coordinates for the images both versions placed (an image new to the map starts at the mean of
its nearest placed neighbours in the new latent space), and ``align_to`` then rotates, reflects, scales and
shifts the result onto those coordinates (orthogonal Procrustes), so clusters stay where the eye left them.
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


def _cache_umap_kernels() -> None:
    """Ask numba to cache the umap-learn kernels it compiles without ``cache=True``.

    Those kernels (nearest neighbours, smooth_knn_dist, the layout epoch...) were compiled again in every
    process: 10 s of a 44-point fit and 4 s of its first transform, 0.1 s each once cached, with identical
    coordinates. Idempotent; where numba finds no writable cache folder they are compiled as before."""
    import umap.distances
    import umap.layouts
    import umap.sparse
    import umap.spectral
    import umap.umap_
    import umap.utils
    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    for module in (umap.umap_, umap.utils, umap.layouts, umap.distances, umap.sparse, umap.spectral):
        for value in list(vars(module).values()):
            if (
                isinstance(value, CPUDispatcher)
                and isinstance(value._cache, NullCache)
                and value.py_func.__module__.startswith("umap.")
            ):
                try:
                    value.enable_caching()
                except RuntimeError:  # no cache folder numba can write to
                    return


def fit_umap(
    latent: np.ndarray,
    *,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int | None = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    init: np.ndarray | None = None,
) -> np.ndarray:
    """2-D coordinates (N, 2) float32 for ``latent`` (N, D).

    With more than ``sample_size`` rows, UMAP is fitted on a random sample of that size (seeded) and
    the other rows are placed with ``transform``; the result keeps the input's row order. A ``seed``
    makes the map reproducible but single-threaded; ``None`` lets numba use every core. ``init`` (N, 2),
    finite, is where the optimisation starts (see ``previous_layout``); without it UMAP's spectral layout.
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
    if init is not None:
        init = np.asarray(init, dtype=np.float32)
        if init.shape != (count, 2) or not np.isfinite(init).all():
            raise ValueError(f"init must be finite with shape ({count}, 2), got {init.shape}")

    import umap  # slow import (numba); only when a map is actually wanted

    _cache_umap_kernels()

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
        init="spectral" if init is None else (init if fitted_rows is None else init[fitted_rows]),
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


MIN_SHARED_POINTS = 3


def previous_layout(
    image_ids: np.ndarray | list[int],
    latent: np.ndarray,
    previous_ids: np.ndarray | list[int],
    previous_coords: np.ndarray,
    *,
    neighbours: int = 5,
) -> np.ndarray | None:
    """A starting layout (N, 2) for ``image_ids`` from the previous map, or None when fewer than
    ``MIN_SHARED_POINTS`` images are on both.

    An image the previous map placed starts where it was; any other starts at the mean previous position
    of its ``neighbours`` nearest placed images in ``latent`` (the new version's latent means, row per id).
    """
    ids = np.asarray(image_ids, dtype=np.int64)
    before = {int(i): row for row, i in enumerate(np.asarray(previous_ids, dtype=np.int64))}
    old = np.asarray(previous_coords, dtype=np.float64)
    known = np.array([int(i) in before for i in ids], dtype=bool)
    if known.sum() < MIN_SHARED_POINTS:
        return None
    layout = np.zeros((len(ids), 2), dtype=np.float64)
    layout[known] = old[[before[int(i)] for i in ids[known]]]
    if (~known).any():
        from sklearn.neighbors import NearestNeighbors

        latent = np.asarray(latent, dtype=np.float32)
        k = min(neighbours, int(known.sum()))
        index = NearestNeighbors(n_neighbors=k).fit(latent[known])
        _, nearest = index.kneighbors(latent[~known])
        layout[~known] = layout[known][nearest].mean(axis=1)
    if not np.isfinite(layout).all():
        return None
    return layout.astype(np.float32)


def procrustes(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """The similarity transform (scale, rotation or reflection, shift) that best maps ``source`` rows onto
    ``target`` rows in least squares: returns ``(scale, rotation, source_mean, target_mean)`` such that
    ``scale * (x - source_mean) @ rotation + target_mean`` is the aligned ``x``."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    a, b = source - source_mean, target - target_mean
    u, singular, vt = np.linalg.svd(a.T @ b)
    rotation = u @ vt
    spread = float((a * a).sum())
    scale = float(singular.sum() / spread) if spread > 0 else 1.0
    return scale, rotation, source_mean, target_mean


def align_to(
    coords: np.ndarray,
    image_ids: np.ndarray | list[int],
    previous_ids: np.ndarray | list[int],
    previous_coords: np.ndarray,
) -> np.ndarray:
    """``coords`` (N, 2, rows in ``image_ids`` order) moved as one rigid, uniformly scaled piece onto the
    previous map: fitted on the images both maps placed, applied to all. Unchanged with fewer than
    ``MIN_SHARED_POINTS`` shared images."""
    coords = np.asarray(coords, dtype=np.float32)
    ids = np.asarray(image_ids, dtype=np.int64)
    before = {int(i): row for row, i in enumerate(np.asarray(previous_ids, dtype=np.int64))}
    shared = np.array([int(i) in before for i in ids], dtype=bool)
    if shared.sum() < MIN_SHARED_POINTS:
        return coords
    old = np.asarray(previous_coords, dtype=np.float64)[[before[int(i)] for i in ids[shared]]]
    scale, rotation, source_mean, target_mean = procrustes(coords[shared], old)
    aligned = scale * (coords.astype(np.float64) - source_mean) @ rotation + target_mean
    return aligned.astype(np.float32)


# Before any model exists the map is of the inputs themselves: 1,280 feature dimensions (or thousands of
# pixels) per image. UMAP is usually run on the first few dozen principal components of such vectors: the
# neighbour graph barely changes, and memory stays at N x MAP_COMPONENTS instead of N x D float32.
MAP_COMPONENTS = 50


def _unit_chunk(rows: np.ndarray) -> np.ndarray:
    """Stored rows (float feature vectors, or uint8 pixels (n, C, H, W)) as unit-length float32 vectors."""
    from core.data import unit_rows

    flat = rows.reshape(len(rows), -1)
    return unit_rows(flat.astype(np.float32) / 255.0 if rows.dtype == np.uint8 else flat)


def input_vectors(
    rows: np.ndarray,
    *,
    components: int = MAP_COMPONENTS,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
) -> np.ndarray:
    """What ``fit_umap`` maps before a model has latents: each row (a backbone's feature vector, or an
    image's pixels) scaled to unit length, then projected on ``components`` principal components fitted on
    a seeded sample of ``sample_size`` rows; converted ``TRANSFORM_CHUNK`` rows at a time. (N, k) float32."""
    from sklearn.decomposition import PCA

    from core.data import MappedPages

    count = len(rows)
    if count <= 2:
        return np.zeros((count, 2), dtype=np.float32)  # fit_umap places one or two points by itself
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(count, sample_size, replace=False)) if count > sample_size else np.arange(count)
    fitted = _unit_chunk(np.asarray(rows[sample]))
    pca = PCA(n_components=min(components, *fitted.shape), random_state=seed).fit(fitted)
    out = np.empty((count, pca.n_components_), dtype=np.float32)
    pages = MappedPages(rows)  # a memory-mapped feature pool's pages are handed back as the pass goes
    for start in range(0, count, TRANSFORM_CHUNK):
        chunk = np.asarray(rows[start : start + TRANSFORM_CHUNK])
        out[start : start + len(chunk)] = pca.transform(_unit_chunk(chunk))
        pages.read(len(chunk))
    pages.release()
    return out
