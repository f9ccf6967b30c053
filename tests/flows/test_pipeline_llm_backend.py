"""The pipeline with an LLM writing the data: the generation flow runs as a subflow against a loopback
Ollama server (real NDJSON protocol), and its examples are split, paired, trained on and evaluated."""

import pytest

from faithforge.core.config import load_config


def _answer_as_teacher(body: dict):
    """Ollama's reply to a grounded-summaries request, written by the offline teacher."""
    from tests.fixtures.fake_llm_servers import Reply

    from faithforge.backends.template import TemplateBackend

    result = TemplateBackend().chat(body["messages"], schema=body.get("format"),
                                    seed=(body.get("options") or {}).get("seed"))
    return Reply(content=result.text)


@pytest.mark.slow
def test_pipeline_trains_on_examples_generated_through_ollama(prefect_harness, tmp_path):
    from tests.fixtures.fake_llm_servers import FakeOllama

    from faithforge.core.store import Store
    from faithforge.flows.pipeline import pipeline

    with FakeOllama(default=_answer_as_teacher) as server:
        cfg = load_config(None, environ={}, overrides={
            "workspace": str(tmp_path / "ws"),
            "generate": {"backend": "ollama", "base_url": server.url, "model": "qwen3:8b", "target": 120,
                         "spec": "configs/specs/grounded-summaries.yaml"},
            "gpu": {"profile": "rtx4090-24gb"},
            "warm_start": {"steps": 10, "batch_size": 8},
            "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 2},
            "control": {"sft_on_chosen": False},
            "evaluate": {"bootstrap_samples": 100},
        })
        result = pipeline(cfg)
        chat_requests = server.chat_requests()
    stages = result["stages"]
    counts = stages["generate"]["counts"]
    assert sum(counts.values()) == 120 and counts["test"] > 0
    assert len(chat_requests) >= 120  # every example came over the Ollama protocol
    assert stages["pairs"]["report"]["by_kind"]["hallucination"] > 0
    assert stages["evaluate"]["items"] == counts["test"]
    store = Store(f"sqlite:///{tmp_path / 'ws' / 'faithforge.db'}")
    kinds = {a.kind for a in store.ancestors(stages["evaluate"]["artifact_id"])}
    assert {"generated-examples", "dataset", "pairs", "reference_cache", "adapter"} <= kinds
