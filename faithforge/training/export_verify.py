"""Is the exported file the model that was measured? Serve it with llama.cpp's server and compare its greedy
answers with transformers' on the same prompts.

`served_gguf` starts `python -m llama_cpp.server --model FILE` (the server the suite and users run) on a free
loopback port. `greedy_agreement` renders each prompt with the model's chat template, checks that the server
tokenizes it into the same ids as the Hugging Face tokenizer (`/extras/tokenize`), and compares the server's
greedy completion (temperature 0, no repetition penalty) with `generate(do_sample=False)` of the merged model in
fp32. f16 is expected to agree on (nearly) every prompt — fp32 vs f16 arithmetic can flip a near-tie, which is
why the figure is a rate, reported as measured; a quantized file's rate says what quantization changed.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from faithforge.core.errors import UserError
from faithforge.core.ports import free_port

#: Fixed probe prompts (not evaluation items): short document questions like the real task's, and open requests.
PROMPTS = [
    "Document: Ada bought 3 lamps in Graz on Monday. Question: Who bought the lamps?",
    "Document: Ben painted a fence in Oslo. Question: On which day did Ben paint the fence?",
    "Document: Carla sold 7 kites in Riga on Friday. Question: How many kites did Carla sell?",
    "Document: Dario repaired a bike in Lyon on Sunday and Emma baked bread in Porto. Question: Where did Emma bake?",
    "Document: Farid wrote 2 letters in Cairo. Question: In which city did Farid write?",
    "Document: Greta planted 5 trees in Bern on Tuesday. Question: What did Greta plant?",
    "Document: Hugo cooked soup in Lima on Wednesday. Question: How many bowls of soup did Hugo cook?",
    "Document: Ines carried 4 boxes in Quito. Question: On which day did Ines carry the boxes?",
    "Document: Jonas fixed a clock in Turin on Thursday. Question: Who fixed the clock?",
    "Document: Kira knitted 6 scarves in Tartu on Saturday. Question: Where did Kira knit?",
    "Write one sentence about a river.",
    "Name three colors.",
    "What is the capital of France?",
    "Give me a short tip for sleeping well.",
    "Translate 'good morning' into French.",
    "What is 12 plus 7?",
    "Describe a cat in five words.",
    "Why is the sky blue? Answer briefly.",
    "List two fruits that are yellow.",
    "Write a haiku about snow.",
]


@dataclass
class Agreement:
    prompts: int
    same_prompt_tokens: int
    """Prompts the server tokenized exactly as the Hugging Face tokenizer."""
    same_greedy: int
    """Prompts whose greedy completion is identical."""
    rate: float
    max_new_tokens: int
    mean_common_prefix_tokens: float
    """Leading tokens (HF tokenizer) the two completions share, averaged."""
    differing: list[dict[str, Any]] = field(default_factory=list)
    """The first few differing prompts with both completions."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def launch_llama_server(model: str | Path, *, port: int, alias: str, n_ctx: int, threads: int,
                        log: Any) -> subprocess.Popen:
    """llama.cpp's OpenAI-compatible server (llama-cpp-python's `llama_cpp.server`) on `model` at 127.0.0.1:`port`,
    its output into `log` (a file opened for writing, or DEVNULL); the caller waits for it and stops it."""
    from faithforge.engine.gguf_sampler import threads_sleep

    # The server inherits this process's OpenMP wait policy (FaithForge sleeps on a busy machine, the suite always):
    # llama.cpp threads that sleep between operations are slower than one (SmolLM2 Q4_1: 22-26 tokens/s on 2
    # threads against 59-67 on 1; `engine.gguf_sampler.default_threads`), so then it serves on one.
    threads = 1 if threads_sleep() else threads
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", alias,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
           "--n_threads_batch", str(threads)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_until_serving(proc: subprocess.Popen, root: str, *, timeout_s: float, what: str = "",
                       log_path: str | Path | None = None) -> None:
    """Return once the server at `root` lists its models; a one-line `UserError` (with the end of its log) if the
    process exits first or `timeout_s` passes (the process is left for the caller to stop)."""
    import httpx

    def tail() -> str:
        return Path(log_path).read_text(errors="replace")[-1500:] if log_path else ""

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise UserError(f"llama.cpp's server exited ({proc.returncode}) {what}: {tail()}")
        try:
            if httpx.get(f"{root}/v1/models", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise UserError(f"llama.cpp's server did not answer {what} within {timeout_s:g} s: {tail()}")
        time.sleep(0.25)


@contextlib.contextmanager
def served_gguf(path: str | Path, *, threads: int = 2, n_ctx: int = 2048, alias: str = "exported",
                log_path: str | Path | None = None, timeout_s: float = 180.0) -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server on `path`; yields its root URL and stops it (by its PID) after."""
    from faithforge.training.gguf_writer import llama_cpp_or_error

    llama_cpp_or_error("serving the exported GGUF")
    port = free_port()
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = launch_llama_server(path, port=port, alias=alias, n_ctx=n_ctx, threads=threads, log=log)
    root = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(proc, root, timeout_s=timeout_s, what=f"loading {path}", log_path=log_path)
        yield root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        if log_path:
            log.close()


def rendered_prompts(tokenizer, count: int = len(PROMPTS)) -> list[str]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True) for p in PROMPTS[:count]]


def hf_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """transformers' greedy completions (up to EOS or `max_new_tokens`), special tokens dropped."""
    import torch

    out = []
    for text in prompts:
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            generated = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                       max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True))
    return out


