"""Engine and session set-up, one place for every dialect's pragmas and transaction mode.

SQLite (the default) runs in WAL mode with foreign keys and a busy timeout. A write unit of work
(``unit_of_work``) begins with ``BEGIN IMMEDIATE`` so that a read-then-write transaction waits for the
write lock up front instead of failing with SQLITE_BUSY half-way (SQLite ignores the busy timeout on a
lock upgrade). A read unit of work (``reading``) begins DEFERRED: under WAL it reads a snapshot and takes
no write lock, so a long export never makes a label wait. PostgreSQL uses the driver's default READ
COMMITTED transactions (``reading`` makes them READ ONLY); row claims use ``FOR UPDATE SKIP LOCKED`` in
the query functions.

Dialect-specific statements are built here too: ``upsert_insert`` hands out the dialect's INSERT, the one
that has ``on_conflict_do_update`` (SQLite 3.35+ and PostgreSQL both run ON CONFLICT .. DO UPDATE .. WHERE
and RETURNING, but SQLAlchemy spells it in each dialect's own ``insert``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option that marks a connection's transactions as read-only (see ``reading``).
_READ_ONLY = "labeller_read_only"


class ReadOnlyError(RuntimeError):
    """A write attempted inside ``reading``: use ``unit_of_work`` for anything that writes."""


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def upsert_insert(session: Session, entity: type[object]) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into ``entity``'s table for the session's dialect, to add ``on_conflict_do_update`` to."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(entity)
    if name == "sqlite":
        return sqlite.insert(entity)
    raise NotImplementedError(f"no ON CONFLICT insert for the {name} dialect")


SUPPORTED_DATABASES = (
    "a SQLite file (sqlite:////absolute/path/labeller.db, the default) "
    "or PostgreSQL through psycopg (postgresql+psycopg://user@host/db)"
)


class UnsupportedDatabaseError(ValueError):
    """A database URL this application cannot run on; the message names the ones it can."""


def database_url_problem(url: URL) -> str | None:
    """None for a URL this application runs on, else why not (without the password).

    Checked before connecting: another dialect (mysql://) failed with a driver-import traceback, and an
    in-memory SQLite database (sqlite://) is a new empty database per connection."""
    shown = url.render_as_string(hide_password=True)
    backend = url.get_backend_name()
    # get_driver_name loads the dialect, which raises for a name SQLAlchemy does not know.
    driver = url.get_driver_name() if backend in ("sqlite", "postgresql") else None
    if backend == "sqlite" and driver == "pysqlite":
        in_memory = not url.database or ":memory:" in url.database or "memory" in str(url.query.get("mode", ""))
        if in_memory:
            return f"{shown} is an in-memory SQLite database (empty for every connection): use {SUPPORTED_DATABASES}"
        return None
    if backend == "postgresql" and driver == "psycopg":
        return None
    return f"unsupported database {shown}: use {SUPPORTED_DATABASES}"


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for ``url`` with the dialect's pragmas and transaction mode set."""
    parsed = make_url(url)
    if problem := database_url_problem(parsed):
        raise UnsupportedDatabaseError(problem)
    if parsed.get_backend_name() == "sqlite":
        # isolation_level=None hands transaction control to us, so the begin event below decides.
        engine = create_engine(url, echo=echo, connect_args={"isolation_level": None, "check_same_thread": False})
        _configure_sqlite(engine)
        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        if connection.get_execution_options().get(_READ_ONLY):
            connection.exec_driver_sql("BEGIN")  # deferred: a WAL snapshot, no write lock
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def unit_of_work(engine: Engine) -> Iterator[Session]:
    """One session, one transaction: committed on success, rolled back on any error."""
    with session_factory(engine).begin() as session:
        yield session


@contextmanager
def reading(engine: Engine) -> Iterator[Session]:
    """One read-only session, one transaction, always rolled back: for exports, status and page reads.

    On SQLite the transaction begins DEFERRED, so writers are never blocked by it however long it streams;
    on PostgreSQL it is a READ ONLY transaction. Flushing ORM changes raises :class:`ReadOnlyError`.
    """
    options: dict[str, object] = {_READ_ONLY: True}
    if not is_sqlite(engine):
        options["postgresql_readonly"] = True
    with Session(engine.execution_options(**options), expire_on_commit=False, autoflush=False) as session:
        event.listen(session, "before_flush", _refuse_flush)
        session.begin()
        yield session  # closing the session rolls the transaction back


def _refuse_flush(session: Session, _context: object, _instances: object) -> None:
    if session.new or session.dirty or session.deleted:
        raise ReadOnlyError("a read-only unit of work (db.engine.reading) tried to write")
