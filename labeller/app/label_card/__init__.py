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


def _sent(name: str) -> Any:
    state = st.session_state.get(KEY)
    value = getattr(state, name, None) if state is not None else None
    if value is None and isinstance(state, dict):
        value = state.get(name)
    return value


def sent_outbox() -> dict[str, Any]:
    """What the card sent last (its ``outbox`` state): ``{"epoch": ..., "ops": [...]}``; empty before it did."""
    value = _sent("outbox")
    return value if isinstance(value, dict) else {}


def sent_reveal() -> Any:
    """The card's last reveal request (its ``reveal`` state): ``{"image": id, "nonce": ...}``, or None. With
    blur on, the card holds only veiled pictures and asks for the full one of the image it reveals."""
    return _sent("reveal")


def label_card(data: dict[str, Any], on_change: Callable[[], None] | None = None) -> None:
    """Mount the card with ``data`` (see ``services.label_session.LabelSession.card_data``)."""
    changed = on_change or (lambda: None)
    _render(
        key=KEY,
        data=data,
        default={"outbox": {}, "reveal": None},
        on_outbox_change=changed,
        on_reveal_change=changed,
    )
