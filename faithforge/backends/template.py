"""The offline template teacher as a chat backend: deterministic valid JSON for `grounded-summaries`.

No model, no network: it reads the prompt for the day rule ("must state the day" / "must not mention
the day"), derives the example from the request's `seed` and prompt, and answers with the JSON object the
grounded-summaries spec asks for. Used offline, in tests, and for the overhead benchmark.
"""

from __future__ import annotations

import json
import time
import zlib

from pydantic import BaseModel, ConfigDict, Field

from faithforge.backends.base import BackendConfigError, BackendOptions, ChatResult, Usage
from faithforge.core.errors import UserError
from faithforge.data.teacher import make_example

STATES_DAY = "must state the day"
OMITS_DAY = "must not mention the day"
REQUIRED_FIELDS = ("source_document", "summary", "key_facts")


class TemplateBackend:
    """Answers grounded-summaries prompts from `faithforge.data.teacher`; `delay_s` (seconds) simulates a model."""

    name = "template"

    def __init__(self, model: str = "template-teacher", *, delay_s: float = 0.0):
        self.model = model
        self.delay_s = delay_s

    def __repr__(self) -> str:
        return f"TemplateBackend(delay_s={self.delay_s})"

    def chat(self, messages: list[dict], *, schema: dict | None = None, max_tokens: int = 1024,
             temperature: float = 0.0, seed: int | None = None) -> ChatResult:
        properties = (schema or {}).get("properties") or {}
        if schema is not None and not all(name in properties for name in REQUIRED_FIELDS):
            raise BackendConfigError(
                "the template backend only writes grounded-summaries examples (fields "
                f"{', '.join(REQUIRED_FIELDS)}); use --backend {_model_backends()} for this spec")
        if self.delay_s:
            time.sleep(self.delay_s)
        prompt = next((m.get("content") or "" for m in messages if m.get("role") == "user"), "")
        share = 1.0 if OMITS_DAY in prompt else 0.0 if STATES_DAY in prompt else 0.5
        example = make_example("generated", int(seed or 0), zlib.crc32(prompt.encode()), share)
        answer = {"source_document": example.source, "summary": example.faithful,
                  "key_facts": example.facts.key_facts(), "hallucinated_summary": example.hallucinated}
        text = json.dumps(answer, ensure_ascii=False)
        words = len(text.split())
        return ChatResult(text=text, finish_reason="stop", truncated=False, model=self.model,
                          usage=Usage(prompt_tokens=len(prompt.split()), completion_tokens=words))


def check_spec(spec) -> None:
    """Refuse, before a run, a generation spec this teacher cannot write (it writes grounded summaries only)."""
    properties = set((spec.schema_for(spec.categories[0]).get("properties") or {}))
    if not set(REQUIRED_FIELDS) <= properties:
        raise UserError(f"the template backend only writes grounded-summaries examples, not {spec.name}; use "
                        f"--backend {_model_backends()} for this spec")


def _model_backends() -> str:
    """The backends that run a model, as the registry lists them (a hand-written list here had gone stale)."""
    from faithforge.core.backend_registry import BACKENDS

    return BACKENDS.choices(lambda kind: kind.runs_model).replace(", ", "/")


class Options(BaseModel):
    """The template teacher's own settings (`backend_options.template`)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)

    delay_s: float = Field(0.0, ge=0, le=3_600)
    """Seconds per request: simulates a model in tests and benchmarks of slow generation."""


def build(model: str, options: BackendOptions) -> TemplateBackend:
    """The registered builder (`faithforge.core.backend_registry`)."""
    return TemplateBackend(model or "template-teacher", delay_s=options.settings.delay_s)

