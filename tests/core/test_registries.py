"""One registry per pluggable kind: every list of judge or backend names agrees with its registry, and a judge or
a backend registered by one new module plus one registration line is accepted by the config, the CLI and the
Prefect UI form without touching anything else."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.fixtures.source_scan import copies_of
from tests.fixtures.throwaway_kinds import (register_throwaway, throwaway_model_folder_judge,  # noqa: F401
                                           throwaway_settings_judge)  # noqa: F401 - fixtures

from faithforge.core.backend_registry import BACKENDS, BackendKind
from faithforge.core.judge_registry import JUDGES, JudgeKind

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_FOLDERS = ("faithforge", "flows", "tasks", "gpu", "deployments")
REGISTRY_MODULES = {ROOT / "faithforge" / "core" / "judge_registry.py", ROOT / "faithforge" / "core" / "backend_registry.py"}


def _enums(schema: object) -> list[list[str]]:
    """Every `enum` list anywhere in a JSON schema."""
    found = []
    if isinstance(schema, dict):
        if isinstance(schema.get("enum"), list):
            found.append(schema["enum"])
        for value in schema.values():
            found += _enums(value)
    elif isinstance(schema, list):
        for value in schema:
            found += _enums(value)
    return found


def test_no_module_keeps_its_own_list_of_judge_or_backend_names():
    assert copies_of(set(JUDGES.names()), PACKAGE_FOLDERS, at_least=2, owners=REGISTRY_MODULES) == []
    assert copies_of(set(BACKENDS.names()), PACKAGE_FOLDERS, at_least=2, owners=REGISTRY_MODULES) == []


def test_the_config_form_and_cli_list_exactly_the_registered_names():
    from prefect.utilities.callables import parameter_schema

    from faithforge.app.cli import _register_subcommands, app
    from faithforge.generation.worker import build_parser
    from faithforge.flows.generate import generate_flow
    from faithforge.flows.pipeline import pipeline

    judges, backends = list(JUDGES.names()), list(BACKENDS.names())
    sample_judges = [k.name for k in JUDGES if k.scores_samples]
    server_backends = [k.name for k in BACKENDS if k.server]
    form = parameter_schema(pipeline.fn).model_dump()
    definitions = form["definitions"]
    assert _enums(definitions["EvaluateConfig"]["properties"]["judge"]) == [judges, judges]
    assert _enums(definitions["PairsConfig"]["properties"]["judge"]) == [sample_judges]
    assert _enums(definitions["GenerateConfig"]["properties"]["backend"]) == [backends]
    for field in ("llm_backend", "served_backend"):
        assert _enums(definitions["EvaluateConfig"]["properties"][field]) == [server_backends]
    # the form's help lists what the registry holds, each with its summary (a hand list had left `trained` out)
    described = {("EvaluateConfig", "judge"): judges, ("PairsConfig", "judge"): sample_judges,
                 ("GenerateConfig", "backend"): backends, ("EvaluateConfig", "llm_backend"): server_backends,
                 ("EvaluateConfig", "served_backend"): server_backends}
    for (section, field), names in described.items():
        choices = definitions[section]["properties"][field]["description"].split("Choices: ", 1)[1]
        assert re.findall(r"(?:^|; )`([^`]+)`: ", choices) == names, (section, field)
    generation_form = parameter_schema(generate_flow.fn).model_dump()
    assert _enums(generation_form["definitions"]["GenerateParameters"]["properties"]["backend"]) == [backends]

    _register_subcommands()
    runner = CliRunner()
    calibrate_help = _help(runner, app, "eval", "calibrate")
    assert f"One of: {', '.join(judges)};" in calibrate_help
    assert f"One of: {', '.join(backends)}." in _help(runner, app, "generate")
    with pytest.raises(SystemExit):  # argparse refuses a name the registry does not have
        build_parser().parse_args(["--spec", "s.yaml", "--backend", "nope"])


def _help(runner, app, *command: str) -> str:
    """A command's --help as one line (rich's box drawing and wrapping removed)."""
    text = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "300"}).output
    return " ".join(text.replace("│", " ").split())


def _labels(tmp_path, *, hallucinated: str) -> Path:
    """12 sources about Alice, each with `hallucinated` labeled so and a faithful summary beside it."""
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"source": f"Alice sold books on day {i}.", "summary": summary,
                                          "label": label}) + "\n"
                              for i in range(12) for summary, label in [(hallucinated, "hallucinated"),
                                                                        ("Alice sold books.", "faithful")]))
    return labels


@pytest.fixture
def throwaway_judge(tmp_path, monkeypatch):
    """A judge added the documented way: one module (`build`) and one registration line."""
    yield from register_throwaway(JUDGES, JudgeKind("every-number", "throwaway_judge", "flags any summary with a digit",
                                                     scores_samples=True, rule_based=True),
                                   "from faithforge.evaluation.verdict import Verdict\n\n"
                                   "class EveryNumberJudge:\n"
                                   "    name = 'every-number'\n"
                                   "    def judge(self, source, summary, *, truncated=False):\n"
                                   "        return Verdict(judge=self.name, hallucinated=any(c.isdigit() for c in summary), "
                                   "truncated=truncated)\n\n"
                                   "def build(**options):\n"
                                   "    return EveryNumberJudge()\n", tmp_path, monkeypatch)


def test_a_judge_registered_once_is_accepted_by_config_cli_and_form(throwaway_judge, tmp_path):
    from prefect.utilities.callables import parameter_schema

    from faithforge.app.cli import _register_subcommands, app
    from faithforge.core.config import load_config
    from faithforge.evaluation import get_judge
    from faithforge.stages.preflight import check_pipeline_inputs
    from faithforge.flows.pipeline import pipeline

    config = load_config(None, overrides={"workspace": str(tmp_path / "ws"), "evaluate": {"judge": throwaway_judge},
                                          "pairs": {"judge": throwaway_judge}}, environ={})
    assert config.evaluate.judge == throwaway_judge and config.pairs.judge == throwaway_judge
    check_pipeline_inputs(config)  # the run's checks accept it (no options to read)
    assert get_judge(throwaway_judge).judge("Alice sold books.", "Alice sold 3 books.").hallucinated
    assert get_judge([throwaway_judge, "grounding"]).judge("Alice sold books.", "Alice sold books.").hallucinated is False

    form = parameter_schema(pipeline.fn).model_dump()["definitions"]
    assert throwaway_judge in _enums(form["EvaluateConfig"]["properties"]["judge"])[0]
    assert throwaway_judge in _enums(form["PairsConfig"]["properties"]["judge"])[0]
    assert f"`{throwaway_judge}`: flags any summary with a digit" in form["EvaluateConfig"]["properties"]["judge"]["description"]

    _register_subcommands()
    labels = _labels(tmp_path, hallucinated="Alice sold 3 books.")
    result = CliRunner().invoke(app, ["eval", "calibrate", "--labels", str(labels), "--judge", throwaway_judge,
                                      "--no-save", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["test"]["recall"] == 1.0


def test_a_judge_with_settings_of_its_own_needs_no_config_field_or_flag(throwaway_settings_judge, tmp_path):
    """Its settings go in `evaluate.judge_options`, are checked against its `Options` by the run's checks before any
    work, reach `build`, show in the UI form, and are set on the CLI by `--judge-option`."""
    from prefect.utilities.callables import parameter_schema

    from faithforge.app.cli import _register_subcommands, app
    from faithforge.core.config import ConfigError, load_config
    from faithforge.core.errors import UserError
    from faithforge.evaluation import get_judge
    from faithforge.evaluation.judge_options import judge_options
    from faithforge.flows.pipeline import pipeline
    from faithforge.stages.preflight import check_pipeline_inputs

    name = throwaway_settings_judge

    def config(options):
        return load_config(None, overrides={"workspace": str(tmp_path / "ws"),
                                            "evaluate": {"judge": name, "judge_options": options}}, environ={})

    cfg = config({name: {"max_words": 3}})
    check_pipeline_inputs(cfg)
    assert judge_options(cfg.evaluate) == {"max_words": 3, "limits": {"low": 1}}
    judge = get_judge(name, **judge_options(cfg.evaluate))
    assert judge.judge("Alice sold books.", "Alice sold many books.").hallucinated
    assert not judge.judge("Alice sold books.", "Alice sold books.").hallucinated
    assert judge_options(config({}).evaluate) == {"max_words": 5, "limits": {"low": 1}}  # the model's defaults
    assert judge_options(config({name: None}).evaluate) == judge_options(config({}).evaluate)  # `long-summary:` in YAML

    from faithforge.evaluation.heldout import judge_checkpoint

    three, nine = (get_judge(name, **judge_options(config({name: {"max_words": n}}).evaluate)) for n in (3, 9))
    assert judge_checkpoint(three) != judge_checkpoint(nine)  # each its own stored calibration
    assert judge_checkpoint(three) == judge_checkpoint(get_judge(name, max_words=3, limits={"low": 1}))

    for options, says in [({name: {"max_word": 3}}, "unknown setting max_word; the long-summary judge takes max_words"),
                          ({name: {"max_words": 0}}, "max_words: Input should be greater than or equal to 1"),
                          ({name: {"limits": {"lwo": 2}}}, "unknown setting limits.lwo")]:
        for section in ({"evaluate": {"judge_options": options}},  # set but unused: checked all the same
                        {"evaluate": {"judge_options": options}, "pairs": {"judge": name}}):  # the pairs judge's
            cfg = load_config(None, overrides={"workspace": str(tmp_path / "ws"), **section}, environ={})
            with pytest.raises(UserError) as err:
                check_pipeline_inputs(cfg)
            assert says in str(err.value) and "\n" not in str(err.value)
    for builtin in ("grounding", "nli"):  # their settings are evaluate's own fields: no entry for them
        with pytest.raises(ConfigError, match=f"unknown judge with settings of its own '{builtin}'; choose one of {name}"):
            config({builtin: {"threshold": 0.2}})
    with pytest.raises(ConfigError, match="unknown judge with settings of its own 'nope'"):
        config({"nope": {}})

    # the on-policy pairs' key holds the sample judge's own settings, validated, and nothing for a built-in judge
    from faithforge.stages.pairs import _judging_settings

    unused = load_config(None, overrides={"evaluate": {"judge_options": {name: {"max_words": 3}}}}, environ={})
    assert "judge_options" not in _judging_settings(unused)  # the pairs are judged by grounding
    own = load_config(None, overrides={"pairs": {"judge": name}, "evaluate": {"judge_options": {name: {}}}}, environ={})
    assert _judging_settings(own)["judge_options"] == {name: {"max_words": 5, "limits": {"low": 1}}}
    same = load_config(None, overrides={"pairs": {"judge": name}, "evaluate": {"judge_options": {name: {"max_words": "5"}}}},
                       environ={})
    assert _judging_settings(same) == _judging_settings(own)  # "5" and 5 and the default are one setting

    form = parameter_schema(pipeline.fn).model_dump()["definitions"]
    entry = form["EvaluateConfig"]["properties"]["judge_options"]
    assert name in _enums(entry)[0]
    # the form shows the judge's own fields (types, limits, defaults, docstrings), not a JSON object
    fields = entry["properties"][name]["anyOf"][0]["properties"]
    assert fields["max_words"] == {"default": 5, "minimum": 1, "title": "Max Words", "type": "integer",
                                   "description": "A summary longer than this many words is flagged."}
    assert fields["limits"]["properties"]["low"]["type"] == "integer"  # the nested model inlined: no $ref left
    assert "$ref" not in json.dumps(entry) and entry["properties"][name]["description"] == JUDGES.get(name).summary
    assert entry["properties"][name]["default"] is None  # an untouched form submits nothing a run could trip on

    _register_subcommands()
    labels = _labels(tmp_path, hallucinated="Alice sold many old books.")
    runner = CliRunner()
    base = ["eval", "calibrate", "--labels", str(labels), "--judge", name, "--no-save", "--json"]
    result = runner.invoke(app, [*base, "--judge-option", f"{name}.max_words=3"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["test"]["recall"] == 1.0
    result = runner.invoke(app, [*base, "--judge-option", f"{name}.max_words=9"])  # the setting reached the judge
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["test"]["recall"] == 0.0
    result = runner.invoke(app, [*base[:-4], "--judge", f"grounding+{name}", "--no-save", "--json",
                                 "--judge-option", f"{name}.max_words=3"])  # a combined judge's member
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*base, "--judge-option", f"{name}.max_words=3",
                                 "--judge-option", f'{name}.limits={{"low": 2}}'])  # JSON for an object
    assert result.exit_code == 0, result.output
    error = runner.invoke(app, [*base, "--judge-option", f"{name}.max_words=3", "--judge-option",
                                f"{name}.max_words=9"]).exception
    assert isinstance(error, UserError) and "is given twice" in str(error)
    for flag, says in [(f"{name}.max_words", "expects NAME.FIELD=VALUE"), ("nli.x=1", "not among --judge"),
                       (f"{name}.max_words=many", "max_words: Input should be a valid integer")]:
        error = runner.invoke(app, [*base, "--judge-option", flag]).exception  # `faithforge` prints it as one line
        assert isinstance(error, UserError) and says in str(error) and "\n" not in str(error), error
        assert str(error).startswith("--judge-option"), error  # the flag, not a config path the user never wrote
    error = runner.invoke(app, [*base[:-4], "--judge", "grounding", "--judge-option", "grounding.x=1"]).exception
    assert isinstance(error, UserError) and "the grounding judge has no settings of its own" in str(error)


@pytest.fixture
def throwaway_backend(tmp_path, monkeypatch):
    """A backend added the documented way: one module (`Options`, `build`) and one registration line. It answers
    like the template teacher, so a real generation run can use it, and notes the settings it was built with."""
    yield from register_throwaway(BACKENDS, BackendKind("echo-teacher", "throwaway_backend",
                                                         "the template teacher under another name", server=False,
                                                         own_settings=True),
                                   "from pydantic import BaseModel, ConfigDict, Field\n"
                                   "from faithforge.backends.template import TemplateBackend\n\n"
                                   "BUILT = []\n\n"
                                   "class Options(BaseModel):\n"
                                   "    model_config = ConfigDict(use_attribute_docstrings=True)\n"
                                   "    voice: str = Field('plain', min_length=1)\n"
                                   "    \"How the teacher speaks.\"\n\n"
                                   "class EchoTeacher(TemplateBackend):\n"
                                   "    name = 'echo-teacher'\n\n"
                                   "def build(model, options):\n"
                                   "    BUILT.append(options.settings.voice)\n"
                                   "    return EchoTeacher(model or 'echo')\n", tmp_path, monkeypatch)


def test_a_backend_registered_once_is_accepted_by_config_cli_and_form(throwaway_backend, tmp_path):
    """Its name and its own settings (`backend_options`, `--backend-option`) need no config field or flag: the
    config, the CLI, the preflight and the UI form read the registration and its module's `Options`."""
    from prefect.utilities.callables import parameter_schema
    from pydantic import ValidationError

    from faithforge.app.cli import _register_subcommands, app
    from faithforge.core.config import load_config
    from faithforge.core.errors import UserError
    from faithforge.generation.parameters import GenerateParameters
    from faithforge.flows.generate import generate_flow
    from faithforge.stages.preflight import check_pipeline_inputs

    assert GenerateParameters(spec="s.yaml", backend=throwaway_backend).backend == throwaway_backend
    config = load_config(None, overrides={"generate": {"backend": throwaway_backend}}, environ={})
    assert config.generate.backend == throwaway_backend
    form = parameter_schema(generate_flow.fn).model_dump()["definitions"]["GenerateParameters"]
    assert throwaway_backend in _enums(form["properties"]["backend"])[0]
    assert f"`{throwaway_backend}`: the template teacher under another name" in form["properties"]["backend"]["description"]
    settings_form = form["properties"]["backend_options"]["properties"]
    own = settings_form[throwaway_backend]["anyOf"][0]["properties"]["voice"]
    assert own["default"] == "plain" and own["description"] == "How the teacher speaks."
    assert "api_key_env" in settings_form["openai"]["anyOf"][0]["properties"]  # the built-in ones the same way
    assert "transformers" not in settings_form  # no settings of its own: no entry

    spec = ROOT / "configs" / "specs" / "grounded-summaries.yaml"
    for given, says in [({"voic": "x"}, "backend_options.echo-teacher: unknown setting voic; the echo-teacher backend "
                                         "takes voice"),
                        ({"voice": ""}, "backend_options.echo-teacher: voice: String should have at least 1 character")]:
        with pytest.raises(ValidationError, match=re.escape(says.replace("backend_options.", ""))):  # when made
            GenerateParameters(spec=str(spec), backend=throwaway_backend, workspace=str(tmp_path / "no"),
                               backend_options={throwaway_backend: given})
        cfg = load_config(None, overrides={"workspace": str(tmp_path / "pipeline"), "generate": {
            "backend": throwaway_backend, "backend_options": {throwaway_backend: given}}}, environ={})
        with pytest.raises(UserError, match=re.escape(says.replace("backend_options", "generate.backend_options"))):
            check_pipeline_inputs(cfg)
    assert not (tmp_path / "no").exists() and not (tmp_path / "pipeline").exists()  # refused before any workspace

    _register_subcommands()
    module = sys.modules["throwaway_backend"]
    generate = ["generate", "--spec", str(spec), "--backend", throwaway_backend, "--model", "echo", "--target", "2",
                "--no-prefect", "--no-gate"]
    refused = CliRunner().invoke(app, [*generate, "--backend-option", f"{throwaway_backend}.voic=loud",
                                       "--workspace", str(tmp_path / "no")])
    assert refused.exit_code == 2 and "unknown setting voic" in refused.output and not (tmp_path / "no").exists()
    result = CliRunner().invoke(app, [*generate, "--backend-option", f"{throwaway_backend}.voice=loud",
                                      "--workspace", str(tmp_path / "ws")])
    assert result.exit_code == 0, result.output
    assert module.BUILT == ["loud"]
    written = list((tmp_path / "ws").rglob("*.jsonl"))
    assert written and sum(len(p.read_text().splitlines()) for p in written) >= 2


