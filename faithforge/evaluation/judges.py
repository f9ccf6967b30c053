"""Judges by name: `grounding` (default), `grounded-qa` (grounding + who-did-what on the grounded-qa task), `nli`,
`llm`, `likelihood` (a local causal LM's source-conditioned token log-probabilities)."""

from __future__ import annotations

from typing import Any, Sequence

from faithforge.core.errors import UserError
from faithforge.evaluation.grounding import GroundingJudge
from faithforge.evaluation.verdict import Judge

JUDGE_NAMES = ("grounding", "grounded-qa", "nli", "llm", "likelihood", "trained")
RULES = ("any", "all", "logistic")
DEFAULT_JUDGE = "grounding"


def get_judge(name: str | Sequence[str] = DEFAULT_JUDGE, **options: Any) -> Judge:
    """Build the judge called `name`; a list (or "grounding+nli") builds a combined judge, and then
    `options` maps each judge's name to its options.

    Options: `nli` takes `checkpoint` (a local folder) and optionally `threshold`, `supported_label`,
    `batch_size`; `llm` takes `backend` (an object with a `chat` method) and optionally `max_tokens`,
    `temperature`, `seed`, `attempts`.
    """
    if not isinstance(name, str) or "+" in name or "," in name or "rule" in options:
        rule = options.pop("rule", "any")
        combination = options.pop("combination", None)
        return build_judges(name, options, rule=rule, combination=combination)
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
    if name == "likelihood":
        from faithforge.evaluation.likelihood import LikelihoodJudge, LikelihoodScorer

        if options.pop("deferred", False) or not (options.get("model_path") or options.get("scorer")
                                                  or options.get("model")):
            raise UserError("the likelihood judge needs a causal LM: set evaluate.likelihood_model to a model folder "
                            "(it defaults to the run's base model inside a pipeline run)")
        scorer_keys = ("model", "tokenizer", "device", "max_source_tokens", "window_overlap_tokens", "batch_size",
                       "cache_dir")
        scorer = options.pop("scorer", None) or LikelihoodScorer(
            options.pop("model_path", None), **{k: options.pop(k) for k in scorer_keys if k in options})
        return LikelihoodJudge(scorer, **options)
    if name == "trained":
        path = options.pop("path", None)
        if not path:
            raise UserError("the trained judge needs the folder `faithforge judge train` wrote: set "
                            "evaluate.trained_judge_path")
        from faithforge.evaluation.trained import TrainedJudge

        return TrainedJudge(path, **options)
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


def build_judges(judge: str | Sequence[str], options: dict[str, dict[str, Any]] | None = None, *,
                 rule: str = "any", combination: Any = None) -> Judge:
    """One judge, or a `CombinedJudge` of several; `options` maps a judge name to its options; `rule` is how the
    list decides (`any`, `all`, or `logistic` with a `FittedCombination` or the path of one)."""
    names = judge_names(judge)
    options = options or {}
    built = [get_judge(name, **dict(options.get(name, {}))) for name in names]
    if rule not in RULES:
        raise UserError(f"judge rule {rule!r}: choose one of {', '.join(RULES)}")
    if len(built) == 1 and rule != "logistic":
        return built[0]
    from faithforge.evaluation.combined import CombinedJudge

    if rule == "logistic":
        from faithforge.evaluation.fitted import FittedCombination

        if combination is None:
            raise UserError("judge rule logistic needs a fitted combination: set evaluate.judge_combination to the "
                            "JSON file `faithforge eval fit-combination` wrote")
        if not isinstance(combination, FittedCombination):
            combination = FittedCombination.load(combination)
        unknown = sorted(set(combination.judges) - set(names))
        if unknown:
            raise UserError(f"the judge combination was fitted on {', '.join(combination.judges)}; evaluate.judge "
                            f"lacks {', '.join(unknown)}")
    return CombinedJudge(built, rule=rule, combination=combination)


def resolve_judge(judge: Judge | str | Sequence[str]) -> Judge:
    """A judge object as is, or the judge(s) with those names and default options."""
    if isinstance(judge, str) or isinstance(judge, (list, tuple)):
        return build_judges(judge)
    return judge
