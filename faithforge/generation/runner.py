"""The generation loop: claim a slot, prompt the backend, parse, repair once, store, repeat.

Each accepted example is committed to the database and written as a file before the next claim, so a
killed process loses at most the examples in flight. An answer must parse, match the schema and pass the
spec's quality gates (`quality.py`); one repair request names what was wrong. Failures are stored with
their raw text and reason and never stop the run; only a fatal backend error (missing model, unreachable
server, bad credentials) or a run of consecutive backend errors does, after giving the slots back. While
it runs, a heartbeat thread renews this worker's leases, so only a dead worker's slots are ever retaken.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from faithforge.backends.base import BackendError, ChatBackend, ChatResult
from faithforge.generation.coverage_db import Claim, CoverageDB
from faithforge.generation.files import (
    QUARANTINE_DIR,
    example_relpath,
    reconcile,
    write_example_file,
    write_quarantine_file,
    write_reasoning_file,
)
from faithforge.generation.parameters import GenerateParameters
from faithforge.generation.parsing import ParseFailure, content_hash, parse_reply, repair_messages
from faithforge.generation.quality import QUALITY_REASONS, QualityGate
from faithforge.generation.spec import GenerationSpec
from faithforge.generation.summary import GenerationSummary
from faithforge.generation.tables import ExampleRow

ProgressCallback = Callable[[int, int], None]
"""Called with (examples stored, target) after every stored example."""
LogCallback = Callable[[str], None]
"""Called with one line when the run has news the user should see (e.g. it waits for other workers)."""
#: Seconds between two lines saying how many attempts failed (the first is said at once): the bar counts only
#: stored examples, so a run whose attempts all fail would look stalled.
FAILURES_SAID_EVERY_S = 30.0


# The defaults shared with the run's parameters are declared once, in `GenerateParameters`.
_DEFAULTS = GenerateParameters.model_fields


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class GenerationOptions:
    """How one worker generates. `batch_size`, `max_tokens` and the model come from the GPU gate."""

    target: int | None = None
    """Total examples wanted, split over categories in proportion to the spec's targets (None: the spec's)."""
    batch_size: int = _DEFAULTS["batch_size"].default
    """Slots claimed and requested at once (1: single-example mode, the safe choice on a small GPU)."""
    max_tokens: int = _DEFAULTS["max_tokens"].default
    """Longest answer per request, tokens."""
    temperature: float = _DEFAULTS["temperature"].default
    seed: int = _DEFAULTS["seed"].default
    """Base seed; each slot attempt gets its own seed derived from it."""
    claim_ttl_s: float = _DEFAULTS["claim_ttl_s"].default
    """Lease of a claim, seconds, renewed by the heartbeat while this worker runs. A worker that dies on this
    host loses its slots at once (its process is gone); one on another host after this lease."""
    max_attempts_per_slot: int = 3
    """Failed attempts before a slot is abandoned and replaced on another combination."""
    max_failures: int = _DEFAULTS["max_failures"].default
    """Failed attempts after which this run stops (a backend that only writes garbage)."""
    max_consecutive_backend_errors: int = 5
    """Backend errors in a row (after retries) after which this run stops."""
    repair: bool = True
    """Re-ask once with the validation error before quarantining an answer."""
    limit: int | None = None
    """Stop this worker after storing this many examples (None: until every target is met)."""
    wait_for_others: bool = True
    """When no slot is free but other workers hold live claims, wait (their slots return if they die)."""
    poll_s: float = _DEFAULTS["poll_s"].default
    """Wait between looks for free slots while others work, seconds."""
    worker_id: str = field(default_factory=default_worker_id)

    @property
    def heartbeat_s(self) -> float:
        """Seconds between lease renewals: three per lease, so one late beat never loses a slot."""
        return max(0.05, min(30.0, self.claim_ttl_s / 3))


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
    repair_requested: bool = False
    first_failure: str = ""
    """Why the first answer was not accepted: `parse` (no object, off-schema), `quality`, or empty."""
    reasoning: str = ""
    """Thinking the server returned and reasoning keys taken out of the answer; kept beside the example."""
    truncations: int = 0
    error: BackendError | None = None


def attempt_seed(base: int, spec: str, category: str, ordinal: int, attempt: int) -> int:
    """A 31-bit seed per slot attempt: reproducible, and different on a retry."""
    digest = hashlib.sha256(f"{base}:{spec}:{category}:{ordinal}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class Generator:
    """Fills a spec's slots with examples from one backend."""

    def __init__(self, spec: GenerationSpec, backend: ChatBackend, db: CoverageDB, out_dir: Path,
                 options: GenerationOptions, on_progress: ProgressCallback | None = None,
                 log: LogCallback | None = None):
        self.spec, self.backend, self.db, self.out_dir = spec, backend, db, Path(out_dir)
        self.options = options
        self.on_progress = on_progress
        self.log = log or (lambda line: None)
        self.targets = spec.targets(options.target)
        self._schemas = {c.name: spec.schema_for(c) for c in spec.categories}
        # A documents spec's sources are the user's own (and may repeat across categories): only generated
        # sources are checked for repeats.
        self.quality = QualityGate(spec.quality, remember_sources=spec.documents is None)
        self.summary = GenerationSummary(spec=spec.name, backend=backend.name, model=backend.model,
                                         targets=self.targets, examples_dir=str(self.out_dir))
        self._failures_said: tuple[float, int] = (float("-inf"), 0)
        """(when, how many) the failures were last said (`_say_failures`)."""

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
            out.payload, out.failure, out.reasoning = self._check(claim, out.result, schema)
            out.first_failure = "" if out.failure is None else (
                "quality" if out.failure.reason in QUALITY_REASONS else "parse")
            if out.failure is not None and self.options.repair:
                out.repair_requested = True
                fixed = self._chat(repair_messages(messages, out.result.text, out.failure), schema, seed)
                out.repair_text = fixed.text
                out.truncations += fixed.truncated
                payload, failure, reasoning = self._check(claim, fixed, schema)
                if payload is not None:
                    out.payload, out.failure, out.repaired, out.result = payload, None, True, fixed
                    out.reasoning = reasoning
                else:
                    out.failure = ParseFailure(out.failure.reason, f"{out.failure.detail}; after repair: {failure.detail}")
        except BackendError as exc:
            out.error = exc
        return out

    def _check(self, claim: Claim, result: ChatResult, schema: dict
               ) -> tuple[dict[str, Any] | None, ParseFailure | None, str]:
        """Parse, validate and run the quality gates on one answer: (payload, failure, reasoning)."""
        parsed = parse_reply(result.text, schema, truncated=result.truncated)
        reasoning = "\n".join(t for t in (result.thinking.strip(), parsed.reasoning) if t)
        if parsed.payload is None:
            return None, parsed.failure, reasoning
        payload = self.spec.complete_payload(claim.params, parsed.payload)
        problem = self.quality.first_failure(payload, example_relpath(claim.category, claim.ordinal))
        if problem is not None:
            return None, ParseFailure(problem.reason, problem.detail), reasoning
        return payload, None, reasoning

    def _chat(self, messages: list[dict], schema: dict, seed: int) -> ChatResult:
        return self.backend.chat(messages, schema=schema, max_tokens=self.options.max_tokens,
                                 temperature=self.options.temperature, seed=seed)

    def store(self, att: Attempt, claim_next: int = 0) -> list[Claim]:
        """Commit one attempt's outcome (database first, then the file) and count it; claims `claim_next`
        further slots in the same transaction and returns them."""
        o, claim = self.options, att.claim
        self.summary.truncations += att.truncations
        if att.result is not None:
            self.summary.first_answers += 1
            self.summary.parse_failures += att.first_failure == "parse"
            self.summary.quality_rejections += att.first_failure == "quality"
            self.summary.repair_requests += att.repair_requested
            self.summary.response_formats[att.result.response_format or "none"] += 1
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
                if att.reasoning:
                    write_reasoning_file(self.out_dir, relpath, att.reasoning)
                self.quality.accept(att.payload, relpath)
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
            "detail": detail, "raw_text": att.raw_text, "repair_text": att.repair_text, "model": model,
            "reasoning": att.reasoning})
        return outcome.next_claims

    # the loop -----------------------------------------------------------------------------------
    def run(self) -> GenerationSummary:
        """Generate until every target is met, the limit is reached, or a stop condition fires."""
        o = self.options
        started = time.perf_counter()
        self._prepare()
        pool = ThreadPoolExecutor(max_workers=o.batch_size) if o.batch_size > 1 else None
        consecutive_errors = 0
        prefetched: list[Claim] = []
        waiting_since: float | None = None
        stop_beating = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(stop_beating,), daemon=True,
                                name=f"heartbeat-{o.worker_id}")
        beat.start()
        try:
            while not self._stop_condition():
                want = o.batch_size if o.limit is None else min(o.batch_size, o.limit - self.summary.generated)
                claims = prefetched or self.db.claim(self.spec.name, o.worker_id, want, o.claim_ttl_s)
                prefetched = []
                if not claims:
                    counts = self.db.counts(self.spec.name)
                    if counts.pending > 0:  # a lease ran out between the claim and the count, or another worker
                        time.sleep(o.poll_s)  # is claiming that slot this instant: look again, never give it up
                        continue
                    if o.wait_for_others and counts.claimed > 0:
                        waiting_since = self._wait_for_others(waiting_since)
                        continue
                    break
                waiting_since = None
                attempts = list(pool.map(self.attempt, claims)) if pool else [self.attempt(claims[0])]
                prefetched, consecutive_errors = self._store_attempts(attempts, consecutive_errors)
                if consecutive_errors >= o.max_consecutive_backend_errors:
                    self.summary.stopped = "backend_errors"
                    self.summary.message = f"{consecutive_errors} backend errors in a row; last: {attempts[-1].error}"
                    break
        except KeyboardInterrupt:
            self.summary.stopped = "interrupted"
        finally:
            stop_beating.set()
            beat.join()
            if prefetched:
                self.db.release(prefetched)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            self.summary.elapsed_s = time.perf_counter() - started
        self.summary.done_by_category = self.db.done_by_category(self.spec.name)
        self.summary.done_total = sum(self.summary.done_by_category.values())
        return self.summary

    def _prepare(self) -> None:
        """Register this worker, bring the slots in line with the spec and the files on disk, report the start."""
        o = self.options
        self.db.register_worker(o.worker_id)
        self.db.sync(self.spec, self.targets, o.seed)
        reconcile(self.db, self.spec.name, self.out_dir, stale_after_s=max(o.claim_ttl_s, 60.0))
        self.summary.done_before = self.summary.done_total = self.db.counts(self.spec.name).done
        if self.on_progress:
            self.on_progress(self.summary.done_total, self.summary.target_total)

    def _stop_condition(self) -> bool:
        """True (with `summary.stopped` set) when the limit is reached or too many attempts failed."""
        o = self.options
        if o.limit is not None and self.summary.generated >= o.limit:
            self.summary.stopped = "limit"
            return True
        if sum(self.summary.failures.values()) >= o.max_failures:
            self.summary.stopped = "max_failures"
            self.summary.message = f"{o.max_failures} failed attempts; see the quarantine folder"
            return True
        return False

    def _wait_for_others(self, waiting_since: float | None) -> float:
        """Sleep one poll while other workers hold the remaining slots; says so once per wait, naming who holds
        them. Returns when this wait began."""
        if waiting_since is None:
            waiting_since = time.monotonic()
            holders = self.db.holders(self.spec.name)
            longest = max(holders.values(), default=time.time()) - time.time()
            self.log(f"waiting for {len(holders)} other worker(s) that hold the remaining slots "
                     f"({', '.join(sorted(holders))}); a dead one's slots return within "
                     f"{max(0.0, longest):.0f} s, or at once if it ran on this machine")
        time.sleep(self.options.poll_s)
        return waiting_since

    def _store_attempts(self, attempts: list[Attempt], consecutive_errors: int) -> tuple[list[Claim], int]:
        """Store a batch's outcomes (a fatal backend error gives the slots back and is raised); returns the slots
        claimed ahead and the backend errors in a row so far."""
        o = self.options
        fatal = next((a.error for a in attempts if a.error is not None and a.error.fatal), None)
        if fatal is not None:
            self.db.release([a.claim for a in attempts])
            raise fatal
        prefetched: list[Claim] = []
        for i, att in enumerate(attempts):
            # single-example mode: the commit of this example also claims the next slot
            last = i == len(attempts) - 1 and o.batch_size == 1
            more = (last and consecutive_errors + (att.error is not None) < o.max_consecutive_backend_errors
                    and (o.limit is None or self.summary.generated + 1 < o.limit)
                    and sum(self.summary.failures.values()) + 1 < o.max_failures)
            prefetched = self.store(att, claim_next=1 if more else 0)
            consecutive_errors = consecutive_errors + 1 if att.error is not None else 0
        self._say_failures()
        return prefetched, consecutive_errors

    def _say_failures(self, every_s: float = FAILURES_SAID_EVERY_S) -> None:
        """A line of news when attempts failed since the last one, at most every `every_s` seconds (the first at
        once): the bar stayed at 0/3 for 11 minutes while 20 attempts were quarantined, and the reasons came only
        at the end (an attack, 2026-12-07)."""
        failed = sum(self.summary.failures.values())
        said_at, said = self._failures_said
        now = time.monotonic()
        if failed > said and now - said_at >= every_s:
            self._failures_said = (now, failed)
            self.log(f"{failed} attempt(s) failed so far ({self.summary.top_failures()}); the quarantine "
                     f"{self.out_dir / QUARANTINE_DIR} keeps each failed answer (a duplicate is only counted)")

    def _heartbeat(self, stop: threading.Event) -> None:
        """Renew this worker's leases every `heartbeat_s` seconds until `stop` is set."""
        while not stop.wait(self.options.heartbeat_s):
            try:
                self.db.heartbeat(self.options.worker_id, self.options.claim_ttl_s)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the lease outlives two of them
                self.log(f"heartbeat failed ({type(exc).__name__}: {exc}); retrying")


def run_generation(spec: GenerationSpec, backend: ChatBackend, db: CoverageDB, out_dir: Path,
                   options: GenerationOptions | None = None,
                   on_progress: ProgressCallback | None = None, log: LogCallback | None = None) -> GenerationSummary:
    """Fill `spec`'s targets from `backend`, storing examples in `db` and under `out_dir`."""
    return Generator(spec, backend, db, out_dir, options or GenerationOptions(), on_progress, log).run()
