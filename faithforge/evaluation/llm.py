"""The `llm` judge: a chat model checks a summary claim by claim against its source.

Two steps, each a structured chat request:

1. **Extract** the summary's factual claims, each copied from the summary's words (`CLAIMS_SCHEMA`).
2. **Check** every claim against the source on its own (`CHECK_SCHEMA`): supported or not, and why.

The summary is hallucinated when any claim is unsupported; each unsupported claim is returned with its
span in the summary and the sentence it sits in (claims are located by their words, so a claim the model
re-punctuated or re-cased is still found). An empty summary has no claims and is faithful.

The backend only needs `chat(messages, *, schema, max_tokens, temperature, seed)` returning an object
with `.text` (and optionally `.truncated`): FaithForge's Ollama and OpenAI-compatible backends, which
negotiate the response format themselves (json_schema → json_object → instructions in the prompt, per
server and model, remembered). For any other backend the judge negotiates: a refusal that names the
response format makes it send no schema (the JSON shape is always stated in the prompt too) for the rest
of its life.

An answer that is not valid JSON of the schema is retried once with the problem quoted; a step that still
fails, or a backend error that declares itself non-fatal (`fatal = False`), makes the item *unjudgeable*:
counted apart, never as faithful — unless another claim was already found unsupported, which decides the
item. Fatal backend errors (unknown model, unreachable server) propagate and stop the run.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol, runtime_checkable

from faithforge.core.errors import UserError
from faithforge.evaluation.text_analysis import analyze, drop_truncated_word, tokenize
from faithforge.evaluation.verdict import Flag, SentenceResult, Verdict, unjudgeable

CLAIMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "claims": {
            "type": "array",
            "items": {"type": "string", "description": "one factual claim, words copied from the summary"},
        },
    },
    "required": ["claims"],
    "additionalProperties": False,
}

CHECK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "supported": {"type": "boolean", "description": "true only when the source states the claim"},
        "reason": {"type": "string", "description": "the source's words that support or contradict it"},
    },
    "required": ["supported", "reason"],
    "additionalProperties": False,
}

EXTRACT_PROMPT = (
    "Split the summary into its factual claims: who did what, when, where, how many, and any quote. One "
    "claim per fact, each copied word for word from the summary (a contiguous piece of it). Answer only "
    "with JSON: {\"claims\": [\"...\", \"...\"]}."
)
CHECK_PROMPT = (
    "You check one claim against a source document. The claim is supported only when the source states it "
    "or it follows directly; it is unsupported when the source does not mention it or contradicts it (a "
    "changed name, number, date, place, relation, a negation, an invented event or quote). Paraphrase of "
    "what the source states is supported. Answer only with JSON: {\"supported\": true or false, "
    "\"reason\": \"...\"}."
)
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)
# Words a server uses when it refuses the structured-output part of a request (response_format, Ollama's
# `format`, vLLM's guided decoding): such a refusal is not an outage, the judge drops the schema instead.
_FORMAT_REFUSAL = re.compile(r"response_format|json_schema|json_object|structured output|guided|grammar|\bformat\b",
                             re.IGNORECASE)


@runtime_checkable
class ChatResultLike(Protocol):
    text: str


@runtime_checkable
class ChatBackendLike(Protocol):
    """What the llm judge needs from a backend."""

    def chat(self, messages: list[dict], *, schema: dict | None, max_tokens: int, temperature: float,
             seed: int | None) -> ChatResultLike:
        ...


class InvalidAnswer(ValueError):
    """The judge model's answer is not JSON of the schema asked for."""


class _Unjudgeable(Exception):
    """One step could not be decided (its message says why)."""


