"""Copy a finished directory to a storage URL and back, verified: how machines share stage outputs.

Two calls, any fsspec URL (`file:///shared/x`, `s3://bucket/x`, `gs://…`, `memory://x` in tests):

    publish_dir(local_dir, url)   # upload every file, then write the index (the commit point)
    fetch_dir(url, local_dir)     # download, check every file against the index, then swap in atomically

The index, `faithforge-index.json` at the root of `url`, lists each file's relative path, size and SHA-256.
It is written last and removed first when republishing, so a reader sees either a complete publication
or none (`fetch_dir` then raises `UserError` saying nothing is published there). A fetch downloads into a
temporary sibling of `local_dir`; `local_dir` is replaced only when every file matches, so a failed or
killed fetch never leaves a half-copied or unverified directory where a stage looks for its input.
A directory that already matches the index is not downloaded again.

Example: a reference cache computed on the GPU worker and consumed by the trainer elsewhere —

    publish_dir(cache.directory, f"{storage_url}/refcache/{cache.key[:16]}")       # worker
    fetch_dir(f"{storage_url}/refcache/{key[:16]}", workspace.dir("refcache") / key[:16])   # trainer
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from faithforge.core.errors import UserError
from faithforge.core.workspace import atomic_directory, sha256_file, umask_mode

INDEX = "faithforge-index.json"
INDEX_FORMAT = 1
_CHUNK = 1 << 20


def _filesystem(url: str):
    from fsspec.core import url_to_fs

    try:
        return url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise UserError(f"cannot open storage URL {url!r} ({exc}); use file://, memory:// or an fsspec protocol "
                        "whose package is installed (s3fs for s3://, gcsfs for gs://)") from exc


def check_storage_url(url: str) -> None:
    """Refuse, in one line, a storage URL whose protocol this machine cannot open (nothing is read or written; a
    protocol that connects when opened, sftp say, must reach its server)."""
    try:
        _filesystem(url)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - fsspec's protocols raise their own errors (connections, credentials)
        raise UserError(f"cannot open storage URL {url!r} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                        "); check the URL and that its server answers") from None


def _join(root: str, relative: str) -> str:
    return f"{root.rstrip('/')}/{relative}"


def _local_index(local_dir: Path, kind: str = "dir") -> dict[str, Any]:
    files = []
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(local_dir).as_posix()
        if relative == INDEX:
            continue
        files.append({"path": relative, "size": path.stat().st_size, "sha256": sha256_file(path)})
    return {"format": INDEX_FORMAT, "kind": kind, "files": files}


def _published_index(fs, index_path: str) -> dict[str, Any] | None:
    try:
        with fs.open(index_path, "rb") as handle:
            return json.loads(handle.read())
    except (FileNotFoundError, ValueError):
        return None


def publish_dir(local_dir: str | os.PathLike[str], url: str, *, _kind: str = "dir") -> dict[str, Any]:
    """Upload every file under `local_dir` to `url`, then the index. Returns the index (paths, sizes, SHA-256).

    Republishing to the same URL first removes the old index, so readers never take a mix of two versions;
    republishing identical content uploads nothing. Files present at `url` but absent from `local_dir` are
    left there but are not part of the publication.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise UserError(f"cannot publish {root}: it is not a directory")
    index = _local_index(root, _kind)
    if not index["files"]:
        raise UserError(f"cannot publish {root}: it holds no files")
    fs, base = _filesystem(url)
    index_path = _join(base, INDEX)
    if _published_index(fs, index_path) == index:
        return index  # already there, verified by the same checksums
    if fs.exists(index_path):
        fs.rm(index_path)
    fs.makedirs(base, exist_ok=True)
    for entry in index["files"]:
        target = _join(base, entry["path"])
        parent = target.rsplit("/", 1)[0]
        if parent != base:
            fs.makedirs(parent, exist_ok=True)
        fs.put_file(str(root / entry["path"]), target)
    with fs.open(index_path, "wb") as handle:
        handle.write(json.dumps(index, indent=2, sort_keys=True).encode())
    return index


