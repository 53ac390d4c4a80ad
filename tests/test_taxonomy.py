"""Taxonomy files: parsing, validation, and edits (rename, merge) that keep every label."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from db.engine import unit_of_work
from db.queries.taxonomy import (
    TaxonomyError,
    apply_taxonomy_spec,
    main_class_by_name,
    sub_class_by_name,
    taxonomy_mapping,
    taxonomy_spec,
)
from db.schema import Annotation, AnnotationKind, AnnotationTag, Annotator, Image, MainClass, SubClass
from labeller.taxonomy_file import parse_taxonomy_toml, taxonomy_to_toml

BASE = """
[[main]]
name = "ants"
key = "1"
colour = "#ff0000"
  [[main.sub]]
  name = "red"
  key = "q"
  [[main.sub]]
  name = "black"
  key = "w"

[[main]]
name = "bees"
key = "2"
  [[main.sub]]
  name = "honey"
  key = "q"
  [[main.sub]]
  name = "bumble"
  key = "w"

[[main]]
name = "wasps"
key = "3"
  [[main.sub]]
  name = "paper"
  [[main.sub]]
  name = "honey"
"""


def apply(engine, text: str) -> list[str]:
    with unit_of_work(engine) as session:
        return apply_taxonomy_spec(session, parse_taxonomy_toml(text)).lines


def label(engine, sha: str, main: str, tags: tuple[str, ...] = ()) -> None:
    """A current LABEL annotation written straight into the tables, independent of the annotation API."""
    with unit_of_work(engine) as session:
        annotator = session.scalar(select(Annotator).where(Annotator.name == "tester")) or Annotator(name="tester")
        image = Image(sha256=sha, path=f"/x/{sha}.png", width=8, height=8, format="PNG", file_size=1, random_key=0.5)
        session.add_all([annotator, image])
        session.flush()
        annotation = Annotation(
            image_id=image.id,
            annotator_id=annotator.id,
            kind=AnnotationKind.LABEL,
            main_class_id=main_class_by_name(session, main).id,
            source="test",
        )
        annotation.tags = [AnnotationTag(sub_class_id=sub_class_by_name(session, main, tag).id) for tag in tags]
        session.add(annotation)


def labels(engine) -> dict[str, tuple[str, tuple[str, ...]]]:
    """sha -> (main class, sorted tags) of every annotation."""
    with unit_of_work(engine) as session:
        result = {}
        for annotation in session.scalars(select(Annotation)):
            tags = sorted(session.get(SubClass, tag.sub_class_id).name for tag in annotation.tags)
            main = session.get(MainClass, annotation.main_class_id).name
            result[annotation.image.sha256] = (main, tuple(tags))
        return result


def test_apply_and_show_round_trip(engine) -> None:
    lines = apply(engine, BASE)
    assert "added main class 'ants'" in lines
    with unit_of_work(engine) as session:
        assert taxonomy_mapping(session) == {
            "ants": ["red", "black"],
            "bees": ["honey", "bumble"],
            "wasps": ["paper", "honey"],
        }
        shown = taxonomy_to_toml(taxonomy_spec(session))
    assert parse_taxonomy_toml(shown).to_mapping() == parse_taxonomy_toml(BASE).to_mapping()
    assert 'colour = "#ff0000"' in shown
    # Re-applying the same file changes nothing.
    assert apply(engine, BASE) == []


def test_reorder_and_rename_keep_labels(engine) -> None:
    apply(engine, BASE)
    label(engine, "a1", "ants", ("red",))
    label(engine, "b1", "bees", ("honey", "bumble"))
    label(engine, "b2", "bees")
    renamed = """
[[main]]
name = "apis"
renamed_from = "bees"
  [[main.sub]]
  name = "bumblebee"
  renamed_from = "bumble"
  [[main.sub]]
  name = "honey"
[[main]]
name = "ants"
  [[main.sub]]
  name = "black"
  [[main.sub]]
  name = "crimson"
  renamed_from = "red"
[[main]]
name = "wasps"
  [[main.sub]]
  name = "paper"
  [[main.sub]]
  name = "honey"
