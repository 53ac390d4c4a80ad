"""Issue 12 item 6 (security), the service layer: roles from the login and [access], admin-only actions refused
by the services themselves, server-folder imports only inside import_roots (symlinks and ``..`` resolved), and
messages for the browser without server paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.engine import unit_of_work
from db.queries.taxonomy import list_main_classes
from db.schema import Image, Job
from labeller.app.services import common, data, train
from labeller.app.services.common import NotAllowed, Role, public_message, public_path, role_of
from labeller.project import AccessSettings, Project, open_project
from labeller.settings_check import settings_problems
from tests.e2e.project_factory import make_app_project, write_digit_images

ADMIN, ANNOTATOR = Role.ADMIN, Role.ANNOTATOR


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_app_project(tmp_path / "project", images=4)


def _image_count(project: Project) -> int:
    with unit_of_work(project.engine) as session:
        return session.scalar(select(func.count()).select_from(Image))


# ----------------------------------------------------------------------------------------- roles


def test_without_login_the_one_local_user_is_an_admin() -> None:
    assert role_of(AccessSettings(), None, login=False) is ADMIN
    assert role_of(AccessSettings(admins=["boss@x.org"]), "anyone", login=False) is ADMIN


def test_with_login_admins_are_listed_and_everyone_else_labels() -> None:
    access = AccessSettings(admins=["Boss@X.org"])
    assert role_of(access, "boss@x.org", login=True) is ADMIN  # e-mail case does not matter
    assert role_of(access, "ann@x.org", login=True) is ANNOTATOR
    assert role_of(access, None, login=True) is None  # logged out


def test_an_annotators_list_keeps_everyone_else_out() -> None:
    access = AccessSettings(admins=["boss@x.org"], annotators=["ann@x.org"])
    assert role_of(access, "ann@x.org", login=True) is ANNOTATOR
    assert role_of(access, "boss@x.org", login=True) is ADMIN
    assert role_of(access, "stranger@y.org", login=True) is None


def test_admin_actions_are_refused_by_the_services_for_an_annotator(project: Project) -> None:
    engine = project.engine
    with pytest.raises(NotAllowed, match="Only the project's admins may import images"):
        data.import_uploads(project, [("x.png", b"not read")], role=ANNOTATOR)
    assert not (project.root / data.UPLOADS_FOLDER).exists()  # nothing written before the check
    with pytest.raises(NotAllowed):
        data.import_folder(project, str(project.root / "images"), labels_from_folders=False, role=ANNOTATOR)
    with pytest.raises(NotAllowed, match="change the taxonomy"):
        data.apply_taxonomy_toml(engine, '[[main]]\nname = "merged"\n', role=ANNOTATOR)
    with pytest.raises(NotAllowed):
        data.labels_csv(project, role=ANNOTATOR)
    with pytest.raises(NotAllowed):
        data.labels_jsonl(project, role=None)
    with pytest.raises(NotAllowed, match="start training"):
        train.start_training(engine, model="m2", epochs=1, device="cpu", role=ANNOTATOR)
    with pytest.raises(NotAllowed):
        train.promote(engine, 1, role=ANNOTATOR)
    with pytest.raises(NotAllowed):
        train.roll_back(engine, role=ANNOTATOR)
    with pytest.raises(NotAllowed):
        train.cancel(engine, 1, role=ANNOTATOR)
    with unit_of_work(engine) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
        assert [m.name for m in list_main_classes(session)] == ["loops", "strokes", "curves"]
    assert _image_count(project) == 4
    # The same calls go through for an admin.
    assert train.start_training(engine, model="m2", epochs=1, device="cpu", role=ADMIN) > 0
    assert data.labels_csv(project, role=ADMIN).splitlines()[0].startswith("image_id")


# ----------------------------------------------------------------------------------------- import roots


def test_server_folder_import_is_off_without_import_roots(tmp_path: Path) -> None:
    write_digit_images(tmp_path / "batch", 2)
    with pytest.raises(data.ImportRefused, match="import_roots"):
        data.import_folder_path(str(tmp_path / "batch"), [])


def test_a_folder_outside_every_root_is_refused_however_it_is_spelt(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "incoming", tmp_path / "private"
    write_digit_images(root / "batch", 2)
    write_digit_images(elsewhere, 2)
    (root / "escape").symlink_to(elsewhere, target_is_directory=True)
    roots = [str(root)]
    assert data.import_folder_path(str(root / "batch"), roots) == (root / "batch").resolve()
    assert data.import_folder_path("batch", roots) == (root / "batch").resolve()  # relative: from the first root
    for spelt in (str(elsewhere), str(root / ".." / "private"), "../private", str(root / "escape"), "escape", "/"):
        with pytest.raises(data.ImportRefused, match="outside the folders this project may import from") as refused:
            data.import_folder_path(spelt, roots)
        assert str(tmp_path) not in str(refused.value)
    with pytest.raises(data.ImportRefused, match="not a folder"):
        data.import_folder_path(str(root / "missing"), roots)


def test_links_inside_a_root_that_lead_out_of_it_are_skipped(project: Project, tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "incoming", tmp_path / "private"
    write_digit_images(root, 6)  # the first 4 are the project's own images
    secret = write_digit_images(elsewhere, 12)[-1][0]  # different pixels from anything under the root
    (root / "linked.png").symlink_to(secret)
    (root / "linked-folder").symlink_to(elsewhere, target_is_directory=True)
    project.settings.access.import_roots = [str(root)]
    report = data.import_folder(project, str(root), labels_from_folders=False, role=ADMIN)
    assert report.added == 2 and report.duplicates == 4
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert reasons == {"linked.png": "a link that leads out of the import roots: not imported"} | {
        "linked-folder": "a link that leads out of the import roots: not imported"
    }
    with unit_of_work(project.engine) as session:
        paths = session.scalars(select(Image.path)).all()
    assert not any("private" in path for path in paths)


# ----------------------------------------------------------------------------------------- messages


def test_messages_for_the_browser_name_no_server_paths(tmp_path: Path) -> None:
    root = tmp_path / "project"
    message = f"image file {root}/thumbs/ab/cd.png is missing; cannot read '/etc/labeller/key.pem'."
    shown = public_message(message, [root])
    assert shown == "image file thumbs/ab/cd.png is missing; cannot read 'key.pem'."
    assert public_message("50/100 done, see http://host/docs and/or retry", [root]) == (
        "50/100 done, see http://host/docs and/or retry"
    )
    assert public_path(root / "uploads" / "x.png", [tmp_path / "other", root]) == "uploads/x.png"
    assert public_path("/srv/secret/x.png", [root]) == "x.png"


def test_a_project_error_shown_in_the_browser_names_no_server_path(tmp_path: Path) -> None:
    root = tmp_path / "not-a-project"
    root.mkdir()
    with pytest.raises(Exception) as raised:
        open_project(root)
    assert str(root) in str(raised.value)
    assert str(tmp_path) not in common.public_message(str(raised.value), [root])


# ----------------------------------------------------------------------------------------- settings


def test_access_settings_are_checked_one_line_each() -> None:
    sections = {"access": AccessSettings}
    good = {"admins": ["boss@x.org"], "annotators": [], "import_roots": ["/data/incoming"]}
    assert settings_problems({"name": "p", "access": good}, sections) == []
    bad = {"admins": "boss@x.org", "annotators": ["ann@x.org", ""], "import_roots": ["relative/folder"]}
    problems = settings_problems({"name": "p", "access": bad}, sections)
    assert problems == [
        "[access] admins must be a list of e-mail addresses (non-empty strings), got 'boss@x.org'",
        "[access] annotators must be a list of e-mail addresses (non-empty strings), got ['ann@x.org', '']",
        "[access] import_roots must hold absolute folder paths, got 'relative/folder'",
    ]
    whole = settings_problems({"name": "p", "access": {"import_roots": ["/"]}}, sections)
    assert whole == [
        "[access] import_roots must not include / (the whole file system): name the folders images come from"
    ]


def test_access_settings_round_trip_through_labeller_toml(project: Project) -> None:
    project.settings.access.admins = ["boss@x.org"]
    project.settings.access.import_roots = [os.fspath(project.root / "images")]
    project.save_settings()
    reopened = open_project(project.root)
    assert reopened.settings.access == project.settings.access
