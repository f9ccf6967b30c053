"""Outputs get the modes the umask allows, as files written by `open()` do (an attack, 2026-12-07: `mkstemp` made
34 of a demo workspace's 81 files 0600, `model.safetensors` among them, under umask 022, so a teammate sharing the
workspace or a server run as another user could not read them)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest

from faithforge.core.workspace import atomic_directory, atomic_write_bytes, umask_mode


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_atomic_writes_get_the_mode_a_plain_open_gets(tmp_path, mask):
    with _umask(mask):
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        plain_dir = tmp_path / "plain-dir"
        plain_dir.mkdir()
        written = atomic_write_bytes(tmp_path / "out" / "data.bin", b"weights")
        with atomic_directory(tmp_path / "model") as folder:
            (folder / "config.json").write_text("{}")
        assert umask_mode() == 0o666 & ~mask and umask_mode(directory=True) == 0o777 & ~mask
    assert _mode(written) == _mode(plain) == 0o666 & ~mask
    assert _mode(tmp_path / "model") == _mode(plain_dir) == 0o777 & ~mask
    assert _mode(tmp_path / "model" / "config.json") == 0o666 & ~mask


def test_a_model_folder_is_readable_by_others_under_umask_022(tmp_path):
    """The real writer of a model folder (tokenizer, safetensors, config), not only the helpers."""
    from faithforge.training.tiny_model import build_tiny_model

    with _umask(0o022):
        path = build_tiny_model(tmp_path / "model", seed=0)
    entries = [path, *path.rglob("*")]
    assert any(p.name == "model.safetensors" for p in entries)
    unreadable = [str(p.relative_to(tmp_path)) for p in entries if not _mode(p) & stat.S_IROTH]
    assert unreadable == []
