"""A project is a folder: ``labeller.toml`` (settings), ``labeller.db`` (unless a database URL is set),
``thumbs/`` (thumbnail cache) and ``models/`` (checkpoints)."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import tomli_w
from sqlalchemy import Engine

from db.engine import make_engine, sqlite_url

SETTINGS_FILE = "labeller.toml"
DATABASE_FILE = "labeller.db"
DATABASE_URL_ENV = "LABELLER_DATABASE_URL"


class ProjectError(Exception):
    """A project folder that is missing, malformed or misused; the message says what to do."""


@dataclass
class LabellingSettings:
    default_strategy: str = "entropy"
    claim_lease_seconds: int = 600
    audit_fraction: float = 0.05
    blur_images: bool = True
    greyscale_images: bool = False
    break_reminder_minutes: int = 0  # 0: no reminder


@dataclass
class TrainingSettings:
    model: str = "m2"  # measured best here (benchmarks/results/label_efficiency); m1m2 is offered too
    image_size: int = 64
    channels: int = 3  # 1 reads images as greyscale
    epochs: int = 30
    batch_size: int = 64
    # M2's consistency and prior-matching weights (core.training.TrainConfig): 20 and 20 took random-label
    # digits from 89.9% to 94.0% at 50 labels; balance assumes roughly balanced leaves, so it is off by default.
    consistency: float = 0.0
    balance: float = 0.0
    # q(y|x): auto (a CNN), cnn, mlp, colour, cnn_colour or vgg16 (core.nets.build_classifier). On ants vs
    # bees photos, colour reached 71.7% with 100 random labels; the CNN reached 68.4% with all 244.
    classifier: str = "auto"
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    auto_retrain_every: int = 0  # queue a train job after this many new labels; 0: never
    heartbeat_timeout_seconds: int = 60
    requeue_stale_jobs: bool = False  # a dead worker's job: re-queue it instead of failing it


@dataclass
class ProjectSettings:
    name: str
    database_url: str | None = None
    labelling: LabellingSettings = field(default_factory=LabellingSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)

    def to_toml(self) -> str:
        data = dataclasses.asdict(self)
        if data["database_url"] is None:
            del data["database_url"]
        return tomli_w.dumps(data)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> ProjectSettings:
        try:
            return cls(
                name=data["name"],
                database_url=data.get("database_url"),
                labelling=LabellingSettings(**data.get("labelling", {})),
                training=TrainingSettings(**data.get("training", {})),
            )
        except (KeyError, TypeError) as error:
            raise ProjectError(f"{SETTINGS_FILE}: {error}") from error


@dataclass
class Project:
    root: Path
    settings: ProjectSettings

    @property
    def thumbs_dir(self) -> Path:
        return self.root / "thumbs"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def database_url(self) -> str:
        return os.environ.get(DATABASE_URL_ENV) or self.settings.database_url or sqlite_url(self.root / DATABASE_FILE)

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.database_url)

    def resolve_image_path(self, stored: str) -> Path:
        path = Path(stored)
        return path if path.is_absolute() else self.root / path

    def stored_image_path(self, path: Path) -> str:
        """Relative to the project when inside it (so the folder can move), absolute otherwise."""
        path = path.resolve()
        try:
            return str(path.relative_to(self.root.resolve()))
        except ValueError:
            return str(path)

    def save_settings(self) -> None:
        target = self.root / SETTINGS_FILE
        tmp = target.with_suffix(".toml.tmp")
        tmp.write_text(self.settings.to_toml())
        tmp.replace(target)


def init_project(root: Path, *, database_url: str | None = None, name: str | None = None) -> Project:
    """Create the project folder and its database schema; an existing project is an error."""
    from db.migrate import upgrade_to_head

    root = root.resolve()
    if (root / SETTINGS_FILE).exists():
        raise ProjectError(f"{root} is already a project ({SETTINGS_FILE} exists)")
    root.mkdir(parents=True, exist_ok=True)
    project = Project(root, ProjectSettings(name=name or root.name, database_url=database_url))
    project.thumbs_dir.mkdir(exist_ok=True)
    project.models_dir.mkdir(exist_ok=True)
    upgrade_to_head(project.engine)
    project.save_settings()
    return project


def open_project(root: Path | str) -> Project:
    """Open an existing project and bring its database schema up to date."""
    from db.migrate import upgrade_to_head

    root = Path(root).resolve()
    settings_path = root / SETTINGS_FILE
    if not settings_path.is_file():
        raise ProjectError(f"{root} is not a Latent Labeller project: run `labeller init {root}` first")
    try:
        data = tomllib.loads(settings_path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ProjectError(f"{settings_path}: {error}") from error
    project = Project(root, ProjectSettings.from_mapping(data))
    upgrade_to_head(project.engine)
    return project
