"""The Label page through Streamlit's AppTest: decisions, tags, undo, claims, links and image hiding."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from db.engine import unit_of_work
from db.queries.annotations import current_labels
from db.queries.annotators import get_or_create_annotator
from labeller.app.state import Identity
from labeller.project import Project
from tests.e2e.project_factory import DIGIT_TAXONOMY, add_active_model, make_app_project

MAIN_APP = str(Path(__file__).resolve().parents[1] / "labeller" / "app" / "main.py")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    project = make_app_project(tmp_path / "project", images=12)
    monkeypatch.setenv("LABELLER_PROJECT", str(project.root))
    return project


@pytest.fixture
def app_for(project: Project) -> Callable[[str], AppTest]:
    """A fresh browser session of the app, signed in as ``name``."""

    def make(name: str) -> AppTest:
        with unit_of_work(project.engine) as session:
            annotator = get_or_create_annotator(session, name)
            identity = Identity(annotator.id, annotator.name)
        app = AppTest.from_file(MAIN_APP, default_timeout=30)
        app.session_state["identity"] = identity
        return app.run()

    return make


def shown(app: AppTest) -> int:
    return app.session_state["current"].image_id


def labels(project: Project) -> dict[int, tuple[str, tuple[str, ...], str]]:
    with unit_of_work(project.engine) as session:
        return {label.image_id: (label.main_class, label.tags, label.annotator) for label in current_labels(session)}


def main_button_key(app: AppTest, name: str) -> str:
    return next(button.key for button in app.button if button.key.startswith("main-") and button.label == name)


def test_a_main_class_press_records_who_and_advances(project: Project, app_for) -> None:
    app = app_for("ann")
    assert not app.exception
    first = shown(app)
    app.button(key=main_button_key(app, "strokes")).click().run()
    assert labels(project) == {first: ("strokes", (), "ann")}
    assert shown(app) != first
    assert app.session_state["exposures"] == 2


def test_tags_then_main_key_make_a_sub_class_label_and_undo_brings_the_image_back(project: Project, app_for) -> None:
    app = app_for("ann")
    first = shown(app)
    tag = next(b for b in app.button if b.key.startswith("tag-") and b.label == DIGIT_TAXONOMY["loops"][1])
    tag.click().run()
    assert app.button(key=tag.key).proto.type == "primary"  # shown as toggled on
    app.button(key="commit-tags").click().run()  # Enter: the tags' own main class
    assert labels(project)[first] == ("loops", (DIGIT_TAXONOMY["loops"][1],), "ann")

    app.button(key="undo").click().run()
    assert shown(app) == first
    assert first not in labels(project)


def test_tags_of_another_main_class_are_dropped_not_misfiled(project: Project, app_for) -> None:
    app = app_for("ann")
    first = shown(app)
    next(b for b in app.button if b.key.startswith("tag-") and b.label == DIGIT_TAXONOMY["loops"][0]).click().run()
    app.button(key=main_button_key(app, "curves")).click().run()
    assert labels(project)[first] == ("curves", (), "ann")


def test_skip_and_unsure_are_not_labels(project: Project, app_for) -> None:
    app = app_for("ann")
    first = shown(app)
    app.button(key="skip").click().run()
    second = shown(app)
    app.button(key="unsure").click().run()
    assert first not in labels(project) and second not in labels(project)
    assert shown(app) not in (first, second)


def test_two_annotators_never_get_the_same_image(project: Project, app_for) -> None:
    ann, bob = app_for("ann"), app_for("bob")
    seen_by_ann, seen_by_bob = {shown(ann)}, {shown(bob)}
    assert seen_by_ann != seen_by_bob
    for _ in range(4):
        ann.button(key=main_button_key(ann, "loops")).click().run()
        bob.button(key=main_button_key(bob, "curves")).click().run()
        assert shown(ann) != shown(bob)
        seen_by_ann.add(shown(ann))
        seen_by_bob.add(shown(bob))
    assert not seen_by_ann & seen_by_bob


def test_history_editor_corrects_a_label(project: Project, app_for) -> None:
    app = app_for("ann")
    first = shown(app)
    app.button(key=main_button_key(app, "loops")).click().run()
    history = next(box for box in app.selectbox if box.key and box.key.startswith("history-main-"))
    history.select("strokes").run()
    assert labels(project)[first] == ("strokes", (), "ann")


def test_a_link_opens_one_image_and_ignores_anything_else(project: Project, app_for) -> None:
    app = app_for("ann")
    wanted = shown(app) + 3
    app.query_params["image"] = str(wanted)
    app.run()
    assert shown(app) == wanted
    before = shown(app)
    app.query_params["image"] = "../../labeller.toml"
    app.run()
    assert shown(app) == before and not app.exception


def test_images_are_blurred_until_revealed_when_the_project_says_so(project: Project, app_for) -> None:
    project.settings.labelling.blur_images = True
    project.save_settings()
    from labeller.app.state import _open_project

    _open_project.clear()
    app = app_for("ann")
    assert app.session_state["blur"] is True
    assert app.button(key="reveal").label == "Reveal"
    app.button(key="reveal").click().run()
    assert app.session_state["revealed"] == shown(app)
    assert app.button(key="reveal").label == "Hide"


def test_prediction_and_reason_are_shown_with_a_model(project: Project, app_for) -> None:
    add_active_model(project)
    app = app_for("ann")
    text = " ".join(m.value for m in app.markdown) + " ".join(c.value for c in app.caption)
    assert "Predicted:" in text
    assert "Queued by **entropy**" in text


def test_no_project_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LABELLER_PROJECT", str(tmp_path / "nowhere"))
    app = AppTest.from_file(MAIN_APP, default_timeout=30).run()
    assert "not a Latent Labeller project" in app.error[0].value


def test_label_flow_on_each_database(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Label, undo and claims through the page on SQLite and on PostgreSQL."""
    project = make_app_project(tmp_path / "project", images=8, database_url=database_url)
    monkeypatch.setenv("LABELLER_PROJECT", str(project.root))
    apps = []
    for name in ("ann", "bob"):
        with unit_of_work(project.engine) as session:
            annotator = get_or_create_annotator(session, name)
            identity = Identity(annotator.id, annotator.name)
        app = AppTest.from_file(MAIN_APP, default_timeout=30)
        app.session_state["identity"] = identity
        apps.append(app.run())
    ann, bob = apps
    assert shown(ann) != shown(bob)
    first = shown(ann)
    ann.button(key=main_button_key(ann, "loops")).click().run()
    assert labels(project)[first] == ("loops", (), "ann")
    assert shown(ann) != shown(bob)
    ann.button(key="undo").click().run()
    assert shown(ann) == first and first not in labels(project)
    project.engine.dispose()


def test_break_reminder_after_the_set_minutes(project: Project, app_for) -> None:
    import time

    project.settings.labelling.break_reminder_minutes = 30
    project.save_settings()
    from labeller.app.state import _open_project

    _open_project.clear()
    app = app_for("ann")
    assert not app.warning
    app.session_state["break_started"] = time.time() - 31 * 60
    app.run()
    assert "Time for a short break" in app.warning[0].value
    app.button(key="took_break").click().run()
    assert not app.warning
    assert app.session_state["exposures"] == 0
