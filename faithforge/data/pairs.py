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

from faithforge.core.errors import UserError, bad_rows_message
from faithforge.data.teacher import Example, prompt_messages

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


# ----- Importing existing preference pairs (pairs.path) ----------------------------------------------------

IMPORTED_KIND = "imported"


class PairsImportError(UserError):
    """A pairs file with unusable rows; the message names the file, each bad line and the fix."""


def _messages(value, where: str, field_name: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "assistant" if field_name != "prompt" else "user", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        for m in value:
            if not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
                raise ValueError(f"{field_name} has a message without string 'role' and 'content'; write messages as "
                                 '{"role": ..., "content": ...}')
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise ValueError(f"{field_name} must be text or a non-empty list of messages, not {type(value).__name__}")


def _split_implicit_prompt(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """TRL's conversational implicit-prompt rows hold whole conversations; the shared leading messages are the
    prompt and what follows is each completion."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise ValueError("has no prompt column and chosen/rejected share no leading messages; add a prompt")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def normalize_pair(row, where: str = "row") -> dict:
    """One imported row as a FaithForge pair (TRL conversational prompt/chosen/rejected + id, source_id, kind).

    Accepted: TRL's standard format and plain triplets ({prompt, chosen, rejected} as text), TRL's
    conversational format (lists of messages), and its conversational implicit-prompt format (no prompt;
    chosen/rejected are whole conversations). Missing ids come from the content; a missing `source_id` comes
    from the prompt, so every pair of the same prompt lands on the same side of the split. Raises ValueError
    saying what is wrong and how to fix it."""
    if not isinstance(row, dict):
        raise ValueError("not an object with named columns; write one JSON object per line")
    missing = [f for f in ("chosen", "rejected") if row.get(f) in (None, "", [])]
    if missing:
        raise ValueError(f"missing or empty {', '.join(missing)}; every pair needs a chosen and a rejected answer")
    prompt = row.get("prompt")
    if prompt in (None, "", []):
        if isinstance(row["chosen"], str):
            raise ValueError("has no prompt; add a prompt column (text-only implicit-prompt rows cannot be split "
                             "into prompt and answer)")
        prompt, chosen, rejected = _split_implicit_prompt(_messages(row["chosen"], where, "chosen"),
                                                          _messages(row["rejected"], where, "rejected"))
    else:
        prompt = _messages(prompt, where, "prompt")
        chosen = _messages(row["chosen"], where, "chosen")
        rejected = _messages(row["rejected"], where, "rejected")
    for name, messages in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if not " ".join(m["content"] for m in messages).strip():
            raise ValueError(f"{name} is empty; write the text or remove the row")
    if " ".join(m["content"] for m in chosen).strip() == " ".join(m["content"] for m in rejected).strip():
        raise ValueError("chosen equals rejected; a pair must prefer one answer over another (remove the row)")
    prompt_text = "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    source_id = row.get("source_id")
    source_id = str(source_id) if source_id not in (None, "") else hashlib.sha256(
        prompt_text.encode()).hexdigest()[:16]
    pair_id = row.get("id")
    if pair_id in (None, ""):
        blob = "\x00".join([prompt_text, *(m["content"] for m in chosen), "\x00", *(m["content"] for m in rejected)])
        pair_id = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return {"id": str(pair_id), "source_id": source_id, "kind": str(row.get("kind") or IMPORTED_KIND),
            "prompt": prompt, "chosen": chosen, "rejected": rejected}


def import_pairs(path: str | Path, *, split: str | None = None, allow_duplicates: bool = False) -> list[dict]:
    """Every row of a pairs file (JSONL, JSON, CSV, Parquet or a `save_to_disk` folder) as FaithForge pairs.

    All bad rows are reported at once with file, line (or row) and fix. A repeated id is a bad row unless
    `allow_duplicates` (then later copies are dropped — identical rows, e.g. from concatenated exports)."""
    from faithforge.data.documents import BadRow, read_rows

    problems: list[str] = []
    pairs: list[dict] = []
    first_seen: dict[str, str] = {}
    for where, row in read_rows(path, split, what="pairs file", setting="pairs.path"):
        if isinstance(row, BadRow):
            problems.append(f"{where}: {row}")
            continue
        try:
            pair = normalize_pair(row, where)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if pair["id"] in first_seen:
            if not allow_duplicates:
                problems.append(f"{where}: repeats id {pair['id']!r} of {first_seen[pair['id']]}; give each pair its "
                                "own id or remove the duplicate")
            continue
        first_seen[pair["id"]] = where
        pairs.append(pair)
    if problems:
        raise PairsImportError(bad_rows_message(path, problems, what="pair row"))
    if not pairs:
        raise PairsImportError(f"{path} holds no pairs; add rows with prompt, chosen and rejected")
    validate_pairs(pairs, path)
    return pairs
