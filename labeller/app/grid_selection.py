"""The Grid's selection rules, free of Streamlit: ranges on a page and selections across pages."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def range_ids(page_ids: Sequence[int], first: int, last: int) -> list[int]:
    """The page's ids from ``first`` to ``last`` inclusive, in either direction; [] when either is not on
    the page (a stale request from before the page changed)."""
    if first not in page_ids or last not in page_ids:
        return []
    start, end = sorted((page_ids.index(first), page_ids.index(last)))
    return list(page_ids[start : end + 1])


def parse_range(value: Any) -> tuple[int, int, int] | None:
    """``{"from": id, "to": id, "nonce": n}`` from the browser as three ints, or None when malformed."""
    if not isinstance(value, dict):
        return None
    try:
        parts = tuple(value[name] for name in ("from", "to", "nonce"))
    except KeyError:
        return None
    if any(isinstance(part, bool) or not isinstance(part, int) for part in parts):
        return None
    return parts  # type: ignore[return-value]


def select_range(selected: set[int], page_ids: Sequence[int], value: Any) -> set[int]:
    """``selected`` plus the Shift-click range ``value`` names on this page."""
    parsed = parse_range(value)
    if parsed is None:
        return selected
    return selected | set(range_ids(page_ids, parsed[0], parsed[1]))


def select_matching(selected: set[int], matching: Iterable[int], on: bool) -> set[int]:
    """Every image under the filter, on every page, added to (or taken out of) the selection."""
    matching = set(matching)
    return selected | matching if on else selected - matching
