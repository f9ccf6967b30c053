"""FaithForge's own overhead per generated example, through the real generation flow.

An instant backend (answers prepared in advance, ~0 s per call) replaces the model, so everything
measured is FaithForge: Prefect task, claim transaction (with the dead-claimant check), prompt rendering,
JSON extraction and schema validation, the quality gates (grounding judge on summary, variant and key
facts), dedup check, commit transaction, atomic file write with fsync, progress reporting.

Two flow runs with different targets in fresh workspaces; the marginal cost per example is
(wall(N2) − wall(N1)) / (N2 − N1), which removes the flow's fixed start-up cost. The generation loop's own
time per example (from the run summary) is reported too.

    python bench/generation_overhead.py [--small 100] [--large 400] [--gates-only]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

SPEC = ROOT / "configs" / "specs" / "grounded-summaries.yaml"


class InstantBackend:
    """Returns prepared valid answers in order: no model time at all."""

    name = "instant"

    def __init__(self, answers: list[str]):
        self.model = "instant"
        self.answers = answers
        self.calls = 0

    def chat(self, messages, *, schema=None, max_tokens=1024, temperature=0.0, seed=None):
        from faithforge.backends import ChatResult

        text = self.answers[self.calls % len(self.answers)]
        self.calls += 1
        return ChatResult(text=text)


def prepared_answers(count: int) -> list[str]:
    from faithforge.backends.template import TemplateBackend

    teacher = TemplateBackend()
    return [teacher.chat([{"role": "user", "content": "Rule: the document must state the day."}],
                         seed=i).text for i in range(count)]


def run_once(target: int, answers: list[str]) -> tuple[float, dict]:
    from faithforge.generation import job
    from faithforge.generation.parameters import GenerateParameters
    from faithforge.flows.generate import generate_flow

    backend = InstantBackend(answers)
    job.build_backend = lambda *a, **k: backend  # the flow's own code path, model swapped out
    with tempfile.TemporaryDirectory() as workspace:
        params = GenerateParameters(spec=str(SPEC), backend="template", model="instant", target=target,
                                    workspace=workspace, use_gpu_gate=False)
        started = time.perf_counter()
        result = generate_flow(params)
        wall = time.perf_counter() - started
    summary = result.summary.to_dict()
    assert summary["done_total"] == target and summary["generated"] == target, summary
    return wall, summary


def quality_gate_ms(answers: list[str]) -> float:
    """The quality gates alone (grounding judge on summary, variant and key facts), ms per example."""
    from faithforge.generation.quality import QualityGate
    from faithforge.generation.spec import load_spec

    gate = QualityGate(load_spec(SPEC).quality)
    payloads = [json.loads(a) for a in answers]
    gate.check(payloads[0])  # imports the judge once, outside the timing
    started = time.perf_counter()
    for payload in payloads:
        gate.check(payload)
    return 1000 * (time.perf_counter() - started) / len(payloads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100, help="examples in the first run")
    parser.add_argument("--large", type=int, default=400, help="examples in the second run")
    parser.add_argument("--gates-only", action="store_true", help="time only the quality gates (no Prefect)")
    args = parser.parse_args()
    if args.gates_only:
        answers = prepared_answers(args.large)
        print(json.dumps({"quality_gates_ms_per_example": round(quality_gate_ms(answers), 2),
                          "examples": args.large, "load_average_1m": round(os.getloadavg()[0], 1)}, indent=2))
        return
    from prefect.testing.utilities import prefect_test_harness

    from faithforge.app.prefect_settings import without_heartbeats

    answers = prepared_answers(args.large)
    with prefect_test_harness(server_startup_timeout=120), without_heartbeats():
        run_once(5, answers)  # warm-up: imports, first flow run
        small_wall, small = run_once(args.small, answers)
        large_wall, large = run_once(args.large, answers)
    marginal_ms = 1000 * (large_wall - small_wall) / (args.large - args.small)
    loop_ms = 1000 * large["elapsed_s"] / large["generated"]
    print(json.dumps({
        "examples": [args.small, args.large],
        "flow_wall_s": [round(small_wall, 3), round(large_wall, 3)],
        "marginal_overhead_ms_per_example": round(marginal_ms, 2),
        "loop_ms_per_example": round(loop_ms, 2),
        "quality_gates_ms_per_example": round(quality_gate_ms(answers), 2),
        "target_ms": 20,
        "cpu_count": os.cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()
