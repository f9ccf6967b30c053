"""The generation loop: claim a slot, prompt the backend, parse, repair once, store, repeat.

Each accepted example is committed to the database and written as a file before the next claim, so a
killed process loses at most the examples in flight. Failures are stored with their raw text and never
stop the run; only a fatal backend error (missing model, unreachable server, bad credentials) or a
run of consecutive backend errors does, after giving the slots back.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from faithforge.generation.backends.base import BackendError, ChatBackend, ChatResult
from faithforge.generation.coverage import Claim, CoverageDB
from faithforge.generation.files import example_relpath, reconcile, write_example_file, write_quarantine_file
from faithforge.generation.parsing import ParseFailure, content_hash, parse_answer, repair_messages
from faithforge.generation.spec import GenerationSpec
from faithforge.generation.summary import GenerationSummary
from faithforge.generation.tables import ExampleRow

ProgressCallback = Callable[[int, int], None]
"""Called with (examples stored, target) after every stored example."""


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class GenerationOptions:
    """How one worker generates. `batch_size`, `max_tokens` and the model come from the GPU gate."""

    target: int | None = None
    """Total examples wanted, split over categories in proportion to the spec's targets (None: the spec's)."""
    batch_size: int = 1
    """Slots claimed and requested at once (1: single-example mode, the safe choice on a small GPU)."""
    max_tokens: int = 4000
    """Longest answer per request, tokens."""
    temperature: float = 0.8
    seed: int = 0
    """Base seed; each slot attempt gets its own seed derived from it."""
    claim_ttl_s: float = 900.0
    """Lease of a claim, seconds; a dead worker's slots are retaken after it. Keep it above the slowest request."""
    max_attempts_per_slot: int = 3
    """Failed attempts before a slot is abandoned and replaced on another combination."""
    max_failures: int = 200
    """Failed attempts after which this run stops (a backend that only writes garbage)."""
    max_consecutive_backend_errors: int = 5
    """Backend errors in a row (after retries) after which this run stops."""
    repair: bool = True
    """Re-ask once with the validation error before quarantining an answer."""
    limit: int | None = None
    """Stop this worker after storing this many examples (None: until every target is met)."""
    wait_for_others: bool = True
    """When no slot is free but other workers hold live claims, wait (their slots return if they die)."""
    poll_s: float = 1.0
    """Wait between looks for free slots while others work, seconds."""
    worker_id: str = field(default_factory=default_worker_id)


@dataclass
class Attempt:
    """The outcome of prompting for one claimed slot."""

    claim: Claim
    result: ChatResult | None = None
    payload: dict[str, Any] | None = None
    failure: ParseFailure | None = None
    raw_text: str = ""
    repair_text: str = ""
    repaired: bool = False
    truncations: int = 0
    error: BackendError | None = None


