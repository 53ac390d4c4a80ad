"""``labeller demo``: a ready-made project from scikit-learn's bundled digits, then the app."""

from __future__ import annotations

from pathlib import Path

import click

from labeller.demo import create_demo_project


@click.command("demo")
@click.argument(
    "project_dir", required=False, default="labeller-demo", type=click.Path(file_okay=False, path_type=Path)
)
@click.option("--no-serve", is_flag=True, help="Only create (or reuse) the demo project; do not start the app.")
@click.option("--port", type=int, default=None, help="Port for the app (default: Streamlit's, or the next free one).")
def demo_command(project_dir: Path, no_serve: bool, port: int | None) -> None:
    """Create the digits demo project in PROJECT_DIR (reused when it exists) and open the labelling app.

    1,797 digits as PNG files, taxonomy "loops" (0 6 8 9) / "no loops" (1 2 3 4 5 7) with the digits as
    sub-classes, 30 images pre-labelled (5 of them with the main class only), the rest unlabelled.
    """
    project = create_demo_project(project_dir, progress=True)
    click.echo(f"demo project ready in {project.root}")
    if no_serve:
        click.echo(f"start the app with: labeller serve {project.root}")
        return
    from labeller.serving import serve  # Streamlit and the worker are heavy: import only when serving

    raise SystemExit(serve(project, port=port))
