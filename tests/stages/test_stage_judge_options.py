"""The evaluate stage's judge options: checked from the config before any summary is generated."""

import pytest

from faithforge.core.config import EvaluateConfig
from faithforge.core.errors import UserError


def test_judge_options_are_checked_before_generation():
    from faithforge.backends.ollama import OllamaBackend
    from faithforge.backends.openai_compat import OpenAICompatBackend
    from faithforge.evaluation.judge_options import judge_options

    assert judge_options(EvaluateConfig()) == {}
    with pytest.raises(UserError, match="nli_checkpoint is empty"):
        judge_options(EvaluateConfig(judge="nli"))
    nli = judge_options(EvaluateConfig(judge="nli", nli_checkpoint="/models/hhem", nli_threshold=0.7))
    assert nli == {"checkpoint": "/models/hhem", "threshold": 0.7, "supported_label": None}
    with pytest.raises(UserError, match="nli_checkpoint is empty"):  # a judge list checks every member
        judge_options(EvaluateConfig(judge=["grounding", "nli"]))
    combined = judge_options(EvaluateConfig(judge=["grounding", "nli"], nli_checkpoint="/models/hhem",
                                            nli_threshold=0.7))
    assert combined == {"grounding": {}, "nli": nli}
    # the llm judge gets the backend the config names, pointed at the configured model and server
    ollama = judge_options(EvaluateConfig(judge="llm", llm_model="qwen3:8b", llm_base_url="http://127.0.0.1:9"))
    assert isinstance(ollama["backend"], OllamaBackend)
    assert (ollama["backend"].model, ollama["backend"].base_url) == ("qwen3:8b", "http://127.0.0.1:9")
    openai = judge_options(EvaluateConfig(judge="llm", llm_backend="openai", llm_model="m",
                                          llm_base_url="http://127.0.0.1:9"))
    assert isinstance(openai["backend"], OpenAICompatBackend)
    assert (openai["backend"].model, openai["backend"].base_url) == ("m", "http://127.0.0.1:9")


def test_the_llm_judges_and_the_served_models_backends_each_keep_their_own_settings(tmp_path, monkeypatch):
    """Keyed by backend name in one `evaluate.backend_options`, a cloud judge's key would have been sent to a local
    served model on the same backend (a review, 2026-12-07): each role has its own field, read by the LLM judge,
    the served model and preflight, and an unused key variable is checked only by the run that uses it here."""
    from faithforge.backends.openai_compat import OpenAICompatBackend
    from faithforge.core.config import load_config
    from faithforge.evaluation.judge_options import judge_options
    from faithforge.stages.preflight import check_backend_settings
    from tests.fixtures.fake_llm_servers import FakeOpenAI, Reply

    monkeypatch.setenv("FF_TEST_JUDGE_KEY", "sk-judge-789")
    monkeypatch.delenv("FF_TEST_EMPTY_KEY", raising=False)
    judge = judge_options(EvaluateConfig(judge="llm", llm_backend="openai", llm_model="qwen3:8b",
                                         llm_base_url="http://127.0.0.1:9",
                                         llm_backend_options={"openai": {"api_key_env": "FF_TEST_JUDGE_KEY"}}))
    assert isinstance(judge["backend"], OpenAICompatBackend) and judge["backend"].api_key_env == "FF_TEST_JUDGE_KEY"
    with FakeOpenAI() as server:  # the served model's backend: no key, although the judge's backend has one
        server.push(Reply("fine"))
        from faithforge.backends import make_backend

        cfg = EvaluateConfig(served_model="qwen3:8b", served_backend="openai", served_base_url=server.url,
                             llm_backend_options={"openai": {"api_key_env": "FF_TEST_JUDGE_KEY"}})
        make_backend(cfg.served_backend, cfg.served_model, base_url=cfg.served_base_url,
                     settings=cfg.served_backend_options.get("openai")).chat(
            [{"role": "user", "content": "hi"}], schema=None, max_tokens=4, temperature=0, seed=1)
        _, _, _, headers = server.requests[0]
    assert "authorization" not in {k.lower() for k in headers}

    def config(evaluate, gpu=None):
        return load_config(None, environ={}, overrides={"workspace": str(tmp_path / "ws"), "evaluate": evaluate,
                                                        **({"gpu": gpu} if gpu else {})})

    empty = {"openai": {"api_key_env": "FF_TEST_EMPTY_KEY"}}
    check_backend_settings(config({"llm_backend_options": empty}))  # the llm judge is not used: kept for later
    used = {"judge": "llm", "llm_backend": "openai", "llm_base_url": "http://127.0.0.1:9", "llm_backend_options": empty}
    with pytest.raises(UserError, match=r"^evaluate\.llm_backend_options\.openai: api_key_env FF_TEST_EMPTY_KEY: "
                                        "that environment variable is empty"):
        check_backend_settings(config(used))
    check_backend_settings(config(used, gpu={"offload_pool": "a100"}))  # set on the pool's machine, checked there
    with pytest.raises(UserError, match=r"^evaluate\.served_backend_options\.ollama: keep_alive"):
        check_backend_settings(config({"served_backend_options": {"ollama": {"keep_alive": "soon"}}}))
    with pytest.raises(Exception, match="unknown server backend with settings of its own 'template'"):
        config({"llm_backend_options": {"template": {"delay_s": 1}}})  # evaluate talks to servers only