def served_greedy(root: str, prompts: list[str], max_new_tokens: int) -> tuple[list[str], list[list[int]]]:
    """The server's greedy completions and its tokenization of each prompt."""
    import httpx

    texts, tokens = [], []
    with httpx.Client(timeout=300.0) as client:
        for text in prompts:
            tok = client.post(f"{root}/extras/tokenize", json={"input": text, "special": True})
            tok.raise_for_status()
            tokens.append(tok.json()["tokens"])
            reply = client.post(f"{root}/v1/completions", json={
                "prompt": text, "max_tokens": max_new_tokens, "temperature": 0.0, "top_k": 1, "top_p": 1.0,
                "repeat_penalty": 1.0, "seed": 0})
            reply.raise_for_status()
            texts.append(reply.json()["choices"][0]["text"])
    return texts, tokens


def compare(tokenizer, prompts: list[str], expected: list[str], served: list[str], served_tokens: list[list[int]],
            max_new_tokens: int) -> Agreement:
    same_prompt = sum(int(tokenizer(p, add_special_tokens=False)["input_ids"] == t)
                      for p, t in zip(prompts, served_tokens))
    same = [a == b for a, b in zip(expected, served)]
    prefixes = []
    for a, b in zip(expected, served):
        ta, tb = tokenizer(a, add_special_tokens=False)["input_ids"], tokenizer(b, add_special_tokens=False)["input_ids"]
        n = 0
        while n < min(len(ta), len(tb)) and ta[n] == tb[n]:
            n += 1
        prefixes.append(n)
    differing = [{"prompt": i, "transformers": a, "llama.cpp": b}
                 for i, (a, b, s) in enumerate(zip(expected, served, same)) if not s][:3]
    return Agreement(prompts=len(prompts), same_prompt_tokens=same_prompt, same_greedy=sum(same),
                     rate=round(sum(same) / max(len(prompts), 1), 4), max_new_tokens=max_new_tokens,
                     mean_common_prefix_tokens=round(sum(prefixes) / max(len(prefixes), 1), 2), differing=differing)


def greedy_agreement(gguf_path: str | Path, tokenizer, expected: list[str], prompts: list[str], *,
                     max_new_tokens: int, threads: int = 2, log_path: str | Path | None = None) -> Agreement:
    """Serve `gguf_path` and compare its greedy completions of `prompts` with `expected` (transformers')."""
    with served_gguf(gguf_path, threads=threads, log_path=log_path) as root:
        served, served_tokens = served_greedy(root, prompts, max_new_tokens)
    return compare(tokenizer, prompts, expected, served, served_tokens, max_new_tokens)
