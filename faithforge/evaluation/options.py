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
    from faithforge.core.errors import UserError

    if name == "trained":
        from pathlib import Path

        path = getattr(cfg, "trained_judge_path", None)
        if not path or not Path(path).expanduser().is_dir():
            raise UserError(f"evaluate.judge includes trained but evaluate.trained_judge_path ({path}) is not a "
                            f"folder; train one with `faithforge judge train --documents FILE` and set it")
        return {"path": str(Path(path).expanduser())}
    if name == "likelihood":
        model = getattr(cfg, "likelihood_model", None) or base_model
        options: dict = {"feature": cfg.likelihood_feature, "threshold": cfg.likelihood_threshold,
                         "max_source_tokens": cfg.likelihood_window_tokens,
                         "window_overlap_tokens": min(128, cfg.likelihood_window_tokens // 4)}
        if cache_dir:
            options["cache_dir"] = cache_dir
        if model is None:
            return {**options, "model_path": None, "deferred": True}
        from pathlib import Path

        if not (Path(model).expanduser() / "config.json").is_file():
            raise UserError(f"evaluate.likelihood_model {model} has no config.json; set it to a causal LM folder "
                            f"(save_pretrained or `faithforge model import`), or leave it empty for the run's model")
        return {**options, "model_path": str(Path(model).expanduser())}

    if name == "nli":
        if not cfg.nli_checkpoint:
            raise UserError("evaluate.judge includes nli but evaluate.nli_checkpoint is empty; set it to the folder "
                            "(or hub id) of a sequence-classification or seq2seq checker")
        options = {"checkpoint": cfg.nli_checkpoint, "threshold": cfg.nli_threshold,
                   "supported_label": cfg.nli_supported_label}
        if getattr(cfg, "nli_trust_remote_code", False):  # an explicit opt-in only: it runs the checkpoint's code
            options["trust_remote_code"] = True
        return options
    if name == "llm":
        from faithforge.backends import make_backend

        return {"backend": make_backend(cfg.llm_backend, cfg.llm_model, base_url=cfg.llm_base_url)}
    return {}
