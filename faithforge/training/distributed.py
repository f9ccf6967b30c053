"""Run a stage as a process group under torchrun: the parent side (launch, stream, stop) and what every rank runs.

FaithForge never runs its own process pool: the group is `torchrun --nproc_per_node N -m
faithforge.training.distributed SPEC.json` (DDP, or FSDP on GPUs), started as a child of the calling process (the
Prefect task) in its own session. torchrun is the group's supervisor: when one rank dies, its agent stops the others
and exits non-zero, so "kill one rank" stops the whole group; the parent stops the whole session on Ctrl-C, SIGTERM
or a Prefect cancel (any exception while it waits), so no rank outlives the task.

Ranks talk to the parent through the work folder and one line protocol on stdout:
- `FAITHFORGE-EVENT {json}` lines (rank 0): progress `{"kind": "progress", "step", "total", "loss"}`;
- `<work>/pids/rank-R.pid`: each rank's pid (for the tests that kill one rank, and for diagnosis);
- `<work>/failed/rank-R.json`: why rank R stopped (`oom` with the CUDA message, or `error` with the error's
  class and text), written before it exits; the parent turns an `oom` into the OOM back-off's retry with a smaller
  micro-batch that every rank is then launched with (the ranks agree because the parent decides);
- `<work>/result.json` and `<work>/adapter/` (rank 0, atomically): the step log and the adapter in peft's format.

The DPO task (`kind: "dpo"`) is `faithforge.training.dpo.run_dpo` unchanged; the reference pass (`kind:
"reference"`) is `faithforge.training.reference_cache.compute_reference_shards` for this rank's shards, then rank 0
merges. No Prefect here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from faithforge.core.errors import UserError
from faithforge.core.orphans import dies_with_this_process
from faithforge.core.ports import free_port

EVENT_PREFIX = "FAITHFORGE-EVENT "
#: Exit status of a rank that ran out of CUDA memory (the parent backs off and relaunches).
OOM_EXIT = 75
#: Seconds the group gets to stop on SIGTERM before the session is killed.
STOP_GRACE_S = 10.0


class RankOutOfMemoryError(RuntimeError):
    """A rank ran out of CUDA memory; the message keeps CUDA's text (`faithforge.gpu.backoff.is_cuda_oom` recognises it)."""


class GroupFailedError(UserError):
    """The process group stopped without finishing (a rank failed or was killed); rerun to resume."""


@dataclass(frozen=True)
class GroupResult:
    """What a finished group left: rank 0's `result.json`, and how long the group ran."""

    result: dict[str, Any]
    wall_seconds: float


