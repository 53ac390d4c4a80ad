"""Grid: a page of thumbnails (uncertain, one predicted class, an Explore selection or a search);
select many (on this page, a Shift-click range, or every image that matches, across pages) and give them
all one main class and tags. Arrow keys move between tiles and Space ticks one (``grid_keys``)."""

from __future__ import annotations

import math

import streamlit as st

from db.queries.annotations import AnnotationError
from db.schema import AnnotationKind, AnnotationSource
from labeller.app import state
from labeller.app.components import image_tile
from labeller.app.grid_keys import grid_keys, requested_range
from labeller.app.grid_selection import select_matching, select_range
from labeller.app.reveal import held_reveals, hold_reveal, page_veil, tile_class
from labeller.app.services import grid, label
from labeller.app.text import md_text

MODES = {
    "uncertain": "Most uncertain (unlabelled)",
    "predicted": "One predicted class",
    "ids": "Explore selection",
    "unlabelled": "Unlabelled",
    "labelled": "Labelled",
    "search": "Search file names",
}
PAGE_SIZES = (12, 24, 36, 48)
COLUMNS = 6

project = state.current_project()
engine = project.engine
who = state.require_identity()
taxonomy = state.taxonomy()
st.session_state.setdefault("grid_selected", set())
st.session_state.setdefault("grid_page", 0)
explore_ids: list[int] = st.session_state.get("explore_selection", [])


def pick_key(image_id: int) -> str:
    """A tile checkbox's widget key: one per image, so a tick never replaces the checkbox (keys.js reads it)."""
    return f"pick-{image_id}"


def select(image_ids: set[int]) -> None:
    """A selection made by the program (buttons, ranges, a new filter): the boxes on the page show it. Only
    callbacks write the boxes: a value written while drawing the page would outvote a tick still on its way."""
    st.session_state["grid_selected"] = image_ids
    for image_id in st.session_state.get("grid_page_ids", []):
        st.session_state[pick_key(image_id)] = image_id in image_ids


def reset_page() -> None:
    st.session_state["grid_page"] = 0
    select(set())


def select_all(image_ids: list[int], on: bool) -> None:
    selected: set[int] = st.session_state["grid_selected"]
    select(selected | set(image_ids) if on else selected - set(image_ids))


def select_shift_range() -> None:
    page_ids: list[int] = st.session_state.get("grid_page_ids", [])
    select(select_range(st.session_state["grid_selected"], page_ids, requested_range()))


def select_all_matching(on: bool) -> None:
    matching = grid.grid_matching_ids(engine, **st.session_state["grid_filter"])
    select(select_matching(st.session_state["grid_selected"], matching, on))


def apply_label() -> None:
    """The bulk-label form's Apply: the form's main class and tags on every selected image."""
    main_class_id: int = st.session_state["bulk_main"]
    tag_ids: list[int] = st.session_state["bulk_tags"]
    selected = sorted(st.session_state["grid_selected"])
    try:
        count = label.label_many(
            engine,
            annotator_id=who.annotator_id,
            image_ids=selected,
            decision=label.Decision(AnnotationKind.LABEL, main_class_id, tuple(tag_ids)),
            source=AnnotationSource.EXPLORE if st.session_state.get("grid_mode") == "ids" else AnnotationSource.GRID,
        )
    except AnnotationError as error:
        st.session_state["grid_flash"] = f"Nothing was labelled: {error}"
        return
    st.session_state["grid_flash"] = f"Labelled {count} images as {taxonomy.main_name(main_class_id)}."
    select(set())


st.title("Grid")
default_mode = "ids" if explore_ids and st.session_state.pop("grid_from_explore", False) else None
if default_mode:
    st.session_state["grid_mode"] = default_mode
    reset_page()
controls = st.columns([3, 3, 2], vertical_alignment="bottom")
mode = controls[0].selectbox("Show", list(MODES), format_func=MODES.get, key="grid_mode", on_change=reset_page)
main_filter: int | None = None
search = ""
if mode == "predicted":
    main_filter = controls[1].selectbox(
        "Predicted class", [m.id for m in taxonomy.main_classes], format_func=taxonomy.main_name, on_change=reset_page
    )
elif mode == "search":
    search = controls[1].text_input("File name contains", on_change=reset_page)
elif mode == "ids":
    controls[1].caption(f"{len(explore_ids)} images selected on the Explore page")
