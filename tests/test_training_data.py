"""load_project_pool on a real project: labels become admissible-leaf masks (exact, partial from a main
class alone or several tags), unsure/skip/undone images are unlabelled, pixels are decoded once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from db.engine import unit_of_work
from db.queries.annotations import record_annotation, undo_annotation
from db.queries.annotators import get_or_create_annotator
from db.queries.taxonomy import (
    MainClassEntry,
    SubClassEntry,
    TaxonomySpec,
    apply_taxonomy_spec,
    main_class_by_name,
    sub_class_by_name,
)
from db.schema import AnnotationKind, Image
from labeller.ingest import ImportOptions, import_images
from labeller.project import Project, ProjectError, init_project
from labeller.training_data import CACHE_FOLDER, evaluation_data, load_project_pool
from tests.project_factory import write_class_images

TAXONOMY = TaxonomySpec(
    (
        MainClassEntry("animal", sub_classes=(SubClassEntry("ant"), SubClassEntry("bee"), SubClassEntry("wasp"))),
        MainClassEntry("plant"),
    )
)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    project = init_project(tmp_path / "project")
    write_class_images(tmp_path / "photos", per_class=4, size=12)
    import_images(project, [tmp_path / "photos"], options=ImportOptions(progress=False))
    with unit_of_work(project.engine) as session:
        apply_taxonomy_spec(session, TAXONOMY)
    return project


def _image_ids(project: Project) -> list[int]:
    with unit_of_work(project.engine) as session:
        return sorted(session.scalars(Image.__table__.select().with_only_columns(Image.id)))


def _label(project: Project, image_id: int, kind: AnnotationKind, main: str | None, tags: tuple[str, ...] = ()) -> int:
    with unit_of_work(project.engine) as session:
        annotator = get_or_create_annotator(session, "tester")
        main_id = main_class_by_name(session, main).id if main else None
        tag_ids = [sub_class_by_name(session, main, tag).id for tag in tags]
        return record_annotation(
            session,
            image_id=image_id,
            annotator_id=annotator.id,
            kind=kind,
            main_class_id=main_id,
            sub_class_ids=tag_ids,
        ).id


def test_labels_become_admissible_leaf_masks(project: Project) -> None:
    ids = _image_ids(project)
    _label(project, ids[0], AnnotationKind.LABEL, "animal", ("bee",))  # exact leaf
    _label(project, ids[1], AnnotationKind.LABEL, "animal")  # partial: any animal
    _label(project, ids[2], AnnotationKind.LABEL, "animal", ("ant", "wasp"))  # partial: two tags
    _label(project, ids[3], AnnotationKind.LABEL, "plant")  # a main class with no sub-classes
    _label(project, ids[4], AnnotationKind.UNSURE, "plant")  # unsure: not a label
    _label(project, ids[5], AnnotationKind.SKIP, None)
    undone = _label(project, ids[6], AnnotationKind.LABEL, "plant")
    with unit_of_work(project.engine) as session:
        undo_annotation(session, undone, get_or_create_annotator(session, "tester").id)

    data = load_project_pool(project, image_size=12, channels=3)
    assert data.taxonomy.leaf_names == ["animal/ant", "animal/bee", "animal/wasp", "plant"]
    assert data.image_ids.tolist() == ids
    assert data.pool.images.shape == (8, 3, 12, 12) and data.pool.images.dtype == np.uint8
    assert data.pool.labelled.tolist() == [True, True, True, True, False, False, False, False]
    masks = data.pool.admissible.astype(int).tolist()
    assert masks[0] == [0, 1, 0, 0]
    assert masks[1] == [1, 1, 1, 0]
    assert masks[2] == [1, 0, 1, 0]
    assert masks[3] == [0, 0, 0, 1]
    assert all(row == [1, 1, 1, 1] for row in masks[4:])
    assert data.labelled_ids.tolist() == ids[:4]
    assert data.audit.shape == (8,)

    as_oracle = evaluation_data(data, "test")
    assert len(as_oracle.images) == 4 and len(as_oracle.extra_unlabelled) == 4
    assert as_oracle.main_labels.tolist() == [0, 0, 0, 1]
    assert as_oracle.leaf_labels.tolist() == [1, -1, -1, 3]


def test_pixels_are_decoded_once_and_cached_by_content(project: Project, tmp_path: Path) -> None:
    first = load_project_pool(project, image_size=12, channels=1)
    shards = list((project.models_dir / CACHE_FOLDER).rglob("shard-*.npz"))
    assert len(shards) == 1
    # With the files gone, the cache still serves every image: nothing is decoded again.
    for path in (tmp_path / "photos").rglob("*.png"):
        path.unlink()
    second = load_project_pool(project, image_size=12, channels=1)
    np.testing.assert_array_equal(first.pool.images, second.pool.images)
    assert not second.skipped
    assert len(list((project.models_dir / CACHE_FOLDER).rglob("shard-*.npz"))) == 1
    # Another size is another cache entry; it must decode, and the files are gone: skipped, with a reason.
    third = load_project_pool(project, image_size=8, channels=1)
    assert len(third.image_ids) == 0 and len(third.skipped) == 8
    assert all("photos" in reason for reason in third.skipped.values())


def test_a_broken_file_is_skipped_and_the_rest_loads(project: Project, tmp_path: Path) -> None:
    broken = sorted((tmp_path / "photos").rglob("*.png"))[0]
    broken.write_bytes(b"not a png")
    data = load_project_pool(project, image_size=12)
    assert len(data.image_ids) == 7 and len(data.skipped) == 1
    (reason,) = data.skipped.values()
    assert broken.name in reason
    assert next(iter(data.skipped)) not in data.image_ids.tolist()


def test_a_feature_pool_is_read_from_the_cache_memory_map_and_an_unreadable_image_is_left_out(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The features of a million images stay on disk: the pool is a memory map of the cache (never a copy,
    even when an unreadable image has to be left out), and labels stay with their images."""
    import labeller.training_data as training_data
    from core.data import MappedPages
    from core.features import FeatureSpec

    spec = FeatureSpec("efficientnet_lite0")
    with unit_of_work(project.engine) as session:
        hashes = [image.sha256 for image in session.query(Image).order_by(Image.id)]
    ids = _image_ids(project)
    stored = np.random.default_rng(4).normal(size=(len(hashes), spec.feature_dim)).astype(np.float16)
    training_data.feature_cache(project, spec).put(hashes, stored)
    # Image 2's file could not be read when features were computed (no backbone runs in this test).
    monkeypatch.setattr(training_data, "ensure_features", lambda *args, **kwargs: (0, {hashes[2]: "broken.png: bad"}))
    _label(project, ids[3], AnnotationKind.LABEL, "plant")

    data = training_data.load_project_features(project, spec)
    kept = [0, 1, 3, 4, 5, 6, 7]
    assert data.image_ids.tolist() == [ids[i] for i in kept] and data.skipped == {ids[2]: "broken.png: bad"}
    assert MappedPages(data.pool.images).mapping is not None
    np.testing.assert_array_equal(data.pool.images, stored[kept])
    assert data.pool.labelled.tolist() == [False, False, True, False, False, False, False]
    assert data.pool.admissible[2].tolist() == [False, False, False, True]


def test_a_project_without_taxonomy_is_a_clear_error(tmp_path: Path) -> None:
    project = init_project(tmp_path / "empty")
    with pytest.raises(ProjectError, match="taxonomy"):
        load_project_pool(project, image_size=8)
