"""Explore's hover thumbnail: a Streamlit component (components v2, inline JS, no build step).

Plotly's hover label shows text only, so ``hover.js`` listens to the map's hover events in the page, asks
for the hovered image's thumbnail through its ``hover`` state and shows it by the pointer, hidden as the
annotator's settings say. With blur on the thumbnail is a veiled rendition; holding Shift (reveal on hold)
asks for the full one through the ``reveal`` state. Mount it inside an ``st.fragment`` so that a hover
reruns only that fragment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from labeller.app.selection import hovered_image_id

NAME = "latent_labeller_hover_thumb"
KEY = "explore-hover"
# The element holding the map: hover.js looks for its plotly chart inside st-key-<MAP_KEY>.
MAP_KEY = "explore-map"

_render = st.components.v2.component(
    NAME,
    html='<div data-testid="explore-hover"></div>',
    js=(Path(__file__).parent / "hover.js").read_text(encoding="utf-8"),
)


def requested_image() -> int | None:
    """The image id the tip asked a thumbnail for (its ``hover`` state), or None."""
    return hovered_image_id(st.session_state.get(KEY))


def requested_reveal() -> tuple[int, int] | None:
    """(image id, nonce) of the tip's last request for a full thumbnail (its ``reveal`` state), or None."""
    state = st.session_state.get(KEY)
    value = getattr(state, "reveal", None) if state is not None and not isinstance(state, dict) else None
    if isinstance(state, dict):
        value = state.get("reveal")
    if not isinstance(value, dict):
        return None
    image, nonce = hovered_image_id({"hover": value.get("image")}), value.get("nonce")
    if image is None or isinstance(nonce, bool) or not isinstance(nonce, int):
        return None
    return image, nonce


def hover_thumbnail(
    thumb: dict[str, Any] | None,
    *,
    hide: str,
    blur_px: int,
    reveal_on_hold: bool,
    full: dict[str, Any] | None = None,
    veil: str = "",
) -> None:
    """Mount the tip; ``thumb`` is ``{"id": image id, "src": data URL}`` for the image it asked for (veiled
    when ``hide`` is "veiled"), ``full`` the same for the image it asked to reveal; a new ``veil`` (how
    images are hidden) makes it forget the thumbnails it holds."""
    _render(
        key=KEY,
        data={
            "thumb": thumb,
            "full": full,
            "hide": hide,
            "veil": veil,
            "blurPx": blur_px,
            "revealOnHold": reveal_on_hold,
        },
        default={"hover": None, "reveal": None},
        on_hover_change=lambda: None,
        on_reveal_change=lambda: None,
    )
