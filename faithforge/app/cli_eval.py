"""`faithforge eval …`: calibrate a judge against labels, compare two stored evaluations.

The lead's CLI registers `app` (e.g. `app.add_typer(cli_eval.app, name="eval")`) and turns
`UserError` into a one-line message and exit status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from faithforge.core.backend_registry import BACKENDS
from faithforge.core.errors import UserError, validation_message
from faithforge.core.judge_registry import DEFAULT_JUDGE, JUDGES

if TYPE_CHECKING:
    from faithforge.evaluation.heldout import HeldOutCalibration
    from faithforge.evaluation.verdict import Judge

app = typer.Typer(help="Judge calibration and comparison of stored evaluations.", no_args_is_help=True)

BASE_MODEL_HELP = ("A judge that reads the run's model folder (registered with run_inputs): the folder a run would "
                   "hand it, the run's starting model.")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


@app.command()
def calibrate(
    labels: Path = typer.Option(..., "--labels", help="JSONL with source, summary, label (faithful|hallucinated|0|1), "
                                                      "optional dataset (subset) and split (validation|test)."),
    judge: list[str] = typer.Option([DEFAULT_JUDGE], "--judge",
                                    help=f"One of: {JUDGES.choices()}; repeat to calibrate a combined judge. "
                                    + "; ".join(f"{k.name}: {k.summary}" for k in JUDGES) + "."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="nli: local folder or hub id."),
    supported_label: Optional[int] = typer.Option(None, "--supported-label",
                                                  help="nli: index of the 'supported' class (default: by name)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                           help="nli: allow a checkpoint that ships its own Python code."),
    llm_backend: str = typer.Option("ollama", "--llm-backend",
                                    help=f"llm: one of {BACKENDS.choices(lambda kind: kind.server)}."),
    llm_model: str = typer.Option("qwen3:8b", "--llm-model", help="llm: the judge model."),
    llm_base_url: Optional[str] = typer.Option(None, "--llm-base-url", help="llm: the server root."),
    likelihood_model: Optional[str] = typer.Option(None, "--likelihood-model", help="likelihood: the causal LM folder."),
    trained_judge: Optional[str] = typer.Option(None, "--trained-judge", help="trained: the folder judge train wrote."),
    judge_option: list[str] = typer.Option([], "--judge-option", help="NAME.FIELD=VALUE: a setting of a judge that "
                                           "declares its own (evaluate.judge_options); repeatable."),
    backend_option: list[str] = typer.Option([], "--backend-option", help="llm: NAME.FIELD=VALUE, a setting of "
                                             "--llm-backend (evaluate.llm_backend_options, e.g. "
                                             "openai.api_key_env=OPENAI_API_KEY); repeatable."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help=BASE_MODEL_HELP),
    holdout: float = typer.Option(0.5, "--holdout", help="Share of labels held out for the reported accuracy."),
    split_seed: int = typer.Option(0, "--split-seed", min=0, max=2**32 - 1, help="Seed of the validation/test split by source."),
    workspace: Path = typer.Option(Path(".faithforge"), "--workspace", "-w", envvar="FAITHFORGE_WORKSPACE",
                                   help="Workspace whose calibrations/ folder stores the result for later reports."),
    save: bool = typer.Option(True, "--save/--no-save", help="Store the calibration for reports using this judge."),
    as_json: bool = typer.Option(False, "--json", help="Print the calibration as JSON."),
    choose: bool = typer.Option(False, "--choose", help="With two or more --judge: calibrate each on its own and "
                                                        "choose the best on the validation split (not a combination)."),
) -> None:
    """A judge's accuracy on labeled summaries: threshold chosen on one split, accuracy reported on the other."""
    from faithforge.evaluation.calibration import read_labels
    from faithforge.evaluation.heldout import calibrate_heldout, save_calibration

    settings = dict(llm_backend=llm_backend, llm_model=llm_model, llm_base_url=llm_base_url,
                    llm_backend_options=_llm_backend_option_flags(backend_option, llm_backend, judge),
                    likelihood_model=likelihood_model, trained_judge=trained_judge,
                    judge_options=_judge_option_flags(judge_option, judge),  # --judge a+b names a and b
                    run=dict(base_model=base_model, cache_root=str(workspace / "cache") if save else None))
    nli = dict(checkpoint=checkpoint, supported_label=supported_label, trust_remote_code=trust_remote_code)
    if save:  # a workspace that cannot store the result fails before any label is judged
        from faithforge.core.workspace import Workspace

        Workspace.check(workspace)
    if choose:
        # each candidate on its own, nli's options to nli only; all built before any labels are read
        if len(set(judge)) < 2:
            raise UserError("--choose needs two or more different --judge values to choose among")
        candidates = [_calibration_judges([name], **settings, **(nli if name == "nli" else {}))
                      for name in dict.fromkeys(judge)]
        _choose(candidates, read_labels(labels), labels=labels, holdout=holdout, split_seed=split_seed,
                workspace=workspace if save else None, as_json=as_json)
        return
    # build the judges first: a bad checkpoint fails before any labels are read
    built = _calibration_judges(judge, **nli, **settings)
    examples = read_labels(labels)
    result = calibrate_heldout(built, examples, labels_path=labels, holdout=holdout, seed=split_seed)
    stored = None
    if save:  # through Workspace.open: the folder is (or becomes) a FaithForge workspace, never a stray directory
        from faithforge.core.workspace import Workspace

        stored = save_calibration(Workspace.open(workspace).calibrations, result)
    if as_json:
        typer.echo(json.dumps({**result.to_dict(), "stored": str(stored) if stored else None}, indent=2))
        return
    _print_calibration(result, stored)


