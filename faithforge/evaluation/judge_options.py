"""The configured judge's options (`EvaluateConfig` → `get_judge` keywords), checked before any model runs.

Used by the evaluate stage, the on-policy pairs stage (which judges samples) and the preflight check: it lives
here, not in a stage, so no stage imports another for it.
"""

from __future__ import annotations

from pathlib import Path

from faithforge.core.errors import UserError
from faithforge.core.settings import validated_settings


def judge_options(cfg, *, base_model: str | None = None, cache_root: str | None = None) -> dict:
    """The configured judge's options (`EvaluateConfig`), checked before any summary is generated.

    One judge: its options. A judge list (`[grounding, nli]`): a dict of options per judge name plus `rule` and
    `combination`, which `get_judge(cfg.judge, **judge_options(cfg))` turns into a combined judge. `base_model` is
    the run's starting model folder (the likelihood judge's default model; unknown before the run, e.g. in
    preflight); `cache_root` is the workspace's cache folder, in which each judge that keeps something between
    runs (the likelihood judge's scores) has a folder of its own name."""
    from faithforge.evaluation.judges import judge_names

    names = judge_names(cfg.judge)
    options = {name: _one_judge_options(name, cfg, base_model, cache_root) for name in names}
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


def pairs_judge_settings(config):
    """The `evaluate` settings that judge on-policy samples: `pairs.judge` in place of `evaluate.judge` when set
    (its options are still the `evaluate` section's), the evaluation's own otherwise."""
    if config.pairs.judge:
        return config.evaluate.model_copy(update={"judge": config.pairs.judge, "judge_rule": "any"})
    return config.evaluate


def declared_options(cfg, names=None) -> dict[str, dict]:
    """The validated `Options` of each judge with settings of its own: every entry of `cfg.judge_options` (names
    None: preflight checks them all, used or not, so a typo never waits; an empty entry of a judge the run does
    not use is left alone, which is what the UI form submits for a judge nobody set), or each of `names` that has
    some (with its defaults filled in: what a key that depends on the judge hashes)."""
    from faithforge.core.judge_registry import JUDGES
    from faithforge.evaluation.judges import judge_names

    if names is None:
        used = set(judge_names(cfg.judge))
        wanted = [n for n, given in cfg.judge_options.items() if given is not None or n in used]
    else:
        wanted = [n for n in names if JUDGES.get(n).own_settings]
    return {name: _own_settings(name, cfg) for name in wanted}


def _one_judge_options(name: str, cfg, base_model: str | None, cache_root: str | None) -> dict:
    """A judge's `build` keywords: its `Options` filled from `evaluate.judge_options[name]` (a judge registered
    `own_settings`), else its module's `options_from_config` (the built-in judges, which read the `evaluate`
    fields named after them), else none (a judge that takes no options); plus what the run hands the judges
    registered with `run_inputs` (its model folder, a cache folder of the judge's name)."""
    from faithforge.core.judge_registry import JUDGES
    from faithforge.core.registry import load_attribute

    kind = JUDGES.get(name)
    given = {"base_model": base_model, "cache_dir": str(Path(cache_root) / name) if cache_root else None}
    read = None if kind.own_settings else load_attribute(kind, "options_from_config", None)
    if read is not None:
        return read(cfg, base_model=given["base_model"], cache_dir=given["cache_dir"])
    own = _own_settings(name, cfg) if kind.own_settings else {}
    return {**own, **{key: given[key] for key in kind.run_inputs}}


def _own_settings(name: str, cfg) -> dict:
    from faithforge.core.judge_registry import JUDGES
    from faithforge.core.registry import load_attribute

    kind = JUDGES.get(name)
    model = load_attribute(kind, "Options", None)
    if model is None:
        raise TypeError(f"judge {name} is registered with own_settings but {kind.module} defines no Options model")
    clash = sorted(set(kind.run_inputs) & set(model.model_fields))
    if clash:  # the run's value would silently replace the user's setting
        raise TypeError(f"judge {name}'s Options declares {', '.join(clash)}, which the run hands it (run_inputs); "
                        "rename the field")
    return validated_settings(model, cfg.judge_options.get(name), where=f"evaluate.judge_options.{name}", entry=name,
                              kind="judge")
