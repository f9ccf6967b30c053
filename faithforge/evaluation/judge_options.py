"""The configured judge's options (`EvaluateConfig` → `get_judge` keywords), checked before any model runs.

Used by the evaluate stage, the on-policy pairs stage (which judges samples) and the preflight check: it lives
here, not in a stage, so no stage imports another for it.
"""

from __future__ import annotations


def judge_options(cfg, *, base_model: str | None = None, cache_dir: str | None = None) -> dict:
    """The configured judge's options (`EvaluateConfig`), checked before any summary is generated.

    One judge: its options. A judge list (`[grounding, nli]`): a dict of options per judge name plus `rule` and
    `combination`, which `get_judge(cfg.judge, **judge_options(cfg))` turns into a combined judge. `base_model` is
    the run's starting model folder (the likelihood judge's default model; unknown before the run, e.g. in
    preflight); `cache_dir` is where the likelihood judge keeps its scores."""
    from faithforge.core.errors import UserError
    from faithforge.evaluation.judges import judge_names

    names = judge_names(cfg.judge)
    options = {name: _one_judge_options(name, cfg, base_model, cache_dir) for name in names}
    rule = getattr(cfg, "judge_rule", "any")
    if rule == "logistic":
        if not cfg.judge_combination:
            raise UserError("evaluate.judge_rule is logistic but evaluate.judge_combination is empty; set it to the "
                            "JSON file of a combination fitted on labels (faithforge eval fit-combination)")
        from faithforge.evaluation.fitted import FittedCombination

        combination = FittedCombination.load(cfg.judge_combination)  # unreadable or missing: fails here
        unknown = sorted(set(combination.judges) - set(names))
        if unknown:
            raise UserError(f"evaluate.judge_combination was fitted on {', '.join(combination.judges)}; "
                            f"evaluate.judge lacks {', '.join(unknown)}")
        options = {n: options[n] for n in names}
        return {**options, "rule": rule, "combination": combination}
    if len(names) == 1:
        return options[names[0]]
    return {**options, "rule": rule} if rule != "any" else options


def _one_judge_options(name: str, cfg, base_model: str | None, cache_dir: str | None) -> dict:
    """A judge's `build` keywords: its module's `options_from_config` (the built-in judges, which read the
    `evaluate` fields named after them), else its `Options` model filled from `evaluate.judge_options[name]`, else
    none (a judge that takes no options)."""
    from faithforge.core.errors import UserError
    from faithforge.core.judge_registry import JUDGES
    from faithforge.core.registry import load_attribute

    kind = JUDGES.get(name)
    given = dict((getattr(cfg, "judge_options", None) or {}).get(name) or {})
    read = load_attribute(kind, "options_from_config", None)
    if read is not None:
        if given:
            raise UserError(f"evaluate.judge_options.{name}: the {name} judge reads its settings from evaluate's own "
                            f"fields ({name.replace('-', '_')}_…), not from judge_options; move them there")
        return read(cfg, base_model=base_model, cache_dir=cache_dir)
    model = load_attribute(kind, "Options", None)
    if model is None:
        if given:
            raise UserError(f"evaluate.judge_options.{name}: the {name} judge takes no options; remove "
                            f"{', '.join(sorted(given))}")
        return {}
    return _validated(name, model, given)


def _validated(name: str, model, given: dict) -> dict:
    """`given` checked against the judge's `Options` model: its keywords, or one line naming every bad field."""
    from pydantic import ValidationError

    from faithforge.core.errors import UserError

    unknown = sorted(set(given) - set(model.model_fields))  # a typo never passes silently, whatever the model says
    if unknown:
        raise UserError(f"evaluate.judge_options.{name}: unknown setting {', '.join(unknown)}; the {name} judge "
                        f"takes {', '.join(model.model_fields) or 'none'}")
    try:
        return model.model_validate(given).model_dump()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(options)'}: {e['msg']}" for e in exc.errors())
        raise UserError(f"evaluate.judge_options.{name}: {problems}") from None
