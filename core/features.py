"""Pooled backbone features for every image, computed once and cached on disk by content hash.

``extract_features`` decodes images in data-loader processes, runs the backbone in batches (on cuda with
mixed precision when present) and yields float16 feature rows as they are ready; ``FeatureCache`` keeps
them per (backbone, view) as shards of memory-mappable ``.npy`` files, one shard per written batch, so a
worker killed mid-way loses at most one batch and a re-run computes only what is missing.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from core.backbones import BackboneSpec, backbone_spec, load_backbone
from core.data import decode_image
from core.device import autocast, resolve_device

log = logging.getLogger(__name__)

FEATURE_DTYPE = np.float16
# Past this many shards a read opens too many files; they are merged into one.
MAX_SHARDS = 64
VIEWS = ("centre", "centre_flip")


@dataclass(frozen=True)
class FeatureSpec:
    """What a cached feature vector is: the backbone, where its weights came from, and the test-time view
    (``centre``: the centre crop; ``centre_flip``: the mean of the crop and its mirror image)."""

    backbone: str
    view: str = "centre"
    weights: str | None = None  # a local weights file, or None for the table's own weights

    def __post_init__(self) -> None:
        backbone_spec(self.backbone)
        if self.view not in VIEWS:
            raise ValueError(f"unknown view {self.view!r}; choose one of {VIEWS}")

    @property
    def key(self) -> str:
        """A folder name: the backbone and view, plus a digest of the weights file's name and size."""
        key = f"{self.backbone}-{self.view}"
        if self.weights is not None:
            import hashlib

            path = Path(self.weights)
            stamp = f"{path.resolve()}:{path.stat().st_size if path.exists() else 0}"
            key += "-" + hashlib.sha256(stamp.encode()).hexdigest()[:12]
        return key

    @property
    def feature_dim(self) -> int:
        return backbone_spec(self.backbone).feature_dim


def open_rgb(path: Path | str) -> Image.Image:
    """An image file as an RGB PIL image, decoded as thumbnails and pixel models decode it
    (``core.data.decode_image``: EXIF orientation, first frame, transparency on white, 16-bit and float
    grey scaled)."""
    with decode_image(path) as image:
        return image.convert("RGB")


