"""Taxonomy merges and renames are recorded and can be undone (issue 12 item 4): after an undo every label
has its original main class and tags again, and the merged classes their names, keys and colours."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from db.engine import unit_of_work
from db.queries.taxonomy import TaxonomyError, taxonomy_mapping, taxonomy_spec
from db.queries.taxonomy_history import history, undo_change
from db.schema import AnnotationTag, TaxonomyChange
from labeller.cli import cli
from labeller.taxonomy_file import taxonomy_to_toml
from tests.test_taxonomy import BASE, apply, label, labels

EDIT = """
[[main]]
name = "formicidae"
renamed_from = "ants"
key = "1"
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
  merge_into = "honey"
  [[main.sub]]
  name = "paper"
[[main]]
name = "wasps"
merge_into = "bees"
"""


def _state(engine) -> tuple[dict, dict, list]:
    current = labels(engine)
    with unit_of_work(engine) as session:
        spec = taxonomy_spec(session)
        keys = [(m.name, m.key, m.colour, sorted((s.name, s.key) for s in m.sub_classes)) for m in spec.main_classes]
        mapping = {name: sorted(subs) for name, subs in taxonomy_mapping(session).items()}
        return current, mapping, sorted(keys)


def test_merge_and_rename_are_undone_exactly(engine) -> None:
    apply(engine, BASE)
    label(engine, "a1", "ants", ("red",))
    label(engine, "w1", "wasps", ("paper",))
    label(engine, "w2", "wasps", ("honey",))
    label(engine, "b1", "bees", ("honey", "bumble"))  # loses its duplicate tag in the sub-class merge
    label(engine, "b2", "bees", ("bumble",))
    label(engine, "b3", "bees", ())
    before = _state(engine)

    lines = apply(engine, EDIT)
    assert "merged main class 'wasps' into 'bees' (2 annotations moved)" in lines
    after_edit = labels(engine)
    assert after_edit["w2"] == ("bees", ("honey",)) and after_edit["b1"] == ("bees", ("honey",))
    assert after_edit["a1"] == ("formicidae", ("red",))

    with unit_of_work(engine) as session:
        [change] = history(session)
        assert change.undone_by is None and "merged main class 'wasps'" in change.summary
        undo = undo_change(session)
        assert undo.undo_of == change.id
        assert "restored main class 'wasps'" in undo.summary and "renamed main class" in undo.summary
    assert _state(engine) == before  # labels, tags, names, keys and colours as before the edit
    with unit_of_work(engine) as session:
        assert session.scalar(select(func.count()).select_from(AnnotationTag)) == 6
        views = history(session)
        assert [v.undo_of for v in views] == [change.id, None] and views[1].undone_by == views[0].id
        with pytest.raises(TaxonomyError, match="no taxonomy merge or rename to undo"):
            undo_change(session)


def test_undo_refuses_when_a_restored_name_is_taken_and_changes_nothing(engine) -> None:
    apply(engine, BASE)
    label(engine, "w1", "wasps", ("paper",))
    apply(engine, EDIT)
    # A new "wasps" main class since the merge: the old one cannot come back under its name.
    with unit_of_work(engine) as session:
        current = taxonomy_to_toml(taxonomy_spec(session))
    apply(engine, current + '\n[[main]]\nname = "wasps"\n')
    before = _state(engine)
    with pytest.raises(TaxonomyError, match="exists again"), unit_of_work(engine) as session:
        undo_change(session)
    assert _state(engine) == before
    with unit_of_work(engine) as session:
        assert session.scalar(select(func.count()).select_from(TaxonomyChange)) == 1


def test_cli_history_and_undo(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    runner = CliRunner()
    assert runner.invoke(cli, ["init", str(project)]).exit_code == 0
    (tmp_path / "base.toml").write_text(BASE)
    (tmp_path / "edit.toml").write_text(EDIT)
    assert runner.invoke(cli, ["taxonomy", str(project), "--file", str(tmp_path / "base.toml")]).exit_code == 0
    assert runner.invoke(cli, ["taxonomy", str(project), "--file", str(tmp_path / "edit.toml")]).exit_code == 0
    shown = runner.invoke(cli, ["taxonomy", str(project), "--history"])
    assert shown.exit_code == 0 and "(can be undone)" in shown.output and "merged main class 'wasps'" in shown.output
    wrong = runner.invoke(cli, ["taxonomy", str(project), "--undo", "7"])
    assert wrong.exit_code == 1 and "that is 1, not 7" in wrong.output
    undone = runner.invoke(cli, ["taxonomy", str(project), "--undo"])
    assert undone.exit_code == 0, undone.output
    assert "undid change 1" in undone.output and "restored main class 'wasps'" in undone.output
    shown = runner.invoke(cli, ["taxonomy", str(project), "--show"])
    assert 'name = "wasps"' in shown.output and 'name = "ants"' in shown.output
