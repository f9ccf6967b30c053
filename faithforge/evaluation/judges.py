"""Judges by name: `grounding` (default), `grounded-qa` (grounding + who-did-what on the grounded-qa task), `nli`,
`llm`."""

from __future__ import annotations

from typing import Any, Sequence

from faithforge.core.errors import UserError
from faithforge.evaluation.grounding import GroundingJudge
from faithforge.evaluation.verdict import Judge

JUDGE_NAMES = ("grounding", "grounded-qa", "nli", "llm")
DEFAULT_JUDGE = "grounding"


def get_judge(name: str | Sequence[str] = DEFAULT_JUDGE, **options: Any) -> Judge:
    """Build the judge called `name`; a list (or "grounding+nli") builds a combined judge, and then
    `options` maps each judge's name to its options.

    Options: `nli` takes `checkpoint` (a local folder) and optionally `threshold`, `supported_label`,
    `batch_size`; `llm` takes `backend` (an object with a `chat` method) and optionally `max_tokens`,
    `temperature`, `seed`, `attempts`.
    """
    if not isinstance(name, str) or "+" in name or "," in name:
        return build_judges(name, options)
    if name == "grounding":
        if options:
            raise UserError(f"the grounding judge takes no options (got {', '.join(sorted(options))})")
        return GroundingJudge()  # its measured limits travel with every report (GroundingJudge.limits)
    if name == "grounded-qa":
        if options:
            raise UserError(f"the grounded-qa judge takes no options (got {', '.join(sorted(options))})")
        from faithforge.evaluation.attribution import GroundedQaJudge

        return GroundedQaJudge()
    if name == "nli":
        checkpoint = options.pop("checkpoint", None)
        if not checkpoint:
            raise UserError("the nli judge needs a checkpoint: pass the folder (or hub id) of a sequence-classification "
                            "model or seq2seq checker (e.g. --checkpoint PATH)")
        from faithforge.evaluation.nli import NliJudge

        return NliJudge(checkpoint, **options)
    if name == "llm":
        backend = options.pop("backend", None)
        if backend is None:
            raise UserError("the llm judge needs a chat backend (an object with a chat(...) method)")
        from faithforge.evaluation.llm import LlmJudge

        return LlmJudge(backend, **options)
    raise UserError(f"unknown judge {name!r}; choose one of {', '.join(JUDGE_NAMES)}")


def judge_names(judge: str | Sequence[str]) -> list[str]:
    """`evaluate.judge` as a list of names: one name, a list, or "grounding+nli" / "grounding,nli"."""
    raw = [judge] if isinstance(judge, str) else list(judge)
    names = [part.strip() for item in raw for part in str(item).replace("+", ",").split(",") if part.strip()]
    if not names:
        raise UserError(f"no judge named; choose from {', '.join(JUDGE_NAMES)} (a list combines them)")
    unknown = [n for n in names if n not in JUDGE_NAMES]
    if unknown:
        raise UserError(f"unknown judge {unknown[0]!r}; choose from {', '.join(JUDGE_NAMES)} (a list combines them)")
    if len(set(names)) != len(names):
        raise UserError(f"judge list {names} names a judge twice; list each judge once")
    return names


def build_judges(judge: str | Sequence[str], options: dict[str, dict[str, Any]] | None = None) -> Judge:
    """One judge, or a `CombinedJudge` of several; `options` maps a judge name to its options."""
    names = judge_names(judge)
    options = options or {}
    built = [get_judge(name, **dict(options.get(name, {}))) for name in names]
    if len(built) == 1:
        return built[0]
    from faithforge.evaluation.combined import CombinedJudge

    return CombinedJudge(built)


def resolve_judge(judge: Judge | str | Sequence[str]) -> Judge:
    """A judge object as is, or the judge(s) with those names and default options."""
    if isinstance(judge, str) or isinstance(judge, (list, tuple)):
        return build_judges(judge)
    return judge
