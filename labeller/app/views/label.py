"""Label: one image at a time from the queue; the card handles the keys in the browser (see label_card)."""

from __future__ import annotations

import hashlib

import streamlit as st

from db.queries.annotations import AnnotationError
from db.queries.queue import STRATEGIES
from db.schema import AnnotationKind
from labeller.app import state
from labeller.app.label_card import label_card, sent_outbox, sent_reveal
from labeller.app.reveal import held_reveals, hold_reveal, page_veil, tile_class
from labeller.app.services import common, label, label_session, renditions
from labeller.app.services.label import Decision
from labeller.app.services.label_session import LabelSession
from labeller.app.text import md_text
from labeller.disk_full import is_disk_full

PROGRESS_EVERY_S = 5  # the progress row and the Recent list refresh on their own, not on every key press

project = state.current_project()
engine = project.engine
who = state.require_identity()
taxonomy = state.taxonomy()
lease = project.settings.labelling.claim_lease_seconds
st.session_state.setdefault("strategy", project.settings.labelling.default_strategy)

session: LabelSession | None = st.session_state.get("label_session")
if session is None or session.annotator_id != who.annotator_id:
    session = LabelSession(who.annotator_id, st.session_state["strategy"])
    st.session_state["label_session"] = session


def change_strategy() -> None:
    session.change_strategy(engine, st.session_state["strategy"])


def correct(annotation_id: int, image_id: int, was: str | None) -> None:
    name = st.session_state.get(f"history-main-{annotation_id}")
    if name == was:
        # An interrupted rerun can report an unchanged box as changed: only a real change is a correction.
        return
    main_id = next((m.id for m in taxonomy.main_classes if m.name == name), None)
    if main_id is None:
        return
    try:
        label.correct_annotation(
            engine, annotator_id=who.annotator_id, image_id=image_id, decision=Decision(AnnotationKind.LABEL, main_id)
        )
    except AnnotationError as error:
        session.messages.append(str(error))


def undo(annotation_id: int) -> None:
    try:
        image_id = label_session.undo_from_history(
            engine, annotator_id=who.annotator_id, annotation_id=annotation_id, lease_seconds=lease
        )
    except AnnotationError as error:
        session.messages.append(str(error))
        return
    session.put_in_front(image_id)
    session.messages.append("Undone: the image is back on screen.")
    st.session_state["label_rerun"] = True


# ----------------------------------------------------------------------------------------- decisions

requested = common.parse_image_id(st.query_params.get("image"))
if requested is not None:
    # A link to one image (from the Review page, say); anything but a positive integer is ignored.
    del st.query_params["image"]
    if session.current_image() != requested:
        queued = label.claim_requested(
            engine, annotator_id=who.annotator_id, image_id=requested, strategy=session.strategy, lease_seconds=lease
        )
        if queued is None:
            session.messages.append(f"Image {requested} does not exist or another annotator has it open.")
        else:
            session.put_in_front(requested)

# ----------------------------------------------------------------------------------------- layout

header = st.columns([5, 2], vertical_alignment="bottom")
header[0].title("Label")
header[1].selectbox(
    "Queue order",
    STRATEGIES,
    key="strategy",
    on_change=change_strategy,
    help="Which images come first: the active model's uncertainty under this score (cold start before a model).",
)


@st.fragment(run_every=PROGRESS_EVERY_S)
def progress_row() -> None:
    done = label_session.progress(engine, annotator_id=who.annotator_id, session_started=session.started)
    with st.container(key="label-progress", horizontal=True):
        st.metric("Labels this session", done.session)
        st.metric("Labels today", done.today)
        st.metric("Labels in the last hour", f"{done.per_hour:.0f}")
        st.metric("Images left to label", done.left)
    per_class = " · ".join(f"{md_text(name)} **{n}**" for name, n in done.by_main_class.items())
    st.caption(f"Labelled images per class: {per_class or 'none'}")


@st.fragment
def card() -> None:
    """The card reruns only this fragment when it sends decisions: a key press costs no full page."""
    acks = session.receive(engine, sent_outbox(), taxonomy, lease_seconds=lease)
    try:
        session.refill(engine, lease_seconds=lease)
    except Exception as error:  # a full disk: the window stays as it was until there is room again
        if not is_disk_full(error):
            raise
        if label_session.DISK_FULL_NOT_SAVED not in session.messages:
            session.messages.append(label_session.DISK_FULL_NOT_SAVED)
    for result in acks:
        if result.decided:
            state.count_exposure(result.image_id)
    if (shown := session.current_image()) is not None:
        state.count_exposure(shown)
    while session.messages:
        st.toast(md_text(session.messages.pop(0)), icon=":material/info:")
    storage = "latent-labeller:" + hashlib.sha256(str(project.root.resolve()).encode()).hexdigest()[:12]
    session.request_full(label_session.parse_reveal_request(sent_reveal()))
    hiding = state.hiding(project)
    label_card(
        session.card_data(
            engine,
            project,
            taxonomy,
            acks=acks,
            hide=state.image_filter_class(project),
            storage=f"{storage}:{who.annotator_id}",
            blur_px=hiding.blur_px,
            greyscale=hiding.greyscale,
        )
    )


@st.fragment(run_every=PROGRESS_EVERY_S)
def recent() -> None:
    full_runs = st.session_state.get("label_full_runs", 0)
    alone = st.session_state.get("recent_saw_full_run") == full_runs  # a rerun of this fragment only
    st.session_state["recent_saw_full_run"] = full_runs
    # An undo here brings its image back to the card; the sidebar's exposure count (drawn by full runs only)
    # catches up with the images the card has shown.
    behind = st.session_state.get("exposures", 0) != st.session_state.get("exposures_drawn", 0)
    if st.session_state.pop("label_rerun", False) or (alone and behind):
        st.rerun()
    st.markdown("**Recent** · change a label here or undo it")
    history = label.my_history(engine, who.annotator_id, limit=8)
    if not history:
        st.caption("Your labels appear here.")
    shown_ids = [item.image_id for item in history]
    thumbs = renditions.served_thumbnails(engine, project, shown_ids, page_veil(project), held_reveals())
    main_names = [m.name for m in taxonomy.main_classes]
    for item in history:
        row = st.columns([1, 1, 3, 3, 1], vertical_alignment="center")
        if item.image_id in thumbs:
            hidden = tile_class(project, item.image_id)
            with row[0].container(key=f"hide-{hidden}-recent-{item.id}-{item.image_id}"):
                st.image(str(thumbs[item.image_id]), width=56)
        row[1].caption(item.created_at.strftime("%H:%M:%S"))
        row[2].markdown(
            f"image {item.image_id} · {item.kind}" + (f" · {md_text(', '.join(item.tags))}" if item.tags else "")
        )
        row[3].selectbox(
            "Main class",
            main_names,
            index=main_names.index(item.main_class) if item.main_class in main_names else None,
            key=f"history-main-{item.id}",
            on_change=correct,
            args=(item.id, item.image_id, item.main_class),
            label_visibility="collapsed",
            placeholder="no class",
        )
        row[4].button("Undo", key=f"undo-{item.id}", on_click=undo, args=(item.id,))
    hold_reveal(project, shown_ids, key="recent-hold")


st.session_state["label_full_runs"] = st.session_state.get("label_full_runs", 0) + 1
# A full run applies what the card sent first, so that the progress row above the card counts it.
session.receive(engine, sent_outbox(), taxonomy, lease_seconds=lease)
progress_row()
card()
st.divider()
recent()
