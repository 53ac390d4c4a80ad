"""``labeller taxonomy``: show or edit the classes (rename and merge without losing a label)."""

from __future__ import annotations

from pathlib import Path

import click

from db.engine import unit_of_work
from db.queries.taxonomy import TaxonomyError, apply_taxonomy_spec, taxonomy_spec
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
def taxonomy_command(project: Path, taxonomy_file: Path | None, show: bool) -> None:
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
    """
    if taxonomy_file is None and not show:
        raise click.UsageError("give --file taxonomy.toml to apply a taxonomy, or --show to print it")
    opened = load_project(project)
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
