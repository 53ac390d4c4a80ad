"""Importing real files: every format, duplicates, every kind of bad file, pre-labels, EXIF, idempotence."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from db.engine import unit_of_work
from db.queries.annotations import current_labels, record_annotation
from db.queries.annotators import get_or_create_annotator
from db.queries.audit import minimum_audit_slice
from db.queries.images import random_key_from_sha
from db.queries.taxonomy import apply_taxonomy_spec, main_class_by_name, taxonomy_mapping
from db.schema import Annotation, AnnotationKind, Image
from labeller.ingest import ImportOptions, IngestError, import_images
from labeller.project import Project, init_project
from labeller.taxonomy_file import parse_taxonomy_toml
from labeller.thumbnails import thumbnail_file, thumbnail_path
from tests.images import (
    ANTS_AND_BEES as TAXONOMY,
)
from tests.images import (
    FORMATS,
    write_corrupt_png,
    write_exif_rotated_jpeg,
    write_image,
    write_png_bomb,
    write_truncated_jpeg,
)

QUIET = ImportOptions(progress=False)


@pytest.fixture
def project(tmp_path: Path, engine) -> Project:
    url = engine.url.render_as_string(hide_password=False)
    return init_project(tmp_path / "project", database_url=url)


def with_taxonomy(project: Project) -> Project:
    with unit_of_work(project.engine) as session:
        apply_taxonomy_spec(session, parse_taxonomy_toml(TAXONOMY))
    return project


def stored_images(project: Project) -> list[Image]:
    with unit_of_work(project.engine) as session:
        return list(session.scalars(select(Image).order_by(Image.id)))


def labels_by_file(project: Project) -> dict[str, tuple[str, tuple[str, ...]]]:
    with unit_of_work(project.engine) as session:
        names = {image.id: Path(image.path).name for image in session.scalars(select(Image))}
        return {names[label.image_id]: (label.main_class, label.tags) for label in current_labels(session)}


def messy_folder(root: Path) -> dict[str, str]:
    """Good images of every format, a duplicate, and every kind of bad file; returns name -> expected reason."""
    for seed, suffix in enumerate(FORMATS):
        write_image(root / f"good{suffix}", seed)
    write_image(root / "nested" / "deeper" / "good2.PNG", seed=50)
    shutil.copy(root / "good.jpg", root / "nested" / "copy_of_good.jpg")
    (root / "zero.png").write_bytes(b"")
    (root / "text.jpg").write_text("this is not a picture\n")
    write_truncated_jpeg(root / "truncated.jpg")
    write_corrupt_png(root / "corrupt.png")
    write_png_bomb(root / "bomb.png")
    (root / "notes.txt").write_text("not an image type")
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    os.symlink(root / "missing.jpg", root / "broken_link.jpg")
    return {
        "zero.png": "empty file",
        "text.jpg": "not an image",
        "truncated.jpg": "corrupt or truncated",
        "corrupt.png": "corrupt or truncated",
        "bomb.png": "decompression bomb",
        "notes.txt": "not an image file type",
        ".DS_Store": "not an image file type",  # hidden files are reported like any other
        "broken_link.jpg": "unreadable: broken link",
    }


def test_folder_import_adds_good_files_and_reports_every_bad_one(project: Project, tmp_path: Path) -> None:
    expected = messy_folder(tmp_path / "in")
    report = import_images(project, [tmp_path / "in"], options=QUIET)

    assert report.added == len(FORMATS) + 1
    assert report.duplicates == 1
    reasons = {Path(skipped.path).name: skipped.reason for skipped in report.skipped}
    assert set(reasons) == set(expected)
    for name, fragment in expected.items():
        assert fragment in reasons[name], (name, reasons[name])

    images = stored_images(project)
    assert sorted(Path(image.path).name for image in images) == sorted(
        [f"good{suffix}" for suffix in FORMATS] + ["good2.PNG"]
    )
    assert {image.format for image in images} == {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"}
    # The audit slice: the images with the smallest keys, at least its minimum (half of these 7 images;
    # none has a key below the 5% fraction, so the minimum alone decides).
    smallest = {image.id for image in sorted(images, key=lambda image: image.random_key)[:3]}
    assert minimum_audit_slice(len(images)) == 3
    assert all(image.random_key >= project.settings.labelling.audit_fraction for image in images)
    for image in images:
        assert (image.width, image.height) == (24, 16)
        assert image.random_key == random_key_from_sha(image.sha256)
        assert image.audit == (image.id in smallest)
        thumb = thumbnail_file(project.thumbs_dir, image.sha256)
        assert thumb.is_file() and thumb.parent.name == image.sha256[:2]
        assert Path(image.path).is_absolute()  # outside the project: stored absolute


def test_reimport_adds_nothing_twice(project: Project, tmp_path: Path) -> None:
    messy_folder(tmp_path / "in")
    first = import_images(project, [tmp_path / "in"], options=QUIET)
    thumbs_before = {path: path.stat().st_mtime_ns for path in project.thumbs_dir.rglob("*.jpg")}
    second = import_images(project, [tmp_path / "in", tmp_path / "in" / "good.png"], options=QUIET)
    assert (second.added, second.duplicates) == (0, first.added + first.duplicates + 1)
    assert len(stored_images(project)) == first.added
    # Thumbnails are made once.
    assert {path: path.stat().st_mtime_ns for path in project.thumbs_dir.rglob("*.jpg")} == thumbs_before


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads chmod 000 files; the broken link covers unreadable files")
def test_permission_denied_is_skipped(project: Project, tmp_path: Path) -> None:
    locked = write_image(tmp_path / "in" / "locked.png", seed=3)
    locked.chmod(0)
    try:
        report = import_images(project, [tmp_path / "in"], options=QUIET)
    finally:
        locked.chmod(0o644)
    assert [skipped.reason for skipped in report.skipped] == ["unreadable: permission denied"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists chmod 000 folders")
def test_unreadable_folder_is_reported(project: Project, tmp_path: Path) -> None:
    write_image(tmp_path / "in" / "ok.png", seed=1)
    write_image(tmp_path / "in" / "locked" / "hidden.png", seed=2)
    (tmp_path / "in" / "locked").chmod(0)
    try:
        report = import_images(project, [tmp_path / "in"], options=QUIET)
    finally:
        (tmp_path / "in" / "locked").chmod(0o755)
    assert report.added == 1
    assert [skipped.reason.split(":")[0] for skipped in report.skipped] == ["unreadable folder"]


def test_exif_orientation_is_honoured(project: Project, tmp_path: Path) -> None:
    write_exif_rotated_jpeg(tmp_path / "in" / "rotated.jpg", size=(40, 20), orientation=6)
    import_images(project, [tmp_path / "in"], options=QUIET)
    (image,) = stored_images(project)
    assert (image.width, image.height) == (20, 40)
    thumb = thumbnail_file(project.thumbs_dir, image.sha256)
    with PILImage.open(thumb) as opened:
        assert opened.size == (20, 40)
    # Rebuilding from the original file (cache removed) gives the same upright thumbnail.
    thumb.unlink()
    with PILImage.open(thumbnail_path(project, image)) as rebuilt:
        assert rebuilt.size == (20, 40)


def image_folder(root: Path) -> None:
    write_image(root / "ants" / "red" / "a1.png", 1)
    write_image(root / "ants" / "black" / "a2.png", 2)
    write_image(root / "ants" / "a3.png", 3)  # main class only: a partial label
    write_image(root / "bees" / "b1.png", 4)
    write_image(root / "wasps" / "w1.png", 5)  # not in the taxonomy
    write_image(root / "ants" / "purple" / "a4.png", 6)  # unknown sub-class
    write_image(root / "loose.png", 7)  # no folder: unlabelled


def test_labels_from_folders(project: Project, tmp_path: Path) -> None:
    with_taxonomy(project)
    image_folder(tmp_path / "in")
    report = import_images(project, [tmp_path / "in"], options=ImportOptions(labels_from_folders=True, progress=False))
    assert (report.added, report.labelled) == (5, 4)
    reasons = sorted(skipped.reason for skipped in report.skipped)
    assert reasons[0].startswith("unknown class 'wasps'")
    assert reasons[1].startswith("unknown sub-class ants/purple")
    assert labels_by_file(project) == {
        "a1.png": ("ants", ("red",)),
        "a2.png": ("ants", ("black",)),
        "a3.png": ("ants", ()),
        "b1.png": ("bees", ()),
    }
    with unit_of_work(project.engine) as session:
        sources = set(session.scalars(select(Annotation.source)))
    assert sources == {"import"}


def test_create_classes_from_folders(project: Project, tmp_path: Path) -> None:
    image_folder(tmp_path / "in")
    report = import_images(
        project,
        [tmp_path / "in"],
        options=ImportOptions(labels_from_folders=True, create_classes=True, progress=False),
    )
    assert (report.added, report.labelled, report.skipped) == (7, 6, [])
    with unit_of_work(project.engine) as session:
        assert taxonomy_mapping(session) == {"ants": ["black", "purple", "red"], "bees": [], "wasps": []}


def test_reimport_with_labels_never_overrides_a_human_label(project: Project, tmp_path: Path) -> None:
    with_taxonomy(project)
    image_folder(tmp_path / "in")
    import_images(project, [tmp_path / "in"], options=QUIET)  # first without labels
    assert labels_by_file(project) == {}
    with unit_of_work(project.engine) as session:
        human = get_or_create_annotator(session, "alice")
        bees = main_class_by_name(session, "bees")
        a1 = session.scalar(select(Image.id).where(Image.path.like("%a1.png")))
        record_annotation(session, image_id=a1, annotator_id=human.id, kind=AnnotationKind.LABEL, main_class_id=bees.id)
    options = ImportOptions(labels_from_folders=True, progress=False)
    second = import_images(project, [tmp_path / "in"], options=options)
    assert (second.added, second.labelled) == (0, 3)
    third = import_images(project, [tmp_path / "in"], options=options)
    assert third.labelled == 0
    labels = labels_by_file(project)
    assert labels["a1.png"] == ("bees", ())
    assert labels["a2.png"] == ("ants", ("black",))
    with unit_of_work(project.engine) as session:
        assert session.scalar(select(func.count()).select_from(Annotation)) == 4


def test_manifest_with_bad_rows(project: Project, tmp_path: Path) -> None:
    with_taxonomy(project)
    data = tmp_path / "data"
    for seed, name in enumerate(["m1.png", "m2.jpg", "m3.png", "m4.png", "m5.png"]):
        write_image(data / name, seed + 20)
    manifest = tmp_path / "labels.csv"
    manifest.write_text(
        "path,class,tags\n"
        "data/m1.png,ants,red\n"
        "data/m2.jpg,ants/black,\n"
        f"{data / 'm3.png'},bees,\n"
        "data/m4.png,,\n"
        "data/m5.png,wasps,\n"
        "data/missing.png,bees,\n"
        ",bees,\n"
        "data/m5.png,,red\n"
        "data/m1.png,ants,purple\n"
    )
    report = import_images(project, manifest=manifest, options=QUIET)
    assert (report.added, report.labelled) == (4, 3)
    reasons = [skipped.reason for skipped in report.skipped]
    assert len(reasons) == 5
    assert any(reason.startswith("unknown class 'wasps'") for reason in reasons)
    assert "unreadable: file vanished or does not exist" in reasons
    assert "manifest row without a path" in reasons
    assert "tags given without a class" in reasons
    assert any(reason.startswith("unknown sub-class ants/purple") for reason in reasons)
    assert all("labels.csv line" in skipped.path for skipped in report.skipped)
    assert labels_by_file(project) == {
        "m1.png": ("ants", ("red",)),
        "m2.jpg": ("ants", ("black",)),
        "m3.png": ("bees", ()),
    }


def test_manifest_without_a_path_column_stops_before_writing(project: Project, tmp_path: Path) -> None:
    manifest = tmp_path / "bad.csv"
    manifest.write_text("file,label\na.png,ants\n")
    with pytest.raises(IngestError, match="'path' column"):
        import_images(project, manifest=manifest, options=QUIET)
    assert stored_images(project) == []


def test_same_content_twice_in_one_run_is_one_image(project: Project, tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "x.png", 1)
    shutil.copy(tmp_path / "a" / "x.png", tmp_path / "a" / "y.png")
    report = import_images(project, [tmp_path / "a"], options=ImportOptions(batch_size=1, progress=False))
    assert (report.added, report.duplicates) == (1, 1)


def _import_in_another_process(project_root: str, data: str, results) -> None:
    from labeller.project import open_project

    report = import_images(
        open_project(project_root), [Path(data)], options=ImportOptions(batch_size=4, progress=False)
    )
    results.put((report.added, report.duplicates, len(report.skipped)))


def test_concurrent_importers_on_one_sqlite_file_add_each_image_once(tmp_path: Path) -> None:
    import multiprocessing

    project = init_project(tmp_path / "project")
    for seed in range(40):
        write_image(tmp_path / "in" / f"{seed:02d}.png", seed)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [
        context.Process(target=_import_in_another_process, args=(str(project.root), str(tmp_path / "in"), results))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert sum(added for added, _, _ in outcomes) == 40
    assert all(added + duplicates == 40 and skipped == 0 for added, duplicates, skipped in outcomes)
    images = stored_images(project)
    assert len(images) == len({image.sha256 for image in images}) == 40


def test_decompression_bomb_warning_range_is_skipped_too(project: Project, tmp_path: Path) -> None:
    # 10,000 x 10,000 = 100 M pixels: above PIL's MAX_IMAGE_PIXELS (89 M), below twice that, so PIL only warns.
    write_png_bomb(tmp_path / "in" / "big.png", side=10_000)
    report = import_images(project, [tmp_path / "in"], options=QUIET)
    assert report.added == 0
    assert "decompression bomb" in report.skipped[0].reason


def test_interrupted_import_leaves_whole_rows_and_resumes(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import labeller.ingest as ingest

    for seed in range(10):
        write_image(tmp_path / "in" / f"{seed}.png", seed)
    real_write = ingest.write_thumbnail
    calls = {"n": 0}

    def interrupted_on_the_seventh(image: PILImage.Image, target: Path) -> Path:
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real_write(image, target)

    monkeypatch.setattr(ingest, "write_thumbnail", interrupted_on_the_seventh)
    with pytest.raises(KeyboardInterrupt):
        import_images(project, [tmp_path / "in"], options=ImportOptions(batch_size=4, progress=False))
    # The first batch of 4 is stored whole; the interrupted second batch left no row.
    images = stored_images(project)
    assert len(images) == 4
    assert all(thumbnail_file(project.thumbs_dir, image.sha256).is_file() for image in images)

    monkeypatch.setattr(ingest, "write_thumbnail", real_write)
    report = import_images(project, [tmp_path / "in"], options=QUIET)
    assert (report.added, report.duplicates) == (6, 4)
    assert len(stored_images(project)) == 10
