"""Import inputs a hostile or careless user can give: every file given is imported or reported, nothing
hangs, nothing fills the memory, and the project's own folders are never imported."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from db.engine import reading
from db.schema import Image
from labeller.app.services import data
from labeller.app.services.common import Role
from labeller.files import FileRefused, hash_file
from labeller.ingest import ImportOptions, ImportReport, import_images
from labeller.project import Project, init_project
from tests.images import write_image

QUIET = ImportOptions(progress=False)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return init_project(tmp_path / "project")


def stored_names(project: Project) -> list[str]:
    with reading(project.engine) as session:
        return sorted(Path(path).name for path in session.scalars(select(Image.path)))


def reasons(report: ImportReport) -> dict[str, str]:
    return {Path(skipped.path).name: skipped.reason for skipped in report.skipped}


def png_bytes(tmp_path: Path, seed: int) -> bytes:
    return write_image(tmp_path / "src" / f"{seed}.png", seed).read_bytes()


def test_uploads_with_the_same_name_are_all_imported(project: Project, tmp_path: Path) -> None:
    # The old naming put the third file at "2-x.png", over the first one.
    files = [("2-x.png", png_bytes(tmp_path, 1)), ("x.png", png_bytes(tmp_path, 2)), ("x.png", png_bytes(tmp_path, 3))]
    report = data.import_uploads(project, files, role=Role.ADMIN)
    assert (report.added, report.skipped) == (3, [])
    assert stored_names(project) == ["2-x.png", "x (2).png", "x.png"]


def test_uploads_with_hidden_or_hostile_names_are_imported_inside_the_uploads_folder(
    project: Project, tmp_path: Path
) -> None:
    files = [
        (".hidden.png", png_bytes(tmp_path, 1)),
        ("../../escape.png", png_bytes(tmp_path, 2)),
        ("C:\\Users\\me\\win.png", png_bytes(tmp_path, 3)),
        ("..", png_bytes(tmp_path, 4)),
    ]
    report = data.import_uploads(project, files, role=Role.ADMIN)
    # The nameless one has no image suffix: reported, not silently dropped.
    assert report.added == 3
    assert [skipped.reason for skipped in report.skipped] == ["not an image file type (no extension)"]
    assert stored_names(project) == [".hidden.png", "escape.png", "win.png"]
    uploads = project.root / data.UPLOADS_FOLDER
    assert all(path.resolve().is_relative_to(uploads.resolve()) for path in uploads.rglob("*"))
    assert not (project.root / "escape.png").exists() and not (tmp_path / "escape.png").exists()


def test_hidden_files_symlinked_folders_and_link_loops(project: Project, tmp_path: Path) -> None:
    source = tmp_path / "in"
    write_image(source / ".dot.png", seed=1)
    write_image(source / ".git" / "objects" / "x.png", seed=2)
    write_image(tmp_path / "elsewhere" / "linked.png", seed=3)
    os.symlink(tmp_path / "elsewhere", source / "linked-folder")
    os.symlink(source, source / "loop")  # a link back to the root: must end, reported once
    report = import_images(project, [source], options=QUIET)
    assert stored_names(project) == [".dot.png", "linked.png"]
    assert reasons(report) == {
        ".git": "hidden folder (name starts with '.'): not searched",
        "loop": "a link to a folder already searched (link loop or duplicate)",
    }


def test_importing_the_project_folder_never_imports_its_own_thumbnails(project: Project, tmp_path: Path) -> None:
    for seed in range(3):
        write_image(project.root / "images" / f"{seed}.png", seed)
    (project.models_dir / "v1.png").write_bytes(png_bytes(tmp_path, 9))  # anything under models/
    first = import_images(project, [project.root], options=QUIET)
    assert first.added == 3
    for _ in range(2):
        again = import_images(project, [project.root], options=QUIET)
        assert again.added == 0
    assert len(stored_names(project)) == 3
    own = [s for s in again.skipped if "project's own folder" in s.reason]
    assert sorted(Path(s.path).name for s in own) == ["models", "thumbs"]
    # Pointing at the thumbnail cache directly is refused as well.
    inside = import_images(project, [next(project.thumbs_dir.iterdir())], options=QUIET)
    assert inside.added == 0 and "project's own folder" in inside.skipped[0].reason


def test_a_file_name_that_is_not_utf8_is_reported_and_the_rest_imported(project: Project, tmp_path: Path) -> None:
    source = tmp_path / "in"
    for seed in range(5):
        write_image(source / f"{seed}.png", seed)
    bad = os.fsencode(source) + b"/caf\xe9.png"  # Latin-1 bytes: not decodable as UTF-8
    with open(bad, "wb") as stream:
        stream.write(png_bytes(tmp_path, 7))
    report = import_images(project, [source], options=QUIET)
    assert report.added == 5
    assert len(report.skipped) == 1 and "not valid UTF-8" in report.skipped[0].reason
    report.skipped[0].path.encode("utf-8")  # printable: the CLI and the app can show it


def test_fifos_and_devices_are_skipped_without_hanging(project: Project, tmp_path: Path) -> None:
    source = tmp_path / "in"
    write_image(source / "ok.png", seed=1)
    fifo = source / "pipe.jpg"
    os.mkfifo(fifo)
    # /dev/null, not /dev/zero: the old import read a device to its end, and /dev/zero has none.
    os.symlink("/dev/null", source / "null.jpg")
    outcome: list[ImportReport] = []
    worker = threading.Thread(target=lambda: outcome.append(import_images(project, [source], options=QUIET)))
    worker.start()
    worker.join(timeout=60)
    try:
        assert not worker.is_alive(), "the import hung on a FIFO"
    finally:
        if worker.is_alive():  # let the old code's blocked open() return, so the thread ends
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            worker.join()
    report = outcome[0]
    assert report.added == 1
    assert reasons(report) == {
        "pipe.jpg": "not a regular file: a FIFO (named pipe)",
        "null.jpg": "not a regular file: a device",
    }


def test_a_file_over_the_size_cap_is_refused_before_it_is_read(project: Project, tmp_path: Path) -> None:
    source = tmp_path / "in"
    write_image(source / "ok.png", seed=1)
    with open(source / "huge.png", "wb") as stream:
        stream.truncate(513 * 1024 * 1024)  # sparse: costs no disk, but the old import read it all
    report = import_images(project, [source], options=QUIET)
    assert report.added == 1
    assert reasons(report)["huge.png"].startswith("too large: 537,919,488 bytes")


def test_hashing_streams_and_stops_at_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 3_000_000)
    digest, size = hash_file(path)
    assert size == 3_000_000 and len(digest) == 64
    with pytest.raises(FileRefused, match="too large"):
        hash_file(path, max_bytes=1_000_000)
