"""The configured judge's options (`EvaluateConfig` → `get_judge` keywords), checked before any model runs.

Used by the evaluate stage, the on-policy pairs stage (which judges samples) and the preflight check: it lives
here, not in a stage, so no stage imports another for it.
"""

from __future__ import annotations


def judge_options(cfg) -> dict:
    """The configured judge's options (`EvaluateConfig`), checked before any summary is generated.

    One judge: its options. A judge list (`[grounding, nli]`): a dict of options per judge name, which
    `get_judge(cfg.judge, **judge_options(cfg))` turns into a combined judge."""
    from faithforge.evaluation.judges import judge_names

    names = judge_names(cfg.judge)
    options = {name: _one_judge_options(name, cfg) for name in names}
    return options[names[0]] if len(names) == 1 else options


def _one_judge_options(name: str, cfg) -> dict:
    from faithforge.core.errors import UserError

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
