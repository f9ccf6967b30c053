"""The Ollama request sends the context the GPU gate sized the server for (issue 13, finding 9)."""

from __future__ import annotations

from faithforge.generation.model_tiers import GateDecision, decide
from faithforge.generation.job import build_backend, planned_num_ctx
from faithforge.generation.parameters import GenerateParameters


def test_the_ollama_request_sends_the_context_the_gate_planned():
    prompt_tokens, max_tokens = 16_384, 2_048
    decision = decide("ollama", ["qwen3:8b"], batch_size=1, max_tokens=max_tokens, prompt_tokens=prompt_tokens,
                      gpu_profile="h200-141gb")
    assert decision.plan is not None
    planned = decision.plan.num_ctx
    assert planned >= prompt_tokens + decision.max_tokens  # the whole prompt and answer fit the window
    params = GenerateParameters(spec="configs/specs/grounded-summaries.yaml", backend="ollama", model="qwen3:8b")
    assert params.num_ctx != planned  # the option's default would have been sent before
    backend = build_backend(params, decision.model, planned_num_ctx(params, decision))
    try:
        assert backend.num_ctx == planned
    finally:
        backend.close()


def test_without_a_gate_plan_the_configured_context_is_sent():
    params = GenerateParameters(spec="configs/specs/grounded-summaries.yaml", backend="ollama", model="qwen3:8b", num_ctx=4096)
    configured = GateDecision(model="qwen3:8b", batch_size=1, max_tokens=2048, source="configured", reason="")
    assert planned_num_ctx(params, configured) == 4096
