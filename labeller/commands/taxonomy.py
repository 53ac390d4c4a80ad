"""``labeller taxonomy``: show or edit the classes (rename and merge without losing a label)."""

from __future__ import annotations

from pathlib import Path

import click

from db.engine import unit_of_work
from db.queries.taxonomy import TaxonomyError, apply_taxonomy_spec, taxonomy_spec
from db.queries.taxonomy_history import history as taxonomy_history
from db.queries.taxonomy_history import undo_change
from db.schema import MAX_ID
from labeller.commands.project import load_project
from labeller.taxonomy_file import app_key_problems, read_taxonomy_file, taxonomy_to_toml


@click.command("taxonomy")
@click.argument("project", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--file",
    "taxonomy_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file with the complete taxonomy to apply (format below).",
)
@click.option("--show", is_flag=True, help="Print the stored taxonomy as a taxonomy file.")
@click.option("--history", is_flag=True, help="List the recorded merges and renames, newest first.")
@click.option(
    "--undo",
    "undo",
    is_flag=False,
    flag_value=0,
    type=click.IntRange(0, MAX_ID),
    default=None,
    help="Undo the newest merge or rename not undone yet (optionally naming its number from --history).",
)
def taxonomy_command(project: Path, taxonomy_file: Path | None, show: bool, history: bool, undo: int | None) -> None:
    """Show the taxonomy, or apply a taxonomy file (adds, reorders, renames and merges classes).

    The file lists the complete taxonomy in display order; a stored class with labels that is missing
    from it is an error, so no edit loses a label. Keys are one letter or digit; 'c' and 'r' belong to
    Streamlit and s, u, z, v and ? to the Label page (skip, unsure, undo, reveal, help).

    \b
    [[main]]
    name = "loops"           # key, colour optional
    key = "1"
      [[main.sub]]
      name = "6"
      key = "q"
      [[main.sub]]
      name = "nine"
      renamed_from = "9"     # rename: labels follow
      [[main.sub]]
      name = "0"
      merge_into = "6"       # merge into a sibling: its tags move
    [[main]]
    name = "no loops"
    [[main]]
    name = "other"
    merge_into = "no loops"  # its annotations and sub-classes move

    Every merge and rename is recorded: --history lists them and --undo reverts the newest one.
    """
    if taxonomy_file is None and not show and not history and undo is None:
        raise click.UsageError("give --file taxonomy.toml to apply a taxonomy, --show to print it, --history or --undo")
    if taxonomy_file is not None and undo is not None:
        raise click.UsageError("--undo and --file are separate edits: run them one at a time")
    opened = load_project(project)
    if undo is not None:
        try:
            with unit_of_work(opened.engine) as session:
                done = undo_change(session, undo or None)
                click.echo(f"undid change {done.undo_of}:")
                for line in done.summary.splitlines() or ["nothing to move back"]:
                    click.echo(f"  {line}")
        except TaxonomyError as error:
            raise click.ClickException(f"{error}\nnothing was changed") from error
    if history:
        with unit_of_work(opened.engine) as session:
            recorded = taxonomy_history(session)
        if not recorded:
            click.echo("no merges or renames recorded")
        for change in recorded:
            if change.undo_of is not None:
                state = f"undo of {change.undo_of}"
            else:
                state = f"undone by {change.undone_by}" if change.undone_by else "can be undone"
            click.echo(f"{change.id:>4}  {change.created_at:%Y-%m-%d %H:%M} UTC  ({state})")
            for line in change.summary.splitlines():
                click.echo(f"        {line}")
    if taxonomy_file is not None:
        try:
            spec = read_taxonomy_file(taxonomy_file)
            key_problems = app_key_problems(spec)
            if key_problems:
                raise TaxonomyError("keys the Label page cannot use:\n  " + "\n  ".join(key_problems))
            with unit_of_work(opened.engine) as session:
                changes = apply_taxonomy_spec(session, spec)
        except TaxonomyError as error:
            raise click.ClickException(f"{error}\nnothing was changed") from error
        for line in changes.lines or ["no changes"]:
            click.echo(line)
    if show:
        with unit_of_work(opened.engine) as session:
            spec = taxonomy_spec(session)
        if not spec.main_classes:
            click.echo("# no taxonomy yet: write one and apply it with --file")
        else:
            click.echo(taxonomy_to_toml(spec), nl=False)