@pytest.fixture
def throwaway_server_backend(tmp_path, monkeypatch):
    """A server backend that can free the GPU, added the documented way: its module defines `build` and the
    `release_gpu` hook, and one registration line says `releases_gpu`."""
    yield from register_throwaway(BACKENDS, BackendKind("unloading-server", "throwaway_server_backend",
                                                         "a server that unloads on request", server=True,
                                                         default_url="http://127.0.0.1:9", releases_gpu=True),
                                   "RELEASED = []\n\n"
                                   "def build(model, options):\n"
                                   "    raise NotImplementedError\n\n"
                                   "def release_gpu(base_url, models):\n"
                                   "    RELEASED.append((base_url, list(models)))\n"
                                   "    return list(models)\n", tmp_path, monkeypatch)


def test_unloading_after_a_run_calls_the_registered_backends_own_hook(throwaway_server_backend):
    """`releases_gpu` sent Ollama's unload request whatever the backend (a review, 2026-12-07): the generation
    job now calls the backend module's `release_gpu`, at its default URL when none is given."""
    from types import SimpleNamespace

    from faithforge.generation import job
    from faithforge.generation.parameters import GenerateParameters

    plan = SimpleNamespace(decision=SimpleNamespace(model="m-8b"))
    module = sys.modules.get("throwaway_server_backend") or __import__("throwaway_server_backend")
    asked = GenerateParameters(spec="s.yaml", backend=throwaway_server_backend, unload_after=True)
    assert job.release(asked, plan) == ["m-8b"]
    assert module.RELEASED == [("http://127.0.0.1:9", ["m-8b"])]
    assert job.release(asked.model_copy(update={"unload_after": False}), plan) == []
    assert len(module.RELEASED) == 1


