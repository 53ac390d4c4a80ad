"""The app's Streamlit glue: the project and engine behind ``st.cache_resource``, loaded models keyed by
model version, and the per-browser-session state (who is labelling, what is on screen, exposure)."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st
from sqlalchemy import Engine

from db.engine import reading
from labeller.app import services
from labeller.project import Project, ProjectError, open_project

PROJECT_ENV = "LABELLER_PROJECT"


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
        st.error(str(error))
        st.stop()
        raise  # unreachable: st.stop raises


def engine() -> Engine:
    return current_project().engine


@st.cache_resource(show_spinner="Loading the model...", max_entries=2)
def load_model(model_version_id: int, checkpoint_path: str) -> Any:
    """A trained model, loaded once per model version (a promoted version gets a new cache entry)."""
    from core.training import load_checkpoint

    return load_checkpoint(Path(checkpoint_path), device="cpu")


def taxonomy() -> services.TaxonomyView:
    with reading(engine()) as session:
        return services.load_taxonomy(session)


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
        st.info("Pick or enter your name in the sidebar to start. Every label records who made it.")
        st.stop()
    assert who is not None
    return who


def exposure() -> tuple[int, float]:
    """(images shown since the last break, minutes since the last break)."""
    started = st.session_state.setdefault("break_started", time.time())
    return st.session_state.get("exposures", 0), (time.time() - started) / 60.0


def count_exposure(image_id: int) -> None:
    """Count an image once, the first time it is shown in this session."""
    seen: set[int] = st.session_state.setdefault("seen_images", set())
    if image_id not in seen:
        seen.add(image_id)
        st.session_state["exposures"] = st.session_state.get("exposures", 0) + 1
        st.session_state["total_exposures"] = st.session_state.get("total_exposures", 0) + 1


def take_break() -> None:
    st.session_state["exposures"] = 0
    st.session_state["break_started"] = time.time()


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
