"""Opening a project: settings are validated with one line per problem, the settings file is private,
and every way the database can be unusable is one clear error, never a traceback or an empty project."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

from db.engine import unit_of_work
from labeller.cli import cli
from labeller.project import (
    DATABASE_FILE,
    DATABASE_PASSWORD_ENV,
    DATABASE_URL_ENV,
    SETTINGS_FILE,
    ProjectError,
    init_project,
    open_project,
)
from labeller.settings_check import MIN_HEARTBEAT_TIMEOUT_SECONDS


@pytest.fixture(autouse=True)
def _no_database_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    monkeypatch.delenv(DATABASE_PASSWORD_ENV, raising=False)


def one_line_error(root: Path) -> str:
    """What `labeller status` prints: a single error line, exit code 1, no traceback."""
    result = CliRunner().invoke(cli, ["status", str(root)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.output


# --- item 7: the settings file holds the database password --------------------------------------------


def test_settings_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    project = init_project(tmp_path / "p", database_url=None)
    assert stat.S_IMODE((project.root / SETTINGS_FILE).stat().st_mode) == 0o600
    # A stale, world-readable temporary file from an interrupted save does not leak its mode.
    stale = (project.root / SETTINGS_FILE).with_suffix(".toml.tmp")
    stale.write_text("")
    stale.chmod(0o644)
    project.save_settings()
    assert stat.S_IMODE((project.root / SETTINGS_FILE).stat().st_mode) == 0o600


@pytest.mark.postgres
def test_the_postgresql_password_may_come_from_the_environment(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = make_url(postgres_url)
    without_password = URL.create(
        full.drivername, username=full.username, host=full.host, port=full.port, database=full.database
    ).render_as_string(hide_password=False)
    monkeypatch.setenv(DATABASE_PASSWORD_ENV, full.password or "")
    project = init_project(tmp_path / "p", database_url=without_password)
    assert f":{full.password}@" not in (project.root / SETTINGS_FILE).read_text()
    with unit_of_work(open_project(project.root).engine) as session:
        assert session.execute(text("select 1")).scalar() == 1
    project.engine.dispose()
    monkeypatch.setenv(DATABASE_PASSWORD_ENV, "wrong-password")
    message = one_line_error(project.root)
    assert "password" in message and "wrong-password" not in message


# --- item 13: settings validated on open ------------------------------------------------------------


def test_bad_settings_are_listed_one_line_each(tmp_path: Path) -> None:
    project = init_project(tmp_path / "p")
    (project.root / SETTINGS_FILE).write_text(
        'name = "p"\n'
        "[labelling]\n"
        "claim_lease_seconds = 0\n"
        'default_strategy = "bogus"\n'
        "audit_fraction = 7\n"
        'blur_images = "yes"\n'
        "[training]\n"
        'epochs = "ten"\n'
        "heartbeat_timeout_seconds = 0\n"
        "learning_rat = 0.1\n"
    )
    with pytest.raises(ProjectError) as raised:
        open_project(project.root)
    lines = str(raised.value).splitlines()
    assert lines[0] == f"{SETTINGS_FILE} has 7 problem(s); fix them and try again:"
    problems = "\n".join(lines[1:])
    for fragment in (
        "[labelling] claim_lease_seconds must be between",
        "[labelling] default_strategy must be one of random, entropy",
        "[labelling] audit_fraction must be between 0 and 1, got 7",
        "[labelling] blur_images must be true or false, got 'yes'",
        "[training] epochs must be a whole number, got 'ten'",
        f"[training] heartbeat_timeout_seconds must be at least {MIN_HEARTBEAT_TIMEOUT_SECONDS}",
        "[training] learning_rat: unknown setting",
    ):
        assert fragment in problems, fragment
    assert "claim_lease_seconds" in one_line_error(project.root)


def test_the_settings_init_writes_pass_the_checks(tmp_path: Path) -> None:
    project = init_project(tmp_path / "p")
    assert open_project(project.root).settings == project.settings


def test_a_worker_refuses_a_heartbeat_timeout_below_three_of_its_heartbeats(tmp_path: Path) -> None:
    project = init_project(tmp_path / "p")
    project.settings.training.heartbeat_timeout_seconds = 3
    project.save_settings()
    result = CliRunner().invoke(cli, ["worker", str(project.root), "--once"])
    assert result.exit_code == 1 and "heartbeat_timeout_seconds = 3 is below 3 of this worker's 5 s" in result.output
    assert "Traceback" not in result.output
    # With heartbeats every 0.3 s (as the worker tests run), 3 s is fine.
    result = CliRunner().invoke(cli, ["worker", str(project.root), "--once", "--heartbeat", "0.3"])
    assert result.exit_code == 0, result.output


# --- item 16: unusable databases ----------------------------------------------------------------------


def test_a_missing_database_file_is_an_error_not_a_new_empty_project(tmp_path: Path) -> None:
    project = init_project(tmp_path / "p")
    project.engine.dispose()
    (project.root / DATABASE_FILE).unlink()
    with pytest.raises(ProjectError, match="is missing: restore it from a backup"):
        open_project(project.root)
    assert not (project.root / DATABASE_FILE).exists()  # nothing was created behind the user's back
    assert "is missing" in one_line_error(project.root)


def test_an_empty_database_file_is_an_error(tmp_path: Path) -> None:
    project = init_project(tmp_path / "p")
    project.engine.dispose()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{project.root / DATABASE_FILE}{suffix}").unlink(missing_ok=True)
    (project.root / DATABASE_FILE).write_bytes(b"")
    with pytest.raises(ProjectError, match=r"is empty \(0 bytes\)"):
        open_project(project.root)


def test_a_text_file_as_the_database_is_an_error(tmp_path: Path) -> None:
    project = init_project(tmp_path / "p")
    project.engine.dispose()
    for suffix in ("-wal", "-shm"):
        Path(f"{project.root / DATABASE_FILE}{suffix}").unlink(missing_ok=True)
    (project.root / DATABASE_FILE).write_text("these are my notes, not a database\n" * 200)
    with pytest.raises(ProjectError, match="not a SQLite database"):
        open_project(project.root)
    assert "not a SQLite database" in one_line_error(project.root)


def test_a_database_from_a_newer_release_is_an_error(tmp_path: Path) -> None:
    project = init_project(tmp_path / "p")
    with unit_of_work(project.engine) as session:
        session.execute(text("UPDATE alembic_version SET version_num = 'ffffffffffff'"))
    project.engine.dispose()
    with pytest.raises(ProjectError, match="written by a newer Latent Labeller"):
        open_project(project.root)
    assert "upgrade labeller" in one_line_error(project.root)


def test_a_bad_database_url_in_the_environment_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = init_project(tmp_path / "p")
    monkeypatch.setenv(DATABASE_URL_ENV, "not a url at all")
    with pytest.raises(ProjectError, match=r"\$LABELLER_DATABASE_URL is not a database URL"):
        open_project(project.root)
    monkeypatch.setenv(DATABASE_URL_ENV, "nosuchdialect://x/y")
    with pytest.raises(ProjectError, match="unsupported database nosuchdialect://x/y"):
        open_project(project.root)
    assert "unsupported database" in one_line_error(project.root)


def test_a_database_server_that_is_down_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = init_project(tmp_path / "p")
    # Port 1 on the loopback: nothing listens there, so the connection is refused at once.
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql+psycopg://someone:secret@127.0.0.1:1/db")
    message = one_line_error(project.root)
    assert "is the database server running" in message and "secret" not in message
