"""The ``labeller`` command line. Each command lives in ``labeller/commands/``; heavy imports (torch,
umap, streamlit) happen inside the commands that need them so that ``labeller --help`` stays fast."""

from __future__ import annotations

import click

from labeller import __version__
from labeller.commands import REGISTERED


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="labeller")
def cli() -> None:
    """Latent Labeller: active labelling of image datasets with a semi-supervised VAE."""


for command in REGISTERED:
    cli.add_command(command)


def main() -> None:
    cli()
