"""The app's Streamlit glue: the project and engine behind ``st.cache_resource``, loaded models keyed by
model version, and the per-browser-session state (who is labelling, what is on screen, exposure)."""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import streamlit as st
from sqlalchemy import Engine

from db.engine import reading, unit_of_work
from db.queries import wellbeing as wellbeing_queries
from labeller.app.services import common
from labeller.app.text import md_text
from labeller.project import Project, ProjectError, open_project

PROJECT_ENV = "LABELLER_PROJECT"
_LOG = logging.getLogger(__name__)


def project_root_from(argv: Sequence[str], environ: Mapping[str, str]) -> Path | None:
    """``--project PATH`` (passed after ``--`` to ``streamlit run``) wins over ``$LABELLER_PROJECT``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--project")
    known, _ = parser.parse_known_args(list(argv))
    value = known.project or environ.get(PROJECT_ENV)
    return Path(value) if value else None


@st.cache_resource(show_spinner=False)
def _open_project(root: str) -> Project:
    return open_project(root)


def current_project() -> Project:
    """The project this server was started on; stops the page with a clear message when there is none."""
    import sys

    root = project_root_from(sys.argv[1:], os.environ)
    if root is None:
        st.error(f"No project given: start the app with `labeller serve PROJECT` or set `{PROJECT_ENV}`.")
        st.stop()
    try:
        return _open_project(str(root.resolve()))
    except ProjectError as error:
        # The whole message goes to the server's log; the browser gets it without the server's paths.
        _LOG.error("cannot open the project: %s", error)
        st.error(md_text(common.public_message(str(error), [root.resolve()])))  # may name a folder
        st.stop()
        raise  # unreachable: st.stop raises


def engine() -> Engine:
    return current_project().engine


@st.cache_resource(show_spinner="Loading the model...", max_entries=2)
def load_model(model_version_id: int, checkpoint_path: str) -> Any:
    """A trained model, loaded once per model version (a promoted version gets a new cache entry)."""
    from core.training import load_checkpoint

    return load_checkpoint(Path(checkpoint_path), device="cpu")


def taxonomy() -> common.TaxonomyView:
    with reading(engine()) as session:
        return common.load_taxonomy(session)


# ----------------------------------------------------------------------------------------- session


@dataclass(frozen=True)
class Identity:
    annotator_id: int
    name: str


def identity() -> Identity | None:
    return st.session_state.get("identity")


def set_identity(value: Identity | None) -> None:
    st.session_state["identity"] = value
    # A different person starts with an empty screen: drop the previous person's claim and tags.
    st.session_state.pop("current", None)
    st.session_state["pending_tags"] = set()


def require_identity() -> Identity:
    who = identity()
    if who is None:
        if login_configured():
            st.info("Log in (in the sidebar) to start. Every label records who made it.")
        else:
            st.info("Pick or enter your name in the sidebar to start. Every label records who made it.")
        st.stop()
    assert who is not None
    return who


def login_configured() -> bool:
    """Streamlit's OIDC login is set up (an [auth] section in its secrets): then who labels is the logged-in
    user, never a name typed or taken from the URL. ``st.user`` carries "is_logged_in" only in that case."""
    return "is_logged_in" in st.user.to_dict()


def request_host() -> str | None:
    """The Host header this browser session was opened under (None outside a server, e.g. in AppTest)."""
    try:
        return st.context.headers.get("Host")
    except Exception:  # no request behind this run
        return None


def login_redirect_uri() -> str | None:
    """The login's ``redirect_uri`` from Streamlit's secrets, when a login is configured."""
    if not login_configured():
        return None
    try:
        return str(st.secrets["auth"]["redirect_uri"]) or None
    except (KeyError, FileNotFoundError, TypeError):
        return None


def logged_in_user() -> str | None:
    """The logged-in user's e-mail (their name when the provider gives none); None when nobody is logged in."""
    if not st.user.get("is_logged_in"):
        return None
    value = str(st.user.get("email") or st.user.get("name") or "").strip()
    return value or None


def role(project: Project) -> common.Role | None:
    """What this browser session may do, from the login and the project's [access] settings (read afresh on
    every run, so a role is never left behind in the session)."""
    login = login_configured()
    return common.role_of(project.settings.access, logged_in_user() if login else None, login=login)


def admin_only(project: Project, what: str) -> bool:
    """True for an admin; for anyone else a note that ``what`` is for admins (the page shows the rest)."""
    if role(project) is common.Role.ADMIN:
        return True
    st.info(f"{what} is for the project's admins.", icon=":material/lock:")
    return False