def attempt_seed(base: int, spec: str, category: str, ordinal: int, attempt: int) -> int:
    """A 31-bit seed per slot attempt: reproducible, and different on a retry."""
    digest = hashlib.sha256(f"{base}:{spec}:{category}:{ordinal}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class Generator:
    """Fills a spec's slots with examples from one backend."""

    def __init__(self, spec: GenerationSpec, backend: ChatBackend, db: CoverageDB, out_dir: Path,
                 options: GenerationOptions, on_progress: ProgressCallback | None = None):
        self.spec, self.backend, self.db, self.out_dir = spec, backend, db, Path(out_dir)
        self.options = options
        self.on_progress = on_progress
        self.targets = spec.targets(options.target)
        self._schemas = {c.name: spec.schema_for(c) for c in spec.categories}
        self.summary = GenerationSummary(spec=spec.name, backend=backend.name, model=backend.model,
                                         targets=self.targets, examples_dir=str(self.out_dir))

    # one slot -----------------------------------------------------------------------------------
    def attempt(self, claim: Claim) -> Attempt:
        """Prompt, parse, and repair once if needed. Backend errors are returned, not raised."""
        category = self.spec.category(claim.category)
        schema = self._schemas[claim.category]
        messages = self.spec.messages_for(category, claim.params)
        seed = attempt_seed(self.options.seed, self.spec.name, claim.category, claim.ordinal, claim.attempts)
        out = Attempt(claim)
        try:
            out.result = self._chat(messages, schema, seed)
            out.raw_text = out.result.text
            out.truncations += out.result.truncated
            out.payload, out.failure = parse_answer(out.result.text, schema, truncated=out.result.truncated)
            if out.failure is not None and self.options.repair:
                fixed = self._chat(repair_messages(messages, out.result.text, out.failure), schema, seed)
                out.repair_text = fixed.text
                out.truncations += fixed.truncated
                payload, failure = parse_answer(fixed.text, schema, truncated=fixed.truncated)
                if payload is not None:
                    out.payload, out.failure, out.repaired, out.result = payload, None, True, fixed
                else:
                    out.failure = ParseFailure(out.failure.reason, f"{out.failure.detail}; after repair: {failure.detail}")
        except BackendError as exc:
            out.error = exc
        return out

    def _chat(self, messages: list[dict], schema: dict, seed: int) -> ChatResult:
        return self.backend.chat(messages, schema=schema, max_tokens=self.options.max_tokens,
                                 temperature=self.options.temperature, seed=seed)

    def store(self, att: Attempt, claim_next: int = 0) -> list[Claim]:
        """Commit one attempt's outcome (database first, then the file) and count it; claims `claim_next`
        further slots in the same transaction and returns them."""
        o, claim = self.options, att.claim
        self.summary.truncations += att.truncations
        model = att.result.model if att.result else self.backend.model
        if att.payload is not None:
            digest = content_hash(att.payload)
            relpath = example_relpath(claim.category, claim.ordinal)
            usage = att.result.usage if att.result else None
            outcome = self.db.complete(claim, att.payload, digest, relpath, spec=self.spec.name,
                                      backend=self.backend.name, model=model, worker=o.worker_id,
                                      repaired=att.repaired, prompt_tokens=usage.prompt_tokens if usage else 0,
                                      completion_tokens=usage.completion_tokens if usage else 0,
                                      max_attempts=o.max_attempts_per_slot, claim_next=claim_next,
                                      ttl_s=o.claim_ttl_s)
            if outcome.status == "done":
                row = ExampleRow(spec=self.spec.name, category=claim.category, ordinal=claim.ordinal,
                                 params=claim.params, content_hash=digest, payload=att.payload, relpath=relpath,
                                 backend=self.backend.name, model=model, repaired=att.repaired)
                write_example_file(self.out_dir, row)
                self.summary.generated += 1
                self.summary.repaired += att.repaired
                self.summary.done_total += 1
                if self.on_progress:
                    self.on_progress(self.summary.done_total, self.summary.target_total)
            elif outcome.status == "duplicate":
                self.summary.failures["duplicate"] += 1
            else:
                self.summary.lost_claims += 1
            return outcome.next_claims
        if att.error is not None:
            reason, detail = att.error.reason, str(att.error)
        else:
            reason, detail = att.failure.reason, att.failure.detail
        outcome = self.db.fail(claim, spec=self.spec.name, reason=reason, detail=detail, raw_text=att.raw_text,
                               repair_text=att.repair_text, truncated=att.truncations > 0, model=model,
                               worker=o.worker_id, max_attempts=o.max_attempts_per_slot, claim_next=claim_next,
                               ttl_s=o.claim_ttl_s)
        if outcome.failure_id is None:
            self.summary.lost_claims += 1
            return outcome.next_claims
        self.summary.failures[reason] += 1
        write_quarantine_file(self.out_dir, outcome.failure_id, {
            "category": claim.category, "ordinal": claim.ordinal, "params": claim.params, "reason": reason,
            "detail": detail, "raw_text": att.raw_text, "repair_text": att.repair_text, "model": model})
        return outcome.next_claims

    # the loop -----------------------------------------------------------------------------------
    def run(self) -> GenerationSummary:
        """Generate until every target is met, the limit is reached, or a stop condition fires."""
        o = self.options
        started = time.perf_counter()
        self.db.sync(self.spec, self.targets, o.seed)
        reconcile(self.db, self.spec.name, self.out_dir, stale_after_s=max(o.claim_ttl_s, 60.0))
        self.summary.done_before = self.summary.done_total = self.db.counts(self.spec.name).done
        if self.on_progress:
            self.on_progress(self.summary.done_total, self.summary.target_total)
        pool = ThreadPoolExecutor(max_workers=o.batch_size) if o.batch_size > 1 else None
        consecutive_errors = 0
        prefetched: list[Claim] = []
        try:
            while True:
                if o.limit is not None and self.summary.generated >= o.limit:
                    self.summary.stopped = "limit"
                    break
                if sum(self.summary.failures.values()) >= o.max_failures:
                    self.summary.stopped = "max_failures"
                    self.summary.message = f"{o.max_failures} failed attempts; see the quarantine folder"
                    break
                want = o.batch_size if o.limit is None else min(o.batch_size, o.limit - self.summary.generated)
                claims = prefetched or self.db.claim(self.spec.name, o.worker_id, want, o.claim_ttl_s)
                prefetched = []
                if not claims:
                    if o.wait_for_others and self.db.counts(self.spec.name).claimed > 0:
                        time.sleep(o.poll_s)
                        continue
                    break
                attempts = list(pool.map(self.attempt, claims)) if pool else [self.attempt(claims[0])]
                fatal = next((a.error for a in attempts if a.error is not None and a.error.fatal), None)
                if fatal is not None:
                    self.db.release([a.claim for a in attempts])
                    raise fatal
                for i, att in enumerate(attempts):
                    # single-example mode: the commit of this example also claims the next slot
                    last = i == len(attempts) - 1 and o.batch_size == 1
                    more = (last and consecutive_errors + (att.error is not None) < o.max_consecutive_backend_errors
                            and (o.limit is None or self.summary.generated + 1 < o.limit)
                            and sum(self.summary.failures.values()) + 1 < o.max_failures)
                    prefetched = self.store(att, claim_next=1 if more else 0)
                    consecutive_errors = consecutive_errors + 1 if att.error is not None else 0
                if consecutive_errors >= o.max_consecutive_backend_errors:
                    self.summary.stopped = "backend_errors"
                    self.summary.message = f"{consecutive_errors} backend errors in a row; last: {attempts[-1].error}"
                    break
        except KeyboardInterrupt:
            self.summary.stopped = "interrupted"
        finally:
            if prefetched:
                self.db.release(prefetched)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            self.summary.elapsed_s = time.perf_counter() - started
        self.summary.done_by_category = self.db.done_by_category(self.spec.name)
        self.summary.done_total = sum(self.summary.done_by_category.values())
        return self.summary


def run_generation(spec: GenerationSpec, backend: ChatBackend, db: CoverageDB, out_dir: Path,
                   options: GenerationOptions | None = None,
                   on_progress: ProgressCallback | None = None) -> GenerationSummary:
    """Fill `spec`'s targets from `backend`, storing examples in `db` and under `out_dir`."""
    return Generator(spec, backend, db, out_dir, options or GenerationOptions(), on_progress).run()
