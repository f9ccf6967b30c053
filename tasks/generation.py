"""Prefect tasks of the generation stage. Each wraps plain functions from `faithforge.generation`.

No torch at import time. Tasks are not cached: generation is resumable by its own coverage database,
and a rerun must look at that database, not at a cached result.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from faithforge.generation import progress as progress_listeners
from faithforge.generation.backends import HttpOptions, make_backend
from faithforge.generation.backends.ollama import DEFAULT_OLLAMA_URL, release_ollama_gpu
from faithforge.generation.coverage import CoverageDB
from faithforge.generation.files import export_jsonl
from faithforge.generation.gate import decide
from faithforge.generation.parameters import GenerateParameters
from faithforge.generation.runner import GenerationOptions, run_generation
from faithforge.generation.spec import load_spec
from faithforge.workspace import Workspace, sha256_file

#: Least time between two updates of the progress artifact, seconds (each is an API call).
PROGRESS_EVERY_S = 1.0


def resolve_paths(params: GenerateParameters, spec_name: str) -> dict[str, str]:
    """Workspace, database URL, examples folder and export file of a run."""
    ws = Workspace.open(params.workspace)
    return {"workspace": str(ws.root), "database_url": params.database_url or ws.database_url,
            "examples_dir": str(ws.dir("datasets") / "generated" / spec_name),
            "export": str(ws.dir("datasets") / f"generated-{spec_name}.jsonl")}


def estimate_prompt_tokens(params: GenerateParameters) -> int:
    """A rough prompt size for the gate: the longest rendered first prompt, ~3.5 characters per token."""
    spec = load_spec(params.spec)
    longest = max(sum(len(m["content"]) for m in spec.messages_for(c, next(c.combinations())))
                  for c in spec.categories)
    return int(longest / 3.5) + 64


@task(name="plan-generation", cache_policy=NO_CACHE, persist_result=False)
def plan_generation(params: GenerateParameters) -> dict[str, Any]:
    """Validate the spec and decide model, parallel requests and max tokens (GPU gate or configured)."""
    logger = get_run_logger()
    spec = load_spec(params.spec)
    models = [params.model, *params.fallback_models]
    if params.use_gpu_gate:
        decision = decide(params.backend, models, batch_size=params.batch_size, max_tokens=params.max_tokens,
                          prompt_tokens=estimate_prompt_tokens(params), base_url=params.base_url,
                          gpu_profile=params.gpu_profile)
    else:
        from faithforge.generation.gate import GateDecision

        decision = GateDecision(params.model, params.batch_size, params.max_tokens, "configured", "gate turned off")
    logger.info("generation plan: %s, %d parallel request(s), max %d tokens (%s). %s", decision.model,
                decision.batch_size, decision.max_tokens, decision.source, decision.reason)
    return {"spec": spec.name, "fingerprint": spec.fingerprint(), "targets": spec.targets(params.target),
            "decision": decision.to_dict(), **resolve_paths(params, spec.name)}


@task(name="generate-examples", cache_policy=NO_CACHE, persist_result=False)
def generate_examples(params: GenerateParameters, plan: dict[str, Any]) -> dict[str, Any]:
    """Fill the spec's targets; reports progress as a Prefect progress artifact and to in-process listeners."""
    logger = get_run_logger()
    decision = plan["decision"]
    spec = load_spec(params.spec)
    backend = make_backend(params.backend, decision["model"], base_url=params.base_url, num_ctx=params.num_ctx,
                           api_key_env=params.api_key_env, api_key_secret=params.api_key_secret,
                           http=HttpOptions(read_timeout_s=params.read_timeout_s))
    db = CoverageDB(plan["database_url"])
    target_total = sum(plan["targets"].values())
    artifact_id = create_progress_artifact(progress=0.0, description=f"{spec.name}: examples stored of {target_total}")
    last = [0.0]

    def on_progress(done: int, target: int) -> None:
        progress_listeners.notify(done, target)
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S or done >= target:
            last[0] = now
            update_progress_artifact(artifact_id, progress=100.0 * done / max(1, target))

    options = GenerationOptions(target=params.target, batch_size=decision["batch_size"],
                                max_tokens=decision["max_tokens"], temperature=params.temperature, seed=params.seed,
                                claim_ttl_s=params.claim_ttl_s, max_failures=params.max_failures, limit=params.limit)
    try:
        summary = run_generation(spec, backend, db, Path(plan["examples_dir"]), options, on_progress)
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()
        db.close()
    update_progress_artifact(artifact_id, progress=100.0 * summary.done_total / max(1, summary.target_total))
    for line in summary.lines():
        logger.info(line)
    return summary.to_dict()


@task(name="export-examples", cache_policy=NO_CACHE, persist_result=False)
def export_examples(plan: dict[str, Any]) -> dict[str, Any]:
    """Write all stored examples of the spec as one JSONL file and record it in the run store."""
    from faithforge.store import Store

    db = CoverageDB(plan["database_url"])
    try:
        count = export_jsonl(db, plan["spec"], Path(plan["export"]))
    finally:
        db.close()
    digest = sha256_file(plan["export"])
    artifact_id = Store(plan["database_url"]).add_artifact(
        "generated-examples", plan["export"], digest,
        meta={"spec": plan["spec"], "spec_fingerprint": plan["fingerprint"], "examples": count,
              "model": plan["decision"]["model"]})
    return {"path": plan["export"], "examples": count, "sha256": digest, "artifact_id": artifact_id}


@task(name="release-ollama-gpu", cache_policy=NO_CACHE, persist_result=False)
def release_ollama(base_url: str | None = None, models: list[str] | None = None) -> list[str]:
    """Unload Ollama models (`keep_alive: 0`) so a following GPU stage gets the VRAM; returns their names."""
    names = release_ollama_gpu(base_url or DEFAULT_OLLAMA_URL, models)
    get_run_logger().info("unloaded from Ollama: %s", ", ".join(names) or "(nothing was loaded)")
    return names
