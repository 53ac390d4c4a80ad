"""A full disk during an import or while labelling (issue 23 item 8): the database stays intact, the user reads
"disk full" and where, and the work stops cleanly: no traceback, nothing half written, nothing lost."""

from __future__ import annotations

import errno
import itertools
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import OperationalError

from db.engine import unit_of_work
from db.queries.annotators import get_or_create_annotator
from db.schema import Annotation, Image
from labeller import ingest
from labeller.app.services import common, label_session
from labeller.app.services.label_session import DISK_FULL_NOT_SAVED, LabelSession
from labeller.cli import cli
from labeller.disk_full import is_disk_full
from labeller.ingest import ImportDiskFull, ImportOptions, import_images
from labeller.project import Project, init_project, open_project
from tests.e2e.project_factory import make_app_project, write_digit_images

LEASE = 600
_ids = itertools.count(1)


def _image_count(root: Path) -> int:
    with unit_of_work(open_project(root).engine) as session:  # opens again, from the files on disk
        return session.scalar(select(func.count()).select_from(Image)) or 0


def _integrity_ok(root: Path) -> None:
    project = open_project(root)
    if project.database_url.startswith("sqlite"):
        with project.engine.connect() as connection:
            assert connection.execute(text("PRAGMA integrity_check")).scalar() == "ok"


def test_disk_full_errors_are_recognised() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full")))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked")))


