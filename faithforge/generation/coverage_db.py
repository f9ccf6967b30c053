"""The coverage database: planning slots, atomic claims, and recording outcomes.

Every method is one short transaction. Claims are atomic across processes and machines (see
`database.py`); a claim carries a random token and a lease (`claimed_until`), and only the holder of a
live token can complete or fail its slot. A running worker renews its leases with a heartbeat; a worker
that dies on this host is noticed at once (its process is gone, `faithforge/core/liveness.py`) and its slots are claimed
again; one that dies on another host stops renewing, and its slots return when the lease runs out. Coverage counters change in the same transaction as the example or failure they count,
so `attempts == successes + failures` always holds, whatever was killed when.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from faithforge.core.errors import UserError
from faithforge.generation.database import advisory_lock, make_coverage_engine
from faithforge.core.liveness import process_alive, process_start, this_host
from faithforge.generation.spec import GenerationSpec
from faithforge.generation.tables import (Combination, ExampleRow, FailureRow, GenerationBase, Slot, CategorySchema,
                                         WorkerRow)


@contextlib.contextmanager
def _named_store(url: str) -> Iterator[None]:
    """A store that cannot be opened is said with its place (SQLAlchemy's errors carry no URL, and the message
    read "the run store at (the run store)" for a SQLite file in a missing folder: an attack, 2026-12-07)."""
    from faithforge.core.store import describe_database_error

    try:
        yield
    except DBAPIError as exc:  # after `_create_tables`' own retries of a concurrent creator's race, if any
        raise UserError(describe_database_error(url, exc)) from None


def examples_of_another_schema(url: str, spec: GenerationSpec) -> dict[str, int]:
    """Category → stored examples made under another output schema than `spec`'s (empty when none, or when the
    store predates the record). Reads only: no table is created, nothing written (`validate`, before a run)."""
    from sqlalchemy import inspect

    engine = make_coverage_engine(url)
    try:
        with _named_store(url), engine.connect() as conn:
            if not inspect(conn).has_table(CategorySchema.__tablename__):
                return {}
            return _schema_changes(conn, spec.name, spec.schema_fingerprints())
    finally:
        engine.dispose()


def _schema_changes(conn, spec: str, now: dict[str, str]) -> dict[str, int]:
    """Category → stored examples of `spec` whose recorded schema fingerprint differs from `now`'s."""
    recorded = dict(conn.execute(select(CategorySchema.category, CategorySchema.schema_fingerprint).where(
        CategorySchema.spec == spec)).all())
    changed = [name for name, fingerprint in now.items() if recorded.get(name, fingerprint) != fingerprint]
    if not changed:
        return {}
    counts = dict(conn.execute(select(ExampleRow.category, func.count()).where(
        ExampleRow.spec == spec, ExampleRow.category.in_(changed)).group_by(ExampleRow.category)).all())
    return {name: counts[name] for name in changed if counts.get(name)}


def another_schema_message(spec: str, changes: dict[str, int]) -> str:
    """One line for categories whose output schema changed under the same names since examples were made."""
    which = ", ".join(f"{name!r} ({count:,} stored example{'s' * (count != 1)})" for name, count in changes.items())
    return (f"spec {spec}: the output schema of category {which} changed since those examples were made; they would "
            "be mixed with the new ones in one dataset: give the changed spec (or category) a new name, or put the "
            "old schema back")