def publish_file(local_file: str | os.PathLike[str], url: str) -> dict[str, Any]:
    """Publish one file: `url` becomes a publication holding it under its own name (see `fetch_file`)."""
    path = Path(local_file)
    if not path.is_file():
        raise UserError(f"cannot publish {path}: it is not a file")
    with tempfile.TemporaryDirectory(prefix=".publish-", dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        try:
            os.link(path, staged)  # no copy of a large file when the filesystem allows a hard link
        except OSError:
            shutil.copy2(path, staged)
        return publish_dir(tmp, url, _kind="file")


def fetch_file(url: str, local_file: str | os.PathLike[str]) -> Path:
    """Download a publication made by `publish_file` to `local_file`, verified, replacing it atomically."""
    index = read_index(url)
    if index.get("kind") != "file":
        raise UserError(f"{url} holds a published directory, not a file; fetch it with fetch_dir")
    target = Path(local_file)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=_existing_parent(target)) as tmp:
        folder = fetch_dir(url, Path(tmp) / "payload")
        os.replace(folder / index["files"][0]["path"], target)
    return target


def publish(local: str | os.PathLike[str], url: str) -> dict[str, Any]:
    """`publish_dir` or `publish_file`, whichever `local` is."""
    return publish_dir(local, url) if Path(local).is_dir() else publish_file(local, url)


def fetch(url: str, local: str | os.PathLike[str]) -> dict[str, Any]:
    """`fetch_dir` or `fetch_file`, as the publication at `url` was made; returns its index."""
    index = read_index(url)
    (fetch_file if index.get("kind") == "file" else fetch_dir)(url, local)
    return index


def read_json(url: str) -> dict[str, Any] | None:
    """A small JSON document at `url` (None if absent)."""
    fs, path = _filesystem(url)
    try:
        with fs.open(path, "rb") as handle:
            return json.loads(handle.read().decode())
    except FileNotFoundError:
        return None


def write_json(url: str, document: dict[str, Any], default: Any = None) -> str:
    """Write a small JSON document to `url` (results, not data: no index, last writer wins)."""
    fs, path = _filesystem(url)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as handle:
        handle.write(json.dumps(document, sort_keys=True, default=default).encode())
    return url


def _existing_parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent


def read_index(url: str) -> dict[str, Any]:
    """The index of the publication at `url`; `UserError` if there is none (never published, or interrupted)."""
    fs, base = _filesystem(url)
    index_path = _join(base, INDEX)
    try:
        with fs.open(index_path, "rb") as handle:
            index = json.loads(handle.read())
    except FileNotFoundError as exc:
        raise UserError(f"nothing is published at {url} (no {INDEX}; the publish never ran or was interrupted); "
                        "run publish_dir on the machine that produced it") from exc
    except ValueError as exc:
        raise UserError(f"the index {url}/{INDEX} is unreadable ({exc}); publish the directory again") from exc
    if index.get("format") != INDEX_FORMAT or not isinstance(index.get("files"), list):
        raise UserError(f"the index {url}/{INDEX} has an unknown format; publish the directory again")
    for entry in index["files"]:
        path = entry.get("path", "")
        if path.startswith("/") or ".." in Path(path).parts:
            raise UserError(f"the index {url}/{INDEX} names an unsafe path {path!r}; publish the directory again")
    return index


def _matches(local_dir: Path, index: dict[str, Any]) -> bool:
    if not local_dir.is_dir():
        return False
    try:
        return _local_index(local_dir)["files"] == sorted(index["files"], key=lambda e: e["path"])
    except OSError:
        return False


def fetch_dir(url: str, local_dir: str | os.PathLike[str]) -> Path:
    """Download the publication at `url` into `local_dir`, verified; returns `local_dir`.

    Every file's size and SHA-256 must match the index, or `UserError` names the file and `local_dir` is left
    exactly as it was. An existing `local_dir` is replaced as a whole (never merged) once the new copy is
    verified; if it already matches the index nothing is downloaded.
    """
    index = read_index(url)
    target = Path(local_dir)
    if _matches(target, index):
        return target
    fs, base = _filesystem(url)
    with atomic_directory(target) as tmp:
        for entry in index["files"]:
            dest = tmp / entry["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            digest, size = hashlib.sha256(), 0
            fd, partial = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
            os.fchmod(fd, umask_mode())
            with os.fdopen(fd, "wb") as out, fs.open(_join(base, entry["path"]), "rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
                raise UserError(f"{url}/{entry['path']} does not match the published checksum (corrupt or changed "
                                f"after publishing); {target} was left as it was — publish the directory again")
            os.replace(partial, dest)
    return target
