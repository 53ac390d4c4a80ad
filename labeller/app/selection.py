"""Turn a plotly selection event from the Explore page into image ids.

The scatter is one ``go.Scattergl`` trace whose points are in the order of an id array, so a point's
``point_index`` is a row of that array. Selections from any other trace (none today) are ignored rather
than misread, and indices outside the array (a stale selection after the data changed) are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def selected_image_ids(
    selection: Mapping[str, Any] | None, image_ids: Sequence[int] | np.ndarray, *, trace: int = 0
) -> list[int]:
    """Ids of the selected points, in selection order, without duplicates.

    ``selection`` is ``event.selection`` from ``st.plotly_chart(on_select="rerun")``:
    ``{"points": [{"curve_number": 0, "point_index": 12, ...}, ...], "point_indices": [...], ...}``.
    """
    if not selection:
        return []
    ids = np.asarray(image_ids)
    seen: set[int] = set()
    result: list[int] = []
    for point in selection.get("points") or ():
        if point.get("curve_number", trace) != trace:
            continue
        index = point.get("point_index", point.get("point_number"))
        if index is None or not 0 <= int(index) < len(ids):
            continue
        image_id = int(ids[int(index)])
        if image_id not in seen:
            seen.add(image_id)
            result.append(image_id)
    return result


def hovered_image_id(state: Any) -> int | None:
    """The image id in the Explore hover tip's ``hover`` state (an attribute or a key), or None when there
    is none or it is not a positive integer (the browser can send anything)."""
    value = getattr(state, "hover", None) if state is not None and not isinstance(state, Mapping) else None
    if isinstance(state, Mapping):
        value = state.get("hover")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if isinstance(value, float):
        value = int(value) if value.is_integer() else None
    try:
        number = int(str(value))
    except ValueError:
        return None
    return number if number > 0 else None
