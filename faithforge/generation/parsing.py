"""Turn a model's raw answer into a validated JSON object, or a failure with a reason.

Order: drop think blocks, drop Markdown code fences, take the first JSON object that decodes, move known
reasoning keys (`thought`, `reasoning`, ...) that the schema does not declare out of the object, validate
it against the category's JSON Schema. Reasons (`ParseFailure.reason`) are stable names used in summaries:
`empty`, `truncated`, `no_json`, `invalid_json`, `schema`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator

from faithforge.backends.base import split_think

#: Keys models use to wrap their reasoning around the answer (`{"thought": "...", "summary": "..."}`). They
#: are taken out of the object before validation, unless the schema declares them as fields.
REASONING_KEYS = ("thought", "thoughts", "thinking", "think", "reasoning", "reasoning_content", "analysis",
                  "rationale", "chain_of_thought", "cot", "scratchpad", "inner_monologue", "reflection", "plan")

_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
# strict=False: accept raw newlines and tabs inside strings; small models (and llama.cpp's json_object
# grammar) write them, and they carry no ambiguity.
_DECODER = json.JSONDecoder(strict=False)


@dataclass(frozen=True)
class ParseFailure:
    reason: str
    """`empty`, `truncated`, `no_json`, `invalid_json` or `schema`."""
    detail: str
    """What was wrong, phrased so it can be sent back to the model in a repair request."""


def strip_wrappers(text: str) -> str:
    """The answer without think blocks and without a surrounding Markdown code fence."""
    answer, _ = split_think(text)
    fenced = _FENCE.search(answer)
    return fenced.group(1).strip() if fenced else answer.strip()


def extract_object(text: str) -> tuple[dict[str, Any] | None, ParseFailure | None]:
    """The first JSON object in `text` (after `strip_wrappers`)."""
    body = strip_wrappers(text)
    if not body:
        return None, ParseFailure("empty", "the reply was empty")
    first_error = None
    for match in re.finditer(r"\{", body):
        try:
            value, _ = _DECODER.raw_decode(body, match.start())
        except json.JSONDecodeError as exc:
            first_error = first_error or exc
            continue
        if isinstance(value, dict):
            return value, None
    if first_error is None:
        return None, ParseFailure("no_json", "the reply contained no JSON object")
    return None, ParseFailure("invalid_json", f"the JSON object does not parse: {first_error.msg} "
                                              f"at line {first_error.lineno} column {first_error.colno}")


@lru_cache(maxsize=64)
def _validator(schema_json: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(schema_json))


def schema_errors(obj: Any, schema: dict[str, Any], limit: int = 5) -> list[str]:
    """Up to `limit` validation errors, each as `path: message`."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    out = []
    for err in errors[:limit]:
        path = "/".join(str(p) for p in err.absolute_path) or "(root)"
        out.append(f"{path}: {err.message[:200]}")
    return out


def split_reasoning(obj: dict[str, Any], schema: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """`obj` without the reasoning keys its schema does not declare, and their text (one block per key)."""
    declared = set((schema.get("properties") or {}))
    kept, reasoning = {}, []
    for key, value in obj.items():
        if key.lower() in REASONING_KEYS and key not in declared:
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            reasoning.append(f"{key}: {text}")
        else:
            kept[key] = value
    return kept, "\n".join(reasoning)


@dataclass(frozen=True)
class ParsedReply:
    payload: dict[str, Any] | None
    """The validated object (reasoning keys removed), or None."""
    failure: ParseFailure | None
    reasoning: str = ""
    """Reasoning taken out of the object (`key: text` lines); kept beside the example, never in it."""


def parse_reply(text: str, schema: dict[str, Any], *, truncated: bool = False) -> ParsedReply:
    """Validated object, or why not. A truncated answer that still holds a valid object is accepted."""
    obj, failure = extract_object(text)
    if failure is not None:
        if truncated:
            return ParsedReply(None, ParseFailure("truncated", "the reply was cut off at the token limit before "
                                                               "the JSON object ended; answer more briefly"))
        return ParsedReply(None, failure)
    obj, reasoning = split_reasoning(obj, schema)
    problems = schema_errors(obj, schema)
    if problems:
        return ParsedReply(None, ParseFailure("schema", "the JSON object does not match the schema: " +
                                              "; ".join(problems)), reasoning)
    return ParsedReply(obj, None, reasoning)


def parse_answer(text: str, schema: dict[str, Any], *, truncated: bool = False
                 ) -> tuple[dict[str, Any] | None, ParseFailure | None]:
    """`parse_reply` as (payload, failure)."""
    parsed = parse_reply(text, schema, truncated=truncated)
    return parsed.payload, parsed.failure


def content_hash(obj: Any) -> str:
    """sha256 hex of the canonical JSON of `obj` (sorted keys, no whitespace): the dedup key."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def repair_messages(messages: list[dict], raw: str, failure: ParseFailure) -> list[dict]:
    """The original conversation, the bad answer, and a request to fix exactly what was wrong."""
    return [*messages, {"role": "assistant", "content": raw},
            {"role": "user", "content": f"That reply was not usable: {failure.detail}. Reply with only the "
                                        "corrected JSON object, nothing else."}]