def _json_object(text: str) -> dict[str, Any]:
    fenced = _FENCE.match(text)
    body = fenced.group(1) if fenced else text.strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidAnswer(f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(data, dict):
        raise InvalidAnswer(f"expected a JSON object, got {type(data).__name__}")
    return data


def parse_claims(text: str) -> list[str]:
    """The claims in an extraction answer; raises InvalidAnswer with the problem."""
    data = _json_object(text)
    claims = data.get("claims")
    if not isinstance(claims, list) or not all(isinstance(c, str) for c in claims):
        raise InvalidAnswer('expected an object with a "claims" list of strings')
    return [c.strip() for c in claims if c.strip()]


def parse_check(text: str) -> tuple[bool, str]:
    """(supported, reason) from a check answer; raises InvalidAnswer with the problem."""
    data = _json_object(text)
    supported = data.get("supported")
    if isinstance(supported, str) and supported.strip().lower() in ("true", "false", "yes", "no"):
        supported = supported.strip().lower() in ("true", "yes")
    if not isinstance(supported, bool):
        raise InvalidAnswer('expected an object with a boolean "supported"')
    return supported, str(data.get("reason", ""))


def _word_tokens(text: str) -> list[tuple[str, int, int]]:
    return [(t.text.lower().replace("’", "'"), t.start, t.end) for t in tokenize(text) if t.text[0].isalnum()]


def locate_claim(summary: str, claim: str) -> tuple[int, int] | None:
    """(start, end) of `claim` in `summary`: verbatim ignoring case, else the same words in order ignoring
    punctuation and spacing ("Graz." finds "Graz ."); None when the words are not there contiguously."""
    claim = claim.strip()
    if not claim:
        return None
    at = summary.lower().find(claim.lower())
    if at >= 0 and len(summary[at:at + len(claim)]) == len(claim):
        return at, at + len(claim)
    words = _word_tokens(summary)
    needle = [w for w, _, _ in _word_tokens(claim)]
    if not needle:
        return None
    keys = [w for w, _, _ in words]
    n = len(needle)
    for i in range(len(keys) - n + 1):
        if keys[i] == needle[0] and keys[i:i + n] == needle:
            return words[i][1], words[i + n - 1][2]
    return None


def _best_sentence(analysis: Any, claim: str) -> int | None:
    """The sentence sharing most content words with a claim that could not be located verbatim."""
    wanted = set(analyze(claim).content_keys())
    best, best_overlap = None, 0
    for index in range(len(analysis.sentence_spans)):
        overlap = len(wanted & {u.key for u in analysis.sentence_units(index) if u.is_content})
        if overlap > best_overlap:
            best, best_overlap = index, overlap
    return best


class LlmJudge:
    """An LLM that extracts a summary's claims and checks each against the source."""

    name = "llm"

    def __init__(self, backend: ChatBackendLike, *, max_tokens: int = 512, temperature: float = 0.0,
                 seed: int | None = 0, attempts: int = 2, max_claims: int = 12):
        if not callable(getattr(backend, "chat", None)):
            raise UserError(f"the llm judge needs a backend with a chat(...) method; got {type(backend).__name__}")
        self.backend = backend
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed
        self.attempts = max(1, attempts)
        self.max_claims = max_claims
        self.send_schema = True
        """False once the backend refused a response format: the JSON shape then travels in the prompt only."""
        self.checkpoint = getattr(backend, "model", None) or type(backend).__name__

    @property
    def structured_output(self) -> str:
        """How answers are constrained: the backend's negotiated mode when it has one, else schema/prompt."""
        negotiator = getattr(self.backend, "negotiator", None)
        mode = getattr(negotiator, "mode", None)
        if isinstance(mode, str):
            return mode
        return "schema" if self.send_schema else "prompt"

    # one structured step ---------------------------------------------------------------------------
    def _ask(self, messages: list[dict[str, str]], schema: dict[str, Any], parse: Any) -> Any:
        problem = "no answer"
        for _ in range(self.attempts):
            result = self._chat(messages, schema)
            text = getattr(result, "text", "") or ""
            try:
                if getattr(result, "truncated", False):
                    raise InvalidAnswer(f"answer cut off at max_tokens={self.max_tokens}")
                return parse(text)
            except InvalidAnswer as exc:
                problem = str(exc)
                messages = messages + [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": f"That answer was invalid: {problem}. Reply with only the JSON "
                                                f"object described, nothing else."}]
        raise _Unjudgeable(f"no valid answer after {self.attempts} attempts: {problem}")

    def _chat(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> Any:
        while True:
            try:
                return self.backend.chat(messages, schema=schema if self.send_schema else None,
                                         max_tokens=self.max_tokens, temperature=self.temperature, seed=self.seed)
            except Exception as exc:  # noqa: BLE001 - sorted below: format refusal, non-fatal, or raised
                if self.send_schema and _FORMAT_REFUSAL.search(str(exc)) and getattr(exc, "fatal", None) is not True:
                    self.send_schema = False  # remembered: every later request goes without a schema
                    continue
                if getattr(exc, "fatal", None) is False:
                    raise _Unjudgeable(f"backend error: {exc}") from None
                raise

    # the two steps -------------------------------------------------------------------------------
    def extract_claims(self, summary: str) -> list[str]:
        messages = [{"role": "system", "content": EXTRACT_PROMPT},
                    {"role": "user", "content": f"SUMMARY:\n{summary}"}]
        return self._ask(messages, CLAIMS_SCHEMA, parse_claims)[:self.max_claims]

    def check_claim(self, source: str, claim: str) -> tuple[bool, str]:
        messages = [{"role": "system", "content": CHECK_PROMPT},
                    {"role": "user", "content": f"SOURCE:\n{source}\n\nCLAIM:\n{claim}"}]
        return self._ask(messages, CHECK_SCHEMA, parse_check)

    def judge(self, source: str, summary: str, *, truncated: bool = False) -> Verdict:
        """Extract claims, check each; `truncated`: the summary's cut-off last word is not a claim."""
        checked = drop_truncated_word(summary) if truncated else summary
        analysis = analyze(checked)
        if not analysis.sentence_spans:
            return Verdict(judge=self.name, hallucinated=False, truncated=truncated)
        try:
            claims = self.extract_claims(checked)
        except _Unjudgeable as exc:
            return _unjudgeable(self.name, f"claim extraction: {exc}", truncated)
        if not claims:  # a model that finds no claim in a non-empty summary: each sentence is a claim
            claims = [analysis.sentence_text(i) for i in range(len(analysis.sentence_spans))]
        flags: list[Flag] = []
        undecided: list[str] = []
        for claim in claims:
            try:
                supported, reason = self.check_claim(source, claim)
            except _Unjudgeable as exc:
                undecided.append(f"{claim!r}: {exc}")
                continue
            if supported:
                continue
            span = locate_claim(checked, claim)
            if span is None:
                flags.append(Flag(claim, None, "claim", _best_sentence(analysis, claim),
                                  reason or "judged unsupported"))
                continue
            sentence = next((i for i, (start, end) in enumerate(analysis.sentence_spans) if start <= span[0] < end),
                            None)
            flags.append(Flag(checked[span[0]:span[1]], span, "claim", sentence, reason or "judged unsupported"))
        if undecided and not flags:
            return _unjudgeable(self.name, f"{len(undecided)} of {len(claims)} claims could not be checked: "
                                           + "; ".join(undecided[:3]), truncated)
        flagged = {f.sentence_index for f in flags}
        sentences = tuple(SentenceResult(index=i, text=analysis.sentence_text(i), supported=i not in flagged)
                          for i in range(len(analysis.sentence_spans)))
        # A claim that could not be tied to a sentence still makes the summary hallucinated.
        return Verdict(judge=self.name, hallucinated=bool(flags), sentences=sentences, flags=tuple(flags),
                       truncated=truncated)


def _unjudgeable(judge: str, error: str, truncated: bool) -> Verdict:
    verdict = unjudgeable(judge, error)
    return Verdict(**{**verdict.__dict__, "truncated": truncated})


def build(backend: ChatBackendLike | None = None, **options: Any) -> LlmJudge:
    """The registered builder (`faithforge.core.judge_registry`): `backend` (an object with a `chat` method) and
    optionally `max_tokens`, `temperature`, `seed`, `attempts`."""
    if backend is None:
        raise UserError("the llm judge needs a chat backend (an object with a chat(...) method)")
    return LlmJudge(backend, **options)


def options_from_config(cfg, *, base_model: str | None = None, cache_dir: str | None = None) -> dict[str, Any]:
    """`build`'s keywords from the `evaluate` section: the chat backend the judge model runs on."""
    from faithforge.backends import make_backend

    return {"backend": make_backend(cfg.llm_backend, cfg.llm_model, base_url=cfg.llm_base_url,
                                    settings=cfg.llm_backend_options.get(cfg.llm_backend),
                                    where="evaluate.llm_backend_options")}
