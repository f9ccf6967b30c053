"""Progress where output is not a terminal: plain lines at a stage's start, every few seconds while it runs and
at its end, through a real pipe; and a bar's clock that agrees with the stage's own "done in"."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from faithforge.core import progress

ROOT = Path(__file__).resolve().parents[2]

# Two stages through the process's progress registry, as `tasks/common.run_stage` drives them: `begin`, the
# stage's own counts (evaluation-like: the count reaches the total once before the stage ends), then `end`.
_CHILD = r"""
import sys, time
from rich.console import Console
from faithforge.app.demo_runner import stage_display
from faithforge.core import progress

sink, display = stage_display(Console(), every_s=0.4)
progress.add_sink(sink)
with display:
    progress.begin("pairs")
    t0 = time.perf_counter()
    for i in range(1, 11):
        time.sleep(0.1)
        progress.report("pairs", i, 10)
    progress.report("pairs", 0, 10, "judging the samples")
    time.sleep(0.5)
    progress.end("pairs", f"done in {time.perf_counter() - t0:.1f} s")
    progress.begin("evaluate")
    progress.end("evaluate", "reused (already computed)")
"""


def test_a_pipe_gets_a_line_at_start_every_interval_and_at_the_end():
    result = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in result.stdout.splitlines()]
    assert "\x1b" not in result.stdout  # no terminal codes in a file
    pairs = [line for line in lines if line.startswith("preference pairs: ")]
    assert pairs[0] == "preference pairs: started"
    periodic = [line for line in pairs if re.search(r": \d+/10, [\d.]+/s, .*elapsed$", line)]
    assert periodic, pairs  # while it ran, done/total and a rate
    assert "preference pairs: judging the samples" in pairs  # news lines come through as they are said
    last = re.fullmatch(r"preference pairs: done in ([\d.]+) s \(0:00:(\d\d) elapsed\)", pairs[-1])
    assert last, pairs[-1]
    assert abs(float(last.group(1)) - int(last.group(2))) <= 1.0  # the stage's clock and the line's agree
    assert lines[-2:] == ["evaluate: started", "evaluate: reused (already computed) (0:00:00 elapsed)"]


def test_a_bar_clock_runs_from_begin_to_end_not_to_the_first_full_count():
    from rich.console import Console

    from faithforge.app.demo_runner import stage_display

    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    sink, display = stage_display(console)
    progress.add_sink(sink)
    try:
        with display:
            progress.begin("evaluate")
            progress.report("evaluate", 3, 3)  # the first model's answers: a full count, the stage goes on
            time.sleep(1.2)
            progress.end("evaluate", "done in 1.2 s")
            time.sleep(1.1)  # after the end the clock stands still
            task = display.tasks[0]
            clock = display.columns[-1].render(task).plain
    finally:
        progress.remove_sink(sink)
    assert clock == "0:00:01", clock


def test_lines_count_the_rate_from_the_first_count_and_say_what_is_left():
    now = [100.0]
    out: list[str] = []
    lines = progress.PlainLines(out.append, {"train": "DPO training"}, every_s=30, clock=lambda: now[0])
    lines("train", 0, 1, progress.STARTED)
    now[0] += 40  # a model load: no counts yet
    lines.tick()
    lines("train", 0, 100, "")
    now[0] += 50
    lines("train", 25, 100, "")
    lines.tick()
    assert out == ["DPO training: started", "DPO training: 0:00:40 elapsed",
                   "DPO training: 25/100, 0.50/s, ~0:02:30 left, 0:01:30 elapsed"]


def test_a_stage_that_ended_earlier_in_the_process_counts_again_when_it_runs_again():
    """The CI failure of 2026-12-04: a test that ended stage "train" left it marked ended for the whole process,
    so a later run's "train" reports were printed as ends ("DPO training:  (0:00:00 elapsed)")."""
    heard: list[bool] = []
    sink = lambda stage, done, total, message: heard.append(progress.has_ended(stage))  # noqa: E731
    progress.add_sink(sink)
    try:
        progress.end("train", "done in 1 s")
    finally:
        progress.remove_sink(sink)
    assert heard == [True]  # the sinks hear the end as an end
    assert not progress.has_ended("train")  # and it is not an end for ever after
    test_lines_count_the_rate_from_the_first_count_and_say_what_is_left()


def test_generate_to_a_pipe_shows_its_start_while_it_runs_and_a_terminal_gets_a_bar(tmp_path):
    """`faithforge generate` printed nothing to a pipe or a log file until it finished (a 3,000-example run: 23 s
    of silence, then every line at once; an attack, 2026-12-07)."""
    from rich.console import Console
    from rich.progress import Progress

    from faithforge.app.cli_generate import _display

    sink, display = _display(Console(file=io.StringIO(), force_terminal=True), "generating x", "generate")
    assert isinstance(display, Progress)
    proc = subprocess.Popen([sys.executable, "-m", "faithforge.app.cli", "generate", "--spec",
                             str(ROOT / "configs/specs/grounded-summaries.yaml"), "--backend", "template",
                             "--target", "1200", "--no-prefect", "--workspace", str(tmp_path / "ws")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        first = proc.stdout.readline()
        running = proc.poll() is None
        rest = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, first + rest
    assert re.match(r"\d\d:\d\d:\d\d generating grounded-summaries: started$", first.strip()), first
    assert running, "the first line came only when the run had ended"
    assert "1200/1200 examples" in rest
    assert "backend template: " in rest and "qwen3" not in rest  # not the gate's model, which it never used
