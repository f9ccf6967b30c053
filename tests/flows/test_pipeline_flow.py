"""One end-to-end pipeline run under the Prefect test harness, small sizes; then a second run that reuses."""

import re

import pytest

from faithforge.core.config import load_config
from faithforge.core.store import Store
from tests.fixtures.small_config import SMALL_PIPELINE

_BYTECODE = re.compile(r"\b(LOAD_GLOBAL|LOAD_FAST|LOAD_CONST|RETURN_VALUE|CALL_FUNCTION|PRECALL|RESUME)\b")


async def _all_log_messages() -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    await APILogHandler.aflush()  # run logs reach the server from a background worker
    async with get_client() as client:
        logs = []
        offset = 0
        while True:  # the API pages at 200 records
            page = await client.read_logs(limit=200, offset=offset)
            logs += page
            if len(page) < 200:
                return [entry.message for entry in logs]
            offset += 200


@pytest.mark.slow
def test_pipeline_runs_end_to_end_and_reuses(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client

    from faithforge.flows.pipeline import pipeline

    cfg = load_config(None, overrides={**SMALL_PIPELINE, "workspace": str(tmp_path / "ws")}, environ={})
    first = pipeline(cfg)
    stages = first["stages"]
    assert set(stages) == {"generate", "base_model", "warm_start", "pairs", "reference", "train", "control",
                           "evaluate"}
    assert not stages["generate"]["reused"] and not stages["reference"]["reused"]
    assert stages["generate"]["counts"] == {"train": 120, "val": 20, "test": 30}
    assert stages["reference"]["pairs"] == stages["pairs"]["counts"]["train"]
    assert stages["train"]["steps"] == 4  # the step-0 reward check (policy == reference) passed
    ev = stages["evaluate"]
    assert ev["items"] == 30 and set(ev["models"]) == {"before", "after", "control"}
    models, difference = ev["models"], ev["difference"]
    for label, model in models.items():
        assert model["n"] == 30, (label, model)  # the grounding judge decides every test summary
        hallucinated = round(model["rate"] * model["n"])  # a rate is a count of summaries over n
        assert model["rate"] == pytest.approx(hallucinated / model["n"]), (label, model)
        assert model["rate_ci"][0] <= model["rate"] <= model["rate_ci"][1], (label, model)
        assert model["recall"] is not None and 0.0 <= model["recall"] <= 1.0, (label, model)  # sources list key facts
    # The warm-start reference always states a day, also where the source does not: the model before DPO has
    # learned to invent days, so it hallucinates on this test split. (At these sizes all three models measured
    # 30 of 30 on this machine and 4 DPO steps leave the greedy summaries unchanged, so "the rate dropped" is a
    # claim for the demo's sizes, not this test's; BENCHMARKS.md holds the demo's figures.)
    assert models["before"]["rate"] > 0.0, models
    # The paired difference is these two reports' own: same rates, and the count moves by fixed − broken.
    rate = difference["rate"]
    assert (rate["before"], rate["after"], rate["n"]) == (models["before"]["rate"], models["after"]["rate"], 30)
    assert rate["difference"] == pytest.approx(rate["after"] - rate["before"])
    assert round(30 * (rate["before"] - rate["after"])) == difference["fixed"] - difference["broken"], difference

    # The store links every stage output to the data it came from, and holds each gate's plan.
    store = Store(f"sqlite:///{tmp_path / 'ws' / 'faithforge.db'}")
    ancestors = store.ancestors(ev["artifact_id"])
    kinds = [a.kind for a in ancestors]
    assert kinds[:2] == ["adapter", "adapter"]  # the DPO adapter and the SFT control, nearest first
    assert {"reference_cache", "pairs", "dataset"} <= set(kinds[2:])
    assert stages["train"]["path"] in {a.uri for a in ancestors}
    records = {s.stage: s for s in store.stages(first["run_id"])}
    assert {"gate:generate", "gate:reference", "gate:train", "gate:evaluate"} <= set(records)
    assert records["gate:train"].plan["placement"] == "cpu"
    assert store.get_run(first["run_id"]).status == "completed"

    # The evaluation is visible in Prefect as markdown and table artifacts.
    async def artifact_keys():
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts()}

    import asyncio

    keys = asyncio.run(artifact_keys())
    assert {"hallucination-report", "hallucination-table", "gpu-plan-train", "dpo-training", "dpo-training-curves",
            "gpu-plan-warm-start"} <= keys

    # The pipeline run itself carries the report, with the charts inside it (not a file path) and the table.
    async def pipeline_artifacts(flow_run_id):
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        async with get_client() as client:
            return {a.key: a for a in await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))}

    own = asyncio.run(pipeline_artifacts(store.get_run(first["run_id"]).prefect_flow_run_id))
    report = own["faithforge-report"].data
    assert report.count("](data:image/png;base64,iVBORw0KGgo") == 2  # the rates chart and the training curves
    assert "## Where each stage ran" in report and "| train | this machine | no |" in report
    assert own["faithforge-rates"].type == "table" and "hallucination_rate" in own["faithforge-rates"].data

    # The run logs hold what an operator reads: no bytecode disassembly (dill's detect.py calls dis.dis under a
    # stdout capture, which Prefect's print capture used to turn into 160-212 log lines in dpo-train).
    messages = asyncio.run(_all_log_messages())
    assert any("train completed" in m for m in messages)  # the logs of the training task are there
    disassembly = [m for m in messages if _BYTECODE.search(m)]
    assert not disassembly, disassembly[:3]

    # Second run, now also evaluating a served model (a loopback Ollama that always adds a day): every
    # training stage is reused, and the evaluation compares the served model too. Its judging runs as mapped
    # `judge-chunk` tasks on a thread pool (distributed.judge_runner) inside the evaluate task: same rates.
    from tests.fixtures.fake_llm_servers import FakeOllama, Reply

    async def chunk_runs():
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

        async with get_client() as client:
            return await client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="judge-chunk")))

    earlier = len(asyncio.run(chunk_runs()))  # the session's server may hold other tests' judge-chunk runs
    with FakeOllama(default=lambda body: Reply(content="Ada bought 3 lamps in Oslo on Monday .")) as server:
        served = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(
            update={"served_model": "qwen3:8b", "served_base_url": server.url}),
            "distributed": cfg.distributed.model_copy(update={"judge_runner": "threads", "judge_chunk": 8})})
        second = pipeline(served)
        requests = server.chat_requests()
    reused = {name for name, out in second["stages"].items() if out and out.get("reused")}
    assert {"generate", "warm_start", "pairs", "reference", "train", "control"} <= reused
    models = second["stages"]["evaluate"]["models"]
    assert {k: models[k] for k in ev["models"]} == ev["models"]  # same models and summaries, judged on threads

    assert len(asyncio.run(chunk_runs())) - earlier == 4 * 4  # 4 models (before, after, control, served) × 30 items in 8s
    assert models["served"]["rate"] == 1.0 and models["served"]["n"] == 30  # "Ada … Oslo … Monday" is unsupported
    assert len(requests) == 30 and all(r["options"]["temperature"] == 0.0 for r in requests)
    assert requests[0]["messages"][0]["role"] == "system"
