"""Marks of unreadable images clear once the files are back (issue 23 item 5): after an images folder was
moved away and back, the images stayed marked unreadable, and passed over, for everyone."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from db.engine import unit_of_work
from db.queries import label_history, unreadable
from db.queries.annotators import get_or_create_annotator
from db.schema import AnnotationSource, Image
from labeller.app.services import common, data, label_session
from labeller.app.services.common import Role
from labeller.app.services.label_session import LabelSession
from labeller.cli import cli
from labeller.ingest import ImportOptions, import_images
from labeller.project import Project
from labeller.recheck import recheck_unreadable
from tests.e2e.project_factory import make_app_project

LEASE = 600
IMAGES = 10
_ids = itertools.count(1)


@pytest.fixture
def project(tmp_path: Path, database_url: str) -> Project:
    return make_app_project(tmp_path / "project", images=IMAGES, database_url=database_url)


def _session(project: Project, name: str) -> LabelSession:
    with unit_of_work(project.engine) as session:
        annotator_id = get_or_create_annotator(session, name).id
    labelling = LabelSession(annotator_id, "random")
    labelling.refill(project.engine, lease_seconds=LEASE)
    return labelling


def _mark_all_by_showing(project: Project) -> set[int]:
    """What the Label page does for an image whose file is gone: show the placeholder, mark it."""
    with unit_of_work(project.engine) as session:
        images = list(session.query(Image))
        for image in images:
            shown = label_session._display_or_placeholder(session, project, image)
            assert shown.name == "unreadable.png"
        return {image.id for image in images}


def _served_everything(project: Project, labelling: LabelSession) -> list[tuple[int, AnnotationSource]]:
    served = []
    with unit_of_work(project.engine) as session:
        taxonomy = common.load_taxonomy(session)
    for _ in range(4 * IMAGES):
        labelling.refill(project.engine, lease_seconds=LEASE)
        if not labelling.window:
            return served
        item = labelling.window[0]
        served.append((item.image_id, item.source))
        with unit_of_work(project.engine) as session:  # as the card gets it: its newest row of the image
            after = label_history.newest_rows(
                session, image_ids=[item.image_id], annotator_id=labelling.annotator_id
            ).get(item.image_id, 0)
        op = {"op": f"recheck-{next(_ids)}", "kind": "label", "image": item.image_id, "after": after, "step": 1}
        op["main"] = taxonomy.main_classes[0].id
        [result] = labelling.receive(project.engine, {"ops": [op]}, taxonomy, lease_seconds=LEASE)
        assert result.status == "applied", result
    raise AssertionError("the queue never ran out")


def _recheck(project: Project, how: str) -> None:
    if how == "cli":
        result = CliRunner().invoke(cli, ["import", str(project.root), "--recheck-unreadable"])
        assert result.exit_code == 0, result.output
        assert f"re-checked {IMAGES} image(s) marked unreadable: {IMAGES} readable again" in result.output
    elif how == "data page":
        report = data.recheck_unreadable(project, role=Role.ADMIN)
        assert (report.checked, report.cleared, report.still) == (IMAGES, IMAGES, [])
    else:  # importing the folder again meets the marked images as duplicates
        report = import_images(project, [project.root / "images"], options=ImportOptions(progress=False))
        assert (report.added, report.duplicates, report.unreadable_cleared) == (0, IMAGES, IMAGES)


@pytest.mark.parametrize("how", ["cli", "data page", "import"])
def test_a_folder_moved_away_and_back_is_served_again_after_a_recheck(project: Project, how: str) -> None:
    folder = project.root / "images"
    shutil.move(folder, project.root.parent / "elsewhere")
    marked = _mark_all_by_showing(project)
    a = _session(project, "a")  # its queue passes over every marked image
    assert a.window == []
    with unit_of_work(project.engine) as session:
        assert unreadable.unreadable_ids(session, marked) == marked

    shutil.move(project.root.parent / "elsewhere", folder)
    _recheck(project, how)

    with unit_of_work(project.engine) as session:
        assert unreadable.unreadable_ids(session, marked) == set()
        assert unreadable.marked_image_ids(session) == []
    # A, whose queue passed over them, gets them back in the queue's own order, not only after everything else
    # (the skips recorded on A's behalf are withdrawn with the mark); so does a new annotator.
    served = _served_everything(project, a)
    assert {image for image, _ in served} == marked
    assert AnnotationSource.RETURNING not in {source for _, source in served}
    b = _session(project, "b")
    assert b.window == []  # A labelled them all


def test_a_file_still_missing_stays_marked_and_is_listed(project: Project) -> None:
    folder = project.root / "images"
    shutil.move(folder, project.root.parent / "elsewhere")
    marked = _mark_all_by_showing(project)
    shutil.move(project.root.parent / "elsewhere", folder)
    gone = sorted(folder.iterdir())[0]
    gone.unlink()
    changed = sorted(folder.iterdir())[0]
    changed.write_bytes(sorted(folder.iterdir())[1].read_bytes())  # another image's content

    report = recheck_unreadable(project)
    assert (report.checked, report.cleared) == (IMAGES, IMAGES - 2)
    reasons = {Path(still.path).name: still.reason for still in report.still}
    assert set(reasons) == {gone.name, changed.name}
    assert "unreadable" in reasons[gone.name]
    assert "content changed" in reasons[changed.name]
    with unit_of_work(project.engine) as session:
        assert len(unreadable.unreadable_ids(session, marked)) == 2

    result = CliRunner().invoke(cli, ["import", str(project.root), "--recheck-unreadable"])
    assert result.exit_code == 0, result.output
    assert "re-checked 2 image(s) marked unreadable: 0 readable again (mark cleared), 2 still unreadable" in (
        result.output
    )


def test_only_admins_recheck_from_the_data_page(project: Project) -> None:
    with pytest.raises(PermissionError):
        data.recheck_unreadable(project, role=Role.ANNOTATOR)


def test_the_data_page_button_rechecks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_app_pages import open_page

    project = make_app_project(tmp_path / "project", images=IMAGES)
    monkeypatch.setenv("LABELLER_PROJECT", str(project.root))
    shutil.move(project.root / "images", tmp_path / "elsewhere")
    marked = _mark_all_by_showing(project)
    shutil.move(tmp_path / "elsewhere", project.root / "images")
    app = open_page(project, "data")
    assert any(f"{IMAGES} images marked unreadable" in caption.value for caption in app.caption)
    app.button(key="recheck_unreadable").click().run()
    assert not app.exception
    assert f"Re-checked {IMAGES}: {IMAGES} readable again" in app.success[0].value
    with unit_of_work(project.engine) as session:
        assert unreadable.unreadable_ids(session, marked) == set()
