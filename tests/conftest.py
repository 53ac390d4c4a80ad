"""Shared fixtures: real database files (SQLite always, PostgreSQL when LABELLER_TEST_PG_URL is set;
in CI PostgreSQL is required, so a missing server fails instead of skipping)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator

# Two pytest workers share two cores with the servers and jobs they start: one compute thread each, set
# before torch and numpy load (subprocesses inherit it). With the default of one per core their OpenMP
# threads spun against each other: the digits training test took 49 s instead of 9, the suite a third longer.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from db.engine import make_engine, sqlite_url
from db.migrate import upgrade_to_head

PG_URL_ENV = "LABELLER_TEST_PG_URL"


@pytest.fixture(autouse=True)
def _restore_main_module() -> Iterator[None]:
    """Streamlit's AppTest leaves ``sys.modules["__main__"]`` pointing at the app script; a later
    ``spawn`` child would then re-run the app as its main module and die. Put the real one back."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


def _postgres_base_url() -> str:
    url = os.environ.get(PG_URL_ENV)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{PG_URL_ENV} is not set: .ci/run must start PostgreSQL")
        pytest.skip(f"{PG_URL_ENV} not set")
    return url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    base = make_url(_postgres_base_url())
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_file_url(tmp_path) -> str:
    return sqlite_url(tmp_path / "test.db")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request) -> str:
    """Parametrises a test over both dialects."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_file_url")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on a migrated, empty database of each dialect."""
    engine = make_engine(database_url)
    upgrade_to_head(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(sqlite_file_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_file_url)
    upgrade_to_head(engine)
    yield engine
    engine.dispose()
