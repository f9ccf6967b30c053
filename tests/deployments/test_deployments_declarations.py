"""One declaration of the deployments: the committed prefect.yaml files are what deploy.py generates, and the
options (timezone, storage URL, workspace) reach both the Python registration and the YAML.

The comparison on a real server (both registered, compared field by field) is in
tests/deployments/test_deployments_integration.py::test_prefect_yaml_and_deploy_py_register_the_same_deployments.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from faithforge.deployments.deploy import declarations, prefect_yaml

REPO = Path(__file__).resolve().parents[2]


def test_committed_prefect_yaml_files_are_generated_from_deploy_py():
    for docker, name, path in ((False, "faithforge", "deployments/prefect.yaml"),
                               (True, "faithforge-docker", "deployments/prefect.docker.yaml")):
        command = "python -m faithforge.deployments.deploy " + ("--docker " if docker else "") + f"--write-prefect-yaml {path}"
        expected = prefect_yaml(declarations(REPO, docker=docker), REPO, portable=True, name=name, command=command)
        assert (REPO / path).read_text(encoding="utf-8") == expected, (
            f"{path} is stale: regenerate it with `{command}` from the repository root")


def test_options_reach_the_yaml_and_the_python_deployments(tmp_path):
    options = dict(timezone="Europe/Berlin", storage_url="s3://bucket/ff", offload_pool="a100")
    decls = declarations(tmp_path, **options)
    spec = yaml.safe_load(prefect_yaml(decls, tmp_path, portable=True))
    by_name = {(d["entrypoint"], d["name"]): d for d in spec["deployments"]}
    nightly = by_name[("faithforge.flows.generate.generate_flow", "nightly-generation")]
    assert nightly["schedules"] == [{"cron": "0 2 * * *", "timezone": "Europe/Berlin", "active": True}]
    assert nightly["parameters"]["params"]["workspace"] == "{{ $PWD }}/.faithforge"
    pipeline = by_name[("faithforge.flows.pipeline.pipeline", "local")]
    assert pipeline["parameters"]["config"] == {"workspace": "{{ $PWD }}/.faithforge", "storage_url": "s3://bucket/ff",
                                                "gpu": {"offload_pool": "a100"}}
    assert pipeline["work_pool"] == {"name": "local", "job_variables": {"working_dir": "{{ $PWD }}",
                                                                "env": {"OMP_WAIT_POLICY": "PASSIVE",
                                                                        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}}}

    from faithforge.deployments.deploy import build_deployments

    runners = {(r.entrypoint, r.name): r for r in build_deployments(tmp_path, **options)}
    assert set(runners) == set(by_name)
    cron = runners[("faithforge.flows.generate.generate_flow", "nightly-generation")].schedules[0].schedule
    assert (cron.cron, cron.timezone) == ("0 2 * * *", "Europe/Berlin")
    assert runners[("faithforge.flows.pipeline.pipeline", "local")].parameters["config"]["workspace"] == str(
        tmp_path.resolve() / ".faithforge")


def test_nightly_generation_has_smaller_tiers_and_shares_the_pipeline_workspace(tmp_path):
    decls = {(d.entrypoint, d.name): d for d in declarations(tmp_path)}
    params = decls[("faithforge.flows.generate.generate_flow", "nightly-generation")].parameters["params"]
    pipeline = decls[("faithforge.flows.pipeline.pipeline", "local")].parameters["config"]
    assert params["model"] == "qwen3:8b" and params["fallback_models"] == ["qwen3:4b", "qwen3:1.7b", "qwen3:0.6b"]
    assert params["workspace"] == pipeline["workspace"]  # the pipeline's LLM generation resumes what nightly wrote
    # the smallest tier runs on this 2-core machine's CPU when no tier fits a GPU: never "generating anyway"
    from faithforge.generation.model_tiers import decide

    decision = decide("ollama", [params["model"], *params["fallback_models"]], batch_size=1, max_tokens=4000,
                      prompt_tokens=1500, gpu_profile=None)
    assert decision.model == "qwen3:0.6b" and "anyway" not in decision.reason, decision.reason


def test_the_form_shows_limits_in_the_descriptions():
    """The Prefect UI's form renders a field's description, not its JSON-schema bounds (README: the form)."""
    from faithforge.core.config import PipelineConfig

    props = PipelineConfig.model_json_schema()["$defs"]
    assert props["TrainConfig"]["properties"]["steps"]["description"] == "Optimizer steps. Limits: ≥ 1, ≤ 1,000,000."
    assert props["TrainConfig"]["properties"]["learning_rate"]["description"].endswith("Limits: > 0, ≤ 1.")
    assert "Limits" not in props["TrainConfig"]["properties"]["save_merged"]["description"]  # no bounds, no note
