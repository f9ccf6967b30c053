"""The run store: runs, stage outputs (with the GPU gate's plan), artifacts and their lineage.

SQLAlchemy 2; SQLite in the workspace by default, any SQLAlchemy URL (PostgreSQL for several workers)
by setting `database_url`. Lineage is a graph of artifacts: example set → pairs → reference cache →
adapter → evaluation, so any number in a report can be traced back to the data that produced it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
import sqlite3
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import JSON, DateTime, Float, ForeignKey, String, Text, create_engine, event, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from faithforge.core.errors import UserError
from faithforge.core.liveness import process_alive, process_start


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _utc(when: dt.datetime | None) -> dt.datetime:
    """`when` in UTC; SQLite hands back the naive UTC time `_now()` stored (None: the earliest time)."""
    if when is None:
        return dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.timezone.utc)


def _new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_new_id)
    kind: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32), default="running")
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prefect_flow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    pid: Mapped[int | None] = mapped_column(nullable=True)
    """The process that runs it (with `host` and `pid_started`: tells a live run from a killed one)."""
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    pid_started: Mapped[str | None] = mapped_column(String(64), nullable=True)


#: Columns added after the first release; `_add_missing_columns` adds them to an older database.
_RUN_COLUMNS_ADDED = {"pid": "INTEGER", "host": "VARCHAR(255)", "pid_started": "VARCHAR(64)"}


class StageOutput(Base):
    """One stage of one run: what the gate decided, what the stage produced, how long it took."""

    __tablename__ = "stage_outputs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_new_id)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    stage: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32), default="running")
    plan: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reused: Mapped[bool] = mapped_column(default=False)
    wall_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class SlotHold(Base):
    """A slot of a Prefect global concurrency limit (the `gpu` limit) held by a run: who holds it since when, and
    the lease to release when its process dies (a waiting run names the holder; a restart frees a dead one's)."""

    __tablename__ = "slot_holds"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_new_id)
    run_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    limit_name: Mapped[str] = mapped_column(String(255), index=True)
    lease_id: Mapped[str] = mapped_column(String(64))
    stage: Mapped[str] = mapped_column(String(64))
    flow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    flow_run_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    pid: Mapped[int | None] = mapped_column(nullable=True)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    pid_started: Mapped[str | None] = mapped_column(String(64), nullable=True)
    since: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    released_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Artifact(Base):
    """Something a stage wrote: a dataset, pairs, a reference cache, an adapter, an evaluation."""

    __tablename__ = "artifacts"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_new_id)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    uri: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Lineage(Base):
    """`child` was made from `parent`."""

    __tablename__ = "lineage"
    parent_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id"), primary_key=True)
    child_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id"), primary_key=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers (the UI, a second worker) proceed while a stage writes; busy_timeout waits for the
    # single writer instead of failing with "database is locked".
    # busy_timeout first: switching a new database to WAL takes a lock, and without the timeout a second process
    # opening the store at the same moment failed at once with "database is locked".
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    try:
        engine = create_engine(url, future=True)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises several types for a bad URL
        if "psycopg2" in str(exc):  # `postgresql://` names SQLAlchemy's default driver; FaithForge installs psycopg 3
            raise UserError(f"database_url {url!r} asks for the psycopg2 driver, which is not installed; write "
                            "postgresql+psycopg://… (psycopg 3: pip install 'faithforge[postgres]')") from None
        raise UserError(f"database_url {url!r} is not usable ({exc}); use e.g. sqlite:///path.db") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def describe_database_error(url: str | None, exc: BaseException) -> str:
    """One line for a store that cannot be opened or read: which (None: not known where the error was caught),
    why, and what to do."""
    reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    if url is None:
        return (f"the run store cannot be used ({reason}); check database_url and, for a database server, that it "
                "is up")
    where = _store_place(url)
    if url.startswith("sqlite:///") and where and not Path(where).expanduser().parent.is_dir():
        return (f"the run store {where} cannot be opened: the folder {Path(where).expanduser().parent} does not "
                "exist; create it, or point database_url at a file in a folder that exists")
    if url.startswith("sqlite") and "readonly" in reason.replace("-", "").replace(" ", "").lower():
        # Not "move it aside": nothing is damaged, and a teammate's shared history is not to be moved (an attack,
        # 2026-12-07). Even `runs` writes: it marks the runs whose process is gone as crashed.
        return (f"the run store {where} is read-only for you ({reason}); FaithForge records run states in it, "
                "even to list them: make the file and its folder writable, or copy the workspace and pass the copy "
                "with --workspace")
    if url.startswith("sqlite"):
        return (f"the run store {where} cannot be used ({reason}); if it is damaged, move it aside (a new one is "
                "created), or point database_url at a database you can open")
    return f"the run store at {where} cannot be used ({reason}); check database_url and that the server is up"


