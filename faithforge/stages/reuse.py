"""Reuse of a stage's output, verified: the one mechanism every stage uses.

A stage writes its output folder (atomically) and, last, a manifest (`faithforge.json` or `manifest.json`)
holding the stage's result and the size and SHA-256 of every file it wrote. A later run reuses the folder only
when every listed file is still there with that size and checksum; otherwise it says what changed and computes
the output again. Checking is cheap enough for every run: files under `HASH_ALWAYS_BELOW` are re-hashed each
time; a larger file whose size and modification time (ns) match the manifest keeps its recorded checksum (the
size + mtime cache; truncation or a rewrite changes one of them).

`claim_output` wraps this with the output's lock (`faithforge.core.locks`), so a second run in the same workspace
waits for the first and then reuses what it wrote instead of computing it again.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from faithforge.core.locks import output_lock
from faithforge.core.workspace import atomic_write_json, sha256_file
from faithforge.stages.context import reads

if TYPE_CHECKING:
    from faithforge.core.store import Store

log = logging.getLogger(__name__)

#: Manifest key holding `{relative path: {"bytes", "sha256", "mtime_ns"}}`.
CHECKSUMS = "checksums"
#: Files smaller than this are re-hashed on every reuse (1 MiB hashes in ~2 ms); larger ones use the cache.
HASH_ALWAYS_BELOW = 8 << 20


def _entry(path: Path, sha256: str | None = None) -> dict[str, Any]:
    stat = path.stat()
    return {"bytes": stat.st_size, "sha256": sha256 or sha256_file(path), "mtime_ns": stat.st_mtime_ns}


def checksum_files(folder: Path, skip: set[str]) -> dict[str, dict[str, Any]]:
    """Size, SHA-256 and mtime of every file under `folder` (relative names), except `skip`."""
    return {str(p.relative_to(folder)): _entry(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and str(p.relative_to(folder)) not in skip}


def write_manifest(folder: Path, info: dict[str, Any], name: str = "faithforge.json",
                   checksums: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write the manifest last: `info` plus the checksums of every other file in `folder`."""
    data = {k: v for k, v in info.items() if k not in ("reused", "recomputed_because")}
    data[CHECKSUMS] = checksums if checksums is not None else checksum_files(folder, {name})
    return atomic_write_json(folder / name, data)


def update_manifest(folder: Path, name: str = "faithforge.json", **extra: Any) -> dict[str, Any]:
    """Add keys (e.g. the store's artifact id) to a written manifest, keeping its checksums."""
    data = json.loads((folder / name).read_text(encoding="utf-8"))
    data.update(extra)
    atomic_write_json(folder / name, data)
    return data


def verify(folder: Path, name: str = "faithforge.json") -> tuple[dict[str, Any] | None, str | None]:
    """`(info, None)` when the output is complete and unchanged; `(None, why)` when it must be computed.

    `why` is None when there is simply nothing yet, else one line saying what is missing or changed.
    """
    manifest = folder / name
    if not manifest.is_file():
        if folder.exists() and any(folder.iterdir()):
            return None, f"{folder.name} has no {name} (an interrupted write)"
        return None, None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"{manifest} is unreadable ({exc})"
    recorded = data.get(CHECKSUMS) if isinstance(data, dict) else None
    if not isinstance(recorded, dict):
        return None, f"{manifest} lists no checksums (written by an older FaithForge)"
    refreshed = False
    for rel, want in recorded.items():
        if not (isinstance(want, dict) and isinstance(want.get("bytes"), int) and isinstance(want.get("sha256"), str)):
            return None, f"{manifest} is damaged (its entry for {rel} is not a size and a checksum)"
        path = folder / rel
        if not path.is_file():
            return None, f"{rel} is missing from {folder}"
        stat = path.stat()
        if stat.st_size != want["bytes"]:
            return None, f"{rel} in {folder} changed ({stat.st_size} bytes, {want['bytes']} when written)"
        if stat.st_size >= HASH_ALWAYS_BELOW and stat.st_mtime_ns == want.get("mtime_ns"):
            continue  # size + mtime unchanged: the recorded checksum still holds
        if sha256_file(path) != want["sha256"]:
            return None, f"{rel} in {folder} changed (its SHA-256 differs from when it was written)"
        if stat.st_mtime_ns != want.get("mtime_ns"):
            want["mtime_ns"] = stat.st_mtime_ns  # same bytes, new mtime (copied, fetched): cache it
            refreshed = True
    if refreshed:
        atomic_write_json(manifest, data)
    info = {k: v for k, v in data.items() if k != CHECKSUMS}
    return {**rebased(info, folder), "reused": True}, None


