"""CLI commands, one module per area. Register a new command by adding it to ``REGISTERED``."""

from __future__ import annotations

import click

REGISTERED: list[click.Command] = []

from labeller.commands.project import init_command  # noqa: E402
from labeller.commands.taxonomy import taxonomy_command  # noqa: E402

REGISTERED += [init_command, taxonomy_command]
from labeller.commands.worker import jobs_command, worker_command  # noqa: E402

REGISTERED += [worker_command, jobs_command]

from labeller.commands.importing import import_command  # noqa: E402

REGISTERED += [import_command]

from labeller.commands.models import models_command  # noqa: E402
from labeller.commands.serve import serve_command  # noqa: E402
from labeller.commands.train import train_command  # noqa: E402

REGISTERED += [train_command, models_command, serve_command]

from labeller.commands.export import export_command  # noqa: E402
from labeller.commands.status import status_command  # noqa: E402

REGISTERED += [status_command, export_command]

from labeller.commands.demo import demo_command  # noqa: E402

REGISTERED += [demo_command]

from labeller.commands.evaluate import evaluate_command  # noqa: E402

REGISTERED += [evaluate_command]
