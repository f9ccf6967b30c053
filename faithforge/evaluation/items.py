"""Evaluation inputs and the train/eval overlap guard."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

from faithforge.core.errors import UserError

_SHOWN_IDS = 5


class EvalItem(BaseModel):
    """One held-out source document to summarize and judge."""

    model_config = ConfigDict(frozen=True)

    id: str
    source: str
    key_facts: list[str] = Field(default_factory=list)
    """Facts a good summary keeps (for recall). Empty: content retention is reported instead."""
    category: str = "all"
    """Group for per-category rates (e.g. `day-stated` / `day-omitted`)."""
    reference: str | None = None
    """A reference summary, when one exists: coverage is measured against it (otherwise against the lead)."""


def check_disjoint(eval_ids: Iterable[str], training_ids: Iterable[str], *,
                   what: str = "evaluation items and training data") -> None:
    """Raise `UserError` naming a few shared ids when any evaluation id also occurs in training."""
    eval_set = set(eval_ids)
    shared = sorted(eval_set.intersection(training_ids))
    if not shared:
        return
    shown = ", ".join(shared[:_SHOWN_IDS]) + (f", … (+{len(shared) - _SHOWN_IDS} more)"
                                              if len(shared) > _SHOWN_IDS else "")
    raise UserError(
        f"{what} overlap: {len(shared)} of {len(eval_set)} evaluation ids were also used in training "
        f"({shown}); a rate measured on trained-on items is not held out — regenerate the splits or drop "
        f"those items from the training data")
