"""Preference pairs in TRL's conversational format, their validation and their split.

A pair row: `{"id", "source_id", "kind", "prompt": [messages], "chosen": [assistant message],
"rejected": [assistant message]}`. `kind` says why the rejected summary is worse: `hallucination`
(a fact added or replaced by a value absent from the source) or `omission` (a stated fact dropped —
so the model cannot learn to hallucinate less by saying less).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from faithforge.errors import UserError
from faithforge.teacher import Example, prompt_messages

REQUIRED_FIELDS = ("id", "prompt", "chosen", "rejected")


@dataclass
class PairBuildReport:
    built: int = 0
    dropped: Counter = field(default_factory=Counter)
    by_kind: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"built": self.built, "dropped": dict(self.dropped), "by_kind": dict(self.by_kind)}


def _pair(example: Example, rejected: str, kind: str) -> dict:
    return {
        "id": hashlib.sha256(f"{example.id}:{kind}:{rejected}".encode()).hexdigest()[:16],
        "source_id": example.id,
        "kind": kind,
        "prompt": prompt_messages(example.source),
        "chosen": [{"role": "assistant", "content": example.faithful}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def build_synthetic_pairs(
    examples: Iterable[Example], omission_share: float, seed: int
) -> tuple[list[dict], PairBuildReport]:
    """chosen = faithful summary; rejected = the teacher's hallucinated variant, and for a share of the
    sources that state every fact, also the variant that drops one. Duplicates are dropped and counted."""
    report = PairBuildReport()
    seen: set[tuple[str, str, str]] = set()
    pairs = []
    for example in examples:
        candidates = []
        if example.hallucinated:
            candidates.append((example.hallucinated, "hallucination"))
        else:
            report.dropped["no hallucinated variant"] += 1
        rng = random.Random(f"omission:{seed}:{example.id}")
        if example.omission and rng.random() < omission_share:
            candidates.append((example.omission, "omission"))
        for rejected, kind in candidates:
            if rejected.strip() == example.faithful.strip():
                report.dropped["rejected equals chosen"] += 1
                continue
            key = (example.source, example.faithful, rejected)
            if key in seen:
                report.dropped["duplicate"] += 1
                continue
            seen.add(key)
            pairs.append(_pair(example, rejected, kind))
            report.by_kind[kind] += 1
    report.built = len(pairs)
    return pairs, report


def split_by_source(pairs: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Deterministic train/validation split by source: all pairs of one source land on the same side."""
    train, val = [], []
    for pair in pairs:
        digest = hashlib.sha256(f"split:{seed}:{pair['source_id']}".encode()).digest()
        (val if digest[0] / 256 < val_fraction else train).append(pair)
    return train, val


def _text_of(messages, where: str) -> str:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where} must be a non-empty list of messages")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or "role" not in message:
            raise ValueError(f"{where} has a message without 'role' and string 'content'")
    text = " ".join(m["content"] for m in messages)
    if not text.strip():
        raise ValueError(f"{where} is empty")
    return text


def validate_pairs(pairs: list[dict], source: str | Path = "pairs") -> None:
    """Reject unusable rows, naming the file, the row (1-based) and the fix; reports every bad row."""
    problems = []
    ids: set[str] = set()
    for row_number, pair in enumerate(pairs, start=1):
        if not isinstance(pair, dict):
            problems.append(f"row {row_number}: not a JSON object")
            continue
        missing = [f for f in REQUIRED_FIELDS if f not in pair or pair[f] in (None, "", [])]
        if missing:
            problems.append(f"row {row_number}: missing or empty field(s) {', '.join(missing)}")
            continue
        try:
            _text_of(pair["prompt"], "prompt")
            chosen = _text_of(pair["chosen"], "chosen")
            rejected = _text_of(pair["rejected"], "rejected")
        except ValueError as exc:
            problems.append(f"row {row_number}: {exc}")
            continue
        if chosen.strip() == rejected.strip():
            problems.append(f"row {row_number}: chosen equals rejected (a pair must prefer one answer over another)")
        if pair["id"] in ids:
            problems.append(f"row {row_number}: duplicate id {pair['id']!r}")
        ids.add(pair["id"])
    if problems:
        shown = "; ".join(problems[:10]) + (f"; … and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise UserError(f"{source}: {len(problems)} unusable pair row(s): {shown}. Fix or remove those rows "
                        "(each needs id, prompt, chosen and rejected, with chosen different from rejected)")
