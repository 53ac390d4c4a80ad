"""The Label card: a Streamlit component (components v2: inline HTML, CSS and JavaScript, no build step).

Keys are handled in the browser against the image on screen (see ``card.js``); Python hands the card a
window of claimed images and applies the decisions it sends back (``labeller.app.services.label_session``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st

HERE = Path(__file__).parent
NAME = "latent_labeller_label_card"
KEY = "label-card"

_render = st.components.v2.component(
    NAME,
    html='<div class="lc-root" data-testid="label-card"></div>',
    css=(HERE / "card.css").read_text(encoding="utf-8"),
    js=(HERE / "card.js").read_text(encoding="utf-8"),
)


def sent_outbox() -> dict[str, Any]:
    """What the card sent last (its ``outbox`` state): ``{"epoch": ..., "ops": [...]}``; empty before it did."""
    state = st.session_state.get(KEY)
    value = getattr(state, "outbox", None) if state is not None else None
    if value is None and isinstance(state, dict):
        value = state.get("outbox")
    return value if isinstance(value, dict) else {}


def label_card(data: dict[str, Any], on_change: Callable[[], None] | None = None) -> None:
    """Mount the card with ``data`` (see ``services.label_session.LabelSession.card_data``)."""
    _render(key=KEY, data=data, default={"outbox": {}}, on_outbox_change=on_change or (lambda: None))
