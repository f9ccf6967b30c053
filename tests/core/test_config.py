import pytest

from faithforge.core.config import PipelineConfig, env_overrides, load_config
from faithforge.core.errors import ConfigError, UserError


def test_defaults_validate():
    cfg = load_config(None, environ={})
    assert cfg.train.beta == 0.1 and cfg.workspace == ".faithforge"


def test_every_problem_reported_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  steps: 0\n  beta: -1\n  lora_rank: 8\nevaluate:\n  judge: vibes\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    problems = err.value.problems
    assert len(problems) == 4, problems
    text = str(err.value)
    assert "train.steps" in text and "train.beta" in text and "evaluate.judge" in text
    unknown = next(p for p in problems if "lora_rank" in p)
    assert "unknown option" in unknown and "lora_r" in unknown  # lists the known options


def test_env_overrides_nested_and_typed():
    env = {"FAITHFORGE_TRAIN__STEPS": "64", "FAITHFORGE_WORKSPACE": "/tmp/x", "OTHER": "1",
           "FAITHFORGE_GPU_PROFILE": "a100-80gb", "FAITHFORGE_TEST_POSTGRES_URL": "postgresql://x"}
    # tool variables (the probe's profile, test settings) are not configuration
    assert env_overrides(env) == {"train": {"steps": 64}, "workspace": "/tmp/x"}
    cfg = load_config(None, environ=env)
    assert cfg.train.steps == 64 and cfg.workspace == "/tmp/x"
    with pytest.raises(ConfigError, match="train.epochs: unknown option"):
        load_config(None, environ={"FAITHFORGE_TRAIN__EPOCHS": "3"})


def test_file_then_env_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\ntrain:\n  steps: 10\n  beta: 0.2\n")
    cfg = load_config(path, overrides={"train": {"beta": 0.3}}, environ={"FAITHFORGE_TRAIN__STEPS": "20"})
    assert (cfg.seed, cfg.train.steps, cfg.train.beta) == (3, 20, 0.3)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad, environ={})
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(listy, environ={})


def test_field_docstrings_become_descriptions():
    schema = PipelineConfig.model_json_schema()
    train = schema["$defs"]["TrainConfig"]["properties"]
    assert "DPO temperature" in train["beta"]["description"]
    assert train["steps"]["minimum"] == 1
    assert schema["$defs"]["TrainConfig"]["properties"]["quantization"]["enum"] == ["auto", "nf4", "none"]


@pytest.mark.parametrize("source", ["override", "yaml", "env"])
def test_an_empty_workspace_is_a_config_error(source, tmp_path):
    """An empty workspace meant the current directory, which `--fresh` then emptied."""
    path, overrides, environ = None, None, {}
    if source == "override":
        overrides = {"workspace": ""}
    elif source == "yaml":
        path = tmp_path / "c.yaml"
        path.write_text('workspace: ""\n')
    else:
        environ = {"FAITHFORGE_WORKSPACE": ""}
    with pytest.raises(ConfigError, match="workspace"):
        load_config(path, overrides=overrides, environ=environ)


def test_a_config_that_is_not_utf8_or_is_a_directory_says_so(tmp_path):
    latin1 = tmp_path / "c.yaml"
    latin1.write_bytes(b"seed: 1  # caf\xe9\n")
    with pytest.raises(UserError, match=r"c.yaml is not UTF-8 text .*save it as UTF-8"):
        load_config(latin1, environ={})
    with pytest.raises(UserError, match="is a directory"):
        load_config(tmp_path, environ={})
