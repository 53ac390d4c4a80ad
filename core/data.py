"""Inputs as the models see them: a pool of uint8 images or of backbone feature vectors with one
admissible-leaf mask per row, augmentation that fits the kind of image, feature scaling, and the
stratified validation split. Files are decoded by ``core.images``."""

from __future__ import annotations

import mmap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import torch

from core.registry import SMALL_IMAGE_SIDE

AugmentKind = Literal["none", "shift", "crop_flip"]


@dataclass
class LabelledPool:
    """Every image the model may learn from.

    images: what the model sees of each image: uint8 pixels (N, C, H, W), or a pretrained backbone's
    feature vectors (N, D) as float16/float32 (``core.features``); admissible: bool (N, K), the leaves each
    image's label admits (all True for an unlabelled image); labelled: bool (N,), which images carry a
    human label (exact or partial).
    """

    images: np.ndarray
    admissible: np.ndarray
    labelled: np.ndarray

    def __post_init__(self) -> None:
        pixels = self.images.ndim == 4 and self.images.dtype == np.uint8
        vectors = self.images.ndim == 2 and np.issubdtype(self.images.dtype, np.floating)
        if not (pixels or vectors):
            raise ValueError(
                f"images must be uint8 (N, C, H, W) or float feature vectors (N, D), "
                f"got {self.images.dtype} {self.images.shape}"
            )
        n = len(self.images)
        if self.admissible.ndim != 2 or self.admissible.shape[0] != n or self.admissible.dtype != bool:
            raise ValueError(f"admissible must be bool (N={n}, K), got {self.admissible.dtype} {self.admissible.shape}")
        if self.labelled.shape != (n,) or self.labelled.dtype != bool:
            raise ValueError(f"labelled must be bool (N={n},), got {self.labelled.dtype} {self.labelled.shape}")
        empty = np.flatnonzero(~self.admissible.any(axis=1))
        if len(empty):
            raise ValueError(f"{len(empty)} image(s) admit no leaf at all (first index {empty[0]})")

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def num_leaves(self) -> int:
        return self.admissible.shape[1]

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(C, H, W) for pixels, (D,) for feature vectors: the shape of one model input."""
        return tuple(int(v) for v in self.images.shape[1:])

    @property
    def is_features(self) -> bool:
        return self.images.ndim == 2

    @classmethod
    def from_leaf_labels(cls, images: np.ndarray, leaves: np.ndarray, num_leaves: int) -> LabelledPool:
        """Exact labels: ``leaves[i]`` is a leaf index, or -1 for an unlabelled image."""
        leaves = np.asarray(leaves)
        labelled = leaves >= 0
        admissible = np.ones((len(leaves), num_leaves), dtype=bool)
        admissible[labelled] = False
        admissible[np.flatnonzero(labelled), leaves[labelled]] = True
        return cls(images=images, admissible=admissible, labelled=labelled)


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [0, 1]; feature vectors -> float32 as they are."""
    if batch.dtype == torch.uint8:
        return batch.float().div_(255.0)
    return batch.float()


def default_augmentation(image_shape: tuple[int, ...]) -> AugmentKind:
    """None for small images (under ``SMALL_IMAGE_SIDE``) and feature vectors, crops and flips for photos.

    Small images are glyphs and icons more often than photos, and a flip changes a glyph's class. Measured
    with M2 at 40 random labels on scikit-learn's digits 0-3 upscaled to 28 px (validation split, 3 seeds):
    98.5% without augmentation, 82.7% with crops and flips. On 8x8 digits, 1-pixel shifts cost 3-4 points."""
    if len(image_shape) != 3:
        return "none"
    _, height, _ = image_shape
    return "none" if height < SMALL_IMAGE_SIDE else "crop_flip"


@dataclass
class FeatureScaler:
    """Backbone features -> model inputs: each row scaled to unit length, then each dimension standardised
    with the training pool's mean and spread. Kept with the model, so scoring scales new images exactly
    as training did. Unit length first: pooled activations differ in overall magnitude between images
    (lighting, texture) in ways that say nothing about the class."""

    mean: np.ndarray  # (D,) float32
    scale: np.ndarray  # (D,) float32

    @classmethod
    def fit(cls, features: np.ndarray, chunk: int = 8_192) -> FeatureScaler:
        """Streaming mean and variance, so a memory-mapped million-row pool is never copied whole."""
        total = np.zeros(features.shape[1], dtype=np.float64)
        squares = np.zeros(features.shape[1], dtype=np.float64)
        pages = MappedPages(features)
        for start in range(0, len(features), chunk):
            rows = unit_rows(np.asarray(features[start : start + chunk], dtype=np.float32)).astype(np.float64)
            total += rows.sum(0)
            squares += (rows**2).sum(0)
            pages.read(len(rows))
        pages.release()
        count = max(len(features), 1)
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
        return cls(mean.astype(np.float32), np.maximum(std, 1e-4 * max(float(std.max()), 1e-12)).astype(np.float32))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.float()
        batch = batch / batch.norm(dim=1, keepdim=True).clamp_min(1e-12)
        mean = torch.from_numpy(self.mean).to(batch.device)
        scale = torch.from_numpy(self.scale).to(batch.device)
        return (batch - mean) / scale

    def to_state(self) -> dict[str, torch.Tensor]:
        return {"mean": torch.from_numpy(self.mean), "scale": torch.from_numpy(self.scale)}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> FeatureScaler:
        return cls(mean=state["mean"].numpy(), scale=state["scale"].numpy())