def _choose(candidates: list[Judge], examples, *, labels: Path, holdout: float, split_seed: int,
            workspace: Path | None, as_json: bool) -> None:
    """`eval calibrate --choose`: every candidate's figures, the one chosen on validation, what to set."""
    from faithforge.evaluation.heldout import choose_judge, save_calibration

    choice = choose_judge(candidates, examples, labels_path=labels, holdout=holdout, seed=split_seed)
    stored, directory = {}, None
    if workspace is not None:
        from faithforge.core.workspace import Workspace

        directory = Workspace.open(workspace).calibrations
        stored = {name: str(save_calibration(directory, c)) for name, c in choice.calibrations.items()}
    if as_json:
        typer.echo(json.dumps({"chosen": choice.chosen, "validation_balanced_accuracy":
                               choice.validation_balanced_accuracy, "stored": stored,
                               "calibrations": {k: v.to_dict() for k, v in choice.calibrations.items()}}, indent=2))
        return
    for name, calibration in choice.calibrations.items():
        mark = "chosen" if name == choice.chosen else "      "
        typer.echo(f"{mark} {name:<12} validation balanced accuracy "
                   f"{_pct(choice.validation_balanced_accuracy[name])}  held-out: "
                   f"{_pct(calibration.test.balanced_accuracy)} (precision {_pct(calibration.test.precision)}, "
                   f"recall {_pct(calibration.test.recall)}, n {calibration.test.n})")
    typer.echo(f"chosen on the validation split: {choice.chosen}; to measure with it, set evaluate.judge: "
               f"{choice.chosen} (and pairs.judge to another family)")
    if directory is not None:
        typer.echo(f"every candidate's calibration stored in {directory}")


