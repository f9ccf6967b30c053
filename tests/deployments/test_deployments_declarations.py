"""One declaration of the deployments: the committed prefect.yaml files are what deploy.py generates, and the
options (timezone, storage URL, workspace) reach both the Python registration and the YAML.

The comparison on a real server (both registered, compared field by field) is in
tests/deployments/test_deployments_integration.py::test_prefect_yaml_and_deploy_py_register_the_same_deployments.
"""

from __future__ import annotations

from pathlib import Path

import pytest
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
    options = dict(timezone="Europe/Berlin", cron="30 3 * * 1-5", storage_url="s3://bucket/ff", offload_pool="a100")
    decls = declarations(tmp_path, **options)
    spec = yaml.safe_load(prefect_yaml(decls, tmp_path, portable=True))
    by_name = {(d["entrypoint"], d["name"]): d for d in spec["deployments"]}
    nightly = by_name[("faithforge.flows.generate.generate_flow", "nightly-generation")]
    assert nightly["schedules"] == [{"cron": "30 3 * * 1-5", "timezone": "Europe/Berlin", "active": True}]
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
    assert (cron.cron, cron.timezone) == ("30 3 * * 1-5", "Europe/Berlin")
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


def test_prefect_yaml_matches_deploy_py():
    from faithforge.deployments import deploy
    from faithforge.deployments.generation import NIGHTLY_CRON

    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    docker_spec = yaml.safe_load((REPO / "deployments" / "prefect.docker.yaml").read_text())
    # prefect.yaml needs only the pools its own header creates; the docker variant is a file of its own
    assert {d["work_pool"]["name"] for d in spec["deployments"]} == {deploy.LOCAL_POOL, deploy.A100_POOL}
    declared = {(d["entrypoint"], d["name"], d["work_pool"]["name"])
                for d in spec["deployments"] + docker_spec["deployments"]}
    expected = {(deploy.PIPELINE_ENTRYPOINT, deploy.LOCAL_POOL, deploy.LOCAL_POOL),
                (deploy.GENERATION_ENTRYPOINT, "nightly-generation", deploy.LOCAL_POOL)}
    pools = [deploy.LOCAL_POOL, deploy.A100_POOL, deploy.A100_DOCKER_POOL]
    expected |= {(entry, pool, pool) for entry in deploy.STAGE_ENTRYPOINTS.values() for pool in pools}
    assert declared == expected
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly-generation")
    assert nightly["schedules"][0]["cron"] == NIGHTLY_CRON
    docker = next(d for d in docker_spec["deployments"] if d["work_pool"]["name"] == deploy.A100_DOCKER_POOL)
    assert docker["work_pool"]["job_variables"] == deploy.docker_job_variables()
    # every entrypoint is importable as a flow, and stage deployments follow `<flow>/<pool>` naming
    from prefect.flows import load_flow_from_entrypoint

    from faithforge.offload.dispatch import STAGE_FLOWS

    for stage, entry in deploy.STAGE_ENTRYPOINTS.items():
        assert load_flow_from_entrypoint(entry).name == STAGE_FLOWS[stage]


def test_the_nightly_schedule_defaults_to_its_one_definition(tmp_path):
    from faithforge.deployments.generation import NIGHTLY_CRON

    nightly = next(d for d in declarations(tmp_path) if d.name == "nightly-generation")
    assert nightly.schedules == [{"cron": NIGHTLY_CRON, "timezone": "UTC", "active": True}]


@pytest.mark.parametrize("flag, value, problem", [
    ("--cron", "61 2 * * *", "cron '61 2 * * *' is not a cron expression; write five fields"),
    ("--timezone", "Mars/Olympus", "unknown timezone 'Mars/Olympus'; use an IANA name"),
])
def test_bad_deploy_options_are_one_line_and_write_nothing(tmp_path, capsys, flag, value, problem):
    """A bad timezone ended `deploy.py` in a traceback, after the work pools were created (a review, 2026-12-07):
    now one line, exit 2, before anything is written or registered."""
    from faithforge.deployments.deploy import main

    out = tmp_path / "prefect.yaml"
    assert main([flag, value, "--write-prefect-yaml", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {problem}")
    assert not out.exists()