"""
    lines = apply(engine, renamed)
    assert "renamed main class 'bees' -> 'apis'" in lines
    with unit_of_work(engine) as session:
        assert list(taxonomy_mapping(session)) == ["apis", "ants", "wasps"]
        assert taxonomy_mapping(session)["apis"] == ["bumblebee", "honey"]
    assert labels(engine) == {
        "a1": ("ants", ("crimson",)),
        "b1": ("apis", ("bumblebee", "honey")),
        "b2": ("apis", ()),
    }


def test_swap_names(engine) -> None:
    apply(engine, BASE)
    label(engine, "a1", "ants")
    label(engine, "b1", "bees")
    swapped = BASE.replace('name = "ants"', 'name = "TMP"').replace(
        'name = "bees"', 'name = "ants"\nrenamed_from = "bees"'
    )
    swapped = swapped.replace('name = "TMP"', 'name = "bees"\nrenamed_from = "ants"')
    apply(engine, swapped)
    assert labels(engine) == {"a1": ("bees", ()), "b1": ("ants", ())}


def test_merge_main_moves_annotations_and_sub_classes(engine) -> None:
    apply(engine, BASE)
    label(engine, "w1", "wasps", ("paper",))
    label(engine, "w2", "wasps", ("honey",))
    label(engine, "b1", "bees", ("honey",))
    merged = """
[[main]]
name = "ants"
  [[main.sub]]
  name = "red"
  [[main.sub]]
  name = "black"
[[main]]
name = "bees"
  [[main.sub]]
  name = "honey"
  [[main.sub]]
  name = "bumble"
  [[main.sub]]
  name = "paper"
[[main]]
name = "wasps"
merge_into = "bees"
"""
    lines = apply(engine, merged)
    assert "merged main class 'wasps' into 'bees' (2 annotations moved)" in lines
    with unit_of_work(engine) as session:
        assert taxonomy_mapping(session) == {"ants": ["red", "black"], "bees": ["honey", "bumble", "paper"]}
        assert session.scalar(select(Annotation).where(Annotation.main_class_id.is_(None))) is None
    assert labels(engine) == {"w1": ("bees", ("paper",)), "w2": ("bees", ("honey",)), "b1": ("bees", ("honey",))}


def test_merge_sub_class_keeps_one_tag_per_annotation(engine) -> None:
    apply(engine, BASE)
    label(engine, "b1", "bees", ("honey", "bumble"))
    label(engine, "b2", "bees", ("bumble",))
    merged = BASE.replace('  name = "bumble"\n  key = "w"', '  name = "bumble"\n  merge_into = "honey"')
    lines = apply(engine, merged)
    assert any(line.startswith("merged sub-class bees/bumble into bees/honey") for line in lines)
    assert labels(engine) == {"b1": ("bees", ("honey",)), "b2": ("bees", ("honey",))}
    with unit_of_work(engine) as session:
        assert taxonomy_mapping(session)["bees"] == ["honey"]


def test_missing_class_with_labels_is_refused_and_nothing_changes(engine) -> None:
    apply(engine, BASE)
    label(engine, "w1", "wasps", ("paper",))
    without_wasps = BASE.split('[[main]]\nname = "wasps"')[0]
    with pytest.raises(TaxonomyError, match="'wasps' has 2 annotations or tags"):
        apply(engine, without_wasps)
    with unit_of_work(engine) as session:
        assert "wasps" in taxonomy_mapping(session)
    # Unused classes may go.
    bees_onwards = BASE[BASE.index('[[main]]\nname = "bees"') :]
    assert apply(engine, bees_onwards)[0] == "removed unused main class 'ants'"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[main]]\nname = "a"\nkey = "c"', "reserved by Streamlit"),
        ('[[main]]\nname = "a"\nkey = "1"\n[[main]]\nname = "b"\nkey = "1"', "already used"),
        ('[[main]]\nname = "a"\nkey = "1"\n[[main.sub]]\nname = "x"\nkey = "1"', "already used"),
        ('[[main]]\nname = "a"\n[[main]]\nname = "a"', "appears 2 times"),
        ('[[main]]\nname = "a"\n[[main.sub]]\nname = "x"\n[[main.sub]]\nname = "x"', "appears 2 times"),
        ('[[main]]\nname = "a"\nmerge_into = "nowhere"', "merge_into names no main class"),
        ('[[main]]\nname = "a"\ncolor = "red"', "unknown keys"),
        ('[[main]]\nkey = "1"', "'name' is required"),
        ("[[main]\n", "not valid TOML"),
        ('[[main]]\nname = "a/b"', "'/' is not allowed"),
    ],
)
def test_invalid_files_are_rejected_with_a_clear_message(sqlite_engine, text: str, message: str) -> None:
    with pytest.raises(TaxonomyError, match=message):
        apply(sqlite_engine, text)


def test_unknown_renamed_from_is_refused(sqlite_engine) -> None:
    apply(sqlite_engine, BASE)
    with pytest.raises(TaxonomyError, match="renamed_from names no stored"):
        apply(sqlite_engine, BASE.replace('name = "ants"', 'name = "emmets"\nrenamed_from = "antz"'))
