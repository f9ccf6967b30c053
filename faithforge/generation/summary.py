"""The end-of-run summary: what was generated, what failed and why, and why the run stopped."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


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
    failures: Counter = field(default_factory=Counter)
    """Failed attempts of this run by reason (`schema`, `invalid_json`, `truncated`, `duplicate`, `timeout`, ...)."""
    truncations: int = 0
    """Answers cut off at max_tokens (first tries and repairs)."""
    lost_claims: int = 0
    """Results discarded because the lease had expired and another worker held the slot."""
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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failures"] = dict(self.failures)
        data["target_total"] = self.target_total
        return data

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        out = [f"{self.spec}: {self.done_total}/{self.target_total} examples "
               f"({self.generated} new this run, {self.repaired} after repair) in {self.elapsed_s:.1f} s",
               "by category: " + ", ".join(f"{c} {self.done_by_category.get(c, 0)}/{t}"
                                           for c, t in self.targets.items())]
        if self.failures:
            out.append(f"failed attempts: {sum(self.failures.values())} (" +
                       ", ".join(f"{r} {n}" for r, n in self.failures.most_common()) + ")")
        if self.truncations:
            out.append(f"truncated answers: {self.truncations} (raise --max-tokens if this is frequent)")
        if self.lost_claims:
            out.append(f"results discarded after an expired lease: {self.lost_claims} (raise --claim-ttl)")
        if self.stopped != "completed":
            out.append(f"stopped early: {self.stopped}" + (f" — {self.message}" if self.message else ""))
        out.append(f"examples in {self.examples_dir}")
        return out
