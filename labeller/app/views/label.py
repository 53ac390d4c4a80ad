"""Label: one image at a time from the queue; one key per main class commits and advances."""

from __future__ import annotations

import streamlit as st

from db.queries.annotations import AnnotationError
from db.queries.queue import STRATEGIES
from db.schema import AnnotationKind
from labeller.app import services, state
from labeller.app.components import image_tile, probability_bars
from labeller.app.keys import PAGE_KEYS
from labeller.app.services import Decision, QueuedImage

project = state.current_project()
engine = project.engine
who = state.require_identity()
taxonomy = state.taxonomy()
lease = project.settings.labelling.claim_lease_seconds
st.session_state.setdefault("strategy", project.settings.labelling.default_strategy)
st.session_state.setdefault("pending_tags", set())


def _flash(message: str, icon: str = ":material/info:") -> None:
    st.session_state["flash"] = (message, icon)


def _current() -> QueuedImage | None:
    return st.session_state.get("current")


def _advance_to(queued: QueuedImage | None) -> None:
    st.session_state["current"] = queued
    st.session_state["pending_tags"] = set()
    st.session_state["revealed"] = None


def decide(kind: AnnotationKind, main_class_id: int | None = None) -> None:
    current = _current()
    if current is None:
        return
    pending: set[int] = st.session_state["pending_tags"]
    tags = tuple(sorted(t for t in pending if (s := taxonomy.sub_class(t)) and s.main_class_id == main_class_id))
    if kind == AnnotationKind.UNSURE and main_class_id is None and pending:
        # Unsure with tags: a tentative label, when the tags name one main class.
        owners = {s.main_class_id for t in pending if (s := taxonomy.sub_class(t))}
        if len(owners) == 1:
            main_class_id = owners.pop()
            tags = tuple(sorted(pending))
    if len(tags) < len(pending) and kind == AnnotationKind.LABEL:
        _flash("Tags of another main class were dropped.", ":material/warning:")
    try:
        step = services.decide_and_advance(
            engine,
            annotator_id=who.annotator_id,
            current=current,
            decision=Decision(kind, main_class_id, tags),
            strategy=st.session_state["strategy"],
            lease_seconds=lease,
        )
    except AnnotationError as error:
        _flash(str(error), ":material/error:")
        return
    _advance_to(step.next)


def commit_pending_tags() -> None:
    """Enter: label with the main class the pending tags belong to."""
    owners = {s.main_class_id for t in st.session_state["pending_tags"] if (s := taxonomy.sub_class(t))}
    if len(owners) != 1:
        _flash("Pick sub-class tags of one main class, or press a main-class key.", ":material/warning:")
        return
    decide(AnnotationKind.LABEL, owners.pop())


def toggle_tag(sub_class_id: int) -> None:
    pending: set[int] = st.session_state["pending_tags"]
    pending.symmetric_difference_update({sub_class_id})


def toggle_reveal() -> None:
    current = _current()
    revealed = st.session_state.get("revealed")
    st.session_state["revealed"] = None if current is None or revealed == current.image_id else current.image_id


def undo(annotation_id: int | None = None) -> None:
    history = services.my_history(engine, who.annotator_id, limit=1)
    if annotation_id is None:
        if not history:
            _flash("Nothing to undo.")
            return
        annotation_id = history[0].id
    try:
        queued = services.undo_and_return(
            engine,
            annotator_id=who.annotator_id,
            annotation_id=annotation_id,
            current=_current(),
            strategy=st.session_state["strategy"],
            lease_seconds=lease,
        )
    except AnnotationError as error:
        _flash(str(error), ":material/error:")
        return
    _advance_to(queued)
    _flash("Undone: the image is back on screen.", ":material/undo:")


def change_strategy() -> None:
    current = _current()
    if current is not None:
        services.release(engine, annotator_id=who.annotator_id, image_id=current.image_id)
    _advance_to(None)


def correct(annotation_id: int, image_id: int) -> None:
    name = st.session_state.get(f"history-main-{annotation_id}")
    main_id = next((m.id for m in taxonomy.main_classes if m.name == name), None)
    if main_id is None:
        return
    try:
        services.correct_annotation(
            engine, annotator_id=who.annotator_id, image_id=image_id, decision=Decision(AnnotationKind.LABEL, main_id)
        )
    except AnnotationError as error:
        _flash(str(error), ":material/error:")


# ----------------------------------------------------------------------------------------- layout

requested = services.parse_image_id(st.query_params.get("image"))
if requested is not None:
    # A link to one image (from the Review page, say); anything but a positive integer is ignored.
    del st.query_params["image"]
    if (current := _current()) is None or current.image_id != requested:
        queued = services.claim_requested(
            engine,
            annotator_id=who.annotator_id,
            image_id=requested,
            strategy=st.session_state["strategy"],
            lease_seconds=lease,
        )
        if queued is None:
            _flash(f"Image {requested} does not exist or another annotator has it open.", ":material/warning:")
        else:
            if current is not None:
                services.release(engine, annotator_id=who.annotator_id, image_id=current.image_id)
            _advance_to(queued)

