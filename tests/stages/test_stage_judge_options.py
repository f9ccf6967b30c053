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
