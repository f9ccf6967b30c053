"""Prefix-cached generation over transformers: encode a (system) prefix once, generate many continuations.

Plain Python + torch + transformers (no Prefect). Entry point: `PrefixCachedEngine`.

    engine = PrefixCachedEngine(model, tokenizer, [{"role": "system", "content": SYSTEM}])
    engine.generate("question", SamplingConfig(max_new_tokens=32), stop=["\\n\\n"])
    engine.generate_batch(questions, SamplingConfig(), max_new_tokens=32)   # greedy, batched
    chat = engine.conversation(); chat.send("hi"); chat.send("and then?")
"""

from faithforge.engine.conversation import Conversation
from faithforge.engine.engine import PrefixCachedEngine
from faithforge.engine.errors import CacheMismatchError, EngineError
from faithforge.engine.prefix_cache import PrefixCache
from faithforge.engine.result import GenerationResult
from faithforge.engine.sampling import SamplingConfig
from faithforge.engine.finish import TokenEvent

__all__ = [
    "CacheMismatchError", "Conversation", "EngineError", "GenerationResult", "PrefixCache",
    "PrefixCachedEngine", "SamplingConfig", "TokenEvent",
]
