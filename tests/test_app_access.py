"""Issue 12 item 6 (security), the app through AppTest: with login the identity is the logged-in user (never
``?annotator=``), annotators see no admin actions, the server-folder import box needs import_roots, and what the
browser is told names no server path."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit import config
from streamlit.testing.v1 import AppTest

from db.engine import unit_of_work
from db.queries.annotators import get_or_create_annotator
from db.queries.jobs import enqueue_job
from db.schema import JobStatus
from labeller.app.services import data
from labeller.app.state import Identity
from labeller.app.text import md_text
from labeller.project import Project
from tests.e2e.project_factory import make_app_project, write_digit_images
from tests.test_app_pages import MAIN_APP, open_page

IMPORT = "FormSubmitter:import_folder-Import folder"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    project = make_app_project(tmp_path / "project", images=6)
    project.settings.access.admins = ["boss@x.org"]
    project.save_settings()
    monkeypatch.setenv("LABELLER_PROJECT", str(project.root))
    return project


def logged_in(email: str | None, page: str = "label", query: dict[str, str] | None = None) -> AppTest:
    """A browser session with login configured: ``email`` logged in, or nobody (None)."""
    app = AppTest.from_file(MAIN_APP, default_timeout=30)
    app.user = {"is_logged_in": True, "email": email} if email else {"is_logged_in": False}
    for key, value in (query or {}).items():
        app.query_params[key] = value
    app.run()
    app.switch_page(f"views/{page}.py").run()
    assert not app.exception, app.exception
    return app


def _identity(app: AppTest) -> Identity | None:
    return app.session_state.get("identity")


def _texts(app: AppTest) -> str:
    parts = [m.value for m in app.markdown] + [c.value for c in app.caption]
    parts += [e.value for e in (*app.info, *app.error, *app.success, *app.warning)]
    return "\n".join(str(p) for p in parts)


def test_with_login_the_identity_is_the_logged_in_user_not_the_url(project: Project) -> None:
    with unit_of_work(project.engine) as session:
        get_or_create_annotator(session, "bob")
    app = logged_in("ann@x.org", "grid", query={"annotator": "bob"})
    assert _identity(app) is not None and _identity(app).name == "ann@x.org"
    assert f"Signed in as **{md_text('ann@x.org')}** (annotator)" in _texts(app)  # a name, shown as text


def test_logged_out_leaves_no_identity_even_one_from_earlier_in_the_session(project: Project) -> None:
    with unit_of_work(project.engine) as session:
        bob = get_or_create_annotator(session, "bob")
    app = AppTest.from_file(MAIN_APP, default_timeout=30)
    app.user = {"is_logged_in": False}
    app.session_state["identity"] = Identity(bob.id, bob.name)  # left behind by an earlier login
    app.query_params["annotator"] = "bob"
    app.run()
    app.switch_page("views/grid.py").run()
    assert _identity(app) is None
    assert "Log in (in the sidebar) to start" in app.info[0].value
    assert [b.label for b in app.button] == ["Log in"]


def test_someone_not_on_the_annotators_list_is_not_let_in(project: Project) -> None:
    project.settings.access.annotators = ["ann@x.org"]
    project.save_settings()
    app = logged_in("stranger@y.org", "grid")
    assert _identity(app) is None
    assert f"{md_text('stranger@y.org')} is not on this project's list of annotators" in app.error[0].value


def test_an_annotator_sees_no_admin_actions_on_the_data_page(project: Project) -> None:
    app = logged_in("ann@x.org", "data")
    texts = _texts(app)
    for what in ("Importing images", "Changing the taxonomy", "Exporting the labels"):
        assert f"{what} is for the project's admins." in texts
    assert not [b for b in app.button if b.label in ("Import folder", "Import uploads", "Apply taxonomy")]
    assert app.text_area[0].disabled  # the taxonomy is shown, read-only
    assert not app.get("download_button")
    # The counts stay visible.
    assert any(m.label == "Labelled images" for m in app.metric)


def test_an_admin_sees_them(project: Project) -> None:
    app = logged_in("boss@x.org", "data")
    assert "is for the project's admins" not in _texts(app)
    assert {"Import folder", "Import uploads", "Apply taxonomy"} <= {b.label for b in app.button}
    assert len(app.get("download_button")) == 2


def test_an_annotator_cannot_start_promote_or_cancel_training(project: Project) -> None:
    with unit_of_work(project.engine) as session:
        enqueue_job(session, "train", {"model": "m2", "epochs": 10})
    app = logged_in("ann@x.org", "train")
    assert "Starting, cancelling, promoting and rolling back training is for the project's admins." in _texts(app)
    assert app.button(key="FormSubmitter:retrain-Start retrain").disabled
    assert not [b for b in app.button if b.label == "Cancel"]


def test_without_import_roots_the_server_folder_box_is_off(project: Project) -> None:
    app = open_page(project, "data")  # local use, no login: an admin
    assert data.NO_IMPORT_ROOTS in _texts(app)
    assert app.text_input[0].disabled and app.button(key=IMPORT).disabled


def test_a_folder_outside_the_import_roots_is_refused_without_naming_server_paths(
    project: Project, tmp_path: Path
) -> None:
    root, elsewhere = tmp_path / "incoming", tmp_path / "private"
    write_digit_images(elsewhere, 8)
    root.mkdir()
    (root / "escape").symlink_to(elsewhere, target_is_directory=True)
    project.settings.access.import_roots = [str(root)]
    project.save_settings()
    app = open_page(project, "data")
    for typed in (str(elsewhere), str(root / "escape"), "../private"):
        app.text_input[0].input(typed)
        app.button(key=IMPORT).click().run()
        assert "outside the folders this project may import from" in app.error[0].value
        assert not app.success
    app.text_input[0].input("missing")
    app.button(key=IMPORT).click().run()
    assert app.error[0].value == md_text("That path is not a folder on the server.")  # may name a path


def test_a_failed_jobs_message_names_no_server_path(project: Project) -> None:
    with unit_of_work(project.engine) as session:
        job = enqueue_job(session, "train", {"model": "m2", "epochs": 10})
        job.status = JobStatus.FAILED
        job.error = f"cannot write {project.root}/models/v3.ckpt: disk full (see /var/log/labeller/worker.log)"
    app = open_page(project, "train")
    assert app.error[0].value == "cannot write models/v3.ckpt: disk full (see worker.log)"


def test_a_server_listening_beyond_this_machine_without_login_shows_nothing(project: Project) -> None:
    previous = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        app = AppTest.from_file(MAIN_APP, default_timeout=30).run()
    finally:
        config.set_option("server.address", previous)
    assert "listens beyond this machine but has no login" in app.error[0].value
    assert not app.button and not app.selectbox  # no identity picker, no page


def test_an_annotator_reviews_their_own_work_and_an_admin_the_team(project: Project) -> None:
    locked = ("Disagreements between annotators are for the project's admins.", "The team's counts and agreement")
    annotator = _texts(logged_in("ann@x.org", "review"))
    assert all(text in annotator for text in locked)
    admin = _texts(logged_in("boss@x.org", "review"))
    assert not any(text in admin for text in locked)
