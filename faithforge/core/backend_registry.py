"""Every chat backend FaithForge knows, registered once, with what it can do: the generation gate, job validation,
preflight, the pipeline, the CLI's help and checks and the UI form's choices ask a backend's capabilities here
instead of testing its name.

Adding a backend is one new module plus one `BACKENDS.register(...)` line here. The module defines
`build(model, options: BackendOptions) -> ChatBackend` (see `faithforge.backends.base`), and may define
`check_spec(spec) -> None` to refuse, before a run, a generation spec it cannot write; a backend registered with
`releases_gpu` defines `release_gpu(base_url, models) -> list[str]` (unload those models, return their names). A
backend registered with `own_settings` declares `Options` (a pydantic model: its settings, which users set in
`backend_options[<name>]` of the generation parameters or the `generate` section, or in
`evaluate.llm_backend_options` / `served_backend_options`, and the UI form shows as fields) and reads them as
`options.settings` in `build`; it may define `check_settings(settings) -> None` to refuse, before a run,
what its model cannot check alone (an environment variable that is empty here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal

from faithforge.core.registry import Registry, SettingsForm, registered_name


@dataclass(frozen=True)
class BackendKind:
    """One registered chat backend and its capabilities."""

    name: str
    """The name users write (`generate.backend: ollama`)."""
    module: str
    """The module defining `build`."""
    summary: str
    """One line for the CLI's help."""
    server: bool
    """It talks to a server over HTTP: `base_url` applies, and it can be an LLM judge's or a served model's
    backend."""
    default_url: str | None = None
    """The server root used when `base_url` is empty; None with `server`: a URL is required."""
    model_sizes: Literal["ollama-tag", "model-folder"] | None = None
    """How the GPU gate reads a model's size: an Ollama tag (a server on loopback uses this machine's GPU), a local
    model folder's config.json; None: the model runs elsewhere (or needs no GPU) and the configured values stay."""
    model_is_folder: bool = False
    """`model` is a local folder written by save_pretrained (checked before a run)."""
    releases_gpu: bool = False
    """It can unload the model from the server's GPU after a run (`unload_after`): its module's `release_gpu`."""
    runs_model: bool = True
    """It runs a language model (False: the offline template teacher), so the GPU gate plans `generate` for it."""
    built_in_task: bool = False
    """It writes the built-in task's examples in process (the pipeline generates without the generation flow)."""
    own_settings: bool = False
    """Its module declares `Options`, set in `backend_options[<name>]` of the section that chooses it (and
    `--backend-option`): the only backends that field, its form and the flag accept."""

    @property
    def needs_url(self) -> bool:
        return self.server and self.default_url is None


#: Ollama's default server root (its own default port 11434).
DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"

BACKENDS: Registry[BackendKind] = Registry("backend")

BACKENDS.register(BackendKind("ollama", "faithforge.backends.ollama", "an Ollama server (native /api/chat)",
                              server=True, default_url=DEFAULT_OLLAMA_URL, model_sizes="ollama-tag",
                              releases_gpu=True, own_settings=True))
BACKENDS.register(BackendKind("openai", "faithforge.backends.openai_compat",
                              "an OpenAI-compatible server (/v1/chat/completions: llama.cpp, vLLM, a cloud API)",
                              server=True, own_settings=True))
BACKENDS.register(BackendKind("transformers", "faithforge.backends.transformers_folder",
                              "a transformers model folder on this machine, in process",
                              server=False, model_sizes="model-folder", model_is_folder=True))
BACKENDS.renamed["local"] = "transformers"  # 2026-12-07: `local` also named the work pool on this machine
BACKENDS.register(BackendKind("template", "faithforge.backends.template",
                              "the offline template teacher (grounded-summaries only; no model)", server=False,
                              built_in_task=True, runs_model=False, own_settings=True))

#: The OpenAI-compatible servers that may serve the policy for `pairs.sampler: served` (`pairs.served_server`, through
#: the `openai` backend), each with the request fields that make it sample from the model's distribution at the
#: requested temperature and nothing else. llama-cpp-python's server defaults to top-k 40, top-p 0.95, min-p 0.05 and repeat penalty 1.1
#: (its request model) and takes top-k 0 as off; vLLM applies the model's generation_config.json defaults unless
#: a request overrides them, and takes top-k -1 as off (0 is refused by older releases).
PLAIN_SAMPLING = {
    "vllm": {"top_p": 1.0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
             "frequency_penalty": 0.0},
    "llama.cpp": {"top_p": 1.0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "presence_penalty": 0.0,
                  "frequency_penalty": 0.0},
}

#: A config field naming one registered backend.
BackendName = registered_name(BACKENDS)
#: A config field naming a backend that talks to a server (an LLM judge's, a served model's).
ServerBackendName = registered_name(BACKENDS, where=lambda kind: kind.server, what="server backend")


def settings_by_name(where: Callable[[BackendKind], bool] = lambda kind: True, what: str = "backend") -> Any:
    """The type of a `backend_options` field: settings by the name of a backend with settings of its own that
    `where` accepts (the backends that field's section can use), each checked against that backend's `Options`
    before any work (`backends.backend_settings`), each shown as its fields in the form."""
    def accepted(kind: BackendKind) -> bool:
        return kind.own_settings and where(kind)

    name = registered_name(BACKENDS, where=accepted, what=f"{what} with settings of its own",
                           when_none="no such backend declares settings")
    return Annotated[dict[name, dict[str, Any] | None], SettingsForm(BACKENDS, accepted)]


#: `backend_options` of the generation flow's parameters: any backend it can run.
BackendSettingsByName = settings_by_name()
#: `generate.backend_options` of the pipeline: the backends that run the generation flow (the built-in task's
#: teacher writes in process and builds no backend, so its settings would be ignored).
FlowBackendSettingsByName = settings_by_name(lambda kind: not kind.built_in_task, "generation backend")
#: `evaluate.llm_backend_options` and `evaluate.served_backend_options`: server backends.
ServerBackendSettingsByName = settings_by_name(lambda kind: kind.server, "server backend")