if _current() is None:
    _advance_to(
        services.claim_next(
            engine, annotator_id=who.annotator_id, strategy=st.session_state["strategy"], lease_seconds=lease
        )
    )
current = _current()

header = st.columns([5, 2], vertical_alignment="bottom")
header[0].title("Label")
header[1].selectbox(
    "Queue order",
    STRATEGIES,
    key="strategy",
    on_change=change_strategy,
    help="Which images come first: the active model's uncertainty under this score (cold start before a model).",
)
if flash := st.session_state.pop("flash", None):
    st.toast(flash[0], icon=flash[1])

if current is None:
    st.success("The queue is empty: every image is labelled or held by another annotator.", icon=":material/done_all:")
    st.button("Check again", on_click=_advance_to, args=(None,))
    st.stop()

card = services.image_card(engine, project, current, taxonomy)
state.count_exposure(card.image_id)
hidden = state.image_filter_class(project, card.image_id)

left, right = st.columns([3, 2], gap="large")
with left:
    image_tile(card.file, key="label-image", hidden_class=hidden)
    with st.container(key="image-info"):
        st.caption(f"{card.name} · {card.width}x{card.height} · image {card.image_id}")

with right:
    with st.container(border=True):
        st.markdown("**Model**")
        if card.predicted_main is None:
            st.caption("No prediction yet: images come in cold-start order until a model is trained.")
        else:
            predicted = card.predicted_main + (f" / {card.predicted_sub}" if card.predicted_sub else "")
            st.markdown(f"Predicted: **{predicted}**")
            probability_bars(card.main_probabilities, limit=4)
            if card.leaf_probabilities and card.predicted_sub:
                with st.expander("Sub-class probabilities"):
                    probability_bars(card.leaf_probabilities, limit=6)
        why = f"Queued by **{card.strategy}**"
        if card.score is not None:
            why += f" (score {card.score:.3f})"
        if card.audit:
            why += " · audit sample"
        st.caption(why)

    pending = st.session_state["pending_tags"]
    st.markdown("**Main class** · press the key to label and advance")
    for main in taxonomy.main_classes:
        key = next((k.key for k in taxonomy.keys.main if k.class_id == main.id), None)
        st.button(
            f"{main.name}",
            key=f"main-{main.id}",
            shortcut=key,
            on_click=decide,
            args=(AnnotationKind.LABEL, main.id),
            type="primary"
            if any((s := taxonomy.sub_class(t)) and s.main_class_id == main.id for t in pending)
            else "secondary",
            width="stretch",
        )
    with_tags = [m for m in taxonomy.main_classes if m.sub_classes]
    if with_tags:
        st.markdown("**Sub-class tags** · toggle, then the main key (or Enter) commits")
        for main in with_tags:
            tag_keys = {k.class_id: k.key for k in taxonomy.keys.tags.get(main.id, ())}
            row = st.container(horizontal=True, vertical_alignment="center")
            row.caption(main.name, width=70)
            for sub in main.sub_classes:
                row.button(
                    sub.name,
                    key=f"tag-{sub.id}",
                    shortcut=tag_keys.get(sub.id),
                    on_click=toggle_tag,
                    args=(sub.id,),
                    type="primary" if sub.id in pending else "secondary",
                    icon=":material/check:" if sub.id in pending else None,
                )
        st.button("Commit tags", key="commit-tags", shortcut=PAGE_KEYS.commit_tags, on_click=commit_pending_tags)

    actions = st.container(horizontal=True)
    actions.button("Skip", key="skip", shortcut=PAGE_KEYS.skip, on_click=decide, args=(AnnotationKind.SKIP,))
    actions.button("Unsure", key="unsure", shortcut=PAGE_KEYS.unsure, on_click=decide, args=(AnnotationKind.UNSURE,))
    actions.button("Undo", key="undo", shortcut=PAGE_KEYS.undo, on_click=undo, icon=":material/undo:")
    if st.session_state.get("blur") or st.session_state.get("greyscale"):
        # Only when images are hidden: reveal this one (V), or hide it again.
        actions.button(
            "Hide" if hidden == "plain" else "Reveal",
            key="reveal",
            shortcut=PAGE_KEYS.reveal,
            on_click=toggle_reveal,
            icon=":material/visibility_off:" if hidden == "plain" else ":material/visibility:",
        )

st.divider()
st.markdown("**Recent** · change a label here or undo it")
history = services.my_history(engine, who.annotator_id, limit=8)
if not history:
    st.caption("Your labels appear here.")
main_names = [m.name for m in taxonomy.main_classes]
for item in history:
    row = st.columns([1, 3, 3, 1], vertical_alignment="center")
    row[0].caption(item.created_at.strftime("%H:%M:%S"))
    row[1].markdown(f"image {item.image_id} · {item.kind}" + (f" · {', '.join(item.tags)}" if item.tags else ""))
    row[2].selectbox(
        "Main class",
        main_names,
        index=main_names.index(item.main_class) if item.main_class in main_names else None,
        key=f"history-main-{item.id}",
        on_change=correct,
        args=(item.id, item.image_id),
        label_visibility="collapsed",
        placeholder="no class",
    )
    row[3].button("Undo", key=f"undo-{item.id}", on_click=undo, args=(item.id,))