def torchrun_command(spec_path: str | Path, processes: int, *, port: int | None = None) -> list[str]:
    """`python -m torch.distributed.run` (torchrun) with `processes` ranks on this node running the rank program."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(processes),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port or free_port()}",
            "--monitor-interval", "0.5", "--max-restarts", "0",
            "-m", "faithforge.training.distributed", str(spec_path)]


def group_environment(gpu_uuids: list[str] | None = None) -> dict[str, str]:
    """The ranks' environment: this one, with the repository importable, one torch thread per rank (the ranks share
    the cores), and CUDA restricted to the plan's GPUs in rank order (rank r → cuda:r)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else ""),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1"}
    real = [u for u in gpu_uuids or [] if not u.startswith("GPU-simulated")]
    if real:
        env.update({"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(real)})
    return env


def stop_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the group's session (torchrun and every rank), SIGKILL to what is left after `grace_s`."""
    if process.poll() is not None:
        _kill_session(process.pid, signal.SIGKILL)  # a rank may outlive a torchrun killed from outside
        return
    _kill_session(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    _kill_session(process.pid, signal.SIGKILL)
    process.wait()


def _kill_session(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def is_log_line(line: str) -> bool:
    """A rank's output line worth a log entry: not a progress bar's redraw (tqdm)."""
    return bool(line.strip()) and "\r" not in line and "it/s]" not in line and "s/it]" not in line


def run_group(spec: dict[str, Any], work: str | Path, processes: int, *,
              on_event: Callable[[dict], None] | None = None, on_line: Callable[[str], None] | None = None,
              gpu_uuids: list[str] | None = None, stop: threading.Event | None = None) -> GroupResult:
    """Launch `processes` ranks on `spec` under torchrun, stream their events and log lines, wait for the end.

    Raises `RankOutOfMemoryError` when a rank ran out of CUDA memory, the rank's own error (as `GroupFailedError`
    with its text) when one failed, and `GroupFailedError` when the group stopped otherwise (a rank killed from
    outside). Any exception while waiting (KeyboardInterrupt, a cancel) and `stop` being set stop every rank first.
    """
    work = Path(work)
    for folder in ("pids", "failed"):
        (work / folder).mkdir(parents=True, exist_ok=True)
        for stale in (work / folder).iterdir():
            stale.unlink()
    (work / "result.json").unlink(missing_ok=True)
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps({**spec, "work": str(work)}, indent=1))
    started = time.perf_counter()
    process = subprocess.Popen(torchrun_command(spec_path, processes), env=group_environment(gpu_uuids),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                               start_new_session=True, preexec_fn=dies_with_this_process())
    watcher = None
    if stop is not None:
        watcher = threading.Thread(target=lambda: stop.wait() and process.poll() is None and stop_group(process),
                                   daemon=True)
        watcher.start()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            if line.startswith(EVENT_PREFIX):
                if on_event is not None:
                    on_event(json.loads(line[len(EVENT_PREFIX):]))
            elif on_line is not None and line.strip():
                on_line(line)
        code = process.wait()
    except BaseException:
        stop_group(process)
        raise
    finally:
        _kill_session(process.pid, signal.SIGKILL)  # nothing of the session survives the call
        if stop is not None:
            stop.set()
    seconds = time.perf_counter() - started
    failures = sorted((work / "failed").glob("rank-*.json"))
    reports = [json.loads(p.read_text()) for p in failures]
    oom = next((r for r in reports if r.get("kind") == "oom"), None)
    if oom is not None:
        raise RankOutOfMemoryError(f"rank {oom['rank']}: {oom['message']}")
    if code != 0 or not (work / "result.json").exists():
        if reports:
            raise GroupFailedError(f"rank {reports[0]['rank']} failed ({reports[0]['type']}): {reports[0]['message']}"
                                   " — the whole group was stopped; fix the cause and run again (training resumes "
                                   "from the last complete checkpoint)")
        raise GroupFailedError(f"the {processes}-process group stopped (torchrun exit {code}) before it finished; "
                               "a rank was killed or crashed. Run again: training resumes from the last complete "
                               "checkpoint")
    return GroupResult(json.loads((work / "result.json").read_text()), seconds)


# --- inside a rank ---------------------------------------------------------------------------------

def rank_info() -> tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun's environment; (0, 0, 1) outside torchrun."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)))


def emit(event: dict) -> None:
    """One event line for the parent, written with its newline in one `write` (one pipe write of under 4,096 bytes
    is atomic): `print` writes the text and the newline apart, and another rank's line sharing torchrun's pipe
    landed between them (the suite, 2026-12-07: '{...rank 0}FAITHFORGE-EVENT {...rank 1}' as one line)."""
    sys.stdout.flush()  # what this rank printed before stays before
    os.write(sys.stdout.fileno(), (EVENT_PREFIX + json.dumps(event) + "\n").encode())


def _report_failure(work: Path, rank: int, exc: BaseException) -> int:
    from faithforge.gpu.backoff import is_cuda_oom

    oom = is_cuda_oom(exc)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    from faithforge.core.workspace import atomic_write_json

    atomic_write_json(work / "failed" / f"rank-{rank}.json",
                      {"rank": rank, "kind": "oom" if oom else "error", "type": type(exc).__name__, "message": text})
    return OOM_EXIT if oom else 1


def _load_policy(spec: dict, local_rank: int):
    """The LoRA policy on the base loaded as the plan says, on this rank's device, seeded as one process is."""
    import torch

    from faithforge.training.modeling import attach_lora, load_for_plan, load_tokenizer, plan_precision
    from faithforge.gpu.planner import Plan

    plan = Plan.model_validate(spec["plan"])
    # Each rank sees the plan's GPUs (CUDA_VISIBLE_DEVICES in rank order) and takes cuda:<local rank>.
    plan = plan.model_copy(update={"gpu_uuid": None, "gpu_index": local_rank})
    torch.manual_seed(spec["seed"])
    tokenizer = load_tokenizer(spec["model_path"])
    base, device = load_for_plan(spec["model_path"], plan)
    lora = spec["lora"]
    policy = attach_lora(base, r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"],
                         quantized=plan_precision(plan) == "nf4", gradient_checkpointing=device == "cuda")
    return policy, tokenizer, base, device


def _callbacks(spec: dict, rank: int, total: int) -> list:
    """Rank 0's progress events, and any `module:factory` callbacks the spec names (each called with the spec)."""
    import importlib

    from transformers import TrainerCallback

    class Events(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ARG002
            if rank == 0 and logs and "loss" in logs:
                emit({"kind": "progress", "step": state.global_step, "total": total, "loss": float(logs["loss"])})

    extra = []
    for name in spec.get("callbacks", []):
        module, _, attr = name.partition(":")
        extra.append(getattr(importlib.import_module(module), attr)(spec))
    return [Events(), *extra]


def _run_dpo_rank(spec: dict, work: Path, rank: int, local_rank: int) -> None:
    from faithforge.core.workspace import atomic_directory, atomic_write_json
    from faithforge.training.dpo import DpoArguments, run_dpo
    from faithforge.training.reference_cache import ReferenceCache

    ref = spec["reference"]
    reference_logps = ReferenceCache(ref["path"], ref["key"], ref["components"], ref["shard_size"]).load()
    pairs = json.loads(Path(spec["pairs_path"]).read_text())
    policy, tokenizer, _, _ = _load_policy(spec, local_rank)
    args = DpoArguments(**spec["args"])
    result = run_dpo(policy, tokenizer, pairs, reference_logps, args,
                     extra_callbacks=_callbacks(spec, rank, args.steps))
    if rank == 0:
        with atomic_directory(work / "adapter") as tmp:
            result["trainer"].model.save_pretrained(tmp)
        atomic_write_json(work / "result.json", {k: v for k, v in result.items() if k != "trainer"})


def _run_reference_rank(spec: dict, work: Path, rank: int, local_rank: int, world: int) -> None:
    import torch.distributed as dist

    from faithforge.core.workspace import atomic_write_json
    from faithforge.training.modeling import load_for_plan, load_tokenizer
    from faithforge.training.reference_cache import ReferenceCache, compute_reference_shards, merge_reference_shards
    from faithforge.gpu.planner import Plan

    ref = spec["reference"]
    cache = ReferenceCache(ref["path"], ref["key"], ref["components"], ref["shard_size"])
    pairs = json.loads(Path(spec["pairs_path"]).read_text())
    plan = Plan.model_validate(spec["plan"]).model_copy(update={"gpu_uuid": None, "gpu_index": local_rank})
    model, _ = load_for_plan(spec["model_path"], plan)
    tokenizer = load_tokenizer(spec["model_path"])
    summary = compute_reference_shards(
        model, tokenizer, pairs, cache, rank=rank, world_size=world, batch_size=spec["batch_size"],
        max_length=ref["max_length"],
        on_shard=lambda index, total: emit({"kind": "progress", "step": index, "total": total, "rank": rank}))
    dist.barrier()  # every rank's shards are on disk before rank 0 merges them
    if rank == 0:
        merged = merge_reference_shards(cache, pairs)
        atomic_write_json(work / "result.json", {**summary, **merged})


def main(argv: list[str] | None = None) -> int:
    """The rank program: `python -m faithforge.training.distributed SPEC.json` under torchrun."""
    import torch
    import torch.distributed as dist

    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    work = Path(spec["work"])
    rank, local_rank, world = rank_info()
    from faithforge.core.workspace import atomic_write_text

    atomic_write_text(work / "pids" / f"rank-{rank}.pid", str(os.getpid()))  # never seen half-written
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        if spec["kind"] == "reference":
            if not dist.is_initialized():
                dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            _run_reference_rank(spec, work, rank, local_rank, world)
        else:
            _run_dpo_rank(spec, work, rank, local_rank)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then the rank exits non-zero
        import traceback

        traceback.print_exc()
        return _report_failure(work, rank, exc)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
