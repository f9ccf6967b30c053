"""Offloading a stage to another machine (the `a100` pool): plain Python, no Prefect, no torch.

How a stage moves:

1. The parent (the pipeline, on the local machine) turns the stage's inputs into *portable* inputs:
   every absolute path in them that exists is published to the storage URL (fsspec: a local directory,
   `s3://…`, `gs://…`) and replaced by a reference `@storage/<key>`. Paths inside the workspace keep their
   workspace-relative layout (`@storage/workspace/models/sft-…`); other paths (your own model folder) go
   under `@storage/external/<hash>/<name>`. Content-keyed folders that are already published with the same
   checksums are not uploaded again.
2. The child (the same flow, run as a deployment on the offload pool) resolves each reference against *its*
   storage URL, downloads into its own workspace at the same relative path (checksums verified), runs the
   stage, publishes every output path under its workspace the same way and writes the portable outputs as
   `results/<flow-run-id>.json` in storage. It returns only that small JSON (URIs and metrics).
3. The parent reads that JSON from storage (not Prefect's pickled result), downloads the outputs into its
   own workspace at the same relative paths and continues as if the stage had run locally.

Transfers go through `faithforge.offload.storage`: each published object has an index
(`<key>/faithforge-index.json`: path, size and SHA-256 of every file) written last, so an object without an
index is incomplete and is never read, and a download is verified before it replaces anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from faithforge.offload import storage
from faithforge.core.config import PipelineConfig, deep_merge, env_overrides
from faithforge.core.errors import UserError
from faithforge.core.workspace import atomic_write_json

REF_PREFIX = "@storage/"
"""Prefix of a portable reference; the rest is a key relative to the storage URL."""
DEFAULT_WORKER_WORKSPACE = "~/.faithforge-worker"
"""Workspace of an offload worker when FAITHFORGE_WORKSPACE is not set (never the parent's path)."""
#: which flow runs each offloadable stage; the deployment is `<flow>/<pool>`
STAGE_FLOWS = {"reference": "faithforge-reference", "train": "faithforge-train", "evaluate": "faithforge-evaluate"}
#: artifact kind the parent records for a stage's fetched outputs
STAGE_ARTIFACT_KIND = {"reference": "reference_cache", "train": "adapter", "evaluate": "evaluation_report"}


class OffloadError(UserError):
    """An offloaded stage could not run: no worker, a failed child run, or missing data in storage."""


# -- settings --------------------------------------------------------------------------------------------

def offload_timeout_s(config: PipelineConfig) -> float:
    """Seconds the parent waits for a worker to start an offloaded run (gpu.offload_timeout_s)."""
    return float(config.gpu.offload_timeout_s)


def deployment_name(stage: str, pool: str) -> str:
    """`faithforge-train/a100`: every offloadable stage has a deployment named after the pool it runs on."""
    if stage not in STAGE_FLOWS:
        raise OffloadError(f"stage {stage!r} cannot be offloaded; offloadable stages: {', '.join(STAGE_FLOWS)}")
    return f"{STAGE_FLOWS[stage]}/{pool}"


def storage_root(config: PipelineConfig, environ: dict[str, str] | None = None) -> str:
    """The storage URL of this machine: FAITHFORGE_STORAGE_URL, else config.storage_url."""
    env = os.environ if environ is None else environ
    url = env.get("FAITHFORGE_STORAGE_URL") or config.storage_url
    if not url:
        raise OffloadError("offloading needs shared storage: set storage_url (FAITHFORGE_STORAGE_URL), e.g. "
                           "s3://bucket/faithforge, or a directory both machines mount")
    return url.rstrip("/")


def runs_here(record: dict) -> dict:
    """The gate's record as it is executed: a stage that cannot be offloaded (the warm start: no deployment runs
    it) runs on this machine's CPU even when the plan says offload, and its record says so."""
    stage = record.get("step") or record.get("stage")  # a step planned as another stage's workload: its own name
    if record.get("placement") != "offload" or stage in STAGE_FLOWS:
        return record
    return {**record, "placement": "cpu", "planned_placement": "offload", "offload_target": None,
            "reason": f"{record.get('reason', '')} {stage} cannot be offloaded (no deployment runs it), so it runs "
                      f"on this machine's CPU.".strip()}


def worker_start_hint(pool: str) -> str:
    return (f"start one on the GPU machine with `PREFECT_API_URL=<your server>/api "
            f"FAITHFORGE_STORAGE_URL=<storage url> prefect worker start --pool {pool} --limit 1` "
            f"(or run the Dockerfile's image there)")


def no_worker_message(stage: str, pool: str, timeout_s: float, waited_s: float | None = None) -> str:
    # The configured limit, not the measured wait (which overshoots by up to a poll and an API round trip).
    waited = f"; waited {waited_s:.0f} s" if waited_s is not None and round(waited_s) != round(timeout_s) else ""
    return (f"{stage}: no worker of the work pool {pool!r} started the offloaded run within {timeout_s:.0f} s "
            f"(gpu.offload_timeout_s{waited}); {worker_start_hint(pool)}, then retry this run — finished stages "
            f"are reused")


def stuck_pending_message(stage: str, pool: str, timeout_s: float) -> str:
    """A worker took the offloaded run and its flow never started: the worker (or its machine) died in between, and
    a run that never ran sends no heartbeat, so nothing else would ever end it."""
    return (f"{stage}: a worker of the work pool {pool!r} took the offloaded run but it did not start within "
            f"{timeout_s:.0f} s (gpu.offload_timeout_s; still Pending): the worker or its machine stopped, or it "
            f"starts runs slowly (an image pull: raise gpu.offload_timeout_s). The run is being cancelled; "
            f"{worker_start_hint(pool)}, then retry this run — finished stages are reused")


def child_config(config: PipelineConfig, model_path_ref: str | None) -> dict[str, Any]:
    """The config the child receives: the parent's, minus what only makes sense on the parent's machine."""
    data = config.model_dump(mode="json")
    data["gpu"]["profile"] = None          # the worker reads its own GPU (or its FAITHFORGE_GPU_PROFILE)
    data["gpu"]["offload_pool"] = None     # a stage that does not fit on the offload GPU fails there, never loops
    data["gpu"]["offload_stages"] = []     # ... and a stage offloaded on purpose runs there, not offloaded again
    data["gpu"]["calibration_file"] = None
    if data.get("database_url", "") and str(data["database_url"]).startswith("sqlite"):
        data["database_url"] = None        # a SQLite file of the parent is not the worker's
    if model_path_ref is not None:
        data["model"]["path"] = model_path_ref
    return data


def worker_config(received: PipelineConfig, environ: dict[str, str] | None = None) -> PipelineConfig:
    """On the worker: the received config with this machine's FAITHFORGE_* environment on top, its own workspace."""
    env = dict(os.environ if environ is None else environ)
    data = received.model_dump(mode="json")
    data = deep_merge(data, env_overrides(env))
    data["workspace"] = env.get("FAITHFORGE_WORKSPACE") or os.path.expanduser(DEFAULT_WORKER_WORKSPACE)
    if env.get("FAITHFORGE_STORAGE_URL"):
        data["storage_url"] = env["FAITHFORGE_STORAGE_URL"]
    data.setdefault("gpu", {})["offload_pool"] = None
    data["gpu"]["offload_stages"] = []  # the worker runs what it receives (its environment cannot send it on)
    return PipelineConfig.model_validate(data)


# -- transfer ----------------------------------------------------------------------------------------

def _join(url: str, key: str) -> str:
    return f"{url.rstrip('/')}/{key.lstrip('/')}"


# -- portable values ---------------------------------------------------------------------------------

def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    if isinstance(value, tuple):
        return tuple(_map_strings(v, fn) for v in value)
    return value


def _outermost(paths: Iterable[str]) -> list[str]:
    """Drop every path that lies inside another one of the set (it travels with its folder)."""
    ordered = sorted(set(paths), key=len)
    kept: list[str] = []
    for p in ordered:
        if not any(p == k or p.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(p)
    return kept


def storage_key(path: str, workspace_root: Path) -> str:
    """`workspace/<relative path>` inside the workspace, else `external/<hash of the path>/<name>`."""
    resolved = Path(path).resolve()
    try:
        rel = resolved.relative_to(workspace_root.resolve())
        return "workspace/" + str(rel).replace(os.sep, "/")
    except ValueError:
        digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
        return f"external/{digest}/{resolved.name}"


def local_path_for(key: str, workspace_root: Path) -> Path:
    if key.startswith("workspace/"):
        return workspace_root / key[len("workspace/"):]
    if key.startswith("external/"):
        return workspace_root / key
    raise OffloadError(f"unknown storage reference {REF_PREFIX}{key}")


def is_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(REF_PREFIX)


def to_portable(value: Any, workspace_root: Path, storage_url: str,
                include: Callable[[Path], bool] | None = None) -> Any:
    """Publish every existing absolute path in `value` (optionally only those `include` accepts) and
    replace it by an `@storage/` reference. Everything else is returned unchanged."""
    def candidate(s: str) -> bool:
        if not os.path.isabs(s) or not os.path.exists(s):
            return False
        return include is None or include(Path(s))

    paths = [s for s in _strings(value) if candidate(s)]
    for top in _outermost(paths):
        storage.publish(top, _join(storage_url, storage_key(top, workspace_root)))
    return _map_strings(value, lambda s: REF_PREFIX + storage_key(s, workspace_root) if candidate(s) else s)


def from_portable(value: Any, workspace_root: Path, storage_url: str) -> Any:
    """Download every `@storage/` reference in `value` into the workspace and replace it by the local path."""
    keys = [s[len(REF_PREFIX):] for s in _strings(value) if is_ref(s)]
    for top in _outermost(keys):
        storage.fetch(_join(storage_url, top), local_path_for(top, workspace_root))
    return _map_strings(value, lambda s: str(local_path_for(s[len(REF_PREFIX):], workspace_root)) if is_ref(s) else s)


def relocate_markers(folder: Path, old_root: str, new_root: str) -> None:
    """Stage folders keep a JSON marker (`faithforge.json`, `manifest.json`) with absolute paths written on the
    machine that made them; point those at this machine's workspace so a later local rerun reuses them."""
    if not folder.is_dir() or not old_root or old_root == new_root:
        return
    for name in ("faithforge.json", "manifest.json"):
        marker = folder / name
        if not marker.is_file():
            continue
        data = json.loads(marker.read_text(encoding="utf-8"))
        prefix = old_root.rstrip("/") + "/"
        fixed = _map_strings(data, lambda s: new_root.rstrip("/") + "/" + s[len(prefix):] if s.startswith(prefix) else s)
        if fixed != data:
            atomic_write_json(marker, fixed)


def artifact_ids(value: Any) -> list[str]:
    """Every `artifact_id` in a (nested) stage output."""
    found: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "artifact_id" and isinstance(v, str) and v:
                found.append(v)
            else:
                found.extend(artifact_ids(v))
    elif isinstance(value, list):
        for v in value:
            found.extend(artifact_ids(v))
    return found


def replace_artifact_ids(value: Any, fn: Callable[[dict], str | None]) -> Any:
    """A copy of `value` where each dict holding an `artifact_id` gets `fn(dict)` as its id."""
    if isinstance(value, dict):
        out = {k: replace_artifact_ids(v, fn) for k, v in value.items()}
        if "artifact_id" in value:
            out["artifact_id"] = fn(out)
        return out
    if isinstance(value, list):
        return [replace_artifact_ids(v, fn) for v in value]
    return value


# -- results -----------------------------------------------------------------------------------------

def result_url(storage_url: str, flow_run_id: str) -> str:
    return _join(storage_url, f"results/{flow_run_id}.json")


def write_result(storage_url: str, flow_run_id: str, result: dict[str, Any]) -> str:
    return storage.write_json(result_url(storage_url, flow_run_id), result, default=_jsonable)


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays (metrics) as plain JSON; anything else as its string."""
    for name in ("item", "tolist"):
        convert = getattr(value, name, None)
        if callable(convert):
            return convert()
    return str(value)


def read_result(storage_url: str, flow_run_id: str) -> dict[str, Any]:
    url = result_url(storage_url, flow_run_id)
    result = storage.read_json(url)
    if result is None:
        raise OffloadError(f"the offloaded run {flow_run_id} completed but left no result at {url}; does the "
                           f"worker use the same storage (FAITHFORGE_STORAGE_URL)?")
    return result