def _calibration_judges(judge: list[str], *, checkpoint: str | None = None, supported_label: int | None = None,
                        trust_remote_code: bool = False, llm_backend: str, llm_model: str, llm_base_url: str | None,
                        llm_backend_options: dict[str, dict] | None = None, likelihood_model: str | None = None,
                        trained_judge: str | None = None, judge_options: dict[str, dict] | None = None, run: dict | None = None) -> Judge:
    """The judges `--judge` names, built with their options the way a run builds them (`evaluate` settings and
    `judge_options` → each judge's `Options` or `options_from_config`); nli-only options on other judges are an
    error."""
    from faithforge.evaluation.judges import build_judges, judge_names

    names = judge_names(judge)
    _refuse_nli_options_without_nli(names, checkpoint, supported_label, trust_remote_code)
    if "nli" in names and not checkpoint:
        raise UserError("the nli judge needs a checkpoint: pass the folder (or hub id) of a sequence-classification "
                        "model or seq2seq checker (e.g. --checkpoint PATH)")
    if "llm" in names and llm_base_url:  # a bad URL would make every label unjudgeable, then be stored
        from faithforge.backends.http import check_server_url

        check_server_url("--llm-base-url", llm_base_url)
    options = _judge_settings_options(names, nli_checkpoint=checkpoint, nli_supported_label=supported_label,
                                      nli_trust_remote_code=trust_remote_code, llm_backend=llm_backend,
                                      llm_model=llm_model, llm_base_url=llm_base_url,
                                      llm_backend_options=llm_backend_options or {},
                                      likelihood_model=likelihood_model, trained_judge_path=trained_judge,
                                      judge_options={n: o for n, o in (judge_options or {}).items() if n in names},
                                      run=run)
    return build_judges(names, options)


#: The `evaluate` fields of settings by name, and the flag that sets each here.
_SETTINGS_FLAGS = {"judge_options": "judge-option", "llm_backend_options": "backend-option"}


def _llm_backend_option_flags(flags: list[str], llm_backend: str, judge: list[str]) -> dict[str, dict]:
    """`--backend-option NAME.FIELD=VALUE` flags as `evaluate.llm_backend_options`: each names `--llm-backend`, and
    only with `--judge llm` (no other judge talks to it)."""
    from faithforge.app.settings_flags import settings_flags
    from faithforge.evaluation.judges import judge_names

    if flags and "llm" not in judge_names(judge):
        raise UserError("--backend-option sets --llm-backend, which only --judge llm uses")
    return settings_flags(flags, flag="--backend-option", registry=BACKENDS, chosen=[llm_backend],
                          chosen_flag="--llm-backend", example="openai.api_key_env=OPENAI_API_KEY")


def _judge_option_flags(flags: list[str], judge: list[str]) -> dict[str, dict]:
    """`--judge-option NAME.FIELD=VALUE` flags as `evaluate.judge_options` (`app.settings_flags`): each must name a
    judge among `--judge` with settings of its own."""
    from faithforge.app.settings_flags import settings_flags
    from faithforge.core.judge_registry import JUDGES
    from faithforge.evaluation.judges import judge_names

    return settings_flags(flags, flag="--judge-option", registry=JUDGES, chosen=judge_names(judge) if flags else [],
                          chosen_flag="--judge", example="my-judge.threshold=0.3")


def _refuse_nli_options_without_nli(names: list[str], checkpoint: str | None, supported_label: int | None,
                                    trust_remote_code: bool) -> None:
    if "nli" not in names and (checkpoint is not None or supported_label is not None or trust_remote_code):
        raise UserError("--checkpoint, --supported-label and --trust-remote-code apply to --judge nli only")