def _created_meanwhile(exc: BaseException) -> bool:
    """Whether a schema statement failed because another process was creating the same schema: it created the
    table or column first ("already exists", "duplicate column"), or committed while this one's read of the
    schema turned into a write. SQLite then answers "database is locked" at once, without the busy timeout
    (SQLITE_BUSY_SNAPSHOT in WAL mode; a deadlock it refuses to wait on), so looking again is the remedy."""
    reason = str(getattr(exc, "orig", None) or exc).lower()
    return any(text in reason for text in ("already exists", "duplicate column", "database is locked",
                                           "database table is locked"))


def _store_place(url: str) -> str:
    """Where a store is, for a message: the SQLite file, or the server and database (no credentials)."""
    return url.split("///", 1)[1] if url.startswith("sqlite:///") else url.split("@")[-1]


def sqlite_file_missing(url: str) -> bool:
    """Whether `url` names a SQLite file that does not exist: opening it would create an empty one, so a command
    that only reads says so (or skips it) instead."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database
    return (parsed.get_backend_name() == "sqlite" and bool(database) and database != ":memory:"
            and not os.path.isfile(database))


def existing_store(database_url: str | None, workspace: str | os.PathLike[str], ran: str) -> "Store":
    """The run store a command only reads (`runs`, `eval compare`): `database_url`, else the SQLite file of
    `workspace`; refused in one line when there is none there (`ran`: what a workspace with one has run). Opening
    it as `Store` does created an empty one (`faithforge runs --database-url sqlite:////tmp/typo.db` wrote
    typo.db, and "no runs yet"; an attack, 2026-12-07)."""
    if database_url is None:
        from faithforge.core.workspace import sqlite_url

        url = sqlite_url(Path(workspace).expanduser().resolve() / "faithforge.db")
        fix = f"pass --workspace DIR of a workspace that has run {ran}"
    else:
        url, fix = database_url, "pass the --database-url of a store a run wrote"
    engine = make_engine(url)
    try:
        if engine.dialect.name == "sqlite":
            missing = sqlite_file_missing(url)
        else:
            with engine.connect() as connection:
                missing = not inspect(connection).has_table("runs")
    except DBAPIError as exc:
        raise UserError(describe_database_error(url, exc)) from None
    finally:
        engine.dispose()
    if missing:
        raise UserError(f"no run store at {_store_place(url)}; {fix}")
    return Store(url)


class Store:
    """Thin repository over the run database. Every method commits its own transaction."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        attempts = 10
        for attempt in range(attempts):
            try:
                Base.metadata.create_all(self.engine)
                self._add_missing_columns()
                break
            except (DBAPIError, sqlite3.DatabaseError) as exc:
                # Two processes opening a new store at once (a worker and its flow, two runs) both see a table
                # missing and both create it: the second fails with "already exists" (or "duplicate column") after
                # the first succeeded. Looking again then finds the schema whole.
                if attempt < attempts - 1 and _created_meanwhile(exc):
                    time.sleep(0.02 * (attempt + 1))  # table by table, each racing process gets ahead in turn
                    continue
                self.engine.dispose()
                raise UserError(describe_database_error(url, exc)) from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _add_missing_columns(self) -> None:
        present = {c["name"] for c in inspect(self.engine).get_columns("runs")}
        with self.engine.begin() as conn:
            for name, kind in _RUN_COLUMNS_ADDED.items():
                if name not in present:
                    conn.execute(text(f"ALTER TABLE runs ADD COLUMN {name} {kind}"))

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # runs ---------------------------------------------------------------------------------------
    def start_run(self, kind: str, config: dict[str, Any], prefect_flow_run_id: str | None = None) -> str:
        """Open a run owned by this process (first marking runs whose process is gone as crashed)."""
        self.mark_crashed_runs()
        pid = os.getpid()
        with self.session() as s:
            run = Run(kind=kind, config=json.loads(json.dumps(config, default=str)),
                      prefect_flow_run_id=prefect_flow_run_id, pid=pid, host=socket.gethostname(),
                      pid_started=process_start(pid) or None)
            s.add(run)
            s.flush()
            return run.id

    def mark_crashed_runs(self) -> list[str]:
        """Runs still `running` whose process on this host is gone become `crashed`, with where they stopped.

        A run on another host cannot be checked from here and is left as it is. `finished_at` is when the
        run was last heard of (its last stage record, else its start); the summary names that stage.
        """
        host = socket.gethostname()
        crashed = []
        with self.session() as s:
            for run in s.scalars(select(Run).where(Run.status == "running", Run.host == host)):
                if run.pid is None or process_alive(run.pid, run.pid_started or ""):
                    continue
                last = s.scalars(select(StageOutput).where(StageOutput.run_id == run.id)
                                 .order_by(StageOutput.created_at.desc())).first()
                run.status = "crashed"
                run.finished_at = last.created_at if last is not None else run.created_at
                run.summary = {**(run.summary or {}), "crashed": {
                    "detected_at": _now().isoformat(),
                    "last_stage": f"{last.stage} ({last.status})" if last is not None else None,
                    "pid": run.pid, "host": run.host,
                    "message": "its process ended without finishing the run (killed or crashed)"}}
                crashed.append(run.id)
        return crashed

    def crash_runs_of_this_process(self, message: str) -> list[str]:
        """Runs of this process still `running` become `crashed` (its supervisor died: issue 29). Returns their ids."""
        crashed = []
        with self.session() as s:
            for run in s.scalars(select(Run).where(Run.status == "running", Run.host == socket.gethostname(),
                                                   Run.pid == os.getpid())):
                last = s.scalars(select(StageOutput).where(StageOutput.run_id == run.id)
                                 .order_by(StageOutput.created_at.desc())).first()
                run.status = "crashed"
                run.finished_at = _now()
                run.summary = {**(run.summary or {}), "crashed": {
                    "detected_at": _now().isoformat(), "pid": run.pid, "host": run.host, "message": message,
                    "last_stage": f"{last.stage} ({last.status})" if last is not None else None}}
                crashed.append(run.id)
        return crashed

    def cancel_runs_of_this_process(self, where: str, stopped_at: dt.datetime | None = None) -> list[str]:
        """Runs of this process still `running` become `cancelled` (stopped on request: Ctrl-C or SIGTERM), with
        where they stopped; so do those it marked `failed` at or after `stopped_at`, the signal's time. A library
        may turn the stop into its own error (Prefect's task engine raises from its crash handler once its server
        died with the process group), and the flow records that as `failed` before the stop gets here (seen once in
        the suite's Ctrl-C test, `tests/app/test_signals.py`). Returns their ids."""
        cancelled = []
        with self.session() as s:
            for run in s.scalars(select(Run).where(Run.status.in_(("running", "failed")),
                                                   Run.host == socket.gethostname(), Run.pid == os.getpid())):
                if run.status == "failed" and (stopped_at is None or _utc(run.finished_at) < _utc(stopped_at)):
                    continue  # failed before the stop: its own failure
                run.status = "cancelled"
                run.finished_at = _now()
                run.summary = {**(run.summary or {}), "cancelled": {"where": where, "pid": run.pid}}
                cancelled.append(run.id)
        return cancelled

    def runs_to_reconcile(self) -> list[dict[str, Any]]:
        """Runs on this host whose process is gone and whose Prefect flow run has not been told yet: the ones
        `mark_crashed_runs` marked (and any marked by an older version), newest first."""
        host = socket.gethostname()
        out = []
        with self.session() as s:
            for run in s.scalars(select(Run).where(Run.status.in_(("crashed", "running")), Run.host == host,
                                                   Run.prefect_flow_run_id.is_not(None))
                                 .order_by(Run.created_at.desc())):
                summary = run.summary or {}
                if not run.prefect_flow_run_id or summary.get("prefect_reconciled"):
                    continue
                if run.status == "running" and (run.pid is None or process_alive(run.pid, run.pid_started or "")):
                    continue
                out.append({"id": run.id, "prefect_flow_run_id": run.prefect_flow_run_id, "status": run.status,
                            "pid": run.pid, "host": run.host,
                            "last_stage": (summary.get("crashed") or {}).get("last_stage")})
        return out

    def reconciled(self, run_id: str, status: str, prefect_state: str) -> None:
        """Record what Prefect was told about a dead run (`status`: `crashed` or `cancelled` here too)."""
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:
                return
            run.status = status
            run.finished_at = run.finished_at or _now()
            run.summary = {**(run.summary or {}), "prefect_reconciled": prefect_state}

    # slots of Prefect concurrency limits ------------------------------------------------------------
    def hold_slot(self, run_id: str | None, limit_name: str, lease_id: str, stage: str,
                  flow_run_id: str | None = None, flow_run_name: str | None = None) -> str:
        pid = os.getpid()
        with self.session() as s:
            row = SlotHold(run_id=run_id, limit_name=limit_name, lease_id=lease_id, stage=stage,
                           flow_run_id=flow_run_id, flow_run_name=flow_run_name, pid=pid,
                           host=socket.gethostname(), pid_started=process_start(pid) or None)
            s.add(row)
            s.flush()
            return row.id

    def release_slot(self, hold_id: str) -> None:
        with self.session() as s:
            row = s.get(SlotHold, hold_id)
            if row is not None and row.released_at is None:
                row.released_at = _now()

    def held_slots(self, limit_name: str | None = None) -> list[dict[str, Any]]:
        """Holds (of `limit_name`, or of every limit) not released yet, oldest first, each with `alive`: whether
        its process still runs (None: on another host, which cannot be checked from here)."""
        host = socket.gethostname()
        query = select(SlotHold).where(SlotHold.released_at.is_(None))
        if limit_name is not None:
            query = query.where(SlotHold.limit_name == limit_name)
        with self.session() as s:
            rows = s.scalars(query.order_by(SlotHold.since)).all()
            return [{"id": r.id, "run_id": r.run_id, "limit_name": r.limit_name, "lease_id": r.lease_id,
                     "stage": r.stage,
                     "flow_run_id": r.flow_run_id, "flow_run_name": r.flow_run_name, "pid": r.pid, "host": r.host,
                     "since": _utc(r.since),
                     "alive": process_alive(r.pid or 0, r.pid_started or "") if r.host == host else None}
                    for r in rows]

    def list_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest runs with their status and the last stage each reached."""
        with self.session() as s:
            runs = list(s.scalars(select(Run).order_by(Run.created_at.desc()).limit(limit)))
            rows = []
            for run in runs:
                last = s.scalars(select(StageOutput).where(StageOutput.run_id == run.id)
                                 .order_by(StageOutput.created_at.desc())).first()
                rows.append({"id": run.id, "kind": run.kind, "status": run.status, "started": run.created_at,
                             "finished": run.finished_at, "pid": run.pid, "host": run.host,
                             "last_stage": f"{last.stage} ({last.status})" if last is not None else None})
            return rows

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise KeyError(run_id)
            run.status = status
            run.finished_at = _now()
            run.summary = json.loads(json.dumps(summary or {}, default=str))

    def get_run(self, run_id: str) -> Run | None:
        with self.session() as s:
            return s.get(Run, run_id)

    # stages -------------------------------------------------------------------------------------
    def record_stage(
        self,
        run_id: str,
        stage: str,
        *,
        status: str,
        outputs: dict[str, Any] | None = None,
        plan: dict[str, Any] | None = None,
        reused: bool = False,
        wall_seconds: float | None = None,
        message: str | None = None,
    ) -> str:
        with self.session() as s:
            row = StageOutput(run_id=run_id, stage=stage, status=status,
                              outputs=json.loads(json.dumps(outputs or {}, default=str)),
                              plan=plan, reused=reused, wall_seconds=wall_seconds, message=message)
            s.add(row)
            s.flush()
            return row.id

    def stages(self, run_id: str) -> list[StageOutput]:
        with self.session() as s:
            return list(s.scalars(select(StageOutput).where(StageOutput.run_id == run_id)
                                  .order_by(StageOutput.created_at)))

    # artifacts and lineage ----------------------------------------------------------------------
    def add_artifact(
        self,
        kind: str,
        uri: str,
        content_hash: str,
        *,
        run_id: str | None = None,
        meta: dict[str, Any] | None = None,
        parents: list[str] | tuple[str, ...] = (),
    ) -> str:
        """Record an artifact and where it came from; an identical (kind, hash, uri) is reused, not duplicated."""
        with self.session() as s:
            existing = s.scalars(select(Artifact).where(Artifact.kind == kind, Artifact.content_hash == content_hash,
                                                        Artifact.uri == uri)).first()
            if existing is None:
                existing = Artifact(kind=kind, uri=uri, content_hash=content_hash, run_id=run_id,
                                    meta=json.loads(json.dumps(meta or {}, default=str)))
                s.add(existing)
                s.flush()
            for parent in parents:
                if s.get(Lineage, (parent, existing.id)) is None:
                    s.add(Lineage(parent_id=parent, child_id=existing.id))
            return existing.id

    def artifact(self, artifact_id: str) -> Artifact | None:
        with self.session() as s:
            return s.get(Artifact, artifact_id)

    def parents(self, artifact_id: str) -> list[Artifact]:
        with self.session() as s:
            ids = s.scalars(select(Lineage.parent_id).where(Lineage.child_id == artifact_id)).all()
            return [s.get(Artifact, i) for i in ids]

    def ancestors(self, artifact_id: str) -> list[Artifact]:
        """Every artifact `artifact_id` was derived from, nearest first (breadth-first)."""
        seen: dict[str, Artifact] = {}
        frontier = [artifact_id]
        while frontier:
            nxt = []
            for node in frontier:
                for parent in self.parents(node):
                    if parent.id not in seen:
                        seen[parent.id] = parent
                        nxt.append(parent.id)
            frontier = nxt
        return list(seen.values())
