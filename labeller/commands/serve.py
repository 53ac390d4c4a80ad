"""``labeller serve``: the app and a local worker."""

from __future__ import annotations

from pathlib import Path

import click

from labeller.commands.project import load_project


@click.command("serve")
@click.argument("project", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--port", type=click.IntRange(1, 65535), help="Default: a free port.")
@click.option("--no-worker", is_flag=True, help="Only the app; run workers elsewhere (labeller worker PROJECT).")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but this machine (e.g. 0.0.0.0) needs a login configured in "
    "PROJECT/.streamlit/secrets.toml ([auth]); without one, serve refuses to start.",
)
def serve_command(project: Path, port: int | None, no_worker: bool, host: str) -> None:
    """Start the labelling app and one worker; Ctrl-C stops both."""
    from labeller.serving import ServeError, serve

    try:
        code = serve(load_project(project), port=port, with_worker=not no_worker, host=host)
    except ServeError as error:
        raise click.ClickException(str(error)) from error
    raise SystemExit(code)
