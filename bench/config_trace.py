"""Issue 26's trace: the call path that carries `train.steps` from the pipeline flow to TRL, as a real run takes it.

    python bench/config_trace.py [--workspace WS] [--steps 24] [--out FILE.json]

Runs `faithforge demo` in this process (the tiny model, Prefect's embedded server, a fresh workspace by default)
with `--set train.steps=N` and records, when TRL's `DPOConfig` is built, every FaithForge frame on the stack of
that call (Prefect's own frames in between are left out: they are the library, not a room of ours). It prints:

- the files on the path, caller first, from the first flow module down to the one that builds `DPOConfig`, and
  their count, also from the stage's own flow (`flows/train.py`, deployed on its own too) (the issue's bar: at
  most 5);
- the path's climbs: a call from a lower layer into a higher one (the bar: none). Layers, highest first:
  app → flows → tasks → stages → the library packages (training, evaluation, generation, engine, data,
  backends, offload) → core and gpu;
- whether `max_steps` arrived equal to the `train.steps` that was set (the value travelled the path).

The path is measured, not read off the source: a refactor that adds a hop shows here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from pathlib import Path

#: Rank of each layer (higher calls lower). A module's layer is its first package part after `faithforge.`.
LAYER_RANK = {"app": 6, "flows": 5, "tasks": 4, "stages": 3, "training": 2, "evaluation": 2, "generation": 2,
              "engine": 2, "data": 2, "backends": 2, "offload": 2, "gpu_calibration": 2, "core": 1, "gpu": 1}


def module_layer(module: str) -> str:
    """`faithforge.stages.train` → `stages`; a top-level `faithforge` module is `core`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else "core"


def faithforge_frames(stack: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """(module, function) of FaithForge's own frames, caller first; `stack` is (module, function, file) per frame,
    outermost first (`files_on` merges consecutive frames of one module into one visit)."""
    return [(module, function) for module, function, _ in stack if module.startswith("faithforge.")]


def path_from_flows(frames: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The frames from the first `faithforge.flows` frame down (the CLI above it only starts the flow)."""
    for i, (module, _) in enumerate(frames):
        if module_layer(module) == "flows":
            return frames[i:]
    return []


def files_on(path: list[tuple[str, str]]) -> list[str]:
    """The distinct modules on the path, in call order (a module met again after leaving it is listed again)."""
    files: list[str] = []
    for module, _ in path:
        if not files or files[-1] != module:
            files.append(module)
    return files


def from_stage_flow(files: list[str]) -> list[str]:
    """`files` from the last flow module on (the pipeline flow calls the stage's flow; the stage's flow is also
    deployed and run on its own, with the config as its parameter)."""
    flows = [i for i, module in enumerate(files) if module_layer(module) == "flows"]
    return files[flows[-1]:] if flows else []


def climbs(files: list[str]) -> list[tuple[str, str]]:
    """Calls from a lower layer into a higher one along `files` (caller, callee)."""
    return [(a, b) for a, b in zip(files, files[1:])
            if LAYER_RANK.get(module_layer(b), 0) > LAYER_RANK.get(module_layer(a), 0)]


def capture_dpo_config_stack(argv: list[str]) -> tuple[list[tuple[str, str, str]], dict]:
    """Run the CLI in this process with TRL's `DPOConfig` wrapped: the stack and `max_steps` of its first build."""
    import trl

    seen: dict = {}
    original_init = trl.DPOConfig.__init__  # wrapped in place: the Trainer pickles its arguments with the class

    def recording_init(self, *args, **kwargs):
        if "stack" not in seen:
            frames = []
            for frame, _ in traceback.walk_stack(sys._getframe(1)):
                frames.append((frame.f_globals.get("__name__", "?"), frame.f_code.co_name, frame.f_code.co_filename))
            seen["stack"] = frames[::-1]
            seen["max_steps"] = kwargs.get("max_steps")
        original_init(self, *args, **kwargs)

    trl.DPOConfig.__init__ = recording_init
    try:
        from faithforge.app.cli import main

        try:
            main(argv)
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise
    finally:
        trl.DPOConfig.__init__ = original_init
    if "stack" not in seen:
        raise SystemExit("error: DPOConfig was never built: the DPO stage was reused from an earlier run "
                         "(use a fresh --workspace)")
    return seen["stack"], seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=None, help="a fresh folder (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=24, help="train.steps to set (its value must reach TRL)")
    parser.add_argument("--out", type=Path, default=None, help="write the trace as JSON here too")
    args = parser.parse_args()
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="ff-trace-")) / "ws"
    stack, seen = capture_dpo_config_stack(["demo", "-w", str(workspace), "--set", f"train.steps={args.steps}"])
    path = path_from_flows(faithforge_frames(stack))
    if not path:  # 0 files would read as a pass
        raise SystemExit("error: no flow module on DPOConfig's stack (was it built on another thread?)")
    files = files_on(path)
    unknown = sorted({module_layer(m) for m in files} - set(LAYER_RANK))
    if unknown:  # a layer without a rank cannot be judged for climbs
        raise SystemExit(f"error: layers without a rank in LAYER_RANK: {', '.join(unknown)}")
    up = climbs(files)
    print(f"train.steps={args.steps} → DPOConfig(max_steps={seen['max_steps']}): "
          f"{'arrived' if seen['max_steps'] == args.steps else 'DIFFERENT'}")
    print(f"path from the flow to TRL, caller first ({len(path)} frames):")
    for module, function in path:
        print(f"  {module}.{function}  [{module_layer(module)}]")
    print(f"files: {len(set(files))} distinct, {len(files)} visits ({' → '.join(files)})")
    own = from_stage_flow(files)
    print(f"from the stage's own flow ({own[0] if own else '-'}, which a deployment also runs alone): "
          f"{len(set(own))} files")
    print(f"climbs (a lower layer calling a higher one): {len(up)}" + "".join(f"\n  {a} → {b}" for a, b in up))
    if args.out:
        args.out.write_text(json.dumps({"steps": args.steps, "max_steps": seen["max_steps"], "path": path,
                                        "files": files, "climbs": up}, indent=2) + "\n")


if __name__ == "__main__":
    main()