@pytest.mark.parametrize("runs_model, says", [(False, None), (True, "not planned here")])
def test_the_gate_asks_whether_a_backend_runs_a_model(runs_model, says, tmp_path, monkeypatch):
    """The gate asked `backend == "template"`; it asks the registry's `runs_model` now: a throwaway backend that
    runs no model needs no generation plan, one that runs a model it cannot size is said to be not planned."""
    from faithforge.core.config import load_config
    from faithforge.stages.gate import generation_not_planned

    for name in register_throwaway(BACKENDS, BackendKind("no-model-teacher", "throwaway_no_model", "writes from rules",
                                                          server=False, runs_model=runs_model),
                                    "def build(model, options):\n    raise NotImplementedError\n", tmp_path, monkeypatch):
        config = load_config(None, overrides={"generate": {"backend": name}}, environ={})
        reason = generation_not_planned(config)
        assert reason is None if says is None else says in reason, reason


def test_an_unknown_name_is_one_line_that_lists_the_registered_ones():
    from faithforge.core.config import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, overrides={"evaluate": {"judge": "nope"}, "generate": {"backend": "nope"}}, environ={})
    message = str(err.value)
    assert "\n" not in message
    assert f"unknown judge 'nope'; choose one of {', '.join(JUDGES.names())}" in message
    assert f"unknown backend 'nope'; choose one of {', '.join(BACKENDS.names())}" in message


