"""The generation flow: plan (spec + GPU gate) → generate (resumable) → export → optionally free the GPU.

Run it from Python (`generate_flow(GenerateParameters(...))`), from the CLI (`faithforge generate`), or
as the nightly deployment (`deployments/generation.py`). torch is never imported at import time.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from faithforge.generation.parameters import GenerateParameters
from tasks.generation import export_examples, generate_examples, plan_generation, release_ollama


@flow(name="faithforge-generate", log_prints=False, persist_result=False)
def generate_flow(params: GenerateParameters) -> dict[str, Any]:
    """Generate examples from `params.spec` until its targets are met; a rerun resumes where it stopped."""
    plan = plan_generation(params)
    summary = generate_examples(params, plan)
    exported = export_examples(plan)
    unloaded: list[str] = []
    if params.unload_after and params.backend == "ollama":
        unloaded = release_ollama(params.base_url, [plan["decision"]["model"]])
    return {"plan": plan, "summary": summary, "export": exported, "unloaded": unloaded}
