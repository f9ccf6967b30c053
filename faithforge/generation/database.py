"""The engine for the coverage database: SQLite with one writer at a time, or PostgreSQL.

SQLite: WAL journal (readers never block), and every transaction starts with `BEGIN IMMEDIATE`, so a
transaction that will write holds the single write lock from its first statement — two workers can never
both read "slot 7 is free" and both take it. `busy_timeout` makes the second wait instead of failing.
PostgreSQL: claims use `SELECT … FOR UPDATE SKIP LOCKED`; schema creation and slot planning take a
transaction-scoped advisory lock.
"""

from __future__ import annotations

import zlib
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine

from faithforge.core.errors import UserError

#: How long (ms) a SQLite writer waits for the write lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 60_000


def normalize_url(url: str) -> str:
    """`postgresql://` / `postgres://` → the psycopg 3 driver (psycopg2 is not a dependency)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE itself
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")  # first: switching to WAL may need to wait
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_coverage_engine(url: str) -> Engine:
    """An engine for `url` with the locking behaviour described above."""
    url = normalize_url(url)
    try:
        engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    except Exception as exc:  # noqa: BLE001 - bad URL, missing driver
        hint = " (pip install 'psycopg[binary]')" if "psycopg" in str(exc) else ""
        raise UserError(f"database URL {url.split('@')[-1]!r} is not usable ({exc}){hint}; "
                        "use sqlite:///path.db or postgresql://user@host/db") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def advisory_lock(conn: Connection, name: str) -> None:
    """Serialize this transaction with others that lock `name` (PostgreSQL; SQLite is already serial)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": zlib.crc32(name.encode())})
