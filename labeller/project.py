"""A project is a folder: ``labeller.toml`` (settings), ``labeller.db`` (unless a database URL is set),
``thumbs/`` (thumbnail cache) and ``models/`` (checkpoints)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import tomli_w
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from core.registry import (
    AUTO,
    DEFAULT_BALANCE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CLASSIFIER,
    DEFAULT_CONSISTENCY,
    DEFAULT_DEVICE,
    DEFAULT_EPOCHS,
    DEFAULT_FEATURE_VIEW,
    DEFAULT_MODEL,
    DEFAULT_ROUND_SIZE,
    DEFAULT_STRATEGY,
)
from db.engine import database_url_problem, make_engine, sqlite_url

SETTINGS_FILE = "labeller.toml"
DATABASE_FILE = "labeller.db"
DATABASE_URL_ENV = "LABELLER_DATABASE_URL"
# The PostgreSQL password, kept out of labeller.toml (and out of the process list, unlike a URL flag).
DATABASE_PASSWORD_ENV = "LABELLER_DATABASE_PASSWORD"


class ProjectError(Exception):
    """A project folder that is missing, malformed or misused; the message says what to do."""


@dataclass
class LabellingSettings:
    default_strategy: str = DEFAULT_STRATEGY
    claim_lease_seconds: int = 600
    # Images per queue round (core.registry.DEFAULT_ROUND_SIZE); `labeller evaluate` simulates rounds of it.
    round_size: int = DEFAULT_ROUND_SIZE
    audit_fraction: float = 0.05
    blur_images: bool = True
    greyscale_images: bool = False
    break_reminder_minutes: int = 0  # 0: no reminder
    daily_exposure_limit: int = 0  # images the Label card may show one annotator per UTC day; 0: no limit


@dataclass
class TrainingSettings:
    # measured best here (benchmarks/results/label_efficiency); m1m2 is offered too, and auto (chosen per train
    # job by cross-validation on the labels: core.training.selection), which on hymenoptera chose m2 every time
    model: str = DEFAULT_MODEL
    # What the model learns from: auto (pixels for small or greyscale images, the default pretrained
    # backbone's features for colour photos: labeller.inputs), pixels, or a backbone of core.backbones.
    backbone: str = AUTO
    backbone_weights: str = ""  # a local weights file for the backbone (e.g. a fine-tuned VGG16); "": its own
    feature_view: str = DEFAULT_FEATURE_VIEW  # centre, or centre_flip (mean of the crop and its mirror image)
    image_size: int = 0  # pixel models' input side; 0: read from the images (labeller.inputs)
    channels: int = 0  # 1 reads images as greyscale, 3 as colour; 0: read from the images
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    # M2's consistency and prior-matching weights (core.training.TrainConfig; why these: core.registry).
    consistency: float = DEFAULT_CONSISTENCY
    balance: float | str = DEFAULT_BALANCE
    # q(y|x): auto (a CNN), cnn, mlp, colour, cnn_colour or vgg16 (core.nets.build_classifier). On ants vs
    # bees photos, colour reached 71.7% with 100 random labels; the CNN reached 68.4% with all 244.
    classifier: str = DEFAULT_CLASSIFIER
    device: str = DEFAULT_DEVICE  # auto, cpu, cuda, cuda:1, ...
    auto_retrain_every: int = 0  # queue a train job after this many new labels; 0: never
    heartbeat_timeout_seconds: int = 60
    requeue_stale_jobs: bool = False  # a dead worker's job: re-queue it instead of failing it


@dataclass
class AccessSettings:
    """Who may do what in the app once it asks for a login (``labeller serve --host``); without login the app
    only listens on this machine and its one user is an admin."""

    admins: list[str] = field(default_factory=list)  # e-mail addresses: taxonomy, import, export, train, promote
    annotators: list[str] = field(default_factory=list)  # e-mail addresses that may label; empty: anyone logged in
    # Absolute folders the Data page may import from on the server; empty: the folder box is off (uploads work).
    import_roots: list[str] = field(default_factory=list)


@dataclass
class ProjectSettings:
    name: str
    database_url: str | None = None
    labelling: LabellingSettings = field(default_factory=LabellingSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    access: AccessSettings = field(default_factory=AccessSettings)

    def to_toml(self) -> str:
        data = dataclasses.asdict(self)
        if data["database_url"] is None:
            del data["database_url"]
        return tomli_w.dumps(data)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> ProjectSettings:
        from labeller.settings_check import settings_problems

        problems = settings_problems(
            data, {"labelling": LabellingSettings, "training": TrainingSettings, "access": AccessSettings}
        )
        if problems:
            listed = "\n".join(f"  - {problem}" for problem in problems)
            raise ProjectError(f"{SETTINGS_FILE} has {len(problems)} problem(s); fix them and try again:\n{listed}")
        try:
            return cls(
                name=data["name"],
                database_url=data.get("database_url"),
                labelling=LabellingSettings(**data.get("labelling", {})),
                training=TrainingSettings(**data.get("training", {})),
                access=AccessSettings(**data.get("access", {})),
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
        url = os.environ.get(DATABASE_URL_ENV) or self.settings.database_url or sqlite_url(self.root / DATABASE_FILE)
        password = os.environ.get(DATABASE_PASSWORD_ENV)
        if password and not url.startswith("sqlite"):
            with contextlib.suppress(ArgumentError):  # open_project reports a malformed URL
                url = make_url(url).set(password=password).render_as_string(hide_password=False)
        return url

    @property
    def database_url_source(self) -> str:
        """Where the database URL comes from, for error messages."""
        if os.environ.get(DATABASE_URL_ENV):
            return f"${DATABASE_URL_ENV}"
        if self.settings.database_url:
            return f"database_url in {self.root / SETTINGS_FILE}"
        return f"the project's database file {self.root / DATABASE_FILE}"

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
        """Write ``labeller.toml`` readable by its owner only (0600): it may hold the database password."""
        target = self.root / SETTINGS_FILE
        tmp = target.with_suffix(".toml.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a stale temporary file keeps its old mode otherwise
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(self.settings.to_toml())
        tmp.replace(target)


def init_project(root: Path, *, database_url: str | None = None, name: str | None = None) -> Project:
    """Create the project folder and its database schema; an existing project is an error."""
    from db.migrate import upgrade_to_head

    root = root.resolve()
    if (root / SETTINGS_FILE).exists():
        raise ProjectError(f"{root} is already a project ({SETTINGS_FILE} exists)")
    if database_url is not None:
        # Before anything is created: a folder with settings for a database nobody can open helps no one.
        try:
            problem = database_url_problem(make_url(database_url))
        except ArgumentError as error:
            raise ProjectError(
                f"--db is not a database URL (like postgresql+psycopg://user@host/db): {error}"
            ) from error
        if problem:
            raise ProjectError(problem)
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
        data = tomllib.loads(settings_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ProjectError(f"{settings_path} is not valid TOML: {error}") from error
    except OSError as error:
        raise ProjectError(f"cannot read {settings_path}: {error.strerror or error}") from error
    project = Project(root, ProjectSettings.from_mapping(data))
    open_database(project, upgrade_to_head)
    return project


def open_database(project: Project, upgrade: Callable[[Engine], None]) -> None:
    """Connect and bring the schema to head, turning every way this fails into one ProjectError line that
    says what to do. A missing or empty SQLite file is refused: creating it afresh would show an empty
    project as if every label were gone."""
    from alembic.util import CommandError
    from sqlalchemy.exc import DBAPIError, NoSuchModuleError

    from db.migrate import current_revision, is_known_revision

    source = project.database_url_source
    try:
        parsed = make_url(project.database_url)
    except ArgumentError as error:
        raise ProjectError(
            f"{source} is not a database URL (like postgresql+psycopg://user@host/db): {error}"
        ) from error
    if problem := database_url_problem(parsed):
        raise ProjectError(f"{source}: {problem}")
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        if not path.exists():
            raise ProjectError(
                f"the database {path} is missing: restore it from a backup (nothing was created, so no label is "
                f"hidden behind an empty database), or start afresh with `labeller init` in a new folder"
            )
        if path.is_file() and path.stat().st_size == 0:
            raise ProjectError(f"the database {path} is empty (0 bytes): restore it from a backup")
    try:
        revision = current_revision(project.engine)
        if revision is not None and not is_known_revision(revision):
            raise ProjectError(
                f"the database {shown} was written by a newer Latent Labeller (schema revision {revision}): "
                f"upgrade labeller to open it"
            )
        upgrade(project.engine)
    except NoSuchModuleError as error:
        raise ProjectError(f"{source}: unknown database driver in {shown}: {error}") from error
    except CommandError as error:
        raise ProjectError(f"cannot update the schema of {shown}: {error}") from error
    except DBAPIError as error:
        raise ProjectError(_database_error(shown, error)) from error


def _database_error(shown: str, error: Exception) -> str:
    detail = str(getattr(error, "orig", error)).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    lowered = detail.lower()
    if "file is not a database" in lowered:
        hint = "the file is not a SQLite database: restore labeller.db from a backup"
    elif "readonly" in lowered or "read-only" in lowered:
        hint = "the database or its folder is read-only: SQLite needs to write the file and a -wal file beside it"
    elif "unable to open" in lowered:
        hint = "check that the folder exists and that you may write to it"
    elif "password" in lowered or "authentication" in lowered:
        hint = f"check the user and password (the password may come from ${DATABASE_PASSWORD_ENV})"
    elif "connection refused" in lowered or "could not connect" in lowered or "timeout" in lowered:
        hint = "is the database server running and reachable?"
    elif "does not exist" in lowered:
        hint = "create the database first, or fix its name in the URL"
    else:
        hint = "check the database URL and the server"
    return f"cannot open the database {shown}: {detail} ({hint})"
