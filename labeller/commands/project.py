"""``labeller init``: create a project folder."""

from __future__ import annotations

from pathlib import Path

import click

from db.schema import MAX_ID
from labeller.project import Project, ProjectError, init_project, open_project

# A row id on the command line: a clean usage error for 0, negatives and ids no database can hold.
ROW_ID = click.IntRange(1, MAX_ID)


def load_project(root: Path) -> Project:
    """Open a project for a command; a bad folder becomes a clean command-line error."""
    try:
        return open_project(root)
    except ProjectError as error:
        raise click.ClickException(str(error)) from error


@click.command("init")
@click.argument("project", type=click.Path(file_okay=False, path_type=Path))
@click.option("--db", "database_url", help="Database URL (e.g. postgresql+psycopg://...); default: SQLite file.")
@click.option("--name", help="Project name shown in the app; default: the folder name.")
def init_command(project: Path, database_url: str | None, name: str | None) -> None:
    """Create a project folder: settings, database, thumbnail cache and model folder."""
    try:
        created = init_project(project, database_url=database_url, name=name)
    except ProjectError as error:
        raise click.ClickException(str(error)) from error
    except Exception as error:  # a database URL that does not connect, a folder we cannot write
        raise click.ClickException(f"cannot create the project: {error}") from error
    click.echo(f"created project {created.settings.name!r} in {created.root}")
    click.echo(f"next: labeller taxonomy {created.root} --file taxonomy.toml, then labeller import {created.root} PATH")
