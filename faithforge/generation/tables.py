"""Tables of the coverage database (own `DeclarativeBase`; may live in the run store's database).

- `gen_combinations`: one row per (spec, category, parameter combination) with attempts, successes and
  failures — the coverage table.
- `gen_slots`: the units of work. A category with target N has N live slots, each bound to a combination
  (least-planned first); a worker claims a slot, fills it once, and the slot is done. A slot that keeps
  failing is abandoned and replaced on the next least-covered combination.
- `gen_examples`: each accepted example with its content (the database is the source of truth; files
  are written from it). Unique by (spec, content hash) and by slot.
- `gen_failures`: every failed attempt with its reason and raw text (quarantine).
- `gen_category_schemas`: per (spec, category), the fingerprint of the output schema its examples were made
  under, so a category whose schema changed under the same names is refused instead of mixing two schemas in one
  dataset.
- `gen_workers`: where each worker runs (host, pid, process start) and its last heartbeat, so a claim held
  by a worker whose process is gone is taken back at once (`faithforge/core/liveness.py`).

Times are Unix seconds (float), compared only between workers of one deployment.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class GenerationBase(DeclarativeBase):
    pass


class Combination(GenerationBase):
    __tablename__ = "gen_combinations"
    __table_args__ = (UniqueConstraint("spec", "category", "key_hash", name="uq_gen_combination"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    spec: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(64))
    key_hash: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    rank: Mapped[str] = mapped_column(String(64))
    """Deterministic shuffle key: among equally covered combinations, lower rank is planned first."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    successes: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)


class Slot(GenerationBase):
    __tablename__ = "gen_slots"
    __table_args__ = (UniqueConstraint("spec", "category", "ordinal", name="uq_gen_slot"),
                      Index("ix_gen_slots_claim", "spec", "status", "ordinal"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    spec: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(64))
    ordinal: Mapped[int] = mapped_column(Integer)
    combination_id: Mapped[int] = mapped_column(ForeignKey("gen_combinations.id"))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    """`pending`, `claimed`, `done` or `abandoned`."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claim_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    claimed_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ExampleRow(GenerationBase):
    __tablename__ = "gen_examples"
    __table_args__ = (UniqueConstraint("spec", "content_hash", name="uq_gen_example_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    spec: Mapped[str] = mapped_column(String(64), index=True)
    category: Mapped[str] = mapped_column(String(64))
    slot_id: Mapped[int] = mapped_column(ForeignKey("gen_slots.id"), unique=True)
    ordinal: Mapped[int] = mapped_column(Integer)
    combination_id: Mapped[int] = mapped_column(ForeignKey("gen_combinations.id"))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    content_hash: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    relpath: Mapped[str] = mapped_column(Text)
    backend: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(256))
    repaired: Mapped[bool] = mapped_column(default=False)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float)


class FailureRow(GenerationBase):
    __tablename__ = "gen_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    spec: Mapped[str] = mapped_column(String(64), index=True)
    category: Mapped[str] = mapped_column(String(64))
    slot_id: Mapped[int] = mapped_column(ForeignKey("gen_slots.id"))
    combination_id: Mapped[int] = mapped_column(ForeignKey("gen_combinations.id"))
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    raw_text: Mapped[str] = mapped_column(Text, default="")
    repair_text: Mapped[str] = mapped_column(Text, default="")
    truncated: Mapped[bool] = mapped_column(default=False)
    model: Mapped[str] = mapped_column(String(256), default="")
    worker: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float)


class WorkerRow(GenerationBase):
    __tablename__ = "gen_workers"

    worker: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    process_start: Mapped[str] = mapped_column(String(64), default="")
    """The process's start time as the OS reports it (tells a reused pid from the original)."""
    heartbeat_at: Mapped[float] = mapped_column(Float)


class CategorySchema(GenerationBase):
    __tablename__ = "gen_category_schemas"

    spec: Mapped[str] = mapped_column(String(64), primary_key=True)
    category: Mapped[str] = mapped_column(String(64), primary_key=True)
    schema_fingerprint: Mapped[str] = mapped_column(String(64))
    """`GenerationSpec.schema_fingerprints()[category]` of the last run that planned this category's examples."""
    updated_at: Mapped[float] = mapped_column(Float)