page_size = controls[2].selectbox("Per page", PAGE_SIZES, index=1, on_change=reset_page)

grid_filter = {
    "mode": mode,
    "strategy": st.session_state.get("strategy", "entropy"),
    "main_class_id": main_filter,
    "search": search,
    "image_ids": explore_ids,
}
st.session_state["grid_filter"] = grid_filter
tiles, total = grid.grid_page(
    engine,
    project,
    **grid_filter,
    page=st.session_state["grid_page"],
    page_size=page_size,
    veil=page_veil(project),
    unveiled=held_reveals(),
)

if flash := st.session_state.pop("grid_flash", None):
    st.toast(md_text(flash), icon=":material/done_all:")

pages = max(1, math.ceil(total / page_size))
selected: set[int] = st.session_state["grid_selected"]
page_ids = [tile.row.image_id for tile in tiles]
st.session_state["grid_page_ids"] = page_ids
bar = st.container(horizontal=True, vertical_alignment="center")
selection_count = bar.empty()  # filled in once the tiles' boxes have been read
bar.button("Select page", on_click=select_all, args=(page_ids, True), icon=":material/select_all:")
bar.button("Clear", on_click=select_all, args=(page_ids, False), icon=":material/deselect:")
bar.button(
    f"Select all {total} that match",
    on_click=select_all_matching,
    args=(True,),
    icon=":material/done_all:",
    disabled=total == 0 or total > grid.MATCHING_LIMIT,
    help="Every image under this filter, on every page",
)
bar.button("Clear all", on_click=select, args=(set(),), disabled=not selected)
bar.button(
    "Previous",
    disabled=st.session_state["grid_page"] == 0,
    on_click=lambda: st.session_state.update(grid_page=st.session_state["grid_page"] - 1),
)
bar.button(
    "Next",
    disabled=st.session_state["grid_page"] >= pages - 1,
    on_click=lambda: st.session_state.update(grid_page=st.session_state["grid_page"] + 1),
)

if not tiles:
    st.info("No images match.")
elif note := grid.confidence_note(engine):
    st.caption(f"Predictions: {note}.")
for start in range(0, len(tiles), COLUMNS):
    columns = st.columns(COLUMNS)
    for column, tile in zip(columns, tiles[start : start + COLUMNS], strict=False):
        row = tile.row
        with column:
            image_tile(tile.file, key=f"tile-{row.image_id}", hidden_class=tile_class(project, row.image_id))
            st.caption(":green[**✓ labelled**]" if row.labelled else "unlabelled")
            predicted = taxonomy.main_name(row.predicted_main_id) if row.predicted_main_id else "-"
            confidence = tile.confidence
            if pick_key(row.image_id) not in st.session_state:  # a tile new to the page shows the selection
                st.session_state[pick_key(row.image_id)] = row.image_id in selected
            # The box's value is what the annotator sees; the selection follows it. (Read here rather than
            # in an on_change callback: Streamlit dropped some callbacks of ticks made during a rerun.)
            if st.checkbox(
                f"{row.image_id} · {md_text(predicted)}{confidence}" + (" · labelled" if row.labelled else ""),
                key=pick_key(row.image_id),
            ):
                selected.add(row.image_id)
            else:
                selected.discard(row.image_id)
selection_count.markdown(
    f"**{total}** images · page {st.session_state['grid_page'] + 1} of {pages} · **{len(selected)}** selected"
)

grid_keys(page_ids, columns=COLUMNS, on_range=select_shift_range)
hold_reveal(project, page_ids, key="grid-hold")
st.caption("Arrow keys move between tiles, Space ticks one, Shift-click ticks every tile from the last one ticked.")

with st.form("bulk_label", border=True):
    st.markdown("**Label the selected images**")
    form_cols = st.columns([2, 3, 1], vertical_alignment="bottom")
    form_cols[0].selectbox(
        "Main class", [m.id for m in taxonomy.main_classes], format_func=taxonomy.main_name, key="bulk_main"
    )
    all_tags = [(s.id, f"{m.name} / {s.name}") for m in taxonomy.main_classes for s in m.sub_classes]
    form_cols[1].multiselect(
        "Sub-class tags (of that main class)",
        [t for t, _ in all_tags],
        format_func=dict(all_tags).get,
        key="bulk_tags",
    )
    # A callback, so that clearing the selection can untick the boxes before they are drawn.
    form_cols[2].form_submit_button("Apply", type="primary", disabled=not selected, on_click=apply_label)