def load_wellbeing(project: Project) -> None:
    """Once per browser session and annotator: their image-safety settings and exposure counts from the
    database (a reload or another browser starts from where they left off)."""
    who = identity()
    if who is None or st.session_state.get("wellbeing_of") == who.annotator_id:
        return
    with unit_of_work(project.engine) as session:
        view = wellbeing_queries.get_wellbeing(session, who.annotator_id)
    settings = project.settings.labelling
    st.session_state["blur"] = settings.blur_images if view.blur is None else view.blur
    st.session_state["greyscale"] = settings.greyscale_images if view.greyscale is None else view.greyscale
    st.session_state["blur_px"] = view.blur_px
    st.session_state["reveal_on_hold"] = view.reveal_on_hold
    st.session_state["exposures"] = view.exposures_since_break
    st.session_state["exposures_today"] = view.exposures_today
    started = view.break_started_at
    st.session_state["break_started"] = started.replace(tzinfo=UTC).timestamp() if started else time.time()
    st.session_state["wellbeing_of"] = who.annotator_id


def save_wellbeing() -> None:
    """The sidebar's settings changed: keep them for this annotator (``on_change`` of each widget)."""
    who = identity()
    if who is None:
        return
    with unit_of_work(engine()) as session:
        wellbeing_queries.save_settings(
            session,
            who.annotator_id,
            blur=bool(st.session_state.get("blur")),
            greyscale=bool(st.session_state.get("greyscale")),
            blur_px=int(st.session_state.get("blur_px", DEFAULT_BLUR_PX)),
            reveal_on_hold=bool(st.session_state.get("reveal_on_hold", True)),
        )


def exposure() -> tuple[int, float]:
    """(images shown since the last break, minutes since the last break)."""
    started = st.session_state.setdefault("break_started", time.time())
    return st.session_state.get("exposures", 0), (time.time() - started) / 60.0


def exposures_today() -> int:
    return int(st.session_state.get("exposures_today", 0))


def over_daily_limit(project: Project) -> bool:
    """The project's daily exposure limit is set and this annotator has reached it today."""
    limit = project.settings.labelling.daily_exposure_limit
    return bool(limit) and exposures_today() >= limit


def count_exposure(image_id: int) -> None:
    """Count an image once, the first time it is shown in this session, here and in the database."""
    seen: set[int] = st.session_state.setdefault("seen_images", set())
    if image_id not in seen:
        seen.add(image_id)
        st.session_state["exposures"] = st.session_state.get("exposures", 0) + 1
        st.session_state["total_exposures"] = st.session_state.get("total_exposures", 0) + 1
        who = identity()
        if who is not None:
            with unit_of_work(engine()) as session:
                view = wellbeing_queries.record_exposures(session, who.annotator_id)
            st.session_state["exposures_today"] = view.exposures_today
            st.session_state["exposures"] = view.exposures_since_break


def take_break() -> None:
    st.session_state["exposures"] = 0
    st.session_state["break_started"] = time.time()
    who = identity()
    if who is not None:
        with unit_of_work(engine()) as session:
            wellbeing_queries.take_break(session, who.annotator_id)


DEFAULT_BLUR_PX = 22


@dataclass(frozen=True)
class Hiding:
    """How this annotator's images are hidden: the sidebar's image-safety settings."""

    blur: bool
    greyscale: bool
    blur_px: int = DEFAULT_BLUR_PX
    reveal_on_hold: bool = True  # Explore's hover tip: holding Shift shows the image while held
    reveal_session: bool = False  # every image shown plainly until this browser session ends


def hiding(project: Project) -> Hiding:
    settings = project.settings.labelling
    return Hiding(
        blur=bool(st.session_state.get("blur", settings.blur_images)),
        greyscale=bool(st.session_state.get("greyscale", settings.greyscale_images)),
        blur_px=int(st.session_state.get("blur_px", DEFAULT_BLUR_PX)),
        reveal_on_hold=bool(st.session_state.get("reveal_on_hold", True)),
        reveal_session=bool(st.session_state.get("reveal_session", False)),
    )


def image_filter_class(project: Project, image_id: int | None = None) -> str:
    """The CSS class that hides an image (blur / greyscale) unless the annotator revealed it."""
    if image_id is not None and st.session_state.get("revealed") == image_id:
        return "plain"
    if st.session_state.get("reveal_session", False):
        return "plain"
    if st.session_state.get("blur", project.settings.labelling.blur_images):
        return "blurred"
    if st.session_state.get("greyscale", project.settings.labelling.greyscale_images):
        return "grey"
    return "plain"
