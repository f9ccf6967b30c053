"""Judges by name: `grounding` (default), `nli`, `llm`."""

from __future__ import annotations

from typing import Any

from faithforge.errors import UserError
from faithforge.evaluation.grounding import GroundingJudge
from faithforge.evaluation.verdict import Judge

JUDGE_NAMES = ("grounding", "nli", "llm")
DEFAULT_JUDGE = "grounding"


def get_judge(name: str = DEFAULT_JUDGE, **options: Any) -> Judge:
    """Build the judge called `name`.

    Options: `nli` takes `checkpoint` (a local folder) and optionally `threshold`, `supported_label`,
    `batch_size`; `llm` takes `backend` (an object with a `chat` method) and optionally `max_tokens`,
    `temperature`, `seed`, `attempts`.
    """
    if name == "grounding":
        if options:
            raise UserError(f"the grounding judge takes no options (got {', '.join(sorted(options))})")
        return GroundingJudge()
    if name == "nli":
        checkpoint = options.pop("checkpoint", None)
        if not checkpoint:
            raise UserError("the nli judge needs a checkpoint: pass the folder of a local sequence-classification "
                            "model (e.g. --checkpoint PATH)")
        from faithforge.evaluation.nli import NliJudge

        return NliJudge(checkpoint, **options)
    if name == "llm":
        backend = options.pop("backend", None)
        if backend is None:
            raise UserError("the llm judge needs a chat backend (an object with a chat(...) method)")
        from faithforge.evaluation.llm import LlmJudge

        return LlmJudge(backend, **options)
    raise UserError(f"unknown judge {name!r}; choose one of {', '.join(JUDGE_NAMES)}")


def resolve_judge(judge: Judge | str) -> Judge:
    """A judge object as is, or the judge with that name and default options."""
    return get_judge(judge) if isinstance(judge, str) else judge
