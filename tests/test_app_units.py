"""Pure parts of the app: the keyboard map, plotly selections to image ids, progress flattening, safe paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from labeller.app.keys import PAGE_KEYS, STREAMLIT_RESERVED, build_key_map
from labeller.app.selection import selected_image_ids
from labeller.app.services.common import UnsafePathError, check_servable, parse_image_id
from labeller.app.services.train import flatten_progress


def test_key_map_keeps_the_files_keys_and_fills_the_rest() -> None:
    keys = build_key_map(
        [(1, "a", "1"), (2, "b", "c"), (3, "c", None), (4, "d", "1")],
        {1: [(10, "a1", "q"), (11, "a2", "s"), (12, "a3", None)], 2: [(20, "b1", "Q"), (21, "b2", "1")]},
    )
    main = {k.class_id: k for k in keys.main}
    assert main[1].key == "1" and not main[1].assigned
    # "c" is Streamlit's, "1" is taken: both get the next free digits, marked as assigned.
    assert [main[i].key for i in (2, 3, 4)] == ["2", "3", "4"]
    assert all(main[i].assigned for i in (2, 3, 4))
    tags = {k.class_id: k for subs in keys.tags.values() for k in subs}
    # Sub-class keys are live once their main class is chosen: the file may repeat one across main classes.
    assert tags[10].key == "q" and tags[20].key == "q" and not tags[20].assigned
    assert keys.tag_owners("q") == [1, 2]
    # "s" is the skip key and "1" a main-class key: replaced, and never by a key the file uses elsewhere.
    assert tags[11].assigned and tags[11].key not in PAGE_KEYS.as_set() | {"q"}
    assert tags[21].assigned and tags[21].key not in {"1", "2", "3", "4", "q"}
    assigned = [k.key for k in keys.assigned if k.class_id >= 10]
    assert len(assigned) == len(set(assigned))  # assigned keys are never ambiguous
    every_key = [k.key for k in keys.main] + [k.key for k in tags.values()]
    assert not set(every_key) & (STREAMLIT_RESERVED | PAGE_KEYS.as_set())


def test_key_map_runs_out_of_keys_gracefully() -> None:
    keys = build_key_map([(i, f"m{i}", None) for i in range(12)], {})
    assert [k.key for k in keys.main][:9] == list("123456789")
    assert [k.key for k in keys.main][9:] == [None, None, None]


def test_selection_maps_point_index_to_ids_in_order_without_duplicates() -> None:
    ids = [101, 102, 103, 104]
    selection = {
        "points": [
            {"curve_number": 0, "point_index": 2},
            {"curve_number": 0, "point_index": 0},
            {"curve_number": 0, "point_index": 2},
            {"curve_number": 1, "point_index": 1},  # another trace: not ours
            {"curve_number": 0, "point_index": 9},  # stale: outside the array
            {"curve_number": 0, "point_number": 3},
        ]
    }
    assert selected_image_ids(selection, ids) == [103, 101, 104]
    assert selected_image_ids(None, ids) == []
    assert selected_image_ids({"points": []}, ids) == []


def test_flatten_progress_makes_plot_rows() -> None:
    rows = flatten_progress(
        [
            {"epoch": 1, "step": 2, "steps_per_epoch": 10, "loss_terms": {"kl": 1.5, "recon": 3.0}, "validation": {}},
            {"epoch": 2, "step": 10, "steps_per_epoch": 10, "loss_terms": {"kl": 1.0}, "validation": {"accuracy": 0.7}},
        ]
    )
    assert rows[0]["global_step"] == 2 and rows[1]["global_step"] == 20
    assert rows[0]["loss_terms.kl"] == 1.5 and rows[1]["validation.accuracy"] == 0.7


@pytest.mark.parametrize(("value", "expected"), [("12", 12), (" 7 ", 7), ("0", None), ("-3", None), ("../x", None)])
def test_image_ids_from_urls_are_positive_integers_only(value: str, expected: int | None) -> None:
    assert parse_image_id(value) == expected


def test_only_image_files_inside_the_roots_are_served(tmp_path: Path) -> None:
    root = tmp_path / "thumbs"
    root.mkdir()
    inside = root / "a.webp"
    inside.write_bytes(b"x")
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    link = root / "escape.png"
    link.symlink_to(outside)
    assert check_servable(inside, [root]) == inside.resolve()
    with pytest.raises(UnsafePathError):
        check_servable(root / ".." / "secret.png", [root])
    with pytest.raises(UnsafePathError):
        check_servable(link, [root])  # a symlink does not smuggle a file out
    with pytest.raises(UnsafePathError):
        check_servable(tmp_path / "labeller.toml", [tmp_path])  # not an image
    with pytest.raises(FileNotFoundError):
        check_servable(root / "missing.webp", [root])


def test_labels_conflict_only_when_no_sub_class_fits_them_all() -> None:
    from labeller.app.services.review import labels_conflict

    assert not labels_conflict([("a", "loops", ()), ("b", "loops", ("6",))])  # a partial label fits any tag
    assert not labels_conflict([("a", "loops", ("6", "8")), ("b", "loops", ("8",))])
    assert labels_conflict([("a", "loops", ("6",)), ("b", "loops", ("8",))])
    assert labels_conflict([("a", "loops", ()), ("b", "strokes", ())])


def test_kappa_text_says_why_there_is_none() -> None:
    from labeller.app.services.review import kappa_text

    assert kappa_text(float("nan"), 1) == "undefined (1 shared image, one class)"
    assert kappa_text(0.4567, 12) == "0.46"
