"""The generation flow: plan (spec + GPU gate) → generate (resumable) → export → optionally free the GPU.

Run it from Python (`generate_flow(GenerateParameters(...))`), from the CLI (`faithforge generate`), or
as the nightly deployment (`deployments/generation.py`). torch is never imported at import time. A run
that stores none of the examples it still had to make ends `Failed`, naming the top failure reasons.
"""

from __future__ import annotations

from prefect import flow
from prefect.states import Failed

from faithforge.core.backend_registry import BACKENDS
from faithforge.generation.job import GenerationResult, failure_of
from faithforge.generation.parameters import GenerateParameters
from tasks.generation import export_examples, generate_examples, plan_generation, release_ollama


@flow(name="faithforge-generate", log_prints=False, persist_result=False)
def generate_flow(params: GenerateParameters) -> GenerationResult:
    """Generate examples from `params.spec` until its targets are met; a rerun resumes where it stopped."""
    plan = plan_generation(params)
    summary = generate_examples(params, plan)
    exported = export_examples(plan)
    unloaded: list[str] = []
    if params.unload_after and BACKENDS.get(params.backend).releases_gpu:
        unloaded = release_ollama(params.base_url, [plan.decision.model])
    result = GenerationResult(plan=plan, summary=summary, export=exported, unloaded=unloaded)
    failure = failure_of(result)
    if failure is not None:  # a returned Failed state ends the run without a traceback in its log; calling
        return Failed(message=str(failure), data=failure)  # the flow raises `failure` (a one-line UserError)
    return result