# A pass over a memory map hands the pages it read back to the kernel after this many bytes.
RELEASE_EVERY_BYTES = 256 * 2**20
# What one row read at random can bring into the process: a page fault maps the page cache's whole folio
# around it, up to 2 MB on x86-64 (seen while developing this, not recorded in a benchmark: random rows of a
# 2.5 GB feature map mapped far more than the rows themselves).
MAPPED_PER_SCATTERED_ROW = 2 * 2**20

Rows = TypeVar("Rows", np.ndarray, torch.Tensor)


def _memory_map_of(array: object) -> mmap.mmap | None:
    """The mmap under ``array`` (a numpy memmap, or any view of one), or None for memory the process owns."""
    while array is not None:
        if isinstance(array, mmap.mmap):
            return array
        mapping = getattr(array, "_mmap", None)
        if isinstance(mapping, mmap.mmap):
            return mapping
        array = getattr(array, "base", None)
    return None


class MappedPages:
    """Bounds how much of a memory-mapped pool stays resident in this process while it is read.

    Every page of a memory map that the process reads stays mapped into it, counted in its RSS, until the
    kernel needs the memory back: one pass over a million 1,280-d float16 feature rows would leave 2.5 GB
    there. A reader reports what it read (``read``), or reads scattered rows through ``gather``; once
    ``release_every`` bytes may be mapped since the last release, the mapping's pages are handed back
    (madvise DONTNEED, which on a shared file mapping keeps the data in the page cache, so a later read
    costs a page fault, not a disk read). A no-op for arrays the process holds in memory (or ``array``
    None: nothing to bound)."""

    def __init__(self, array: np.ndarray | None, release_every: int = RELEASE_EVERY_BYTES) -> None:
        mapping = _memory_map_of(array)
        usable = mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED")
        self.mapping = mapping if usable else None
        self.row_bytes = 0 if array is None else int(array.dtype.itemsize * np.prod(array.shape[1:], dtype=np.int64))
        self.release_every = release_every
        self.unreleased = 0

    def read(self, rows: int, *, scattered: bool = False) -> None:
        """``rows`` rows were read, consecutive ones or ``scattered`` ones (each of which may map
        ``MAPPED_PER_SCATTERED_ROW``); release the pages once enough may be mapped since the last release."""
        if self.mapping is None:
            return
        self.unreleased += rows * (max(self.row_bytes, MAPPED_PER_SCATTERED_ROW) if scattered else self.row_bytes)
        if self.unreleased >= self.release_every:
            self.release()

    def gather(self, rows: Rows, index: Rows) -> Rows:
        """``rows[index]`` (a tensor or array sharing this memory map), read a group of rows at a time with
        the pages released before a group would take the mapped total past ``release_every``."""
        cost = max(self.row_bytes, MAPPED_PER_SCATTERED_ROW)
        group = max(1, self.release_every // cost)
        if self.mapping is None or len(index) == 0:
            return rows[index]
        parts = []
        for start in range(0, len(index), group):
            chunk = index[start : start + group]
            if self.unreleased + len(chunk) * cost > self.release_every:
                self.release()
            parts.append(rows[chunk])
            self.unreleased += len(chunk) * cost
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts) if isinstance(rows, torch.Tensor) else np.concatenate(parts)

    def release(self) -> None:
        if self.mapping is None:
            return
        try:
            self.mapping.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # a closed map, or a platform that refuses: only memory is at stake
            self.mapping = None
        self.unreleased = 0


def rows_tensor(rows: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``rows``' memory. A read-only memory map (the feature cache) is fine: nothing writes
    to model inputs, so torch's warning about non-writable arrays is silenced rather than the map copied."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(rows))


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32): what the linear baselines and the kNN graph see of features."""
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def augment(batch: torch.Tensor, kind: AugmentKind, generator: torch.Generator) -> torch.Tensor:
    """Random per-image translation (and for photos a horizontal flip) of a float (B, C, H, W) batch.

    ``shift`` moves by up to 1 pixel with zero fill; ``crop_flip`` takes a random crop of the image padded
    by 1/8 of its size with reflection, then flips half the images. Randomness comes from ``generator``
    (on the cpu) so a seeded run repeats exactly.
    """
    if kind == "none":
        return batch
    b, _, h, w = batch.shape
    pad = 1 if kind == "shift" else max(1, h // 8)
    mode = "constant" if kind == "shift" else "reflect"
    padded = torch.nn.functional.pad(batch, (pad, pad, pad, pad), mode=mode)
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(batch.device)
    rows = offsets[0, :, None] + torch.arange(h, device=batch.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(w, device=batch.device)  # (B, W)
    index = torch.arange(b, device=batch.device)[:, None, None, None]
    channels = torch.arange(batch.shape[1], device=batch.device)[None, :, None, None]
    out = padded[index, channels, rows[:, None, :, None], cols[:, None, None, :]]
    if kind == "crop_flip":
        flip = (torch.rand(b, generator=generator) < 0.5).to(batch.device)
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out


def stratified_split(strata: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, validation) into ``strata``: about ``fraction`` of each stratum goes to
    validation, always leaving at least one item of each stratum for training."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    validation: list[np.ndarray] = []
    for value in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == value))
        take = min(round(fraction * len(members)), len(members) - 1)
        validation.append(members[:take])
    val = np.sort(np.concatenate(validation)) if validation else np.empty(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(len(strata)), val)
    return train, val


def save_pool(pool: LabelledPool, path: Path | str) -> Path:
    """The pool as one .npz file, for training in another process (torchrun)."""
    path = Path(path)
    np.savez(path, images=pool.images, admissible=pool.admissible, labelled=pool.labelled)
    return path


def load_pool(path: Path | str) -> LabelledPool:
    with np.load(path) as data:
        return LabelledPool(images=data["images"], admissible=data["admissible"], labelled=data["labelled"])
