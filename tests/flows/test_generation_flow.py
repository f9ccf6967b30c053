"""The Prefect flow, the CLI command, the nightly deployment and the Prefect Secret key lookup."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from faithforge.deployments.generation import NIGHTLY_CRON
from faithforge.backends.template import TemplateBackend
from faithforge.generation.parameters import GenerateParameters
from tests.fixtures.fake_llm_servers import FakeOllama, FakeOpenAI, Reply

ROOT = Path(__file__).resolve().parents[2]
GROUNDED = str(ROOT / "configs" / "specs" / "grounded-summaries.yaml")


def test_flow_module_does_not_import_torch():
    import subprocess

    code = "import sys, faithforge.flows.generate, faithforge.deployments.generation; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_flow_generates_exports_records_and_reports_progress(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client

    from faithforge.core.store import Store
    from faithforge.core.workspace import sha256_file
    from faithforge.generation.job import GenerationResult
    from faithforge.flows.generate import generate_flow

    params = GenerateParameters(spec=GROUNDED, backend="template", model="template", target=6,
                                workspace=str(tmp_path))
    result = generate_flow(params)
    assert isinstance(result, GenerationResult)
    assert result.summary.done_total == 6 and result.export.examples == 6
    lines = Path(result.export.path).read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line)["data"]["summary"] for line in lines)
    assert result.export.sha256 == sha256_file(result.export.path)
    artifact = Store(result.plan.database_url).artifact(result.export.artifact_id)
    assert artifact.kind == "generated-examples" and artifact.meta["examples"] == 6
    # JSON for Prefect and the run store, and back to the same typed result (the summary as its `to_dict()`)
    dumped = json.loads(result.model_dump_json())
    assert dumped["summary"] == result.summary.to_dict() and dumped["export"]["examples"] == 6
    assert GenerationResult.model_validate_json(result.model_dump_json()) == result

    async def progress_artifacts():
        async with get_client() as client:
            return [a for a in await client.read_artifacts() if a.type == "progress"]

    assert any(a.data == 100.0 for a in asyncio.run(progress_artifacts()))
    again = generate_flow(params)  # resumes: nothing left to do
    assert again.summary.generated == 0 and again.summary.done_total == 6


def test_flow_over_ollama_unloads_the_model_afterwards(prefect_harness, tmp_path):
    from faithforge.flows.generate import generate_flow

    teacher = TemplateBackend()
    with FakeOllama(default=lambda body: Reply(teacher.chat(body["messages"], schema=body["format"],
                                                            seed=body["options"]["seed"]).text)) as server:
        result = generate_flow(GenerateParameters(spec=GROUNDED, backend="ollama", model="qwen3:8b", target=4,
                                                  base_url=server.url, workspace=str(tmp_path), unload_after=True,
                                                  gpu_profile="rtx4070super-12gb", batch_size=4, max_tokens=2000))
    assert result.summary.done_total == 4 and result.unloaded == ["qwen3:8b"]
    assert server.unloaded == ["qwen3:8b"]
    decision = result.plan.decision
    assert decision.source == "gate" and decision.plan is not None and decision.plan.stage == "generate"
    assert {b["options"]["num_predict"] for b in server.chat_requests()} == {decision.max_tokens}


def test_cli_command_runs_the_flow_with_a_progress_bar(prefect_harness, tmp_path):
    from faithforge.app.cli_generate import generate

    app = typer.Typer()
    app.command("generate")(generate)
    app.command("version")(lambda: None)  # a second command keeps `generate` a sub-command, as in the real CLI
    args = ["generate", "--spec", GROUNDED, "--backend", "template", "--model", "template", "--target", "4",
            "--workspace", str(tmp_path)]
    result = CliRunner(env={"COLUMNS": "250"}).invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4/4" in result.output and "generated-grounded-summaries.jsonl" in result.output
    direct = CliRunner(env={"COLUMNS": "250"}).invoke(app, [*args[:-1], str(tmp_path / "direct"), "--no-prefect"])
    assert direct.exit_code == 0 and "4/4 examples" in direct.output
    bad = CliRunner(env={"COLUMNS": "250"}).invoke(app, ["generate", "--spec", str(tmp_path / "nope.yaml"), "--backend", "template",
                                   "--no-prefect", "--workspace", str(tmp_path)])
    assert bad.exit_code == 2 and "not found" in bad.output


def test_openai_key_from_a_prefect_secret_block(prefect_harness):
    from prefect.blocks.system import Secret

    from faithforge.backends.openai_compat import OpenAICompatBackend

    Secret(value="sk-from-block").save("ff-gen-test-key", overwrite=True)
    with FakeOpenAI() as server:
        server.push(Reply('{"a": 1}'))
        backend = OpenAICompatBackend("qwen3:8b", base_url=server.url, api_key_secret="ff-gen-test-key")
        backend.chat([{"role": "user", "content": "x"}], schema=None, max_tokens=8, temperature=0, seed=None)
    headers = {k.lower(): v for k, v in server.requests[0][3].items()}
    assert headers["authorization"] == "Bearer sk-from-block"


def test_nightly_deployment_at_two_in_a_configurable_timezone():
    from faithforge.deployments.generation import generation_deployment, generation_deployment_kwargs
    from faithforge.core.errors import UserError

    params = GenerateParameters(spec=GROUNDED, target=500)
    kwargs = generation_deployment_kwargs(params, timezone="Europe/Berlin")
    (schedule,) = kwargs["schedules"]
    assert (schedule.cron, schedule.timezone) == (NIGHTLY_CRON, "Europe/Berlin")
    assert kwargs["parameters"]["params"]["target"] == 500
    deployment = generation_deployment(params, timezone="America/New_York")
    assert deployment.schedules[0].schedule.timezone == "America/New_York"
    with pytest.raises(UserError, match="unknown timezone"):
        generation_deployment_kwargs(params, timezone="Mars/Olympus")
