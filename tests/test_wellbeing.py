"""Per-annotator wellbeing: settings and exposure counts kept in the database (so a reload or another
browser keeps them), the day's count rolling over at UTC midnight, and the project's daily exposure limit."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine

from db.engine import unit_of_work
from db.queries import wellbeing
from db.queries.annotators import get_or_create_annotator
from labeller.project import Project
from tests.test_app_label import page_for, project  # noqa: F401  (fixture)


def _annotator(engine: Engine, name: str = "ann") -> int:
    with unit_of_work(engine) as session:
        return get_or_create_annotator(session, name).id


def test_settings_default_to_the_project_and_are_kept(engine: Engine) -> None:
    who = _annotator(engine)
    with unit_of_work(engine) as session:
        view = wellbeing.get_wellbeing(session, who)
        assert (view.blur, view.greyscale, view.blur_px, view.reveal_on_hold) == (None, None, 22, True)
        wellbeing.save_settings(session, who, blur=True, greyscale=True, blur_px=8, reveal_on_hold=False)
    with unit_of_work(engine) as session:
        view = wellbeing.get_wellbeing(session, who)
    assert (view.blur, view.greyscale, view.blur_px, view.reveal_on_hold) == (True, True, 8, False)


@pytest.mark.parametrize("bad", [{"blur_px": 0}, {"blur_px": 999}, {"blur_px": "8"}, {"colour": True}])
def test_bad_settings_are_refused(engine: Engine, bad: dict) -> None:
    who = _annotator(engine)
    with pytest.raises(wellbeing.WellbeingError), unit_of_work(engine) as session:
        wellbeing.save_settings(session, who, **bad)


def test_exposures_count_per_day_and_since_the_last_break(engine: Engine) -> None:
    who = _annotator(engine)
    monday = datetime(2026, 11, 30, 23, 50)
    with unit_of_work(engine) as session:
        wellbeing.record_exposures(session, who, 3, now=monday)
        view = wellbeing.record_exposures(session, who, 2, now=monday + timedelta(minutes=5))
    assert (view.exposures_today, view.exposures_since_break) == (5, 5)
    with unit_of_work(engine) as session:
        view = wellbeing.record_exposures(session, who, 1, now=monday + timedelta(minutes=15))  # Tuesday, UTC
    assert (view.exposures_today, view.exposures_since_break) == (1, 6)
    with unit_of_work(engine) as session:
        assert wellbeing.get_wellbeing(session, who, now=monday + timedelta(days=2)).exposures_today == 0
        view = wellbeing.take_break(session, who, now=monday + timedelta(minutes=20))
    assert (view.exposures_today, view.exposures_since_break) == (1, 0)
    assert view.break_started_at == monday + timedelta(minutes=20)


def test_a_reload_keeps_the_settings_and_the_exposure_count(project: Project) -> None:  # noqa: F811
    app = page_for(project, "ann")
    assert not app.exception, app.exception
    shown = app.session_state["exposures"]
    assert shown >= 1  # the Label card's first image
    assert app.session_state["blur"] is False  # this project's default
    app.toggle(key="blur").set_value(True).run()
    app.slider(key="blur_px").set_value(9).run()
    app.toggle(key="greyscale").set_value(True).run()
    app.toggle(key="reveal_on_hold").set_value(False).run()
    assert not app.exception, app.exception
    again = page_for(project, "ann")  # a new browser session: a reload, or another machine
    assert again.session_state["blur"] is True
    assert again.session_state["blur_px"] == 9
    styles = " ".join(element.proto.body for element in again.get("html"))
    assert "--ll-blur: 9px" in styles and ":active img" not in styles  # strength applied; no reveal on hold
    assert again.session_state["greyscale"] is True
    assert again.session_state["reveal_on_hold"] is False
    assert again.session_state["exposures_today"] >= shown
    assert any(f"today: **{again.session_state['exposures_today']}**" in c.value for c in again.caption)
    other = page_for(project, "someone else")
    assert other.session_state["blur_px"] == 22 and other.session_state["blur"] is False


def test_the_daily_exposure_limit_closes_the_image_pages(project: Project) -> None:  # noqa: F811
    project.settings.labelling.daily_exposure_limit = 3
    project.save_settings()
    from labeller.app.state import _open_project

    _open_project.clear()
    who = _annotator(project.engine)
    with unit_of_work(project.engine) as session:
        wellbeing.record_exposures(session, who, 3)
    app = page_for(project, "ann")
    assert not app.exception, app.exception
    assert app.title[0].value == "Enough for today"
    assert "daily limit (3)" in app.info[0].value
    app.switch_page("views/grid.py").run()
    assert app.title[0].value == "Enough for today"
    app.switch_page("views/data.py").run()
    assert app.title[0].value != "Enough for today"
    assert any("today: **3** of 3" in c.value for c in app.caption)
    _open_project.clear()


def test_the_daily_limit_setting_is_checked() -> None:
    from labeller.project import LabellingSettings, TrainingSettings
    from labeller.settings_check import settings_problems

    kinds = {"labelling": LabellingSettings, "training": TrainingSettings}
    assert settings_problems({"name": "p", "labelling": {"daily_exposure_limit": 500}}, kinds) == []
    problems = settings_problems({"name": "p", "labelling": {"daily_exposure_limit": -1}}, kinds)
    assert len(problems) == 1 and "daily_exposure_limit" in problems[0]