def _judge_settings_options(names: list[str], run: dict | None = None, **settings) -> dict[str, dict]:
    """Each named judge's options, read from `evaluate` settings as a run reads them (one line on a bad value);
    `run`: what a run hands the judges registered with `run_inputs` (`base_model`, `cache_root`)."""
    from pydantic import ValidationError

    from faithforge.core.config import EvaluateConfig
    from faithforge.core.settings import SettingsError
    from faithforge.evaluation.judge_options import judge_options

    try:
        cfg = EvaluateConfig(judge=names if len(names) > 1 else names[0], **settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = _SETTINGS_FLAGS.get(first["loc"][0], str(first["loc"][0]).replace("_", "-"))
        raise UserError(f"--{flag}: {validation_message(first)}") from None
    try:  # a missing model, checkpoint or judge folder fails here, before any label is read
        options = judge_options(cfg, **(run or {}))
        if "llm" in names:  # its requests are made here: its key variable must be set here
            from faithforge.backends import check_backend_options

            check_backend_options(cfg.llm_backend_options, cfg.llm_backend, where="evaluate.llm_backend_options")
    except SettingsError as exc:  # named as the flag that set it
        field = exc.where.split(".")[1] if exc.where.startswith("evaluate.") else ""
        if field not in _SETTINGS_FLAGS:
            raise
        raise UserError(f"--{_SETTINGS_FLAGS[field]} {exc.entry}: {exc.problem}") from None
    return options if len(names) > 1 else {names[0]: options}


def _print_calibration(result: HeldOutCalibration, stored: Path | None) -> None:
    """The calibration in words: thresholds, then precision/recall/specificity per subset, then where it is stored."""
    report = result.test
    typer.echo(f"judge {result.judge} ({result.checkpoint}): thresholds chosen on {result.validation} validation "
               f"labels, accuracy on {report.n} held-out labels ({report.unjudgeable} unjudgeable); "
               f"positive class = hallucinated")
    for name, value in sorted(result.thresholds.items()):
        typer.echo(f"  {name} threshold {value:.4f} (maximizes balanced accuracy on the validation split)")
    rows = [("all", report)] + sorted(result.per_subset.items())
    for name, r in rows:
        typer.echo(f"  {name:<10} n {r.n:<5} precision {_pct(r.precision)}  recall {_pct(r.recall)}  "
                   f"specificity {_pct(r.specificity)}  balanced accuracy {_pct(r.balanced_accuracy)}  "
                   f"TP {r.true_positives} FP {r.false_positives} TN {r.true_negatives} FN {r.false_negatives}")
    if stored:
        typer.echo(f"stored in {stored}: reports judged by {result.judge} with this checkpoint carry it")


@app.command("fit-combination")
def fit_combination_command(
    labels: Path = typer.Option(..., "--labels", help="JSONL with source, summary, label, optional dataset and split."),
    judge: list[str] = typer.Option(..., "--judge", help=f"A judge whose numbers the fit reads ({JUDGES.choices()}); "
                                                         "repeat (e.g. --judge likelihood --judge grounding)."),
    out: Path = typer.Option(..., "--out", help="Where to write the fitted combination (JSON) for "
                                                "evaluate.judge_combination."),
    likelihood_model: Optional[str] = typer.Option(None, "--likelihood-model", help="likelihood: the causal LM folder."),
    trained_judge: Optional[str] = typer.Option(None, "--trained-judge", help="trained: the folder judge train wrote."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="nli: local folder or hub id."),
    supported_label: Optional[int] = typer.Option(None, "--supported-label",
                                                  help="nli: index of the 'supported' class (default: by name)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                           help="nli: allow a checkpoint that ships its own Python code."),
    judge_option: list[str] = typer.Option([], "--judge-option", help="NAME.FIELD=VALUE: a setting of a judge that "
                                           "declares its own (evaluate.judge_options); repeatable."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help=BASE_MODEL_HELP),
    holdout: float = typer.Option(0.5, "--holdout", help="Share of labels held out for the reported accuracy."),
    split_seed: int = typer.Option(0, "--split-seed", min=0, max=2**32 - 1, help="Seed of the split by source."),
    replace: bool = typer.Option(False, "--replace", help="Replace an earlier fit at --out (a config that names "
                                 "it then means the new one)."),
) -> None:
    """Fit a logistic combination of judges on the validation split of labels; report it on the held-out split."""
    from faithforge.evaluation.calibration import read_labels
    from faithforge.evaluation.fitted import fit_combination, verdict_features
    from faithforge.evaluation.heldout import split_examples
    from faithforge.evaluation.judges import build_judges, judge_names

    names = judge_names(judge)
    _refuse_nli_options_without_nli(names, checkpoint, supported_label, trust_remote_code)
    built = build_judges(names, _judge_settings_options(
        names, likelihood_model=likelihood_model, trained_judge_path=trained_judge, nli_checkpoint=checkpoint,
        nli_supported_label=supported_label, nli_trust_remote_code=trust_remote_code,
        judge_options=_judge_option_flags(judge_option, names), run=dict(base_model=base_model)))
    replaces = _check_combination_out(out, replace)  # before any judging: a fit is minutes with a model judge
    validation, test = split_examples(read_labels(labels), holdout=holdout, seed=split_seed)

    def features(rows):
        return [verdict_features(built.judge(e.source, e.summary)) for e in rows]

    train_features = features(validation)
    used = sorted(set.intersection(*(set(f) for f in train_features)))
    combo = fit_combination(train_features, [e.hallucinated for e in validation], used,
                            fitted_on={"labels": str(labels), "validation_rows": len(validation), "judges": names})
    predicted = [combo.probability(f) >= combo.threshold for f in features(test)]
    truth = [e.hallucinated for e in test]
    tp = sum(p and t for p, t in zip(predicted, truth))
    tn = sum(not p and not t for p, t in zip(predicted, truth))
    recall, specificity = tp / max(1, sum(truth)), tn / max(1, len(truth) - sum(truth))
    precision = tp / max(1, sum(predicted))
    combo = type(combo)(**{**combo.__dict__, "fitted_on": {**combo.fitted_on, "held_out": {
        "n": len(test), "balanced_accuracy": (recall + specificity) / 2, "precision": precision, "recall": recall}}})
    combo.save(out)
    typer.echo(f"fitted {', '.join(names)} on {len(validation)} validation labels ({len(used)} features); on "
               f"{len(test)} held-out labels: balanced accuracy {_pct((recall + specificity) / 2)}, precision "
               f"{_pct(precision)}, recall {_pct(recall)}; written to {out}{' (replacing the earlier fit)' * replaces} "
               f"(set evaluate.judge_rule: logistic and evaluate.judge_combination: {out})")


def _check_combination_out(out: Path, replace: bool) -> bool:
    """Whether `--out` holds an earlier fitted combination, which a new fit replaces only with `replace` (a config's
    `evaluate.judge_combination` naming it silently changed meaning, an attack, 2026-12-07); anything else there
    (a file of the user's, a folder) or a parent that cannot hold it is refused in one line, before the fit."""
    from faithforge.core.workspace import writable_parent
    from faithforge.evaluation.fitted import FittedCombination

    target = out.expanduser().resolve()
    if target.is_dir():
        raise UserError(f"--out {out} is a folder; name a JSON file, e.g. {out / 'combination.json'}")
    if target.exists():
        try:
            FittedCombination.load(target)
        except (UserError, OSError):
            raise UserError(f"--out {out} already exists and is not a fitted combination; choose a new file "
                            "(nothing was written)") from None
        if not replace:
            raise UserError(f"--out {out} holds an earlier fit, which a config may name; choose a new file, or pass "
                            "--replace (nothing was written)")
        return True
    writable_parent(target)
    return False


@app.command()
def compare(
    run_a: str = typer.Argument(..., help="Evaluation artifact id, or a run id (its newest evaluation)."),
    run_b: str = typer.Argument(..., help="Evaluation artifact id, or a run id."),
    workspace: Path = typer.Option(Path(".faithforge"), "--workspace", "-w", envvar="FAITHFORGE_WORKSPACE",
                                   help="Workspace holding faithforge.db."),
    database_url: Optional[str] = typer.Option(None, "--database-url", envvar="FAITHFORGE_DATABASE_URL",
                                               help="Run store URL (default: the workspace's SQLite)."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Compare two stored evaluations (B − A): rates, recall, intervals, and whether they are comparable."""
    from faithforge.core.store import existing_store
    from faithforge.evaluation.persist import compare_runs

    result = compare_runs(existing_store(database_url, workspace, "an evaluation"), run_a, run_b)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"A = {result['a']} (judge {result['judge_a']}, {result['n_a']} items)   "
               f"B = {result['b']} (judge {result['judge_b']}, {result['n_b']} items)")
    typer.echo(f"{'metric':<22}{'A':>10}{'B':>10}{'B - A':>10}")
    for row in result["rows"]:
        cells = ["n/a" if row[k] is None else f"{row[k]:.4f}" for k in ("a", "b", "b_minus_a")]
        typer.echo(f"{row['metric']:<22}{cells[0]:>10}{cells[1]:>10}{cells[2]:>10}")
    for warning in result["warnings"]:
        typer.echo(f"warning: {warning}")
