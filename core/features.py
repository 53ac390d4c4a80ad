"""Pooled backbone features for every image, computed once and cached on disk by content hash.

``extract_features`` decodes images in data-loader processes, runs the backbone in batches (on cuda with
mixed precision when present) and yields float16 feature rows as they are ready; ``FeatureCache`` keeps
them per (backbone, view) as shards of memory-mappable ``.npy`` files, one shard per written batch, so a
worker killed mid-way loses at most one batch and a re-run computes only what is missing.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from core.backbones import BackboneSpec, backbone_spec, load_backbone
from core.data import MappedPages
from core.device import autocast, resolve_device
from core.images import decode_image

log = logging.getLogger(__name__)

FEATURE_DTYPE = np.float16
# Past this many shards a read opens too many files; they are merged into one.
MAX_SHARDS = 64
# Rows copied at a time when the cache gathers or merges shards (40 MB of 1,280-d float16).
GATHER_ROWS = 16_384
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
    (``core.images.decode_image``: EXIF orientation, first frame, transparency on white, 16-bit and float
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
    memory-map the feature files and look hashes up in sorted arrays: reading the cache of a million
    images costs about 200 MB of hash index (Python strings in a dict took 0.7 GB), never its 2.5 GB of
    features in the process's own memory (``get`` hands back a memory map)."""

    def __init__(self, root: Path | str, spec: FeatureSpec) -> None:
        self.spec = spec
        self.folder = Path(root) / f"features-{spec.key}"

    def _shard_ids(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(path.name.removesuffix(".sha256.npy") for path in self.folder.glob("*.sha256.npy"))

    def _index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
        """(every cached hash once, sorted, as bytes; the shard and row of its first stored copy) and the
        shards' feature memory maps."""
        hash_parts: list[np.ndarray] = []
        shard_parts: list[np.ndarray] = []
        shards: list[np.ndarray] = []
        for shard_id in self._shard_ids():
            try:
                hashes = np.load(self.folder / f"{shard_id}.sha256.npy", mmap_mode="r")
                features = np.load(self.folder / f"{shard_id}.features.npy", mmap_mode="r")
            except (OSError, ValueError) as error:
                log.warning("ignoring unreadable feature shard %s: %s", shard_id, error)
                continue
            if features.ndim != 2 or features.shape[0] != len(hashes) or features.shape[1] != self.spec.feature_dim:
                log.warning("ignoring feature shard %s of shape %s", shard_id, features.shape)
                continue
            # Hex digests as bytes: a quarter of the memory of numpy's unicode, and they sort the same.
            hash_parts.append(hashes.astype(f"S{max(hashes.dtype.itemsize // 4, 1)}"))
            shard_parts.append(np.full(len(hashes), len(shards), dtype=np.int32))
            shards.append(features)
        if not hash_parts:
            return np.empty(0, dtype="S64"), np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64), shards
        stored = np.concatenate(hash_parts)
        shard_of = np.concatenate(shard_parts)
        row_of = np.concatenate([np.arange(len(part), dtype=np.int64) for part in hash_parts])
        # A stable sort keeps equal hashes in storage order, so the first of each run is its first stored copy.
        order = np.argsort(stored, kind="stable")
        stored = stored[order]
        first = np.ones(len(stored), dtype=bool)
        first[1:] = stored[1:] != stored[:-1]
        return stored[first], shard_of[order[first]], row_of[order[first]], shards

    def _locate(self, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """(shard per position of ``hashes``, -1 when not cached; row in that shard) and the shards."""
        keys, shard_of, row_of, shards = self._index()
        if not len(keys) or not len(hashes):
            return np.full(len(hashes), -1, dtype=np.int32), np.zeros(len(hashes), dtype=np.int64), shards
        width = max(keys.dtype.itemsize, max(map(len, hashes)))
        keys, wanted = keys.astype(f"S{width}", copy=False), np.array(hashes, dtype=f"S{width}")
        at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        hit = keys[at] == wanted
        return np.where(hit, shard_of[at], -1), np.where(hit, row_of[at], 0), shards

    def missing(self, hashes: Sequence[str]) -> list[int]:
        """Positions in ``hashes`` whose features are not cached yet."""
        shard, _, _ = self._locate(hashes)
        return np.flatnonzero(shard < 0).tolist()

    def get(self, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(float16 (N, D) features in the order of ``hashes``, zero where not found; bool (N,) found).

        The features are a memory map: a view of one shard when the hashes are a run of its rows (a
        compacted cache read in the order it was computed), else a temporary file beside the shards that
        the rows are gathered into, a chunk at a time. Nothing of it is the process's own memory."""
        shard, row, shards = self._locate(hashes)
        found = shard >= 0
        count, dim = len(found), self.spec.feature_dim
        if count and found.all() and (shard == shard[0]).all() and (np.diff(row) == 1).all():
            return shards[int(shard[0])][int(row[0]) : int(row[0]) + count], found
        if count == 0:
            return np.zeros((0, dim), dtype=FEATURE_DTYPE), found
        out = self._scratch((count, dim))
        written = MappedPages(out)
        for number in np.unique(shard[found]):
            positions = np.flatnonzero(shard == number)
            order = np.argsort(row[positions], kind="stable")  # sequential reads of the memory map
            positions, rows = positions[order], row[positions][order]
            source = shards[int(number)]
            read = MappedPages(source)
            for start in range(0, len(rows), GATHER_ROWS):
                out[positions[start : start + GATHER_ROWS]] = read.gather(source, rows[start : start + GATHER_ROWS])
                written.read(len(rows[start : start + GATHER_ROWS]), scattered=True)
            read.release()
        written.release()
        return out, found

    def _scratch(self, shape: tuple[int, int]) -> np.ndarray:
        """A zero-filled float16 array in a nameless temporary file beside the shards (on the cache's disk,
        not a tmpfs that would take RAM; the system's temporary folder when the cache is read-only). The
        file goes away with its last mapping."""
        for folder in (self.folder, None):
            try:
                if folder is not None:
                    folder.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=folder, prefix=".gathered-features-") as file:
                    return np.memmap(file, dtype=FEATURE_DTYPE, mode="w+", shape=shape)
            except OSError:
                if folder is None:
                    raise
        raise AssertionError("unreachable")

    def _publish(self, hashes: np.ndarray, write_features: Callable[[Path], None]) -> None:
        """A new shard, atomically: ``write_features(path)`` writes the features file first, then the hash
        list that makes the shard visible is written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        shard_id = f"shard-{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        temporary = self.folder / f".{shard_id}.features.tmp.npy"
        write_features(temporary)
        os.replace(temporary, self.folder / f"{shard_id}.features.npy")
        temporary = self.folder / f".{shard_id}.sha256.tmp.npy"
        np.save(temporary, hashes)
        os.replace(temporary, self.folder / f"{shard_id}.sha256.npy")

    def put(self, hashes: Sequence[str], features: np.ndarray) -> None:
        """Write one shard atomically (features first, then the hash list that makes it visible)."""
        if len(hashes) != len(features):
            raise ValueError(f"{len(hashes)} hashes for {len(features)} feature rows")
        if not len(hashes):
            return
        rows = np.ascontiguousarray(features, dtype=FEATURE_DTYPE)
        self._publish(np.asarray(hashes, dtype="U64"), lambda path: np.save(path, rows))
        if len(self._shard_ids()) > MAX_SHARDS:
            self.compact()

    def compact(self) -> None:
        """Merge every shard into one, streamed a chunk at a time; the new shard is visible before the old
        ones are removed. Rows keep their storage order (shard by shard), each hash once."""
        old = self._shard_ids()
        if len(old) < 2:
            return
        keys, shard_of, row_of, shards = self._index()
        order = np.lexsort((row_of, shard_of))
        hashes = np.char.decode(keys[order], "ascii").astype("U64")
        self._publish(
            hashes, partial(self._write_merged, shards=shards, shard_of=shard_of[order], row_of=row_of[order])
        )
        shards.clear()  # no open maps of files about to be removed
        for shard_id in old:
            (self.folder / f"{shard_id}.sha256.npy").unlink(missing_ok=True)
            (self.folder / f"{shard_id}.features.npy").unlink(missing_ok=True)

    def _write_merged(self, path: Path, *, shards: list[np.ndarray], shard_of: np.ndarray, row_of: np.ndarray) -> None:
        """Row i of the new ``.npy`` at ``path`` is row ``row_of[i]`` of shard ``shard_of[i]``."""
        merged = np.lib.format.open_memmap(
            path, mode="w+", dtype=FEATURE_DTYPE, shape=(len(row_of), self.spec.feature_dim)
        )
        written, read = MappedPages(merged), [MappedPages(shard) for shard in shards]
        for start in range(0, len(row_of), GATHER_ROWS):
            stop = min(start + GATHER_ROWS, len(row_of))
            for number in np.unique(shard_of[start:stop]):
                rows = np.flatnonzero(shard_of[start:stop] == number) + start
                merged[rows] = read[int(number)].gather(shards[int(number)], row_of[rows])
            written.read(stop - start)
        merged.flush()
        del merged
