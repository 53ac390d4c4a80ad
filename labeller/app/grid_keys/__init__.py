"""Grid keyboard selection: a Streamlit component (components v2, inline JS, no build step) over the
page's tile checkboxes. Arrows move between tiles, Space ticks, Shift-click ticks a range (sent back as
the ``range`` state, applied by ``labeller.app.grid_selection.select_range``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import streamlit as st

NAME = "latent_labeller_grid_keys"
KEY = "grid-keys"

_render = st.components.v2.component(
    NAME,
    html='<div data-testid="grid-keys"></div>',
    js=(Path(__file__).parent / "keys.js").read_text(encoding="utf-8"),
)


def requested_range() -> Any:
    """What the layer sent last as its ``range`` state (``{"from": id, "to": id, "nonce": n}``), or None."""
    state = st.session_state.get(KEY)
    if state is None:
        return None
    return state.get("range") if isinstance(state, dict) else getattr(state, "range", None)


def grid_keys(page_ids: Sequence[int], *, columns: int, on_range: Callable[[], None]) -> None:
    data = {"ids": list(page_ids), "columns": columns}
    _render(key=KEY, data=data, default={"range": None}, on_range_change=on_range)
