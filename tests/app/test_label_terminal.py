"""`faithforge label` in a real terminal (tmux): single key presses, a note, quit, resume, and the labels file that
`faithforge eval calibrate --labels` reads."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faithforge.evaluation.calibration import read_labels
from faithforge.evaluation.labeling import judge_agreement, read_label_items

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "Ivo delivered the books to Goran on Monday. Vera sold the hats at the market."


def _outputs(folder: Path) -> Path:
    rows = []
    for i, (model, summary) in enumerate([("before", "Ivo delivered the books on Friday."),
                                          ("after", "Ivo delivered the books on Monday."),
                                          ("before", "Vera sold the hats in Paris."),
                                          ("after", "Vera sold the hats.")]):
        word = "Friday" if "Friday" in summary else "Paris" if "Paris" in summary else None
        spans = [[summary.index(word), summary.index(word) + len(word)]] if word else []
        rows.append({"id": f"{model}:{i}", "item": str(i), "model": model, "source": SOURCE, "summary": summary,
                     "judge": "grounding", "judge_hallucinated": bool(word), "spans": spans})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "outputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


class Tmux:
    """A detached tmux session on its own server (`-L name`): the suite once failed to start the second session while
    the first one's server, killed with its last session, was still going away on the shared default socket."""

    def __init__(self, name: str, command: str):
        self.name = name
        self.tmux = ["tmux", "-L", name]
        started = subprocess.run([*self.tmux, "new-session", "-d", "-s", name, "-x", "120", "-y", "50", command],
                                 capture_output=True, text=True)
        assert started.returncode == 0, f"tmux did not start: {started.stderr}"

    def screen(self) -> str:
        """The pane's text with its line wraps and padding folded into single spaces."""
        raw = subprocess.run([*self.tmux, "capture-pane", "-p", "-t", self.name], capture_output=True,
                             text=True).stdout
        return " ".join(raw.split())

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared; the screen was:\n{self.screen()}")

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", self.name, *keys], check=True)

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.timeout(300)
def test_labeling_in_a_real_terminal_resumes_and_feeds_calibration(tmp_path):
    folder = _outputs(tmp_path / "eval")
    labels = tmp_path / "labels.jsonl"
    env = f"PYTHONPATH={ROOT} {sys.executable} -m faithforge.app.cli label {folder} --labels {labels} --seed 3"
    done = tmp_path / "done"
    command = f"cd {ROOT} && {env}; touch {done}; sleep 60"
    session = Tmux(f"ff-label-{os.getpid()}", command)
    try:
        screen = session.wait_for("[s/u/k/q]")
        assert "4 to go" in screen and "source" in screen and "before" not in screen and "after:" not in screen
        session.keys("u")  # one key press, no Enter: the terminal is in cbreak mode
        session.wait_for("note (Enter for none)")
        session.keys("invented detail", "Enter")
        session.wait_for("2 of 4")
        session.keys("s")
        session.wait_for("note (Enter for none)")
        session.keys("Enter")
        session.wait_for("3 of 4")
        session.keys("q")
        session.wait_for("run the same command to resume")
        deadline = time.monotonic() + 30
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        session.close()
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    assert [r["label"] for r in rows] == ["hallucinated", "faithful"] and rows[0]["note"] == "invented detail"
    # resumed: the two left, in the same order, then the session ends by itself
    done.unlink()
    session = Tmux(f"ff-label2-{os.getpid()}", command)
    try:
        screen = session.wait_for("[s/u/k/q]")
        assert "2 already labeled" in screen and "2 to go" in screen and "3 of 4" in screen
        session.keys("k")
        session.wait_for("4 of 4")
        session.keys("u")
        session.wait_for("note (Enter for none)")
        session.keys("Enter")
        session.wait_for("0 left")
    finally:
        session.close()
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    skipped = [json.loads(line) for line in Path(f"{labels}.skipped").read_text().splitlines()]
    assert len(rows) == 3 and len(skipped) == 1 and len({r["id"] for r in rows + skipped}) == 4
    # what `faithforge eval calibrate --labels` reads: the three labeled rows (the skip is not a label)
    examples = read_labels(labels)
    assert len(examples) == 3
    agreement = judge_agreement(read_label_items(folder), labels)
    assert agreement.n == 3