def test_judge_options_on_an_install_without_such_judges_says_what_to_set_instead():
    from faithforge.core.config import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, overrides={"evaluate": {"judge_options": {"grounding": {"x": 1}}}}, environ={})
    assert ("unknown judge with settings of its own 'grounding': none is registered; built-in judges use "
            "evaluate's own fields") in str(err.value) and "\n" not in str(err.value)


def test_a_judge_that_needs_the_runs_model_folder_is_handed_it_beside_its_settings(throwaway_model_folder_judge,
                                                                                   tiny_model_dir, tmp_path):
    """Two files as well: `run_inputs` in its registration names what the run hands `build` (the evaluate stage's
    own use is tests/stages/test_answer_cache.py); they are not settings, so not part of the judge's identity."""
    from faithforge.core.config import load_config
    from faithforge.core.errors import UserError
    from faithforge.evaluation import get_judge
    from faithforge.evaluation.heldout import judge_checkpoint
    from faithforge.evaluation.judge_options import judge_options
    from faithforge.stages.preflight import check_pipeline_inputs

    name = throwaway_model_folder_judge
    cfg = load_config(None, overrides={"workspace": str(tmp_path / "ws"), "evaluate": {"judge": name}}, environ={})
    check_pipeline_inputs(cfg)  # before the run its model is unknown: nothing is built
    options = judge_options(cfg.evaluate, base_model=str(tiny_model_dir), cache_root=str(tmp_path / "cache"))
    assert options == {"max_words": 40, "base_model": str(tiny_model_dir), "cache_dir": str(tmp_path / "cache" / name)}
    judge = get_judge(name, **options)
    assert json.loads((tmp_path / "cache" / name / "handed.json").read_text())["base_model"] == str(tiny_model_dir)
    elsewhere = get_judge(name, **{**options, "cache_dir": str(tmp_path / "other")})
    assert judge_checkpoint(judge) == judge_checkpoint(elsewhere)  # where the run keeps things is not a setting
    assert judge_checkpoint(judge) != judge_checkpoint(get_judge(name, **{**options, "max_words": 3}))
    with pytest.raises(ValueError, match="unknown run_inputs base_modle; the run hands a judge base_model, cache_dir"):
        JudgeKind("typo", "m", "s", run_inputs=("base_modle",))
    with pytest.raises(ValueError, match=r"run_inputs is a tuple of names, e.g. \('cache_dir',\)"):
        JudgeKind("typo", "m", "s", run_inputs=("cache_dir"))  # the comma forgotten
    with pytest.raises(ValueError, match="rule_based means no settings and no model"):
        JudgeKind("typo", "m", "s", rule_based=True, run_inputs=("base_model",))  # the report builds it bare

    # the pairs stage builds it as the evaluate stage does (a review found it without its cache folder)
    from faithforge.stages.pairs import _pairs_judge

    pairs = load_config(None, overrides={"pairs": {"builder": "on-policy", "judge": name}}, environ={})
    _pairs_judge(pairs, str(tiny_model_dir), str(tmp_path / "pairs-cache"))
    assert (tmp_path / "pairs-cache" / name / "handed.json").is_file()

    # `eval calibrate` hands it --base-model, and the workspace's cache; without it, the judge's own one line
    from faithforge.app.cli import _register_subcommands, app

    _register_subcommands()
    labels = _labels(tmp_path, hallucinated="Alice sold many old books on that day.")
    base = ["eval", "calibrate", "--labels", str(labels), "--judge", name, "--judge-option", f"{name}.max_words=3",
            "--json", "-w", str(tmp_path / "calibrate-ws")]
    result = CliRunner().invoke(app, [*base, "--base-model", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["test"]["recall"] == 1.0
    assert (tmp_path / "calibrate-ws" / "cache" / name / "handed.json").is_file()
    error = CliRunner().invoke(app, base).exception
    assert isinstance(error, UserError) and "pass --base-model" in str(error)


def test_a_setting_named_like_what_the_run_hands_is_refused(tmp_path, monkeypatch):
    """The run's model folder would silently replace the user's `base_model` setting."""
    from faithforge.core.config import load_config
    from faithforge.evaluation.judge_options import judge_options

    source = "from pydantic import BaseModel\n\nclass Options(BaseModel):\n    base_model: str = 'mine'\n"
    for name in register_throwaway(JUDGES, JudgeKind("clash", "throwaway_clash_judge", "s", own_settings=True,
                                                     run_inputs=("base_model",)), source, tmp_path, monkeypatch):
        cfg = load_config(None, overrides={"evaluate": {"judge": name}}, environ={})
        with pytest.raises(TypeError, match="Options declares base_model, which the run hands it"):
            judge_options(cfg.evaluate)


def test_a_judge_module_that_cannot_be_imported_leaves_the_form_a_json_object_for_it(tmp_path, monkeypatch):
    """Deploying still works (the form falls back to a JSON object for that judge); the run's preflight names the
    import error in one line before any work."""
    from prefect.utilities.callables import parameter_schema

    from faithforge.core.config import load_config
    from faithforge.core.errors import UserError
    from faithforge.flows.pipeline import pipeline
    from faithforge.stages.preflight import check_pipeline_inputs

    source = "import a_package_this_machine_lacks\n"
    for name in register_throwaway(JUDGES, JudgeKind("broken", "throwaway_broken_judge", "s", own_settings=True),
                                   source, tmp_path, monkeypatch):
        entry = parameter_schema(pipeline.fn).model_dump()["definitions"]["EvaluateConfig"]["properties"]["judge_options"]
        assert name in _enums(entry)[0] and name not in entry.get("properties", {})
        cfg = load_config(None, overrides={"workspace": str(tmp_path / "ws"), "evaluate": {"judge": name}}, environ={})
        with pytest.raises(UserError) as err:
            check_pipeline_inputs(cfg)
        assert str(err.value) == ("'broken' cannot be used: its module throwaway_broken_judge needs the package "
                                  "a_package_this_machine_lacks, which is not installed; install it")
    # a mistake in the code (a registration's module path, a name imported from FaithForge) keeps its traceback
    for source, kind in [("", JudgeKind("typo", "throwaway_no_such_module", "s")),
                         ("from faithforge.evaluation.verdict import Verdikt\n",
                          JudgeKind("bug", "throwaway_buggy_judge", "s"))]:
        for name in register_throwaway(JUDGES, kind, source, tmp_path, monkeypatch):
            (tmp_path / "throwaway-modules" / "throwaway_no_such_module.py").unlink(missing_ok=True)
            with pytest.raises(ImportError) as err:
                check_pipeline_inputs(load_config(None, overrides={"workspace": str(tmp_path / "ws"),
                                                                   "evaluate": {"judge": name}}, environ={}))
            assert not isinstance(err.value, UserError)


def test_what_the_form_submits_for_awkward_settings_passes_the_runs_check(tmp_path, monkeypatch):
    """A review (2026-12-07) typed the form's defaults into the run's check: a judge nobody set, with a required
    setting, stopped every run started from the UI; an alias or an excluded field was refused; a secret's masked
    default was shown and sent."""
    from prefect.utilities.callables import parameter_schema

    from faithforge.core.config import load_config
    from faithforge.core.errors import UserError
    from faithforge.evaluation.judge_options import declared_options, judge_options
    from faithforge.flows.pipeline import pipeline
    from faithforge.stages.preflight import check_pipeline_inputs

    source = ("from pydantic import BaseModel, Field, SecretStr\n\n"
              "class Options(BaseModel):\n"
              "    checkpoint: str\n"
              "    max_words: int = Field(5, alias='maxWords')\n"
              "    debug: bool = Field(False, exclude=True)\n"
              "    token: SecretStr = SecretStr('real-default')\n")
    for name in register_throwaway(JUDGES, JudgeKind("awkward", "throwaway_awkward_judge", "s", own_settings=True),
                                   source, tmp_path, monkeypatch):
        entry = parameter_schema(pipeline.fn).model_dump()["definitions"]["EvaluateConfig"]["properties"]
        fields = entry["judge_options"]["properties"][name]["anyOf"][0]["properties"]
        # a secret keeps its masked default (Prefect's UI fails the whole form without one), read back as unset
        assert fields["token"]["default"] == "**********" and fields["maxWords"]["default"] == 5

        def config(options, judge="grounding"):
            return load_config(None, overrides={"workspace": str(tmp_path / "ws"),
                                                "evaluate": {"judge": judge, "judge_options": options}}, environ={})

        check_pipeline_inputs(config({name: None}))  # the untouched form, the judge unused: nothing to check
        with pytest.raises(UserError, match="checkpoint: Field required"):
            check_pipeline_inputs(config({name: None}, judge=name))  # used: its required setting is asked for
        with pytest.raises(UserError, match="checkpoint: Field required"):
            check_pipeline_inputs(config({name: {}}))  # an entry someone wrote is checked, used or not
        for given in ({"checkpoint": "c", "maxWords": 3, "debug": True}, {"checkpoint": "c", "max_words": 3,
                                                                           "debug": True}):
            settings = judge_options(config({name: given}, judge=name).evaluate)
            assert settings["max_words"] == 3 and settings["debug"] is True  # by alias or name; excluded kept
            assert settings["token"].get_secret_value() == "real-default"
        shown = judge_options(config({name: {"checkpoint": "c", "token": "**********"}}, judge=name).evaluate)
        assert shown["token"].get_secret_value() == "real-default"  # the form's mask left as shown: not set
        typed = judge_options(config({name: {"checkpoint": "c", "token": "mine"}}, judge=name).evaluate)
        assert typed["token"].get_secret_value() == "mine"
        assert declared_options(config({name: None}).evaluate) == {}


def test_an_options_schema_is_inlined_without_a_reference_left_pointing_nowhere():
    """Recursive models and discriminated unions (a review's cases): the form's schema names no definition it lacks."""
    from typing import Literal, Optional, Union

    from pydantic import BaseModel, Field

    from faithforge.core.registry import _inlined

    class Node(BaseModel):
        label: str = "a"
        children: list["Node"] = []

    class Cat(BaseModel):
        kind: Literal["cat"] = "cat"

    class Dog(BaseModel):
        kind: Literal["dog"] = "dog"

    class Options(BaseModel):
        tree: Node = Node()
        maybe: Optional[Node] = None
        pet: Union[Cat, Dog] = Field(Cat(), discriminator="kind")

    form = _inlined(Options.model_json_schema())
    assert "$defs" not in json.dumps(form) and "$ref" not in json.dumps(form)
    assert form["properties"]["tree"]["properties"]["children"]["items"] == {"type": "object"}  # recursion: JSON
    assert form["properties"]["pet"]["discriminator"] == {"propertyName": "kind"}


def test_the_backend_once_called_local_is_named_anew_and_a_stored_deployment_still_runs(tmp_path):
    """`local` named both a backend and the work pool on this machine: the backend is `transformers` now. Written
    by a person, the old name is one line giving the new one; a deployment stored before the rename (every field of
    the parameters then, `api_key_env` among them) still validates, on the new name."""
    from faithforge.app.cli import _register_subcommands, app
    from faithforge.core.config import ConfigError, load_config
    from faithforge.generation.parameters import GenerateParameters

    says = "the backend 'local' is now called 'transformers'; write transformers"
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config(None, overrides={"generate": {"backend": "local"}}, environ={})
    _register_subcommands()
    result = CliRunner().invoke(app, ["generate", "--spec", str(ROOT / "configs" / "specs" / "grounded-summaries.yaml"),
                                      "--backend", "local", "--workspace", str(tmp_path / "ws")])
    assert result.exit_code == 2 and says in result.output and len(result.output.strip().splitlines()) == 1
    stored = {"spec": "s.yaml", "backend": "local", "model": "/models/m", "api_key_env": None, "api_key_secret": None,
              "template_delay_s": 0.0}
    assert GenerateParameters.model_validate(stored).backend == "transformers"
    assert "local" not in BACKENDS and BACKENDS.renamed == {"local": "transformers"}
    # where the new name is not allowed either (the LLM judge talks to a server), the choices, not the new name
    with pytest.raises(ConfigError, match=re.escape("unknown server backend 'local'; choose one of ollama, openai")):
        load_config(None, overrides={"evaluate": {"llm_backend": "local"}}, environ={})
    result = CliRunner().invoke(app, ["generate", "--spec", str(ROOT / "configs" / "specs" / "grounded-summaries.yaml"),
                                      "--backend", "local", "--api-key-env", "K", "--workspace", str(tmp_path / "ws")])
    assert result.exit_code == 2 and says in result.output  # the rename before anything said about its flags
