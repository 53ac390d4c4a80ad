"""Which pictures a page sends veiled, and reveal on hold for its image tiles.

With blur on, a page sends each picture as its veiled rendition (``services.renditions``), never the full
one. The hold layer is a Streamlit component (components v2, inline JS, no build step): when the annotator
presses the mouse button on a veiled tile it asks for that image through its ``reveal`` state; the page
reruns and sends that one image in full under a CSS blur of the annotator's strength, which the held button
lifts (``main.hiding_style``). The first hold on a tile costs a rerun, later ones nothing.

Tiles are ``st.container`` keys ``hide-<class>-<name>-<image id>`` (see ``components.image_tile``): the
layer reads the image id from the key's last number and reveals only ids the page listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from labeller.app import state
from labeller.project import Project
from labeller.thumbnails import Veil

NAME = "latent_labeller_hold_reveal"
HELD = "held_reveals"  # session state: image ids revealed by a hold, sent in full (under CSS) from then on

_render = st.components.v2.component(
    NAME,
    html='<div data-testid="hold-reveal"></div>',
    js=(Path(__file__).parent / "hold.js").read_text(encoding="utf-8"),
)


def page_veil(project: Project) -> Veil | None:
    """How this annotator's pictures go to the browser: veiled when blur is on and they did not reveal
    every image for the session; None: in full (greyscale alone is a CSS filter over the full picture,
    which shows every detail anyway)."""
    if state.image_filter_class(project) != "blurred":
        return None
    hiding = state.hiding(project)
    return Veil(hiding.blur_px, hiding.greyscale)


def held_reveals() -> set[int]:
    return st.session_state.setdefault(HELD, set())


def tile_class(project: Project, image_id: int) -> str:
    """The hiding class of one tile: ``veiled`` (a veiled rendition, nothing to filter), ``blurred`` (revealed
    by a hold: the full picture under a CSS blur), or the page's class (``grey``, ``plain``)."""
    hidden = state.image_filter_class(project)
    if hidden != "blurred":
        return hidden
    return "blurred" if image_id in held_reveals() else "veiled"


def requested_reveal(value: Any) -> int | None:
    """The image id in the layer's ``reveal`` state (``{"image": id, "nonce": n}``), or None."""
    image = value.get("image") if isinstance(value, dict) else None
    if isinstance(image, bool) or not isinstance(image, int) or image <= 0:
        return None
    return image


def _revealed(key: str, allowed: frozenset[int]) -> None:
    component = st.session_state.get(key)
    value = getattr(component, "reveal", None) if component is not None else None
    if value is None and isinstance(component, dict):
        value = component.get("reveal")
    image = requested_reveal(value)
    if image is not None and image in allowed:
        held_reveals().add(image)


def hold_reveal(project: Project, image_ids: Sequence[int], *, key: str) -> None:
    """Mount the hold layer over the tiles of ``image_ids`` (call it after drawing them)."""
    hiding = state.hiding(project)
    enabled = hiding.reveal_on_hold and page_veil(project) is not None
    ids = [int(i) for i in image_ids]
    _render(
        key=key,
        data={"ids": ids, "enabled": enabled},
        default={"reveal": None},
        on_reveal_change=lambda: _revealed(key, frozenset(ids)),
    )