def test_a_piped_session_reads_one_line_per_answer(tmp_path):
    from faithforge.app.cli_label import run_labeler

    folder = _outputs(tmp_path / "eval")
    labels = tmp_path / "labels.jsonl"
    from rich.console import Console

    counts = run_labeler(folder, labels, seed=0, stream=io.StringIO("x\nu\nwrong day\ns\n\nk\n"),
                         console=Console(file=io.StringIO()))
    assert (counts["unsupported"], counts["supported"], counts["skip"], counts["left"]) == (1, 1, 1, 1)
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    rows += [json.loads(line) for line in Path(f"{labels}.skipped").read_text().splitlines()]
    assert rows[0]["note"] == "wrong day" and "label" not in rows[2]
    # the shuffled order hides which model wrote what: the same seed gives the same order, another seed another
    from faithforge.evaluation.labeling import shuffled

    items = read_label_items(folder)
    assert [i.id for i in shuffled(items, 0)][:3] == [r["id"] for r in rows]
    assert [i.id for i in shuffled(items, 0)] != [i.id for i in shuffled(items, 5)] or len(items) < 3


def test_quitting_before_any_label_points_at_no_file(tmp_path):
    """After `q` at once it said "Measure the judge on them: … --labels FILE", a file never written (an attack)."""
    from rich.console import Console

    from faithforge.app.cli_label import run_labeler

    out = io.StringIO()
    labels = tmp_path / "labels.jsonl"
    run_labeler(_outputs(tmp_path / "eval"), labels, seed=0, stream=io.StringIO("q\n"), console=Console(file=out))
    assert not labels.exists() and "No labels yet" in out.getvalue() and "calibrate" not in out.getvalue()


def test_a_key_typed_before_the_prompt_is_read_not_discarded():
    """Type-ahead: a key pressed while the terminal is still in line mode (between two prompts, as a fast
    labeler does) is the next answer. `tty.setcbreak`'s default (TCSAFLUSH) threw it away, and the CI run on
    record hung on the lost key; a pty makes the moment exact."""
    import pty
    import threading

    from faithforge.app.cli_label import _read_key

    leader, follower = pty.openpty()
    stream = os.fdopen(follower, "r", closefd=False)
    try:
        os.write(leader, b"u")  # the terminal is in its default line mode: the key waits in the line buffer
        time.sleep(0.1)
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.append(_read_key(stream)), daemon=True)
        reader.start()
        reader.join(5)
        if reader.is_alive():
            os.write(leader, b"x")  # unblock the reader so the test ends; the "u" was lost
            reader.join(5)
        assert got == ["u"]
    finally:
        stream.close()
        os.close(follower)
        os.close(leader)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_while_label_waits_for_an_answer_ends_in_one_line(tmp_path, sig):
    """Typer turns a Ctrl-C outside a run into a silent status 130: `label` ended at its prompt with no line, and
    on SIGTERM with 143 (an attack, 2026-12-07)."""
    import signal

    from faithforge.app.cli import INTERRUPTED_LINE

    folder = _outputs(tmp_path / "eval")
    read_end, write_end = os.pipe()  # an answer that never comes: the write end stays open
    try:
        proc = subprocess.Popen([sys.executable, "-m", "faithforge.app.entry", "label", str(folder), "-o",
                                 str(tmp_path / "labels.jsonl")], stdin=read_end, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(ROOT)},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        seen = ""
        while "[s/u/k/q]" not in seen:  # the prompt is out: it waits for the answer
            chunk = os.read(proc.stdout.fileno(), 4096)  # what has come, without waiting for a whole line
            assert chunk, proc.communicate(timeout=30)
            seen += chunk.decode(errors="replace")
        os.killpg(proc.pid, getattr(signal, sig))
        out, err = proc.communicate(timeout=30)
    finally:
        os.close(write_end)
        os.close(read_end)
    assert proc.returncode == 130, (proc.returncode, err)
    assert err.strip().splitlines() == [INTERRUPTED_LINE], err
    assert not (tmp_path / "labels.jsonl").exists() or (tmp_path / "labels.jsonl").read_text() == ""