def preprocess(image: Image.Image, spec: BackboneSpec) -> torch.Tensor:
    """Resize the shorter side to ``resize_size``, centre-crop ``crop_size``, normalise: (3, S, S) float."""
    width, height = image.size
    scale = spec.resize_size / min(width, height)
    resized = image.resize(
        (max(spec.crop_size, round(width * scale)), max(spec.crop_size, round(height * scale))),
        Image.Resampling.BILINEAR,
    )
    left = (resized.width - spec.crop_size) // 2
    top = (resized.height - spec.crop_size) // 2
    crop = resized.crop((left, top, left + spec.crop_size, top + spec.crop_size))
    array = torch.from_numpy(np.asarray(crop, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    return (array - mean) / std


class _ImageFiles(Dataset):
    """Decoded, preprocessed images; an unreadable file yields a zero image and its error."""

    def __init__(self, paths: Sequence[Path | str], spec: BackboneSpec) -> None:
        self.paths = list(paths)
        self.spec = spec

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, str]:
        try:
            return index, preprocess(open_rgb(self.paths[index]), self.spec), ""
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            size = self.spec.crop_size
            return index, torch.zeros(3, size, size), f"{self.paths[index]}: {error}"


@dataclass
class FeatureBatch:
    """Rows of ``paths`` (positions), their features, and the positions that could not be read."""

    positions: np.ndarray
    features: np.ndarray  # float16 (n, D)
    failures: dict[int, str]


@dataclass
class ExtractionProgress:
    done: int
    total: int
    images_per_second: float
    eta_seconds: float


def extract_features(
    paths: Sequence[Path | str],
    spec: FeatureSpec,
    *,
    device: str | torch.device = "auto",
    batch_size: int = 64,
    num_workers: int | None = None,
    model: torch.nn.Module | None = None,
    on_progress: Callable[[ExtractionProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[FeatureBatch]:
    """Features of every file in ``paths``, a batch at a time, in order.

    On cuda the backbone runs under autocast (bf16 where supported); decoding runs in ``num_workers``
    processes (default: the cores, at most 8). ``model`` reuses a loaded backbone."""
    device = resolve_device(device) if isinstance(device, str) else device
    table = backbone_spec(spec.backbone)
    network = (model if model is not None else load_backbone(spec.backbone, spec.weights)).to(device).eval()
    workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
    loader = DataLoader(
        _ImageFiles(paths, table),
        batch_size=batch_size,
        num_workers=workers if len(paths) > batch_size else 0,
        pin_memory=device.type == "cuda",
    )
    started = time.perf_counter()
    done = 0
    for positions, pixels, errors in loader:
        if should_stop is not None and should_stop():
            return
        pixels = pixels.to(device, non_blocking=True)
        with torch.no_grad(), autocast(device, device.type == "cuda"):
            features = network(pixels).float()
            if spec.view == "centre_flip":
                features = 0.5 * (features + network(pixels.flip(-1)).float())
        failures = {int(p): e for p, e in zip(positions.tolist(), errors, strict=True) if e}
        done += len(positions)
        yield FeatureBatch(positions.numpy(), features.cpu().numpy().astype(FEATURE_DTYPE), failures)
        if on_progress is not None:
            elapsed = time.perf_counter() - started
            rate = done / max(elapsed, 1e-9)
            on_progress(ExtractionProgress(done, len(paths), rate, (len(paths) - done) / max(rate, 1e-9)))


class FeatureCache:
    """Feature rows by sha256 for one ``FeatureSpec``, under ``root/features-<key>/``.

    A shard is two files: ``<id>.features.npy`` (float16 (n, D)) and ``<id>.sha256.npy`` (n hashes),
    the second written last, so a shard without it is an unfinished write and is ignored. Readers
    memory-map the feature files: reading the cache of a million images costs its hash index, not its
    2.5 GB of features."""

    def __init__(self, root: Path | str, spec: FeatureSpec) -> None:
        self.spec = spec
        self.folder = Path(root) / f"features-{spec.key}"

    def _shard_ids(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(path.name.removesuffix(".sha256.npy") for path in self.folder.glob("*.sha256.npy"))

    def _index(self) -> tuple[dict[str, tuple[int, int]], list[np.ndarray]]:
        where: dict[str, tuple[int, int]] = {}
        shards: list[np.ndarray] = []
        for shard_id in self._shard_ids():
            try:
                hashes = np.load(self.folder / f"{shard_id}.sha256.npy")
                features = np.load(self.folder / f"{shard_id}.features.npy", mmap_mode="r")
            except (OSError, ValueError) as error:
                log.warning("ignoring unreadable feature shard %s: %s", shard_id, error)
                continue
            if features.ndim != 2 or features.shape[0] != len(hashes) or features.shape[1] != self.spec.feature_dim:
                log.warning("ignoring feature shard %s of shape %s", shard_id, features.shape)
                continue
            for row, sha in enumerate(hashes.tolist()):
                where.setdefault(sha, (len(shards), row))
            shards.append(features)
        return where, shards

    def missing(self, hashes: Sequence[str]) -> list[int]:
        """Positions in ``hashes`` whose features are not cached yet."""
        where, _ = self._index()
        return [position for position, sha in enumerate(hashes) if sha not in where]

    def get(self, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(float16 (N, D) features in the order of ``hashes``, bool (N,) found)."""
        where, shards = self._index()
        out = np.zeros((len(hashes), self.spec.feature_dim), dtype=FEATURE_DTYPE)
        found = np.zeros(len(hashes), dtype=bool)
        by_shard: dict[int, tuple[list[int], list[int]]] = {}
        for position, sha in enumerate(hashes):
            hit = where.get(sha)
            if hit is not None:
                rows = by_shard.setdefault(hit[0], ([], []))
                rows[0].append(position)
                rows[1].append(hit[1])
        for shard, (positions, rows) in by_shard.items():
            order = np.argsort(rows)  # sequential reads of the memory map
            out[np.asarray(positions)[order]] = shards[shard][np.asarray(rows)[order]]
            found[positions] = True
        return out, found

    def put(self, hashes: Sequence[str], features: np.ndarray) -> None:
        """Write one shard atomically (features first, then the hash list that makes it visible)."""
        if len(hashes) != len(features):
            raise ValueError(f"{len(hashes)} hashes for {len(features)} feature rows")
        if not len(hashes):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        shard_id = f"shard-{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        for suffix, array in (
            ("features", np.ascontiguousarray(features, dtype=FEATURE_DTYPE)),
            ("sha256", np.asarray(hashes, dtype="U64")),
        ):
            temporary = self.folder / f".{shard_id}.{suffix}.tmp.npy"
            np.save(temporary, array)
            os.replace(temporary, self.folder / f"{shard_id}.{suffix}.npy")
        if len(self._shard_ids()) > MAX_SHARDS:
            self.compact()

    def compact(self) -> None:
        """Merge every shard into one; the new shard is visible before the old ones are removed."""
        old = self._shard_ids()
        where, shards = self._index()
        if len(old) < 2:
            return
        hashes = list(where)
        merged = np.empty((len(hashes), self.spec.feature_dim), dtype=FEATURE_DTYPE)
        for position, sha in enumerate(hashes):
            shard, row = where[sha]
            merged[position] = shards[shard][row]
        del shards
        self.put(hashes, merged)
        for shard_id in old:
            (self.folder / f"{shard_id}.sha256.npy").unlink(missing_ok=True)
            (self.folder / f"{shard_id}.features.npy").unlink(missing_ok=True)
