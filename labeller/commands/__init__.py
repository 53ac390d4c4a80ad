"""CLI commands, one module per area. Register a new command by adding it to ``REGISTERED``."""

from __future__ import annotations

import click

REGISTERED: list[click.Command] = []
