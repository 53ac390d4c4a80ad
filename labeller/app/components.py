"""Widgets shared by several pages: the annotator picker, the wellbeing panel, image tiles."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import streamlit as st

from db.engine import unit_of_work
from db.queries.annotators import AnnotatorError, get_or_create_annotator, list_annotators
from db.queries.wellbeing import MAX_BLUR_PX, MIN_BLUR_PX
from labeller.app import state
from labeller.app.keys import key_rows
from labeller.app.services.common import TaxonomyView
from labeller.app.text import md_text
from labeller.project import Project

NEW_NAME = "New annotator..."


def _sign_in(name: str, *, remember: bool = True) -> None:
    name = name.strip()
    if not name:
        st.session_state["identity_error"] = "A name cannot be empty."
        return
    try:
        with unit_of_work(state.engine()) as session:
            annotator = get_or_create_annotator(session, name)
            state.set_identity(state.Identity(annotator.id, annotator.name))
        st.session_state.pop("identity_error", None)
        if remember:
            # Kept in the URL so that a reload or a bookmarked page keeps the same name (without login only).
            st.query_params["annotator"] = annotator.name
    except AnnotatorError as error:
        st.session_state["identity_error"] = str(error)


def _sign_out() -> None:
    state.set_identity(None)
    st.query_params.pop("annotator", None)


def _logged_in_identity(project: Project) -> None:
    """With login, the identity follows the login on every run: logged out (or not allowed in) leaves none,
    even if an earlier run of this session had one."""
    name = state.logged_in_user()
    if name is None:
        if state.identity() is not None:
            state.set_identity(None)
        st.button("Log in", on_click=st.login, icon=":material/login:")
        return
    if state.role(project) is None:
        if state.identity() is not None:
            state.set_identity(None)
        st.error(f"{md_text(name)} is not on this project's list of annotators; ask one of its admins.")
        st.button("Log out", on_click=st.logout)
        return
    who = state.identity()
    if who is None or who.name != name:
        _sign_in(name, remember=False)
    if error := st.session_state.get("identity_error"):
        st.error(md_text(error))
    st.caption(f"Signed in as **{md_text(name)}** ({state.role(project)})")
    st.button("Log out", on_click=st.logout)


def identity_picker(project: Project) -> None:
    """Who is labelling: the OIDC user when login is configured (never the URL's ``?annotator=``), else a name
    picked from a list."""
    if state.login_configured():
        _logged_in_identity(project)
        return

    who = state.identity()
    if who is not None:
        cols = st.columns([3, 2], vertical_alignment="center")
        cols[0].markdown(f":material/person: **{md_text(who.name)}**")
        cols[1].button("Switch", key="switch_annotator", on_click=_sign_out)
        return
    with unit_of_work(state.engine()) as session:
        names = [a.name for a in list_annotators(session)]
    remembered = st.query_params.get("annotator")
    if remembered in names:
        _sign_in(remembered)
        st.rerun()
    choice = st.selectbox("Who is labelling?", [*names, NEW_NAME], index=None, placeholder="Pick your name")
    if choice == NEW_NAME or (choice is None and not names):
        with st.form("new_annotator", border=False):
            typed = st.text_input("Your name", max_chars=200)
            if st.form_submit_button("Start labelling", type="primary"):
                _sign_in(typed)
                st.rerun()
    elif choice is not None:
        _sign_in(choice)
        st.rerun()
    if error := st.session_state.get("identity_error"):
        st.error(md_text(error))


def wellbeing_panel(project: Project) -> None:
    """Image hiding, kept per annotator in the database, and the exposure counter with its break reminder
    and the project's daily limit."""
    settings = project.settings.labelling
    with st.expander("Image safety", icon=":material/visibility_off:"):
        st.toggle(
            "Blur images until revealed",
            key="blur",
            on_change=state.save_wellbeing,
            help="Press V on the Label page to reveal one image.",
        )
        st.slider(
            "Blur strength (px)",
            min_value=MIN_BLUR_PX,
            max_value=MAX_BLUR_PX,
            key="blur_px",
            on_change=state.save_wellbeing,
            disabled=not st.session_state.get("blur"),
        )
        st.toggle("Greyscale images", key="greyscale", on_change=state.save_wellbeing)
        st.toggle(
            "Reveal on hold",
            key="reveal_on_hold",
            on_change=state.save_wellbeing,
            help="Hold the mouse button on a Grid or Explore image, or Shift over the Explore map's hover "
            "thumbnail, to see it while held.",
        )
        st.toggle(
            "Reveal every image for this session",
            key="reveal_session",
            help="Until you close this tab; not saved.",
        )
        st.caption(
            "Whether blurring or greyscale lessens the strain is not settled: one study found interactive "
            "blurring helped, a larger one found no effect on anxiety or intrusive memories. Use what helps you."
        )
    shown, minutes = state.exposure()
    st.session_state["exposures_drawn"] = shown  # the Label page redraws the sidebar when this falls behind
    limit = settings.daily_exposure_limit
    today = state.exposures_today()
    st.caption(
        f"Images seen since your last break: **{shown}** ({minutes:.0f} min) · today: **{today}**"
        + (f" of {limit}" if limit else "")
    )
    reminder = settings.break_reminder_minutes
    if reminder and minutes >= reminder:
        st.warning(f"You have been labelling for {minutes:.0f} minutes. Time for a short break.")
        st.button("I took a break", on_click=state.take_break, key="took_break")


def image_tile(file: Path, *, key: str, hidden_class: str, caption: str | None = None) -> None:
    """One image in a keyed container whose CSS class hides it (see main.STYLE)."""
    with st.container(key=f"hide-{hidden_class}-{key}"):
        st.image(str(file), caption=caption, width="stretch")


def probability_bars(probabilities: Mapping[str, float], *, limit: int = 5) -> None:
    """The top classes and their probabilities, largest first."""
    for name, value in sorted(probabilities.items(), key=lambda item: -item[1])[:limit]:
        st.progress(min(max(float(value), 0.0), 1.0), text=f"{md_text(name)}: {value:.0%}")


def key_table(taxonomy: TaxonomyView) -> None:
    """The Label page's keys, from the taxonomy file; a key the app had to assign says so."""
    names = {m.id: m.name for m in taxonomy.main_classes}
    rows = key_rows(taxonomy.keys, names)
    st.dataframe(rows, hide_index=True, width="content", key="key-table")
    assigned = [row for row in rows if row["source"] == "assigned"]
    if assigned:
        st.caption(
            f"{len(assigned)} key(s) assigned by the app: the file gives none or one the Label page keeps for itself "
            '(s, u, z, v, ?, and Streamlit\'s c and r). Add `key = "..."` to choose.'
        )
