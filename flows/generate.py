"""The generation flow: plan (spec + GPU gate) → generate (resumable) → export → optionally free the GPU, one Prefect
task per step of `faithforge.generation.job` (below the flow).

Run it from Python (`generate_flow(GenerateParameters(...))`), from the CLI (`faithforge generate`), or
as the nightly deployment (`deployments/generation.py`). torch is never imported at import time. A run
that stores none of the examples it still had to make ends `Failed`, naming the top failure reasons. Tasks are
not cached: generation is resumable by its own coverage database, and a rerun must look at that database, not at
a cached result.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from faithforge.core.progress import StageReporter
from faithforge.core.workspace import sha256_file
from faithforge.generation import job
from faithforge.generation.job import GenerationResult, failure_of
from faithforge.generation.parameters import GenerateParameters
from faithforge.generation.summary import GenerationSummary
from faithforge.tasks.progress_artifact import ProgressArtifact
from faithforge.tasks.supervision import begin_generation_run, reported_failure


@flow(name="faithforge-generate", log_prints=False, persist_result=False)
def generate_flow(params: GenerateParameters) -> GenerationResult:
    """Generate examples from `params.spec` until its targets are met; a rerun resumes where it stopped."""
    problem = begin_generation_run(params)  # on a worker (the nightly deployment): the CLI's checks, before a task
    if problem is not None:
        return reported_failure(problem)
    plan = plan_generation(params)
    summary = generate_examples(params, plan)
    exported = export_examples(plan)
    unloaded = release_gpu(params, plan) if job.releases_gpu(params) else []
    result = GenerationResult(plan=plan, summary=summary, export=exported, unloaded=unloaded)
    failure = failure_of(result)
    if failure is not None:  # a returned Failed state ends the run with its one line; calling the flow (the
        return reported_failure(str(failure), data=failure)  # pipeline's subflow) raises `failure` (a UserError)
    return result


#: Least time between two updates of the progress artifact, seconds (each is an API call).
PROGRESS_EVERY_S = 1.0


@task(name="plan-generation", cache_policy=NO_CACHE, persist_result=False)
def plan_generation(params: GenerateParameters) -> job.GenerationPlan:
    """Validate the spec and decide model, parallel requests and max tokens (GPU gate or configured)."""
    plan = job.plan(params)
    d = plan.decision
    get_run_logger().info("generation plan: %s, %d parallel request(s), max %d tokens (%s). %s", d.model,
                          d.batch_size, d.max_tokens, d.source, d.reason)
    return plan


@task(name="generate-examples", cache_policy=NO_CACHE, persist_result=False)
def generate_examples(params: GenerateParameters, plan: job.GenerationPlan) -> GenerationSummary:
    """Fill the spec's targets; reports progress as a Prefect progress artifact and to this process's progress
    sinks (stage `job.PROGRESS_STAGE`)."""
    logger = get_run_logger()
    target_total = sum(plan.targets.values())
    description = f"{plan.spec}: examples stored of {target_total}"
    last = [0.0]
    sinks = StageReporter(job.PROGRESS_STAGE)

    with ProgressArtifact(None, plan.spec) as artifact:
        artifact.set(0.0, description)

        def on_progress(done: int, target: int) -> None:
            sinks.counts(done, target)
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S or done >= target:
                last[0] = now
                artifact.set(100.0 * done / max(1, target), description)

        def log(line: str) -> None:  # the run log, and whoever started the flow in this process (the CLI)
            logger.info(line)
            sinks.news(line)

        summary = job.generate(params, plan, on_progress, log=log)
        artifact.set(100.0 * summary.done_total / max(1, summary.target_total), description)
    for line in summary.lines():
        logger.info(line)
    return summary


@task(name="export-examples", cache_policy=NO_CACHE, persist_result=False)
def export_examples(plan: job.GenerationPlan) -> job.ExportedExamples:
    """Write all stored examples of the spec as one JSONL file and record it in the run store."""
    from faithforge.core.store import Store

    exported = job.export(plan)
    digest = sha256_file(plan.export)
    artifact_id = Store(plan.database_url).add_artifact(
        "generated-examples", plan.export, digest,
        meta={"spec": plan.spec, "spec_fingerprint": plan.fingerprint, "examples": exported.examples,
              "model": plan.decision.model})
    return exported.model_copy(update={"sha256": digest, "artifact_id": artifact_id})


@task(name="release-gpu", cache_policy=NO_CACHE, persist_result=False)
def release_gpu(params: GenerateParameters, plan: job.GenerationPlan) -> list[str]:
    """With `unload_after`, unload the model from the backend's server so a following GPU stage gets the VRAM
    (`job.release`); returns the names unloaded."""
    names = job.release(params, plan)
    get_run_logger().info("unloaded from the %s server: %s", params.backend, ", ".join(names) or "(nothing was loaded)")
    return names
