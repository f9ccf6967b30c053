"""A served policy as the pairs stage's sampler (vLLM on a GPU user's machine; here a real llama.cpp server): seeded
samples in order, the policy check that refuses a server whose answers are not the policy's, and the pairs stage
drawing its samples from the server.

The server serves the f16 GGUF FaithForge writes from the imported SmolLM2 folder (`sampling_gguf`), with the
request fields that turn its own sampling defaults off (`PLAIN_SAMPLING`). llama-cpp-python's server interrupts a
running request when another arrives (the interrupted answer comes back empty), so these tests send one at a time.
"""

from __future__ import annotations

import pytest
import torch

from faithforge.core.errors import UserError
from faithforge.data.grounded_qa import SYSTEM_PROMPT, generate_questions
from faithforge.engine import EngineError, PrefixCachedEngine, SamplingConfig
from faithforge.engine.served_sampler import ServedSampler
from tests.fixtures.smollm2 import imported_smollm2, random_lora


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from faithforge.training.modeling import load_tokenizer

    folder = imported_smollm2(tmp_path_factory)
    return folder, load_tokenizer(folder)


@pytest.fixture(scope="module")
def policy_server(smollm2, tmp_path_factory):
    """llama.cpp's server on the f16 GGUF of the imported folder (the policy's weights), for this module."""
    from tests.fixtures.llama_server import _missing, _stop, start_llama_server

    from faithforge.training.sampling_gguf import write_sampling_gguf

    if _missing():
        pytest.skip(_missing())
    folder, _ = smollm2
    gguf = write_sampling_gguf(folder, None, tmp_path_factory.mktemp("served") / "policy.f16.gguf")
    server, proc = start_llama_server(gguf.parent / "server.log", gguf=gguf, n_ctx=2048)
    try:
        yield server
    finally:
        _stop(proc)


@pytest.fixture
def served(policy_server, smollm2):
    from faithforge.backends import make_backend

    _, tokenizer = smollm2
    from faithforge.core.backend_registry import PLAIN_SAMPLING

    backend = make_backend("openai", policy_server.model, base_url=policy_server.base_url)
    backend.extra_body = PLAIN_SAMPLING["llama.cpp"]
    return ServedSampler(backend, tokenizer, SYSTEM_PROMPT, concurrency=1)


QUESTIONS = [e.source for e in generate_questions("val", 8, 0)]


def test_served_samples_come_back_in_order_seeded_and_cut_at_the_limit(served, smollm2):
    _, tokenizer = smollm2
    seen = []
    sampling = SamplingConfig(temperature=1.0, seed=3, max_new_tokens=8)
    first = served.generate_batch(QUESTIONS[:3] * 2, sampling, batch_size=4,
                                  progress=lambda done, total: seen.append((done, total)))
    again = served.generate_batch(QUESTIONS[:3] * 2, sampling, batch_size=2)
    other = served.generate_batch(QUESTIONS[:3] * 2, SamplingConfig(temperature=1.0, seed=4, max_new_tokens=8))
    assert [r.text for r in first] == [r.text for r in again]  # request i is seeded as the local samplers seed it
    assert [r.text for r in first] != [r.text for r in other]
    assert seen[-1] == (6, 6) and len(seen) == 6
    assert all(r.token_ids == tokenizer.encode(r.text, add_special_tokens=False) for r in first)
    assert any(r.finish_reason == "length" for r in first)
    with pytest.raises(EngineError, match="temperature only"):
        served.generate_batch(QUESTIONS[:1], SamplingConfig(temperature=0.7, top_p=0.9))


def test_the_policy_check_passes_the_served_weights_and_refuses_another_model(served, smollm2):
    """The server holds the f16 file of the imported folder; the local policy is that float32 folder: their greedy
    answers agree. The same folder with a LoRA update merged is another model: refused."""
    from transformers import AutoModelForCausalLM

    from faithforge.stages.sampler import PROBES, check_served_policy

    folder, tokenizer = smollm2
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    local = PrefixCachedEngine(model, tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}])
    with torch.inference_mode():
        note = check_served_policy(served, local, QUESTIONS)
    agreed = int(note.split()[0])
    assert agreed >= 6 and note.endswith(f"of {PROBES} greedy probes answered as the local policy")

    other = PrefixCachedEngine(random_lora(model).merge_and_unload().eval(), tokenizer,
                               [{"role": "system", "content": SYSTEM_PROMPT}])
    with torch.inference_mode(), pytest.raises(UserError, match="answers as the policy on [0-5] of 8"):
        check_served_policy(served, other, QUESTIONS)