def rebased(info: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`info` of the output now at `folder`, its paths moved with the workspace.

    A manifest records where its output was written (`path`, and the files under it). A workspace copied or moved
    elsewhere (`cp -a A B`, `mv A A.moved`) must use its own outputs: every path under the workspace the output was
    written in (`<workspace>/<sub-directory>/<name>`) is read as the same path under the workspace it is in now."""
    written = info.get("path")
    if not isinstance(written, str) or not written:
        return info
    old_root, new_root = str(Path(written).parent.parent), str(folder.parent.parent)
    if old_root == new_root or Path(written).name != folder.name:
        return info

    def move(value: Any) -> Any:
        if isinstance(value, str) and (value == old_root or value.startswith(old_root + "/")):
            return new_root + value[len(old_root):]
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    return move(info)


@dataclass
class Claim:
    """A locked stage output: `reused` when it can be reused as it is, else compute and `finish` it."""

    stage: str
    folder: Path
    manifest: str
    reused: dict[str, Any] | None = None
    why: str | None = None
    notes: list[str] = field(default_factory=list)

    def finish(self, tmp: Path, info: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest into the (temporary) output folder, as its last file."""
        write_manifest(tmp, info, self.manifest)
        return self.result(info)

    def record(self, store: Store, run_id: str | None, tmp: Path, kind: str, content_hash: str,
               info: dict[str, Any], *, meta: dict[str, Any], parents: Iterable[str | None]) -> dict[str, Any]:
        """Record the written output (`tmp`, still inside its atomic directory) in the run store as a `kind`
        artifact at the claimed folder, with lineage from the `parents` that have an id; then `finish` it with
        `info` plus that `artifact_id`."""
        info["artifact_id"] = store.add_artifact(kind, str(self.folder), content_hash, run_id=run_id, meta=meta,
                                                 parents=[p for p in parents if p])
        return self.finish(tmp, info)

    def result(self, info: dict[str, Any]) -> dict[str, Any]:
        out = {**info, "reused": False}
        if self.why:
            out["recomputed_because"] = self.why
        return out


@contextlib.contextmanager
def claim_output(stage: str, folder: Path, manifest: str = "faithforge.json",
                 progress: Callable[[str, int, int, str], None] | None = None,
                 wait_s: float | None = None) -> Iterator[Claim]:
    """Lock `folder`'s output, verify what is there, and yield a `Claim` (see module docstring)."""

    def news(message: str) -> None:
        """A line for the user: through `progress` when a caller shows it (then the log keeps it at INFO: the
        root logger's WARNING handler printed every wait twice on the demo's terminal), else a warning."""
        log.log(logging.INFO if progress is not None else logging.WARNING, "%s: %s", stage, message)
        if progress is not None:
            progress(stage, 0, 1, message)

    with output_lock(folder, stage, wait_s=wait_s, on_wait=news):
        info, why = verify(folder, manifest)
        claim = Claim(stage, folder, manifest, reused=info, why=why)
        if why:
            news(f"recomputing: {why}")
        yield claim


@reads()  # a stage's ending reads no settings
def save_and_record(ctx, claim: "Claim", out: Path, output_type: type, *, write: Callable[[Path], None],
                    kind: str, fingerprint: Callable[[Path], str], info: dict[str, Any], meta: dict[str, Any],
                    parents: Iterable[str | None], checkpoints: Path | None = None) -> Any:
    """How a trained stage ends (`ctx` is its `StageContext`): `write(tmp)` fills the output's atomic folder, the run store records it (`kind`,
    `fingerprint(tmp)` of what was written, lineage from `parents`), and the `checkpoints` it replaces are removed
    once it is in place. Returns the stage's output as `output_type`."""
    from faithforge.core.workspace import atomic_directory, remove_inside

    with atomic_directory(out) as tmp:
        write(tmp)
        result = output_type.model_validate(claim.record(ctx.store, ctx.run_id, tmp, kind, fingerprint(tmp), info,
                                                         meta=meta, parents=parents))
    if checkpoints is not None:
        remove_inside(ctx.workspace.root, checkpoints)
    return result
