"""Ask the GPU gate (`faithforge.gpu.planner`) for the model tier, parallel requests and max tokens.

Generation runs on the machine that serves the model. The gate reads *this* machine's GPU, so it is
consulted only for the transformers backend and for an Ollama on loopback; a remote server or an
OpenAI-compatible API keeps the configured values. Without the gate, the configured values are used.
"""

from __future__ import annotations

from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict

from faithforge.gpu.planner import Plan

LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


class GateDecision(BaseModel):
    """What a generation run uses: the model tier, parallel requests and max tokens, and who decided them.

    Frozen and JSON-able (`model_dump(mode="json")`): it travels inside `job.GenerationPlan` between the Prefect
    tasks of the generation flow."""

    model_config = ConfigDict(frozen=True)

    model: str
    """The model to generate with (an Ollama tag, a server model id or a local model folder)."""
    batch_size: int
    """Parallel requests (1 = single-example mode)."""
    max_tokens: int
    """Longest answer, tokens."""
    source: str
    """`gate` when the planner decided, `configured` otherwise."""
    reason: str
    """Why these values, in one line (the planner's reason, or why the configured values were kept)."""
    plan: Plan | None = None
    """The gate's full plan when it decided (its `num_ctx` is the context the request must send), else None."""


def _is_local(base_url: str | None) -> bool:
    return base_url is None or (urlparse(base_url).hostname or "") in LOOPBACK


def sized_tiers(backend: str, models: list[str], base_url: str | None = None) -> tuple[list, str]:
    """(the tiers the gate can size, preferred first; why the others are not sized, "" when all are). The generate
    gate and `faithforge gpu` read this one answer, so the table says what the run will do."""
    from faithforge.core.backend_registry import BACKENDS

    kind = BACKENDS.get(backend)
    if kind.server and not _is_local(base_url or kind.default_url):
        return [], "the model runs on another machine: configured values"
    if kind.server and kind.model_sizes is None:
        return [], f"the gate cannot size a model the {backend} server serves: configured values"
    from faithforge.gpu import ModelConfigError, load_model_shape, ollama_model

    candidates, skipped = [], []
    if kind.model_sizes is not None:
        for name in models:
            try:
                candidates.append(ollama_model(name) if kind.model_sizes == "ollama-tag" else load_model_shape(name))
            except (ModelConfigError, OSError, ValueError) as exc:
                skipped.append(f"{name}: {exc}")
        if not candidates:
            return [], "the gate cannot size " + "; ".join(skipped) + ": configured values"
    return candidates, (f"not sized: {'; '.join(skipped)}" if skipped else "")


def decide(backend: str, models: list[str], *, batch_size: int, max_tokens: int, prompt_tokens: int,
           base_url: str | None = None, gpu_profile: str | None = None, policy: str = "stay-local") -> GateDecision:
    """The settings to generate with. `models` are tiers, preferred first (e.g. qwen3:30b-a3b, qwen3:8b)."""
    configured = GateDecision(model=models[0], batch_size=batch_size, max_tokens=max_tokens, source="configured",
                              reason="")
    candidates, why = sized_tiers(backend, models, base_url)
    if not candidates and why:
        return configured.model_copy(update={"reason": why})
    from faithforge.gpu import StageRequest, plan_stage, read_snapshot

    request = StageRequest(batch_size=batch_size, max_tokens=max_tokens, prompt_tokens=max(1, prompt_tokens),
                           min_max_tokens=min(max_tokens, 1024))
    plan = plan_stage(read_snapshot(gpu_profile), "generate", candidates, request, policy=policy)  # type: ignore[arg-type]
    model = plan.model if candidates else models[0]
    note = f" ({why})" if why else ""
    batch = plan.batch_size
    if plan.placement == "offload":  # the server runs here anyway (on CPU or partly offloaded): be gentle
        batch, note = 1, note + " Generating here anyway in single-example mode."
    return GateDecision(model=model, batch_size=batch, max_tokens=plan.max_tokens, source="gate",
                        reason=plan.reason + note, plan=plan)
