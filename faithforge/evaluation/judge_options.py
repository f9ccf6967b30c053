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
    """The judge module's `options_from_config` (none: the judge takes no options)."""
    from faithforge.core.judge_registry import JUDGES
    from faithforge.core.registry import load_attribute

    read = load_attribute(JUDGES.get(name), "options_from_config", None)
    return {} if read is None else read(cfg, base_model=base_model, cache_dir=cache_dir)
