"""A project's images and current labels as the models see them: pixels, or a backbone's features.

``load_project_pool`` reads every image and its current label through ``db.queries`` and turns each label
into the set of taxonomy leaves it admits (``core.taxonomy.Taxonomy.admissible``): a main class with tags
admits those sub-classes, a main class alone admits all of its sub-classes (a partial label), and an image
without a current label (never labelled, skipped, unsure, undone) admits every leaf and counts as
unlabelled.

Decoding photos is the slow part, so pixels are cached under ``project/models/cache``: one folder per
(size, channels), holding shard files of (sha256, pixels) written atomically. Backbone features are cached
beside them by ``core.features.FeatureCache`` and computed by ``ensure_features`` for the images that lack
them (the features job, and the train, score and evaluate paths before they read). An image is decoded once per
size, whoever asks (worker, evaluation, scoring); a re-imported file with the same content reuses its
pixels. Several processes may fill the cache at once: each writes its own shard, and duplicates are
harmless.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.data import LabelledPool
from core.features import ExtractionProgress, FeatureCache, FeatureSpec
from core.images import load_image
from core.taxonomy import Taxonomy
from db.engine import unit_of_work
from db.queries.annotations import current_labels
from db.queries.images import iter_image_files
from db.queries.taxonomy import taxonomy_mapping
from labeller.project import Project, ProjectError

if TYPE_CHECKING:
    from core.evaluate import EvaluationData

log = logging.getLogger(__name__)

CACHE_FOLDER = "cache"
# Many small shards slow every load down; past this many they are merged into one.
MAX_SHARDS = 16


@dataclass
class ProjectPool:
    """Every readable image of a project, in image-id order.

    image_ids: int64 (N,); pool: pixels and admissible-leaf masks (``pool.labelled`` marks the images with
    a current label); audit: bool (N,), the images of the random audit slice; skipped: image id -> why
    it could not be read (missing or broken file), left out of everything else.
    """

    image_ids: np.ndarray
    pool: LabelledPool
    taxonomy: Taxonomy
    audit: np.ndarray
    skipped: dict[int, str] = field(default_factory=dict)

    @property
    def labelled_ids(self) -> np.ndarray:
        return self.image_ids[self.pool.labelled]


@dataclass
class _ProjectImages:
    """Every image row of a project in image-id order, column by column (a million rows as one Python
    object each took 650 MB). ``stored_paths`` are as the database holds them: resolve with ``path``."""

    image_ids: np.ndarray  # int64 (N,), ascending
    sha256: list[str]
    stored_paths: list[str]
    audit: np.ndarray  # bool (N,)

    def path(self, project: Project, position: int) -> Path:
        return project.resolve_image_path(self.stored_paths[position])


def _project_rows(project: Project) -> tuple[_ProjectImages, dict[int, tuple[str, list[str]]], Taxonomy]:
    ids: list[int] = []
    hashes: list[str] = []
    paths: list[str] = []
    audit: list[bool] = []
    with unit_of_work(project.engine) as session:
        mapping = taxonomy_mapping(session)
        for image_id, sha256, path, in_audit in iter_image_files(session):
            ids.append(image_id)
            hashes.append(sha256)
            paths.append(path)
            audit.append(in_audit)
        labels = {label.image_id: (label.main_class, label.tags) for label in current_labels(session)}
    if not mapping:
        raise ProjectError("the project has no taxonomy yet: define its classes with `labeller taxonomy`")
    images = _ProjectImages(np.array(ids, dtype=np.int64), hashes, paths, np.array(audit, dtype=bool))
    return images, labels, Taxonomy.from_dict(mapping)


def _project_pool(
    images: _ProjectImages,
    labels: dict[int, tuple[str, list[str]]],
    taxonomy: Taxonomy,
    inputs: np.ndarray,
    failures: dict[str, str],
) -> ProjectPool:
    """The readable images (those without a failure) with their labels as admissible-leaf masks. ``inputs``
    holds one row per image, or one per readable image only (a feature pool gathered for those alone:
    dropping rows here would copy a memory-mapped pool into memory)."""
    readable = (
        np.flatnonzero([sha not in failures for sha in images.sha256]) if failures else np.arange(len(images.sha256))
    )
    skipped = {
        int(images.image_ids[i]): failures[images.sha256[i]]
        for i in np.setdiff1d(np.arange(len(images.sha256)), readable)
    }
    if skipped:
        log.warning(
            "%d image(s) could not be read and are left out, e.g. %s", len(skipped), next(iter(skipped.values()))
        )
    image_ids = images.image_ids[readable]
    admissible = np.ones((len(readable), taxonomy.num_leaves), dtype=bool)
    labelled = np.zeros(len(readable), dtype=bool)
    for image_id, (main, tags) in sorted(labels.items()):
        position = int(np.searchsorted(image_ids, image_id))
        if position == len(image_ids) or image_ids[position] != image_id:
            continue  # an image left out as unreadable
        try:
            admissible[position] = taxonomy.admissible(main, tags)
        except (KeyError, ValueError) as error:
            raise ProjectError(f"image {image_id}: its label does not fit the taxonomy: {error}") from error
        labelled[position] = True
    kept = inputs if len(inputs) == len(readable) else inputs[readable]
    return ProjectPool(
        image_ids=image_ids,
        pool=LabelledPool(images=kept, admissible=admissible, labelled=labelled),
        taxonomy=taxonomy,
        audit=images.audit[readable],
        skipped=skipped,
    )


def load_project_pool(
    project: Project, *, image_size: int, channels: int = 3, workers: int | None = None
) -> ProjectPool:
    """Pixels (uint8, ``channels`` x ``image_size`` x ``image_size``) and labels of every project image."""
    if image_size < 1 or channels not in (1, 3):
        raise ValueError(f"need image_size >= 1 and channels 1 or 3, got {image_size} and {channels}")
    images, labels, taxonomy = _project_rows(project)
    cache = PixelCache(project.models_dir / CACHE_FOLDER, image_size=image_size, channels=channels)
    paths = [images.path(project, position) for position in range(len(images.sha256))]
    pixels, failures = cache.get(images.sha256, paths, workers=workers)
    return _project_pool(images, labels, taxonomy, pixels, failures)


def feature_cache(project: Project, spec: FeatureSpec) -> FeatureCache:
    return FeatureCache(project.models_dir / CACHE_FOLDER, spec)


def ensure_features(
    project: Project,
    spec: FeatureSpec,
    *,
    device: str = "auto",
    batch_size: int = 64,
    on_progress: Callable[[ExtractionProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[int, dict[str, str]]:
    """Compute and cache the features of every project image that lacks them; a batch is written as soon
    as it is computed. Returns (images computed, sha256 -> why an image could not be read)."""
    from core.features import extract_features

    images, _, _ = _project_rows(project)
    cache = feature_cache(project, spec)
    todo_paths = {images.sha256[i]: images.path(project, i) for i in cache.missing(images.sha256)}
    todo = list(todo_paths)
    failures: dict[str, str] = {}
    if not todo:
        return 0, failures
    for batch in extract_features(
        list(todo_paths.values()),
        spec,
        device=device,
        batch_size=batch_size,
        on_progress=on_progress,
        should_stop=should_stop,
    ):
        good = [i for i, position in enumerate(batch.positions) if int(position) not in batch.failures]
        cache.put([todo[int(batch.positions[i])] for i in good], batch.features[good])
        failures.update({todo[position]: error for position, error in batch.failures.items()})
    return len(todo) - len(failures), failures


def load_project_features(
    project: Project,
    spec: FeatureSpec,
    *,
    device: str = "auto",
    on_progress: Callable[[ExtractionProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ProjectPool:
    """Backbone features (float16 (N, D), memory-mapped from the cache) and labels of every project image;
    missing features are computed first (only those), so a retrain never decodes the pool again."""
    _, failures = ensure_features(project, spec, device=device, on_progress=on_progress, should_stop=should_stop)
    images, labels, taxonomy = _project_rows(project)
    cache = feature_cache(project, spec)
    for position in cache.missing(images.sha256):
        sha = images.sha256[position]
        if sha not in failures:
            failures[sha] = f"{images.path(project, position)}: no features (imported while they were computed)"
    while True:
        # Only the readable rows are read, so that none has to be dropped from the memory map afterwards.
        readable = [sha for sha in images.sha256 if sha not in failures] if failures else images.sha256
        features, found = cache.get(readable)
        if found.all():
            return _project_pool(images, labels, taxonomy, features, failures)
        for sha in np.asarray(readable)[~found].tolist():  # a shard removed in between (another process)
            failures[sha] = f"{sha}: no features (the feature cache changed while it was read)"


def evaluation_data(project_pool: ProjectPool, name: str) -> EvaluationData:
    """The labelled images as an oracle's data for ``core.evaluate``; the unlabelled ones become extra
    unlabelled data for the semi-supervised models."""
    from core.evaluate import EvaluationData

    pool = project_pool.pool
    return EvaluationData(
        name=name,
        images=pool.images[pool.labelled],
        admissible=pool.admissible[pool.labelled],
        taxonomy=project_pool.taxonomy,
        extra_unlabelled=pool.images[~pool.labelled] if (~pool.labelled).any() else None,
    )


class PixelCache:
    """Decoded, resized pixels by content hash, for one (size, channels)."""

    def __init__(self, root: Path, *, image_size: int, channels: int) -> None:
        self.image_size = image_size
        self.channels = channels
        self.folder = Path(root) / f"pixels-{image_size}px-{channels}ch"

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.npz")) if self.folder.is_dir() else []

    def _load(self) -> tuple[dict[str, tuple[int, int]], list[np.ndarray]]:
        """sha256 -> (shard number, row), and the shards' pixel arrays."""
        where: dict[str, tuple[int, int]] = {}
        arrays: list[np.ndarray] = []
        for path in self._shards():
            try:
                with np.load(path) as shard:
                    hashes, pixels = shard["sha256"], shard["pixels"]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
                # A damaged shard (a truncated .npz is a BadZipFile) costs a re-decode, never a failed job;
                # shards appear whole (os.replace), so a damaged one never heals: remove it.
                log.warning("removing unreadable pixel cache shard %s: %s", path, error)
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if pixels.shape[1:] != (self.channels, self.image_size, self.image_size):
                continue
            for row, sha in enumerate(hashes.tolist()):
                where.setdefault(sha, (len(arrays), row))
            arrays.append(pixels)
        return where, arrays

    def _write(self, hashes: Sequence[str], pixels: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"shard-{uuid.uuid4().hex}"
        temporary = self.folder / f".{name}.tmp.npz"
        np.savez(temporary, sha256=np.array(hashes, dtype="U64"), pixels=pixels)
        os.replace(temporary, self.folder / f"{name}.npz")

    def get(
        self, hashes: Sequence[str], paths: Sequence[Path], *, workers: int | None = None
    ) -> tuple[np.ndarray, dict[str, str]]:
        """Pixels (N, C, S, S) in the order of ``hashes``, decoding only what the cache lacks; and
        sha256 -> error for files that could not be read (their rows are zeros)."""
        shape = (self.channels, self.image_size, self.image_size)
        out = np.zeros((len(hashes), *shape), dtype=np.uint8)
        where, arrays = self._load()
        missing: dict[str, Path] = {}
        for position, sha in enumerate(hashes):
            if sha in where:
                shard, row = where[sha]
                out[position] = arrays[shard][row]
            else:
                missing.setdefault(sha, paths[position])
        failures: dict[str, str] = {}
        if missing:
            decoded, failures = self._decode(missing, workers)
            if decoded:
                new_hashes = list(decoded)
                self._write(new_hashes, np.stack([decoded[sha] for sha in new_hashes]))
            for position, sha in enumerate(hashes):
                if sha in decoded:
                    out[position] = decoded[sha]
            if len(self._shards()) > MAX_SHARDS:
                self.compact()
        return out, failures

    def _decode(self, missing: dict[str, Path], workers: int | None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        def decode(item: tuple[str, Path]) -> tuple[str, np.ndarray | None, str | None]:
            sha, path = item
            try:
                return sha, load_image(path, self.image_size, self.channels), None
            except (OSError, ValueError) as error:
                return sha, None, f"{path}: {error}"

        decoded: dict[str, np.ndarray] = {}
        failures: dict[str, str] = {}
        # PIL releases the GIL while decoding, so threads overlap the work.
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            for sha, pixels, error in pool.map(decode, missing.items()):
                if pixels is None:
                    failures[sha] = error or "unreadable"
                else:
                    decoded[sha] = pixels
        return decoded, failures

    def compact(self) -> None:
        """Merge every shard into one (new shard written before the old ones are removed)."""
        old = self._shards()
        where, arrays = self._load()
        if not where:
            return
        hashes = list(where)
        self._write(hashes, np.stack([arrays[shard][row] for shard, row in where.values()]))
        for path in old:
            path.unlink(missing_ok=True)