def test_the_pairs_stage_samples_from_the_server_after_the_check(policy_server, smollm2, tmp_path, monkeypatch):
    from faithforge.app.real_demo import CI_SETTINGS, REAL_SETTINGS
    from faithforge.core.config import deep_merge, load_config
    from faithforge.gpu.planner import Plan
    from faithforge.stages.context import StageContext
    from faithforge.stages.generate import generate_examples
    from faithforge.stages.outputs import ModelOutput
    from faithforge.stages.pairs import build_pairs, load_pairs

    folder, _ = smollm2
    server = {"sampler": "served", "served_model": policy_server.model, "served_base_url": policy_server.base_url,
              "served_server": "llama.cpp", "served_concurrency": 1, "margin": 0.0, "samples_per_source": 3}
    cfg = load_config(None, base=deep_merge(REAL_SETTINGS, CI_SETTINGS), environ={},
                      overrides={"workspace": str(tmp_path / "ws"), "model": {"path": str(folder)}, "pairs": server})
    ctx = StageContext.open(cfg)
    from faithforge.backends.openai_compat import OpenAICompatBackend

    sent, real_body = [], OpenAICompatBackend._body

    def spied(self, *args, **kwargs):
        sent.append(real_body(self, *args, **kwargs))
        return sent[-1]

    monkeypatch.setattr(OpenAICompatBackend, "_body", spied)
    out = build_pairs(ctx, generate_examples(ctx), ModelOutput(path=str(folder)),
                      Plan.manual("pairs", "cpu", batch_size=8))
    sampler = out.report["sampler"]
    assert sampler.startswith("served: the config names a server") and "greedy probes answered as the local" in sampler
    assert out.report["samples"] == 10 * 3 and load_pairs(out.train)
    assert not (tmp_path / "ws" / "cache" / "gguf").exists()  # nothing was written for llama.cpp in-process
    assert len(sent) == 8 + 10 * 3  # the probes, then the samples: each without the server's own sampling defaults
    assert all((b["top_k"], b["top_p"], b["min_p"], b["repeat_penalty"]) == (0, 1.0, 0.0, 1.0) for b in sent)
    assert {b["temperature"] for b in sent} == {0.0, cfg.pairs.temperature}



def test_the_served_fields_go_with_each_request_and_never_override_the_standard_ones():
    from faithforge.backends import make_backend
    from faithforge.core.backend_registry import PLAIN_SAMPLING

    backend = make_backend("openai", "policy", base_url="http://127.0.0.1:9/v1")
    plain = backend._body([{"role": "user", "content": "hi"}], schema=None, max_tokens=8, temperature=1.0, seed=3,
                          mode=None)
    assert not set(PLAIN_SAMPLING["vllm"]) & set(plain)  # nothing extra unless asked
    backend.extra_body = {**PLAIN_SAMPLING["vllm"], "temperature": 5.0, "max_tokens": 1}
    body = backend._body([{"role": "user", "content": "hi"}], schema=None, max_tokens=8, temperature=1.0, seed=3,
                         mode=None)
    assert body["top_k"] == -1 and body["min_p"] == 0.0 and body["repetition_penalty"] == 1.0
    assert (body["temperature"], body["max_tokens"], body["seed"]) == (1.0, 8, 3)


def test_a_served_sampler_needs_its_server_named_and_changes_no_other_pairs_key(tmp_path):
    from faithforge.core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="pairs.served_model is empty"):
        load_config(None, environ={}, overrides={"pairs": {"sampler": "served", "served_base_url": "http://h/v1"}})
    with pytest.raises(ConfigError, match="pairs.served_base_url is empty"):
        load_config(None, environ={}, overrides={"pairs": {"sampler": "served", "served_model": "m"}})
    from faithforge.stages.pairs import _SERVED_SETTINGS
    from faithforge.core.config import PairsConfig

    assert _SERVED_SETTINGS == {name for name in PairsConfig.model_fields if name.startswith("served_")}


def test_answers_an_interrupting_server_returned_empty_are_asked_again(served):
    """llama-cpp-python's server cancels a running request when another arrives and returns it empty, with no
    error. With 4 in flight the answers still come back whole: the same seeded answers as one at a time."""
    sampling = SamplingConfig(temperature=1.0, seed=5, max_new_tokens=8)
    alone = served.generate_batch(QUESTIONS[:6], sampling)
    calls, chat = [], served.backend.chat

    def counted(*args, **kwargs):
        calls.append(1)
        return chat(*args, **kwargs)

    served.backend.chat, served.concurrency = counted, 4
    together = served.generate_batch(QUESTIONS[:6], sampling)
    assert all(r.text for r in alone) and [r.text for r in together] == [r.text for r in alone]
    assert len(calls) > 6  # some came back empty (interrupted) and were asked again
