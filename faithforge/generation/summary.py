"""The end-of-run summary: what was generated, what failed and why, and why the run stopped."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Failure reasons written by the quality gates; the rest come from parsing (`empty`, `no_json`, ...), the
# backend (`timeout`, `backend_error`, ...) and the database (`duplicate`).
from faithforge.generation.quality import QUALITY_REASONS


@dataclass
class GenerationSummary:
    spec: str
    backend: str
    model: str
    targets: dict[str, int]
    """Target per category."""
    done_before: int = 0
    """Examples that already existed when this run started."""
    generated: int = 0
    """Examples this run added."""
    repaired: int = 0
    """Of those, accepted only after the repair request."""
    repair_requests: int = 0
    """Repair requests sent (an answer that failed parsing, the schema or a quality gate)."""
    parse_failures: int = 0
    """First answers that did not parse or did not match the schema (before any repair)."""
    quality_rejections: int = 0
    """First answers that matched the schema but failed a quality gate (before any repair)."""
    first_answers: int = 0
    """First answers received (the denominator of the two rates above)."""
    failures: Counter = field(default_factory=Counter)
    """Failed attempts of this run by reason (`schema`, `invalid_json`, `truncated`, `duplicate`, `timeout`,
    a quality gate's reason such as `placeholder`, ...)."""
    response_formats: Counter = field(default_factory=Counter)
    """Answers by the structured-output mode the server accepted (`json_schema`, `json_object`, `prompt`,
    Ollama's `format_schema` / `format_json`, or `none` for backends without one)."""
    truncations: int = 0
    """Answers cut off at max_tokens (first tries and repairs)."""
    lost_claims: int = 0
    """Results discarded because another worker had taken over the slot (this worker's heartbeat stalled)."""
    done_total: int = 0
    """Examples stored for the spec when the run ended."""
    done_by_category: dict[str, int] = field(default_factory=dict)
    stopped: str = "completed"
    """`completed`, `limit`, `max_failures`, `backend_errors` or `interrupted`."""
    message: str = ""
    elapsed_s: float = 0.0
    """Wall time of the run, seconds."""
    examples_dir: str = ""

    @property
    def target_total(self) -> int:
        return sum(self.targets.values())

    @property
    def stored_nothing(self) -> bool:
        """True when there was work to do and this run stored no example: the run failed. A run stopped by Ctrl-C
        or SIGTERM did not fail, whenever the stop came: it ended "stored 0 … top failure reasons: none" with exit
        status 1 when the stop came before the first example (an attack, 2026-12-07)."""
        return self.generated == 0 and self.done_total < self.target_total and self.stopped != "interrupted"

    def top_failures(self, n: int = 3) -> str:
        """The `n` most frequent failure reasons, e.g. `placeholder 4, schema 2` ("none" when there were none)."""
        return ", ".join(f"{r} {c}" for r, c in Counter(self.failures).most_common(n)) or "none"

    def failure_message(self) -> str:
        """One line for a run that stored nothing."""
        line = (f"generation of {self.spec} stored 0 of the {self.target_total - self.done_total} examples still "
                f"wanted ({self.backend}/{self.model}); top failure reasons: {self.top_failures()}")
        if self.message:
            line += f"; {self.message}"
        return line + f"; the raw answers are in {self.examples_dir}/_quarantine"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failures"] = dict(self.failures)
        data["response_formats"] = dict(self.response_formats)
        data["target_total"] = self.target_total
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationSummary":
        """The inverse of `to_dict` (derived keys are dropped, counters become `Counter`s again)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["failures"] = Counter(values.get("failures") or {})
        values["response_formats"] = Counter(values.get("response_formats") or {})
        return cls(**values)

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line. Names no command-line option: the same lines are
        printed by `faithforge generate`, the worker and the Prefect task, whose options differ."""
        out = [f"{self.spec}: {self.done_total}/{self.target_total} examples "
               f"({self.generated} new this run, {self.repaired} after repair) in {self.elapsed_s:.1f} s",
               "by category: " + ", ".join(f"{c} {self.done_by_category.get(c, 0)}/{t}"
                                           for c, t in self.targets.items())]
        if self.done_total > self.target_total:  # "10/5 examples" said nothing of what the dataset holds
            out.append(f"the target is below the {self.done_total} examples stored earlier: none is removed, and the "
                       f"exported dataset holds all {self.done_total}")
        if set(self.response_formats) - {"none"}:  # backends without modes (template, transformers) say nothing
            out.append("structured output: " + ", ".join(f"{m} {n}" for m, n in self.response_formats.most_common()))
        if self.first_answers:
            out.append(f"first answers: {self.first_answers}, {self.parse_failures} unparsable or off-schema, "
                       f"{self.quality_rejections} rejected by a quality gate; {self.repair_requests} repair "
                       f"request(s), {self.repaired} repaired")
        failures = Counter(self.failures)
        if failures:
            out.append(f"failed attempts: {sum(failures.values())} (" +
                       ", ".join(f"{r} {n}" for r, n in failures.most_common()) + ")")
            quality = {r: n for r, n in failures.items() if r in QUALITY_REASONS}
            if quality:
                out.append("rejected by quality gates: " + ", ".join(f"{r} {n}" for r, n in sorted(quality.items())))
        if self.truncations:
            out.append(f"truncated answers: {self.truncations} (allow more tokens per answer if this is frequent)")
        if self.lost_claims:
            out.append(f"results discarded because another worker took the slot over: {self.lost_claims}")
        if self.stopped != "completed":
            out.append(f"stopped early: {self.stopped}" + (f" — {self.message}" if self.message else ""))
        out.append(f"examples in {self.examples_dir}")
        return out
