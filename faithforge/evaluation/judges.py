"""Judges by name, built from the registry (`faithforge.core.judge_registry`: which judges exist, where each
lives, what it needs); a list of names builds a combined judge."""

from __future__ import annotations

from typing import Any, Sequence

from faithforge.core.errors import UserError
from faithforge.core.judge_registry import DEFAULT_JUDGE, JUDGE_RULES, JUDGES
from faithforge.core.registry import load_attribute
from faithforge.evaluation.verdict import Judge

def get_judge(name: str | Sequence[str] = DEFAULT_JUDGE, **options: Any) -> Judge:
    """Build the judge called `name` with its module's `build(**options)`; a list (or "grounding+nli") builds a
    combined judge, and then `options` maps each judge's name to its options (each module's `build` documents
    its own)."""
    if not isinstance(name, str) or "+" in name or "," in name or "rule" in options:
        rule = options.pop("rule", "any")
        combination = options.pop("combination", None)
        return build_judges(name, options, rule=rule, combination=combination)
    kind = JUDGES.get(name)
    judge = load_attribute(kind, "build")(**options)
    if kind.own_settings:  # its settings are part of its identity (`heldout.judge_checkpoint`); the run's paths not
        try:
            judge.faithforge_settings = {k: v for k, v in options.items() if k not in kind.run_inputs}
        except (AttributeError, TypeError):
            raise TypeError(f"the {name} judge's build returned an object that takes no new attribute (__slots__?); "
                            "a judge with settings of its own carries them as `faithforge_settings`") from None
    return judge


def own_settings_of(judge: Judge) -> dict[str, Any] | None:
    """The settings a judge with settings of its own was built with (None: a judge without any)."""
    settings = getattr(judge, "faithforge_settings", None)
    return settings if isinstance(settings, dict) else None


def judge_names(judge: str | Sequence[str]) -> list[str]:
    """`evaluate.judge` as a list of names: one name, a list, or "grounding+nli" / "grounding,nli"."""
    raw = [judge] if isinstance(judge, str) else list(judge)
    names = [part.strip() for item in raw for part in str(item).replace("+", ",").split(",") if part.strip()]
    if not names:
        raise UserError(f"no judge named; choose from {JUDGES.choices()} (a list combines them)")
    unknown = [n for n in names if n not in JUDGES]
    if unknown:
        raise UserError(f"unknown judge {unknown[0]!r}; choose from {JUDGES.choices()} (a list combines them)")
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
    if rule not in JUDGE_RULES:
        raise UserError(f"judge rule {rule!r}: choose one of {', '.join(JUDGE_RULES)}")
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
