"""Every judge FaithForge knows, registered once: config validation (`evaluate.judge`, `pairs.judge`), the Prefect
UI form's choices, the CLI's help, preflight and the report read this list and no other.

Adding a judge is one new module plus one `JUDGES.register(...)` line here. The module defines

- `build(**options) -> Judge` — the judge (an object with `judge(source, summary, *, truncated=False) ->
  Verdict`: the one judge signature, `faithforge.evaluation.verdict.Judge`);
- its settings, if it has any, as `Options`: a pydantic model (a docstring under each field, which the UI form
  shows with `model_config = ConfigDict(use_attribute_docstrings=True)`), registered with `own_settings=True`,
  filled from `evaluate.judge_options[<name>]` and checked before any model runs (a bad value fails in
  preflight, not after training); `build` receives its fields as keywords. The UI form shows them as the
  judge's own fields; the CLI's `--judge-option NAME.FIELD=VALUE` sets them. The built-in judges instead define `options_from_config(cfg, *,
  base_model, cache_dir) -> dict`, reading the `evaluate` fields named after them (`nli_checkpoint`, …), which
  are older than `judge_options`. Neither: the judge takes no settings.
- what it needs from the run, if anything, as `run_inputs` in its registration: `base_model` (the run's starting
  model folder; `--base-model` in `faithforge eval calibrate`, None without it) and `cache_dir` (a folder of the
  judge's own name in the workspace's cache, kept between runs). `build` receives them as keywords beside its
  settings; they are not settings, so they are not part of its identity.

The module is imported only when the judge is built or its options are read, so listing the names stays cheap;
one exception: the module of a judge with settings of its own is imported for the UI form's schema, which Prefect
makes when a flow is defined (importing `faithforge.flows`). Import heavy packages (torch) inside `build`, as the
built-in judges do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from faithforge.core.registry import Registry, SettingsForm, registered_name


@dataclass(frozen=True)
class JudgeKind:
    """One registered judge: its name and where it lives, and what it needs before it can run."""

    name: str
    """The name users write (`evaluate.judge: likelihood`)."""
    module: str
    """The module defining `build` (and `Options`, or `options_from_config` for a built-in judge, when it takes
    options)."""
    summary: str
    """One line for the CLI's help (`faithforge eval calibrate --help` lists every judge with it)."""
    needs: tuple[str, ...] = ()
    """What must exist before it runs, in words ("a causal LM folder", "a chat server"): preflight names them."""
    scores_samples: bool = False
    """Cheap and offline enough to score every on-policy sample: may be `pairs.judge`."""
    rule_based: bool = False
    """No options and no model: the report builds it as is (e.g. to read its stored calibration)."""
    graded: bool = False
    """Its verdict carries a support score in degrees (`Verdict.score`, higher = better supported): it can rank
    on-policy samples by score (`pairs.score_by: judge-score`)."""
    own_settings: bool = False
    """Its module declares `Options`, set in `evaluate.judge_options[<name>]` (and `--judge-option`): the only
    judges that field, its form and the flag accept."""
    run_inputs: tuple[str, ...] = ()
    """What the run hands `build` besides the judge's settings (for a judge without `options_from_config`):
    `base_model`, the run's starting model folder, and `cache_dir`, a folder of its own in the workspace's cache."""

    def __post_init__(self) -> None:
        if isinstance(self.run_inputs, str):  # ("cache_dir") without its comma is a string, not a tuple
            raise ValueError(f"judge {self.name!r}: run_inputs is a tuple of names, e.g. ({self.run_inputs!r},)")
        unknown = sorted(set(self.run_inputs) - set(RUN_INPUTS))
        if unknown:
            raise ValueError(f"judge {self.name!r}: unknown run_inputs {', '.join(unknown)}; the run hands a judge "
                             f"{', '.join(RUN_INPUTS)}")
        if self.rule_based and (self.own_settings or self.run_inputs):  # the report builds it with nothing
            raise ValueError(f"judge {self.name!r}: rule_based means no settings and no model; drop rule_based, or "
                             "own_settings and run_inputs")


#: What a run can hand a judge's `build` (`JudgeKind.run_inputs`): `evaluation.judge_options` fills them.
RUN_INPUTS = ("base_model", "cache_dir")

JUDGES: Registry[JudgeKind] = Registry("judge")

JUDGES.register(JudgeKind("grounding", "faithforge.evaluation.grounding",
                          "names, places, numbers, days and quotes absent from the source (deterministic)",
                          scores_samples=True, rule_based=True))
JUDGES.register(JudgeKind("grounded-qa", "faithforge.evaluation.grounded_qa_judge",
                          "grounding plus who-did-what on the grounded-qa task's documents",
                          scores_samples=True, rule_based=True))
JUDGES.register(JudgeKind("nli", "faithforge.evaluation.nli",
                          "an NLI / HHEM / MiniCheck checkpoint scores each sentence against the source",
                          needs=("a checkpoint (evaluate.nli_checkpoint)",), graded=True))
JUDGES.register(JudgeKind("llm", "faithforge.evaluation.llm",
                          "an LLM on a chat server extracts claims and checks each",
                          needs=("a chat server (evaluate.llm_backend, evaluate.llm_model)",)))
JUDGES.register(JudgeKind("likelihood", "faithforge.evaluation.likelihood",
                          "a local causal LM's token log-probabilities with and without the source (offline, CPU)",
                          needs=("a causal LM folder (evaluate.likelihood_model or the run's base model)",),
                          scores_samples=True, graded=True))
JUDGES.register(JudgeKind("trained", "faithforge.evaluation.trained",
                          "the support classifier `faithforge judge train` fitted on your documents",
                          needs=("a trained judge folder (evaluate.trained_judge_path)",), graded=True))

DEFAULT_JUDGE = "grounding"

#: How a list of judges decides (`evaluate.judge_rule`), each with the words the report states it in. The config's
#: choices, `build_judges`, the combined judge and the report read this table.
JUDGE_RULES: dict[str, str] = {
    "any": "hallucinated when any judge says so",
    "all": "hallucinated only when every judge says so",
    "logistic": "hallucinated when the logistic combination fitted on labels (`evaluate.judge_combination`) says so",
}

#: A config field naming one registered judge (checked against `JUDGES`; the UI form's enum is `JUDGES`' names).
JudgeName = registered_name(JUDGES)
#: A config field naming a judge whose settings are its own `Options` (`evaluate.judge_options`' keys).
OwnSettingsJudgeName = registered_name(JUDGES, where=lambda kind: kind.own_settings,
                                       what="judge with settings of its own",
                                       when_none="built-in judges use evaluate's own fields")
#: A config field naming a judge that may score on-policy samples (`pairs.judge`).
SampleJudgeName = registered_name(JUDGES, where=lambda kind: kind.scores_samples, what="pairs judge")


#: The type of `evaluate.judge_options`: settings by the name of a judge with settings of its own, each checked
#: against that judge's `Options` before any work (`evaluation.judge_options`), each shown as its fields in the form.
JudgeSettingsByName = Annotated[dict[OwnSettingsJudgeName, dict[str, Any] | None],
                                SettingsForm(JUDGES, lambda kind: kind.own_settings)]
