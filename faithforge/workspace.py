"""The workspace: one directory that holds everything a run writes, and the atomic writes into it.

Every file FaithForge produces goes through `atomic_write_bytes` (or one of its wrappers) or
`atomic_directory`: the content is written to a temporary name in the same directory, fsynced, and
renamed over the final name. A killed process therefore leaves either the old file or the new one,
never half of one — "nothing already written is lost".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from faithforge.errors import UserError

#: Sub-directories of a workspace, by what they hold.
SUBDIRS = ("datasets", "pairs", "refcache", "models", "checkpoints", "adapters", "reports", "tmp")


def _fsync_dir(path: Path) -> None:
    """Persist a rename: the directory entry itself must reach the disk (POSIX)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) refuse to open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` so that readers see the old content or the new, never a mix."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_jsonl(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> Path:
    body = "".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows)
    return atomic_write_text(path, body)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a line that is not JSON is a `UserError` naming the file and line."""
    rows = []
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}; check the path") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: line {number} is not valid JSON ({exc.msg}); fix or remove that line") from None
    return rows


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only if the block finishes.

    Used for model folders (`save_pretrained` writes several files). An existing `path` is kept
    until the new one is complete, then swapped out.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(path: str | os.PathLike[str]) -> str:
    """A content hash of a directory: relative names and bytes of every file, in sorted order."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Workspace:
    """The directory tree of one FaithForge workspace (default `./.faithforge`)."""

    root: Path

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> "Workspace":
        """Create the tree if needed and prove it is writable, or raise a `UserError` saying what to fix."""
        path = Path(root).expanduser().resolve()
        try:
            path.mkdir(parents=True, exist_ok=True)
            for sub in SUBDIRS:
                (path / sub).mkdir(exist_ok=True)
            probe = path / "tmp" / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise UserError(
                f"workspace {path} is not writable ({exc.strerror or exc}); "
                "pass --workspace DIR or set FAITHFORGE_WORKSPACE to a directory you can write"
            ) from exc
        return cls(path)

    def dir(self, kind: str) -> Path:
        if kind not in SUBDIRS:
            raise ValueError(f"unknown workspace sub-directory {kind!r}; known: {', '.join(SUBDIRS)}")
        return self.root / kind

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.root / 'faithforge.db'}"