def combination_key(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    """A slot this worker holds until `until` (Unix seconds)."""

    slot_id: int
    token: str
    category: str
    ordinal: int
    combination_id: int
    params: dict[str, Any]
    attempts: int
    until: float


@dataclass(frozen=True)
class Outcome:
    """What recording a result did: `status` is `done`, `duplicate`, `failed` or `lost`; `next_claims` are
    slots claimed in the same transaction (one commit per example instead of two)."""

    status: str
    failure_id: int | None = None
    next_claims: list[Claim] = field(default_factory=list)


@dataclass(frozen=True)
class SlotCounts:
    """Live slots of one spec by state; `claimed` counts only unexpired leases."""

    pending: int
    claimed: int
    done: int

    @property
    def total(self) -> int:
        return self.pending + self.claimed + self.done


class CoverageDB:
    """Coverage, slots, examples and failures of every spec, in one SQL database."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_coverage_engine(url)
        self.dialect = self.engine.dialect.name
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        with _named_store(url):
            self._create_tables()

    def _create_tables(self) -> None:
        for attempt in range(5):
            try:
                with self.engine.begin() as conn:
                    advisory_lock(conn, "faithforge-generation-schema")
                    GenerationBase.metadata.create_all(conn)
                return
            except (IntegrityError, OperationalError):  # a concurrent creator won the race: look again
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def session(self) -> Session:
        """A session whose `begin()` starts one transaction (BEGIN IMMEDIATE on SQLite)."""
        return self._sessions()

    def close(self) -> None:
        self.engine.dispose()

    # planning -----------------------------------------------------------------------------------
    def sync(self, spec: GenerationSpec, targets: dict[str, int], seed: int = 0) -> None:
        """Make the slots match `targets`: add coverage rows for new combinations, add slots on the
        least-planned combinations up to each target, and abandon pending slots that are surplus or whose
        combination left the spec. Done slots are never touched."""
        with self.session() as s, s.begin():
            advisory_lock(s.connection(), f"faithforge-generation-plan:{spec.name}")
            # Checked again here, under the plan's lock: another worker may have recorded another schema since this
            # run's `validate` read the store.
            fingerprints = spec.schema_fingerprints()
            changes = _schema_changes(s.connection(), spec.name, fingerprints)
            if changes:
                raise UserError(another_schema_message(spec.name, changes))
            for name, fingerprint in fingerprints.items():  # a changed one has no examples: the new schema is its own
                s.merge(CategorySchema(spec=spec.name, category=name, schema_fingerprint=fingerprint,
                                       updated_at=time.time()))
            for category in spec.categories:
                wanted = {combination_key(p): p for p in spec.combinations(category)}
                known = dict(s.execute(select(Combination.key_hash, Combination.id).where(
                    Combination.spec == spec.name, Combination.category == category.name)).all())
                for key, params in wanted.items():
                    if key not in known:
                        rank = hashlib.sha256(f"{seed}:{category.name}:{key}".encode()).hexdigest()
                        row = Combination(spec=spec.name, category=category.name, key_hash=key, params=params,
                                          rank=rank, attempts=0, successes=0, failures=0)
                        s.add(row)
                        s.flush()
                        known[key] = row.id
                live_ids = {known[k] for k in wanted}
                self._plan_category(s, spec.name, category.name, targets.get(category.name, 0), live_ids)

    def _plan_category(self, s: Session, spec: str, category: str, target: int, live_ids: set[int]) -> None:
        slots = s.execute(select(Slot).where(Slot.spec == spec, Slot.category == category,
                                             Slot.status != "abandoned").order_by(Slot.ordinal.desc())).scalars().all()
        now = time.time()
        keep = []
        for slot in slots:
            if slot.status == "pending" and slot.combination_id not in live_ids:
                slot.status = "abandoned"
            else:
                keep.append(slot)
        surplus = len(keep) - target
        for slot in keep:  # highest ordinals first; never a done slot or a live claim
            if surplus <= 0:
                break
            if slot.status == "pending" or (slot.status == "claimed" and (slot.claimed_until or 0) < now):
                slot.status, slot.claim_token = "abandoned", None
                surplus -= 1
        missing = target - len([sl for sl in keep if sl.status != "abandoned"])
        if missing > 0:
            self._add_slots(s, spec, category, missing, live_ids)

    def _add_slots(self, s: Session, spec: str, category: str, count: int, live_ids: set[int] | None = None) -> None:
        """Add `count` slots on the least-planned combinations (ties: fewer failures, then rank)."""
        combos = s.execute(select(Combination.id, Combination.failures, Combination.rank).where(
            Combination.spec == spec, Combination.category == category)).all()
        if live_ids is not None:
            combos = [c for c in combos if c.id in live_ids]
        if not combos:
            return
        planned = Counter(dict(s.execute(select(Slot.combination_id, func.count()).where(
            Slot.spec == spec, Slot.category == category, Slot.status != "abandoned")
            .group_by(Slot.combination_id)).all()))
        heap = [(planned[c.id], c.failures, c.rank, c.id) for c in combos]
        heapq.heapify(heap)
        ordinal = s.execute(select(func.coalesce(func.max(Slot.ordinal), -1)).where(
            Slot.spec == spec, Slot.category == category)).scalar_one() + 1
        for _ in range(count):
            used, failures, rank, combo_id = heapq.heappop(heap)
            s.add(Slot(spec=spec, category=category, ordinal=ordinal, combination_id=combo_id, status="pending",
                       attempts=0))
            ordinal += 1
            heapq.heappush(heap, (used + 1, failures, rank, combo_id))
        s.flush()

    # workers ------------------------------------------------------------------------------------
    def register_worker(self, worker: str, pid: int | None = None) -> None:
        """Record where `worker` runs (this host, `pid`, default this process) so others can check it is alive."""
        import os

        pid = os.getpid() if pid is None else pid
        with self.session() as s, s.begin():
            row = s.get(WorkerRow, worker[:128])
            if row is None:
                row = WorkerRow(worker=worker[:128])
                s.add(row)
            row.host, row.pid, row.process_start = this_host()[:255], pid, process_start(pid)
            row.heartbeat_at = time.time()

    def heartbeat(self, worker: str, ttl_s: float) -> int:
        """Renew every lease `worker` holds to `ttl_s` seconds from now; returns how many."""
        now = time.time()
        with self.session() as s, s.begin():
            s.execute(update(WorkerRow).where(WorkerRow.worker == worker[:128]).values(heartbeat_at=now))
            result = s.execute(update(Slot).where(Slot.status == "claimed", Slot.worker == worker[:128],
                                                  Slot.claimed_until >= now).values(claimed_until=now + ttl_s))
            return result.rowcount or 0

    def _free_dead_claims(self, s: Session, spec: str, now: float) -> int:
        """Give back live-leased slots whose worker's process on this host is gone; returns how many."""
        holders = set(s.execute(select(Slot.worker).where(Slot.spec == spec, Slot.status == "claimed",
                                                          Slot.claimed_until >= now).distinct()).scalars())
        if not holders:
            return 0
        host = this_host()[:255]
        dead = [w.worker for w in s.execute(select(WorkerRow).where(WorkerRow.worker.in_(holders))).scalars()
                if w.host == host and not process_alive(w.pid, w.process_start)]
        if not dead:
            return 0
        result = s.execute(update(Slot).where(Slot.spec == spec, Slot.status == "claimed", Slot.worker.in_(dead))
                           .values(status="pending", claim_token=None, claimed_until=None))
        return result.rowcount or 0

    def holders(self, spec: str) -> dict[str, float]:
        """Workers holding live leases on `spec`'s slots, with the latest end of their leases (Unix seconds)."""
        now = time.time()
        with self.session() as s, s.begin():
            rows = s.execute(select(Slot.worker, func.max(Slot.claimed_until)).where(
                Slot.spec == spec, Slot.status == "claimed", Slot.claimed_until >= now).group_by(Slot.worker)).all()
        return {str(worker): float(until) for worker, until in rows}

    # claims -------------------------------------------------------------------------------------
    def claim(self, spec: str, worker: str, count: int, ttl_s: float) -> list[Claim]:
        """Atomically take up to `count` free slots (pending, or claimed with an expired lease), lowest
        ordinal first — which walks the least-covered combinations first."""
        with self.session() as s, s.begin():
            return self._claim(s, spec, worker, count, ttl_s)

    def _claim(self, s: Session, spec: str, worker: str, count: int, ttl_s: float) -> list[Claim]:
        if count <= 0:
            return []
        now = time.time()
        self._free_dead_claims(s, spec, now)
        query = (select(Slot).where(Slot.spec == spec, or_(
            Slot.status == "pending", (Slot.status == "claimed") & (Slot.claimed_until < now)))
            .order_by(Slot.ordinal, Slot.category).limit(count).with_for_update(skip_locked=True))
        slots = s.execute(query).scalars().all()
        if not slots:
            return []
        params = dict(s.execute(select(Combination.id, Combination.params).where(
            Combination.id.in_({sl.combination_id for sl in slots}))).all())
        claims = []
        for slot in slots:
            slot.status, slot.claim_token = "claimed", uuid.uuid4().hex
            slot.worker, slot.claimed_until = worker[:128], now + ttl_s
            claims.append(Claim(slot.id, slot.claim_token, slot.category, slot.ordinal, slot.combination_id,
                                params[slot.combination_id], slot.attempts, slot.claimed_until))
        return claims

    def _held(self, s: Session, claim: Claim) -> Slot | None:
        slot = s.execute(select(Slot).where(Slot.id == claim.slot_id).with_for_update()).scalar_one()
        return slot if slot.status == "claimed" and slot.claim_token == claim.token else None

    def release(self, claims: list[Claim]) -> None:
        """Give slots back untouched (a worker stopping cleanly)."""
        with self.session() as s, s.begin():
            for claim in claims:
                slot = self._held(s, claim)
                if slot is not None:
                    slot.status, slot.claim_token, slot.claimed_until = "pending", None, None

    # outcomes -----------------------------------------------------------------------------------
    def complete(self, claim: Claim, payload: dict[str, Any], digest: str, relpath: str, *, spec: str,
                 backend: str, model: str, worker: str, repaired: bool, prompt_tokens: int,
                 completion_tokens: int, max_attempts: int, claim_next: int = 0, ttl_s: float = 0.0) -> Outcome:
        """Store an accepted example: `done`, or `duplicate` (same content already stored; recorded as a
        failure), or `lost` (the lease expired and another worker holds the slot; nothing stored). With
        `claim_next`, also claim that many slots (lease `ttl_s` seconds) in the same transaction."""
        for attempt in range(3):
            try:
                with self.session() as s, s.begin():
                    slot = self._held(s, claim)
                    if slot is None:
                        return Outcome("lost", None, self._claim(s, spec, worker, claim_next, ttl_s))
                    clash = s.execute(select(ExampleRow.id).where(ExampleRow.spec == spec,
                                                                  ExampleRow.content_hash == digest)).first()
                    if clash is not None:
                        failure_id = self._record_failure(
                            s, slot, claim, spec, "duplicate", f"same content as example {clash[0]}",
                            json.dumps(payload, ensure_ascii=False), "", False, model, worker, max_attempts=max_attempts)
                        return Outcome("duplicate", failure_id, self._claim(s, spec, worker, claim_next, ttl_s))
                    s.add(ExampleRow(spec=spec, category=claim.category, slot_id=slot.id, ordinal=slot.ordinal,
                                     combination_id=slot.combination_id, params=claim.params, content_hash=digest,
                                     payload=payload, relpath=relpath, backend=backend, model=model[:256],
                                     repaired=repaired, prompt_tokens=prompt_tokens,
                                     completion_tokens=completion_tokens, worker=worker[:128], created_at=time.time()))
                    slot.status, slot.content_hash = "done", digest
                    slot.claim_token, slot.claimed_until = None, None
                    slot.attempts += 1
                    s.execute(update(Combination).where(Combination.id == slot.combination_id).values(
                        attempts=Combination.attempts + 1, successes=Combination.successes + 1))
                    return Outcome("done", None, self._claim(s, spec, worker, claim_next, ttl_s))
            except IntegrityError:  # PostgreSQL: a concurrent worker inserted the same content first
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def fail(self, claim: Claim, *, spec: str, reason: str, detail: str, raw_text: str, repair_text: str,
             truncated: bool, model: str, worker: str, max_attempts: int, claim_next: int = 0,
             ttl_s: float = 0.0) -> Outcome:
        """Record a failed attempt (`failed`, or `lost` when the lease had expired); the slot goes back to
        pending, or after `max_attempts` is abandoned and replaced on the least-covered combination."""
        with self.session() as s, s.begin():
            slot = self._held(s, claim)
            if slot is None:
                return Outcome("lost", None, self._claim(s, spec, worker, claim_next, ttl_s))
            failure_id = self._record_failure(s, slot, claim, spec, reason, detail, raw_text, repair_text, truncated,
                                              model, worker, max_attempts=max_attempts)
            return Outcome("failed", failure_id, self._claim(s, spec, worker, claim_next, ttl_s))

    def _record_failure(self, s: Session, slot: Slot, claim: Claim, spec: str, reason: str, detail: str,
                        raw_text: str, repair_text: str, truncated: bool, model: str, worker: str,
                        max_attempts: int) -> int:
        row = FailureRow(spec=spec, category=claim.category, slot_id=slot.id, combination_id=slot.combination_id,
                         reason=reason[:32], detail=detail, raw_text=raw_text, repair_text=repair_text,
                         truncated=truncated, model=model[:256], worker=worker[:128], created_at=time.time())
        s.add(row)
        s.execute(update(Combination).where(Combination.id == slot.combination_id).values(
            attempts=Combination.attempts + 1, failures=Combination.failures + 1))
        slot.attempts += 1
        slot.claim_token, slot.claimed_until = None, None
        if slot.attempts >= max_attempts:
            slot.status = "abandoned"
            s.flush()
            self._add_slots(s, spec, claim.category, 1)
        else:
            slot.status = "pending"
        s.flush()
        return row.id

    # reading ------------------------------------------------------------------------------------
    def counts(self, spec: str) -> SlotCounts:
        now = time.time()
        with self.session() as s, s.begin():
            self._free_dead_claims(s, spec, now)
            rows = s.execute(select(Slot.status, Slot.claimed_until).where(Slot.spec == spec,
                                                                            Slot.status != "abandoned")).all()
        pending = sum(1 for st, until in rows if st == "pending" or (st == "claimed" and (until or 0) < now))
        claimed = sum(1 for st, until in rows if st == "claimed" and (until or 0) >= now)
        done = sum(1 for st, _ in rows if st == "done")
        return SlotCounts(pending=pending, claimed=claimed, done=done)

    def done_by_category(self, spec: str) -> dict[str, int]:
        with self.session() as s, s.begin():
            return dict(s.execute(select(Slot.category, func.count()).where(Slot.spec == spec, Slot.status == "done")
                                  .group_by(Slot.category)).all())

    def examples(self, spec: str) -> Iterator[ExampleRow]:
        """Every stored example of `spec`, by category and ordinal."""
        with self.session() as s, s.begin():
            rows = s.execute(select(ExampleRow).where(ExampleRow.spec == spec)
                             .order_by(ExampleRow.category, ExampleRow.ordinal)).scalars().all()
        yield from rows

    def combinations(self, spec: str) -> list[Combination]:
        with self.session() as s, s.begin():
            return list(s.execute(select(Combination).where(Combination.spec == spec)
                                  .order_by(Combination.category, Combination.rank)).scalars().all())

    def slots(self, spec: str) -> list[Slot]:
        with self.session() as s, s.begin():
            return list(s.execute(select(Slot).where(Slot.spec == spec)
                                  .order_by(Slot.category, Slot.ordinal)).scalars().all())

    def failures(self, spec: str) -> list[FailureRow]:
        with self.session() as s, s.begin():
            return list(s.execute(select(FailureRow).where(FailureRow.spec == spec)
                                  .order_by(FailureRow.id)).scalars().all())
