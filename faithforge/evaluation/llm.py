"""The `llm` judge: any chat backend lists the summary's unsupported claims as JSON.

The backend only needs a `chat(messages, *, schema, max_tokens, temperature, seed)` method returning an
object with `.text` (FaithForge's Ollama/OpenAI backends qualify). An answer that is not valid JSON of
the verdict schema is retried once with the parse error quoted; a second failure, or a backend error
that declares itself non-fatal (`fatal = False`), makes the item *unjudgeable*: counted separately, never
as faithful. Fatal backend errors (unknown model, unreachable server) propagate and stop the run.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol, runtime_checkable

from faithforge.errors import UserError
from faithforge.evaluation.text import analyze
from faithforge.evaluation.verdict import Flag, SentenceResult, Verdict, unjudgeable

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "unsupported_claims": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "claim": {"type": "string", "description": "the unsupported words, copied from the summary"},
                    "reason": {"type": "string", "description": "why the source does not support them"},
                },
                "required": ["claim", "reason"],
            },
        },
    },
    "required": ["unsupported_claims"],
}

SYSTEM_PROMPT = (
    "You check summaries for hallucinations. A claim is unsupported when the source does not state it or "
    "contradicts it: an invented or changed name, number, date, place, quote or event. Paraphrase of what "
    "the source states is supported. Answer only with JSON: {\"unsupported_claims\": [{\"claim\": \"words "
    "copied from the summary\", \"reason\": \"...\"}]}; an empty list when everything is supported."
)
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


@runtime_checkable
class ChatResultLike(Protocol):
    text: str


@runtime_checkable
class ChatBackendLike(Protocol):
    """What the llm judge needs from a backend."""

    def chat(self, messages: list[dict], *, schema: dict | None, max_tokens: int, temperature: float,
             seed: int | None) -> ChatResultLike:
        ...


class InvalidVerdict(ValueError):
    """The judge model's answer is not a verdict of the schema."""


def parse_verdict(text: str) -> list[dict[str, str]]:
    """The list of {claim, reason} in a judge answer; raises InvalidVerdict with the problem."""
    fenced = _FENCE.match(text)
    body = fenced.group(1) if fenced else text.strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidVerdict(f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(data, dict) or not isinstance(data.get("unsupported_claims"), list):
        raise InvalidVerdict('expected an object with an "unsupported_claims" list')
    claims = []
    for i, claim in enumerate(data["unsupported_claims"]):
        if not isinstance(claim, dict) or not isinstance(claim.get("claim"), str):
            raise InvalidVerdict(f'unsupported_claims[{i}] needs a string "claim"')
        claims.append({"claim": claim["claim"], "reason": str(claim.get("reason", ""))})
    return claims


class LlmJudge:
    """An LLM asked for the summary's unsupported claims, with one retry on an invalid answer."""

    name = "llm"

    def __init__(self, backend: ChatBackendLike, *, max_tokens: int = 512, temperature: float = 0.0,
                 seed: int | None = 0, attempts: int = 2):
        if not callable(getattr(backend, "chat", None)):
            raise UserError(f"the llm judge needs a backend with a chat(...) method; got {type(backend).__name__}")
        self.backend = backend
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed
        self.attempts = max(1, attempts)

    def messages(self, source: str, summary: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"SOURCE:\n{source}\n\nSUMMARY:\n{summary}"}]

    def judge(self, source: str, summary: str) -> Verdict:
        messages = self.messages(source, summary)
        problem = "no answer"
        for _ in range(self.attempts):
            try:
                result = self.backend.chat(messages, schema=VERDICT_SCHEMA, max_tokens=self.max_tokens,
                                           temperature=self.temperature, seed=self.seed)
            except Exception as exc:  # noqa: BLE001 - only backend errors that declare themselves non-fatal
                if getattr(exc, "fatal", None) is False:
                    return unjudgeable(self.name, f"backend error: {exc}")
                raise
            text = getattr(result, "text", "")
            try:
                if getattr(result, "truncated", False):
                    raise InvalidVerdict("answer cut off at max_tokens")
                claims = parse_verdict(text)
            except InvalidVerdict as exc:
                problem = str(exc)
                messages = messages + [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": f"That answer was invalid: {problem}. Reply with only the JSON "
                                                f"object described, nothing else."}]
                continue
            return self._verdict(summary, claims)
        return unjudgeable(self.name, f"no valid verdict after {self.attempts} attempts: {problem}")

    def _verdict(self, summary: str, claims: list[dict[str, str]]) -> Verdict:
        analysis = analyze(summary)
        lowered = summary.lower()
        flags: list[Flag] = []
        for claim in claims:
            text = claim["claim"].strip()
            at = lowered.find(text.lower()) if text else -1
            if at < 0:
                flags.append(Flag(text, None, "claim", None, claim["reason"] or "judged unsupported"))
                continue
            sentence = next((i for i, (start, end) in enumerate(analysis.sentence_spans) if start <= at < end), None)
            flags.append(Flag(summary[at:at + len(text)], (at, at + len(text)), "claim", sentence,
                              claim["reason"] or "judged unsupported"))
        flagged = {f.sentence_index for f in flags}
        sentences = tuple(SentenceResult(index=i, text=analysis.sentence_text(i), supported=i not in flagged)
                          for i in range(len(analysis.sentence_spans)))
        # A claim the judge did not quote verbatim still makes the summary hallucinated; sentence-level
        # counts include only claims it could be located in.
        return Verdict(judge=self.name, hallucinated=bool(flags), sentences=sentences, flags=tuple(flags))
