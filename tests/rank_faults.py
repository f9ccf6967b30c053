"""Fault drills for the ranks of a training group, named in `distributed.rank_callbacks` (`module:factory`).

Each factory is called by every rank with the group's spec and returns a transformers `TrainerCallback`. A CPU
cannot run out of CUDA memory on demand and a test cannot reach into another process, so the faults are raised or
awaited from inside the real rank: everything around them (torchrun, the group's stop, the parent's back-off and
resume) is the real code. Holds no tests."""

from __future__ import annotations

import os
import time
from pathlib import Path

from transformers import TrainerCallback

PAUSE_AT_STEP_ENV = "FAITHFORGE_TEST_PAUSE_AT_STEP"
"""`pause_after_save`: the step whose checkpoint makes every rank pause (marker `<work>/paused` from rank 0)."""


def _rank() -> int:
    return int(os.environ.get("RANK", 0))


def pause_after_save(spec: dict) -> TrainerCallback:
    """After the checkpoint of step `FAITHFORGE_TEST_PAUSE_AT_STEP` is saved, rank 0 writes `<work>/paused` and every
    rank sleeps (a long step), so a test can kill one rank while the group is mid-run with a complete checkpoint."""
    step, marker = int(os.environ[PAUSE_AT_STEP_ENV]), Path(spec["work"]) / "paused"

    class Pause(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # noqa: ARG002
            if state.global_step == step:
                if _rank() == 0:
                    marker.write_text(str(step))
                time.sleep(600)

    return Pause()


def oom_on_rank1_once(spec: dict) -> TrainerCallback:
    """Rank 1 raises CUDA's out-of-memory error at the start of step 3 of the first launch (micro-batch 2 only):
    what a GPU too small for the micro-batch does to one rank mid-run."""
    import torch

    class Oom(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ARG002
            if _rank() == 1 and state.global_step == 2 and spec["args"]["micro_batch"] == 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (rank 1, step 3)")

    return Oom()
