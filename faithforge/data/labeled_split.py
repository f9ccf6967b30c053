"""One fixed split of a labeled set into a development half and a held-out half, by a hash of each item's id.

Written down before any result was read (the rule in bench/data/README.md): an item is `dev` when the first byte
of SHA-256 of its id is even, `heldout` otherwise. Thresholds, fits and choices use `dev`; figures are reported on
`heldout`. It depends on the id alone, so it is the same on every machine, in every order, for every consumer (the
real-text judge benchmark and the real-documents benchmark share it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from faithforge.core.errors import UserError
from faithforge.core.workspace import read_keyed_jsonl

Half = Literal["dev", "heldout"]


def label_split(item_id: str) -> Half:
    """`dev` or `heldout` for this id: the first byte of SHA-256 of the UTF-8 id, even → `dev`."""
    return "dev" if hashlib.sha256(str(item_id).encode("utf-8")).digest()[0] % 2 == 0 else "heldout"


@dataclass(frozen=True)
class LabeledSummary:
    """One human-labeled (article, summary) row of a QAGS-style file."""

    id: str
    dataset: str
    source: str
    summary: str
    consistent: bool
    """The human majority: True when every summary sentence was judged supported by the article."""
    unsupported_sentences: tuple[str, ...] = ()

    @property
    def half(self) -> Half:
        return label_split(self.id)


def read_labeled_summaries(path: str | Path) -> list[LabeledSummary]:
    """Rows of a QAGS-style JSONL file (`id`, `dataset`, `source`, `summary`, `label` 1/0); a bad row is one line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"labeled summaries {path} not found; pass a JSONL file with id, dataset, source, summary, label")
    return read_keyed_jsonl(path, _labeled_summary, what="a labeled summary",
                            needs="id, source, summary and label 1 (consistent) or 0")


def _labeled_summary(raw: dict, _line: int) -> LabeledSummary:
    return LabeledSummary(id=str(raw["id"]), dataset=str(raw.get("dataset", "all")), source=str(raw["source"]),
                          summary=str(raw["summary"]), consistent=_label(raw["label"]),
                          unsupported_sentences=tuple(raw.get("unsupported_sentences") or ()))


def _label(value: object) -> bool:
    if value in (1, True, "1", "consistent", "faithful"):
        return True
    if value in (0, False, "0", "inconsistent", "hallucinated"):
        return False
    raise ValueError(f"label {value!r} is not 1/0")


__all__ = ["Half", "LabeledSummary", "label_split", "read_labeled_summaries"]