def test_thumbnails_filling_the_disk_stop_the_import_with_exit_1(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "project"
    init_project(root, database_url=database_url)
    folder = tmp_path / "incoming"
    write_digit_images(folder, 70)  # two batches of 64: the second fails at its first thumbnail
    written = itertools.count(1)
    real = ingest.write_thumbnail

    def filling(image: PILImage.Image, target: Path, **options: Any) -> Path:
        if next(written) > 64:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(image, target, **options)

    monkeypatch.setattr(ingest, "write_thumbnail", filling)
    result = CliRunner().invoke(cli, ["import", str(root), str(folder), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # a clean stop: ClickException, no traceback
    assert "Traceback" not in result.output
    assert "disk full: free space on /" in result.output
    assert "nothing of this batch was stored (64 image(s) of earlier batches are stored)" in result.output
    assert _image_count(root) == 64
    _integrity_ok(root)

    monkeypatch.setattr(ingest, "write_thumbnail", real)  # space freed: the same import completes
    result = CliRunner().invoke(cli, ["import", str(root), str(folder), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "added 6, duplicates 64" in result.output
    assert _image_count(root) == 70


def _limit_pages(project: Project, pages: int) -> None:
    """SQLite's own full-disk condition: the database may not grow past ``pages`` pages (every new connection)."""
    project.engine.dispose()

    @event.listens_for(project.engine, "connect")
    def limit(connection: sqlite3.Connection, _record: object) -> None:
        connection.execute(f"PRAGMA max_page_count = {pages}")


def test_a_full_sqlite_database_stops_the_import_and_keeps_the_earlier_batches(tmp_path: Path) -> None:
    project = init_project(tmp_path / "project")
    write_digit_images(tmp_path / "first", 8)
    assert import_images(project, [tmp_path / "first"], options=ImportOptions(progress=False)).added == 8
    with project.engine.connect() as connection:
        pages = connection.execute(text("PRAGMA page_count")).scalar()
    _limit_pages(project, pages)
    second = tmp_path / "second"
    for index in range(200):  # new content: the batch needs new pages (names, hashes, indexes)
        second.mkdir(exist_ok=True)
        PILImage.fromarray(np.full((8, 8, 3), index % 256, np.uint8)).save(second / f"a-long-file-name-{index:05d}.png")
        if index >= 100:
            PILImage.fromarray(np.full((8, 9, 3), index % 256, np.uint8)).save(second / f"b-{index:05d}.png")
    with pytest.raises(ImportDiskFull) as stopped:
        import_images(project, [second], options=ImportOptions(progress=False, batch_size=400))
    message = str(stopped.value)
    assert message.startswith("disk full: free space on /") and "nothing of this batch was stored" in message
    assert is_disk_full(stopped.value.__cause__)
    project.engine.dispose()
    assert _image_count(project.root) == 8
    _integrity_ok(project.root)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real, small file system that fills up (root may mount a tmpfs; elsewhere the test is skipped)."""
    mounted = tmp_path / "small-disk"
    mounted.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mounted)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    try:
        yield mounted
    finally:
        subprocess.run(["umount", "-l", str(mounted)], check=False, capture_output=True)


def test_a_really_full_disk_stops_the_import_cleanly(tmp_path: Path, tmpfs: Path) -> None:
    root = tmpfs / "project"
    init_project(root)
    folder = tmp_path / "noise"  # on the big disk; their thumbnails (JPEG of noise: large) fill the small one
    folder.mkdir()
    generator = np.random.default_rng(0)
    for index in range(120):
        pixels = generator.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        PILImage.fromarray(pixels).save(folder / f"noise-{index:03d}.png")
    result = CliRunner().invoke(cli, ["import", str(root), str(folder), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert f"disk full: free space on {tmpfs}" in result.output
    stored = _image_count(root)
    assert stored % 64 == 0  # whole batches only
    _integrity_ok(root)


# --- labelling ----------------------------------------------------------------------------------------------


def test_a_decision_the_full_disk_refuses_is_not_answered_and_saves_when_sent_again(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_app_project(tmp_path / "project", images=12, database_url=database_url)
    with unit_of_work(project.engine) as session:
        annotator_id = get_or_create_annotator(session, "a").id
        taxonomy = common.load_taxonomy(session)
    labelling = LabelSession(annotator_id, "random")
    labelling.refill(project.engine, lease_seconds=LEASE)
    first, second = (item.image_id for item in labelling.window[:2])
    main = taxonomy.main_classes[0].id
    ops = [
        {"op": f"full-{next(_ids)}", "kind": "label", "image": image, "after": 0, "step": 1, "main": main}
        for image in (first, second)
    ]
    real = label_session.record_annotation
    calls = itertools.count(1)

    def full_from_the_second(session: Any, **kwargs: Any) -> Annotation:
        if next(calls) >= 2:
            raise OperationalError("INSERT INTO annotations", {}, sqlite3.OperationalError("database or disk is full"))
        return real(session, **kwargs)

    monkeypatch.setattr(label_session, "record_annotation", full_from_the_second)
    answers = labelling.receive(project.engine, {"ops": ops}, taxonomy, lease_seconds=LEASE)
    assert [(answer.image_id, answer.status) for answer in answers] == [(first, "applied")]  # the second: no ack
    assert labelling.messages == [DISK_FULL_NOT_SAVED]
    with unit_of_work(project.engine) as session:
        saved = session.scalars(select(Annotation.image_id).where(Annotation.annotator_id == annotator_id)).all()
    assert saved == [first]

    monkeypatch.setattr(label_session, "record_annotation", real)  # space freed; the card sends its outbox again
    answers = labelling.receive(project.engine, {"ops": ops}, taxonomy, lease_seconds=LEASE)
    assert [(answer.image_id, answer.status) for answer in answers] == [(first, "applied"), (second, "applied")]


def test_no_room_for_a_large_view_shows_the_thumbnail_and_marks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from db.queries import unreadable
    from labeller.thumbnails import thumbnail_path

    project = make_app_project(tmp_path / "project", images=4)
    with unit_of_work(project.engine) as session:
        image = session.scalars(select(Image)).first()
        assert image is not None
        thumb = thumbnail_path(project, image)

        def full(*_args: Any) -> Path:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(label_session, "large_view_file", full)
        assert label_session._display_or_placeholder(session, project, image) == thumb
        assert unreadable.unreadable_ids(session, [image.id]) == set()  # the file is fine: not marked
