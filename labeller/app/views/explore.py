"""Explore: the active model's latent space as a WebGL scatter, or before any model (or on request) the map
of the images' pretrained features; lasso or box a cluster to inspect and bulk-label it on the Grid page."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import streamlit as st

from labeller.app import state
from labeller.app.components import image_tile
from labeller.app.hover_thumb import MAP_KEY, hover_thumbnail, requested_image, requested_reveal
from labeller.app.reveal import held_reveals, hold_reveal, page_veil, tile_class
from labeller.app.selection import selected_image_ids
from labeller.app.services import common, explore, renditions
from labeller.app.services.label_session import image_data_url
from labeller.app.text import md_text

# Categorical colours (Okabe-Ito, colour-blind safe), cycled when there are more categories.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
PREVIEW = 12
NO_CATEGORY = "#c8ccd4"

project = state.current_project()
engine = project.engine
state.require_identity()
taxonomy = state.taxonomy()

st.title("Explore")
maps = explore.available_maps(engine)
if not maps.sources:
    st.info(
        "No latent map yet: the worker maps the images by their features once a features or train job has "
        "computed them, and by the active model version once it is trained and scored. Start a training run on "
        "the Train page."
    )
    st.stop()
source = maps.sources[0]
if len(maps.sources) > 1:
    source = st.radio("Map", maps.sources, format_func=maps.label, horizontal=True, key="explore_map")
if source == explore.INPUT_MAP:
    # No predictions on the input map: only the human labels can colour it.
    colour_by = "human"
else:
    colour_by = st.segmented_control(
        "Colour by", list(explore.COLOUR_BY), format_func=explore.COLOUR_BY.get, default="predicted", key="colour_by"
    )
view = explore.embedding_view(engine, taxonomy, colour_by or "predicted", source)
if view is None:
    st.info("That map has no points any more; reload the page.")
    st.stop()


def scatter(view: explore.EmbeddingView) -> go.Figure:
    """One Scattergl trace in ``view.image_ids`` order, so a selected point_index is an index into it."""
    # Labelled points come last in the view (drawn on top), a little larger and outlined.
    small = 6 if len(view.image_ids) < 20_000 else 3
    marker: dict = {
        "size": [small + 3 if flag else small for flag in view.labelled],
        "opacity": 0.85,
        "line": {"width": [1.2 if flag else 0 for flag in view.labelled], "color": "#1b2333"},
    }
    if view.categories:
        # Category i is drawn at value i + 0.5, the middle of its flat band [i, i + 1) of a stepped scale.
        names = list(view.categories)
        values = [c + 0.5 if not math.isnan(c) else None for c in view.colour]
        if None in values:
            values = [v if v is not None else len(names) + 0.5 for v in values]
            names.append("none")
        colours = [PALETTE[i % len(PALETTE)] for i in range(len(view.categories))] + [NO_CATEGORY]
        count = len(names)
        scale = [[edge / count, colours[i]] for i in range(count) for edge in (i, i + 1)]
        marker.update(
            color=values,
            colorscale=scale,
            cmin=0,
            cmax=count,
            colorbar={
                "tickvals": [i + 0.5 for i in range(count)],
                "ticktext": names,
                "title": explore.COLOUR_BY[colour_by or "predicted"],
            },
        )
    else:
        marker.update(color=view.colour, colorscale="Viridis", colorbar={"title": explore.COLOUR_BY[colour_by]})
    figure = go.Figure(
        go.Scattergl(
            x=view.x,
            y=view.y,
            mode="markers",
            marker=marker,
            text=view.hover,
            hoverinfo="text",
            customdata=view.image_ids,  # the hover tip reads the image id here
        )
    )
    figure.update_layout(
        height=620,
        # A top strip for plotly's mode bar: over the plot it covered the colour bar's title and top points.
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        dragmode="lasso",
        xaxis={"showticklabels": False, "title": None},
        yaxis={"showticklabels": False, "title": None},
        plot_bgcolor="#fafbfd",
    )
    return figure


with st.container(key=MAP_KEY):
    event = st.plotly_chart(
        scatter(view), key=view.chart_key, on_select="rerun", selection_mode=("lasso", "box", "points")
    )


@st.fragment
def hover_tip() -> None:
    """A hover asks for one thumbnail and reruns only this fragment; so does Shift, for the full one."""
    image_id = requested_image()
    veil = page_veil(project)
    hiding = state.hiding(project)
    files = renditions.served_thumbnails(engine, project, [image_id], veil) if image_id is not None else {}
    thumb = {"id": image_id, "src": image_data_url(files[image_id])} if image_id in files else None
    full = None
    reveal = requested_reveal() if veil is not None and hiding.reveal_on_hold else None
    if reveal is not None and st.session_state.get("hover_revealed") != reveal:
        st.session_state["hover_revealed"] = reveal  # sent once: the tip keeps it
        shown = common.display_files(engine, project, [reveal[0]])
        full = {"id": reveal[0], "src": image_data_url(shown[reveal[0]])} if reveal[0] in shown else None
    hover_thumbnail(
        thumb,
        full=full,
        hide="veiled" if veil is not None else state.image_filter_class(project),
        veil=repr(veil),
        blur_px=hiding.blur_px,
        reveal_on_hold=hiding.reveal_on_hold,
    )


hover_tip()
chosen = selected_image_ids(event.selection if event else None, view.image_ids)
st.caption(
    f"{maps.caption(view)} · {len(view.image_ids)} images ({sum(view.labelled)} labelled, drawn larger and on top)"
    " · hover a point for its thumbnail (hold Shift to reveal it) · draw a lasso or a box to select (double-click"
    " to clear)"
)
if chosen:
    top = st.columns([3, 1], vertical_alignment="center")
    top[0].markdown(f"**{len(chosen)} images selected**")
    if top[1].button("Open in the Grid", type="primary", icon=":material/grid_view:", width="stretch"):
        st.session_state["explore_selection"] = chosen
        st.session_state["grid_from_explore"] = True
        st.switch_page("views/grid.py")
    hidden = state.image_filter_class(project)
    revealed = st.toggle("Reveal these images", key="explore_reveal", disabled=hidden == "plain")
    veil = None if revealed else page_veil(project)
    files = renditions.served_thumbnails(engine, project, chosen[:PREVIEW], veil, held_reveals())
    columns = st.columns(PREVIEW // 2)
    for index, image_id in enumerate(chosen[:PREVIEW]):
        with columns[index % len(columns)]:
            shown_as = "plain" if revealed else tile_class(project, image_id)
            image_tile(files[image_id], key=f"explore-{image_id}", hidden_class=shown_as, caption=str(image_id))
    hold_reveal(project, [] if revealed else chosen[:PREVIEW], key="explore-hold")

if maps.version_id is None:
    st.stop()  # no model yet: no decoder to reconstruct or sample with

with st.expander("Decoder reconstructions and samples per sub-class", icon=":material/auto_awesome:"):
    checkpoint = explore.active_checkpoint(engine, project)
    if checkpoint is None:
        st.caption("The active model version has no checkpoint file here.")
    elif st.toggle("Reconstruct labelled examples with the active model", key="show_reconstructions"):
        trained = state.load_model(checkpoint[0], str(checkpoint[1]))
        veil = page_veil(project)  # real images and their reconstructions: veiled like any other picture
        hidden = "veiled" if veil is not None else state.image_filter_class(project)
        try:
            for row, (name, image_ids) in enumerate(explore.examples_per_sub_class(engine).items()):
                st.markdown(f"**{md_text(name)}** · input, then reconstruction")
                pairs = explore.reconstructions(engine, project, trained, image_ids)
                columns = st.columns(8)
                for index, (image_id, original, decoded) in enumerate(pairs):
                    with columns[2 * index % 8], st.container(key=f"hide-{hidden}-in-{row}-{image_id}"):
                        st.image(renditions.veil_array(original, veil), width="stretch", clamp=True)
                    with columns[(2 * index + 1) % 8], st.container(key=f"hide-{hidden}-out-{row}-{image_id}"):
                        st.image(renditions.veil_array(decoded, veil), width="stretch", clamp=True)
        except ValueError as error:
            st.info(str(error))
    if checkpoint is not None and st.toggle("Draw samples per sub-class from the decoder", key="show_samples"):
        trained = state.load_model(checkpoint[0], str(checkpoint[1]))
        try:
            for row, (leaf, images) in enumerate(explore.decoder_samples(trained).items()):
                st.markdown(f"**{md_text(leaf)}** · drawn from p(x | y, z), z ~ N(0, I)")
                veil = page_veil(project)  # made up, but as like the real images as the model can draw them
                hidden = "veiled" if veil is not None else state.image_filter_class(project)
                with st.container(key=f"hide-{hidden}-samples-{row}"):
                    st.image([renditions.veil_array(i, veil, shown_px=72) for i in images], width=72, clamp=True)
        except ValueError as error:
            st.info(str(error))
