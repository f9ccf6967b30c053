"""Loopback fake behaviours for the llm judge, on top of the generation helper's fakes (tests/fake_llm_servers.py).

`LlamaCppLikeOpenAI`: an OpenAI-compatible fake that refuses `response_format: {"type": "json_schema"}`
with HTTP 500 `Input should be 'text' or 'json_object'`, as llama-cpp-python's server does (research notes,
December 2026), and answers everything else through `default`.
`rule_judge`: a `default` that plays a judge model deterministically — it splits the summary into its
sentences as claims, and calls a claim supported when every word of it is in the source and the claim and
the source agree on negation. Crafted pairs then have hand-checkable verdicts; the point is the judge's
plumbing (two steps, spans, negotiation), not a model's quality.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fake_llm_servers import Behaviour, FakeOpenAI, Reply, Status

NEGATIONS = {"not", "no", "never", "nobody", "didn't", "did"}


class LlamaCppLikeOpenAI(FakeOpenAI):
    """Refuses json_schema response formats like llama.cpp's server; records the formats it was sent."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.formats: list[str | None] = []

    def next_behaviour(self, body: dict[str, Any]) -> Behaviour:
        kind = (body.get("response_format") or {}).get("type")
        self.formats.append(kind)
        if kind == "json_schema":
            return Status(500, "1 validation error for CreateChatCompletionRequest\nresponse_format.type\n  "
                               "Input should be 'text' or 'json_object'")
        return super().next_behaviour(body)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[\w']+", text.lower()))


def rule_judge(body: dict[str, Any]) -> Reply:
    """Answer an extraction or a check request of the llm judge by a fixed rule."""
    user = body["messages"][-1]["content"]
    if user.startswith("SUMMARY:"):
        summary = user[len("SUMMARY:"):].strip()
        claims = [s.strip() for s in re.split(r"(?<=[.!?])\s+", summary) if s.strip()]
        return Reply(json.dumps({"claims": claims}))
    source, claim = user[len("SOURCE:"):].split("\n\nCLAIM:\n", 1)
    src, said = _words(source), _words(claim)
    negated = bool(said & {"not", "never", "no"}) != bool(src & {"not", "never", "no"})
    supported = said <= src and not negated
    missing = sorted(said - src)
    reason = "all stated" if supported else (f"not in the source: {', '.join(missing)}" if missing else "negation")
    return Reply(json.dumps({"supported": supported, "reason": reason}))
