"""A full disk is one line naming where, the space needed where known, and that a rerun resumes (issue 25, item 7).

It was a 107-line traceback (`OSError: [Errno 28] No space left on device` in core/workspace.py). The workspace
here lives on a real small filesystem (a 1 MiB tmpfs, mounted for the test; root is needed to mount one).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()[:120]}); needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_an_atomic_write_on_a_full_disk_says_where_and_how_much(small_disk):
    from faithforge.core.errors import UserError
    from faithforge.core.workspace import atomic_write_bytes

    with pytest.raises(UserError) as err:
        atomic_write_bytes(small_disk / "ws" / "big.bin", b"x" * (2 << 20))
    message = str(err.value)
    assert f"no space left on the device holding {small_disk / 'ws'}" in message
    assert "2,097,152 bytes needed" in message and "rerun the same command" in message
    assert [p.name for p in (small_disk / "ws").iterdir()] == []  # no half-written temporary left


@pytest.mark.slow
def test_the_demo_on_a_full_disk_ends_in_one_line(small_disk, tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text("generate: {train_sources: 120, val_sources: 20, test_sources: 30}\n"
                      "warm_start: {steps: 30, batch_size: 16}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-m", "faithforge.app.cli", "demo", "-w", str(small_disk / "ws"), "-c",
                           str(config)], capture_output=True, text=True, timeout=600, env=env)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    assert len(errors) == 1 and "no space left on the device" in errors[0] and str(small_disk) in errors[0]
    assert "rerun the same command" in errors[0]
