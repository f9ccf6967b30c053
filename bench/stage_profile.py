"""Where a whole `faithforge demo --real` run spends its time, per stage (issue 28, item 3: profile before choosing).

    pip install py-spy
    py-spy record -r 20 --threads --format raw -o PROF.txt -- \\
        faithforge demo --real --seed 6 -w WS --set evaluate.split=test
    python bench/stage_profile.py PROF.txt [--rate 20] [--top 12] [--out FILE.json]

py-spy samples every thread of the running command (`--rate` samples a second); this reads its raw output (one
line per distinct stack: frames joined by `;`, then the sample count) and charges each sample to the pipeline
stage whose module (`faithforge/stages/<stage>.py`) is on its stack; samples of the main thread outside any stage
are `startup` (imports, the model import, Prefect's client), other threads' are `background` (Prefect's event
loop, progress printers; idle threads are not sampled). Per stage it prints seconds and the frames that hold
most of them (inclusive time), with the buckets the issue asks for: the model's forward, autograd's backward,
generation's prefill and decode, loads, judging.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path

#: Frame-name fragments → the bucket a sample counts in; the first bucket with a fragment anywhere on the stack
#: wins (decode's steps run through the same forward as the prefill; the log-prob head's backward is the head's).
BUCKETS = (
    ("decode", "BatchRunner._decode"),
    ("prefill", "BatchRunner._forward"),
    ("llama.cpp sampling", "LlamaBatchDecoder"),
    ("log-prob head", "ChunkedLogProbFunction"),  # TRL's kernel (forward and backward have Python frames)
    ("log-prob head", "training/log_prob_head.py"),  # the whole logits: forward only, backward is autograd's
    ("backward", "_engine_run_backward"),
    ("forward", "PeftModelForCausalLM.forward"),
    ("judging", "faithforge/evaluation/"),
    ("model load / merge", "from_pretrained"),
    ("model load / merge", "merge_and_unload"),
    ("checkpoint save", "_save_checkpoint"),
    ("python imports", "_find_and_load"),
)
STAGE = re.compile(r"faithforge/stages/(\w+)\.py")
FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>.*?):\d+\)$")


def _frame_key(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    where = match["file"].split("site-packages/")[-1]
    where = where.split("faithforge/", 1)[-1] if "/faithforge/" in where else where
    return f"{match['name']} @ {where}"


def read_profile(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def stage_of(frames: list[str]) -> str:
    stage = None
    for frame in frames:
        found = STAGE.search(frame)
        if found and found.group(1) not in ("context", "outputs", "reuse"):
            stage = found.group(1)
    if stage == "train":  # the train module runs DPO and the SFT control, one after the other
        return "train: control" if any("_train_sft_control" in frame for frame in frames) else "train: DPO"
    if stage:
        return stage
    return "startup" if any("faithforge/app/cli.py" in frame for frame in frames) else "background"


def bucket_of(frames: list[str]) -> str:
    for bucket, fragment in BUCKETS:
        if any(fragment in frame for frame in frames):
            return bucket
    return "other"


def summarize(stacks: list[tuple[list[str], int]], rate: float, top: int) -> dict:
    seconds: collections.Counter = collections.Counter()
    buckets: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for frames, count in stacks:
        stage = stage_of(frames)
        seconds[stage] += count
        buckets[stage][bucket_of(frames)] += count
        for key in {_frame_key(frame) for frame in frames}:
            inclusive[stage][key] += count
    result = {}
    for stage, samples in seconds.most_common():
        below = [(key, n) for key, n in inclusive[stage].most_common() if n < 0.97 * samples]
        result[stage] = {
            "seconds": round(samples / rate, 1),
            "buckets_s": {name: round(n / rate, 1) for name, n in buckets[stage].most_common()},
            "top_frames_s": {key: round(n / rate, 1) for key, n in below[:top]},
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path, help="py-spy's raw output (--format raw)")
    parser.add_argument("--rate", type=float, default=20.0, help="the samples per second given to py-spy (-r)")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = summarize(read_profile(args.profile), args.rate, args.top)
    for stage, part in result.items():
        print(f"{stage}: {part['seconds']} s")
        print("  " + ", ".join(f"{name} {s} s" for name, s in part["buckets_s"].items()))
        for key, s in part["top_frames_s"].items():
            print(f"    {s:7.1f} s  {key[:120]}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
