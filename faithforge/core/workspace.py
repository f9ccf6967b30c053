"""The workspace: one directory that holds everything a run writes, and the atomic writes into it.

Every file FaithForge produces goes through `atomic_write_bytes` (or one of its wrappers) or
`atomic_directory`: the content is written to a temporary name in the same directory, fsynced, and
renamed over the final name. A killed process therefore leaves either the old file or the new one,
never half of one — "nothing already written is lost".
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from faithforge.core.errors import UserError
from faithforge.core.liveness import process_alive, process_start

T = TypeVar("T")

#: Sub-directories of a workspace, by what they hold.
SUBDIRS = ("datasets", "pairs", "refcache", "models", "checkpoints", "adapters", "answers", "reports", "tmp", "cache")


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


def umask_mode(directory: bool = False) -> int:
    """The mode `open()` (or `mkdir()` for a folder) gives a new file under this process's umask: 0o666 (0o777)
    less the umask. `tempfile.mkstemp` and `mkdtemp` create 0o600 and 0o700 whatever the umask, so every output
    written through them (weights, datasets, manifests, reports) was unreadable to the group and to others, beside
    0o644 files written another way in the same folder (an attack, 2026-12-07: 34 of a demo workspace's 81 files,
    `model.safetensors` among them, under umask 022). The umask is read from /proc (Linux); elsewhere it is set and
    put back at once (a thread creating a file in that instant gets umask 022)."""
    try:
        with open("/proc/self/status") as status:
            mask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` so that readers see the old content or the new, never a mix."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), umask_mode())  # as a plain `open()` would create it (`umask_mode`)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if is_disk_full(exc):
            raise disk_full(target, len(data)) from None
        raise
    _fsync_dir(target.parent)
    return target


def is_disk_full(exc: BaseException) -> bool:
    """An `OSError` ENOSPC/EDQUOT, or a library's own error for one (safetensors raises `SafetensorError` with
    "No space left on device (os error 28)")."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(exc)[:2000]
    return isinstance(exc, Exception) and any(sign in text for sign in (os.strerror(errno.ENOSPC),
                                                                       os.strerror(errno.EDQUOT)))


def disk_full(target: Path, needed: int | None = None) -> UserError:
    """The one line for a full disk: where, how much was needed (when known) and free, and that a rerun resumes."""
    try:
        free = f"{shutil.disk_usage(target.parent).free:,} bytes free"
    except OSError:
        free = "free space unknown"
    need = f"{needed:,} bytes needed, " if needed is not None else ""
    return UserError(f"no space left on the device holding {target.parent} while writing {target.name} ({need}"
                     f"{free}); free space there and rerun the same command: finished stages and checkpoints are "
                     "reused")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_jsonl(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> Path:
    body = "".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows)
    return atomic_write_text(path, body)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a line that is not JSON is a `UserError` naming the file and line."""
    return [row for _, row in numbered_jsonl_rows(path)]


def read_keyed_jsonl(path: str | os.PathLike[str], parse: Callable[[dict[str, Any], int], T], *, what: str,
                     needs: str) -> list[T]:
    """Items of a JSON-lines file, each built by `parse(row, line_number)` and carrying a unique `.id`.

    `what` names an item ("a labeled summary"), `needs` what each line must hold ("id, source, summary"). A row
    `parse` rejects (ValueError, KeyError, TypeError), a repeated id and a file without rows are each a one-line
    `UserError` naming the file and line."""
    items: list[T] = []
    seen: set[str] = set()
    for number, row in numbered_jsonl_rows(path):
        try:
            item = parse(row, number)
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}:{number}: not {what} ({str(exc)[:120]}); each line needs {needs}") from None
        item_id = getattr(item, "id")
        if item_id in seen:
            raise UserError(f"{path}:{number}: id {item_id[:80]!r} occurs twice; ids must be unique")
        seen.add(item_id)
        items.append(item)
    if not items:
        raise UserError(f"{path} holds no rows; add JSON lines with {needs}")
    return items


def numbered_jsonl_rows(path: str | os.PathLike[str],
                        fail: Callable[[int, str], UserError] | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of each non-blank line, numbered as an editor shows them. A line that is not JSON
    is `fail(line, problem)` (default: a `UserError` naming the file and line); a file that is not UTF-8 or cannot
    be read is a `UserError` too."""
    if fail is None:
        def fail(number: int, problem: str) -> UserError:
            return UserError(f"{path}: line {number}: {problem}; fix or remove that line")
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}; check the path") from None
    with handle:
        number = 0  # the last line read whole
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise fail(number, f"not valid JSON ({exc.msg})") from None
                yield number, row
        except UnicodeDecodeError as exc:
            raise UserError(f"{path} is not UTF-8 text after line {number} ({exc.reason}); save the file as "
                            "UTF-8") from None


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, new: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only if the block finishes.

    Used for model folders (`save_pretrained` writes several files). An existing `path` is kept
    until the new one is complete, then swapped out. `new`: for a command that never replaces a folder it finds
    (`require_new_folder`): the swap refuses one that another command wrote meanwhile. Three `tiny-model` runs
    into one new folder all said "written"; the last replaced the others (an attack, 2026-12-07).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _drop_dead_temporaries(target)
    owner = f"{os.getpid()}-{process_start(os.getpid())}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{owner}-", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, umask_mode(directory=True))  # as a plain `mkdir()` would create it (`umask_mode`)
        yield tmp
        give_umask_modes(tmp)
        if new:
            _swap_in_new(tmp, target)
            return
        old = None
        if target.exists() or target.is_symlink():
            old = target.with_name(f".{target.name}.old")
            if old.exists() or old.is_symlink():  # an earlier swap's leftover: your files in it are kept first
                _drop_replaced(old, target)
            if old.exists() or old.is_symlink():  # still there (your files, or a read-only file in it)
                old = target.with_name(f".{target.name}.{os.getpid()}-{time.time_ns()}.old")
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            _drop_replaced(old, target)
    except BaseException as exc:
        remove_entry(tmp)
        if is_disk_full(exc):
            raise disk_full(target) from None
        raise


def _swap_in_new(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target` unless `target` is now there and not an empty folder. rename(2) itself refuses a
    non-empty folder (ENOTEMPTY or EEXIST) and a file or link in the way (ENOTDIR), at once and atomically, so of
    two commands finishing together the second is refused (no lock: `flock` on a folder fails on NFS, after the
    whole model was written: a review, 2026-12-07)."""
    try:
        os.rename(tmp, target)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
        raise UserError(f"{target} was written by another command while this one worked; nothing was replaced: "
                        "choose a new folder") from None
    _fsync_dir(target.parent)


def _drop_dead_temporaries(target: Path) -> None:
    """Remove the temporaries of `target` that processes now gone left (`.NAME.<pid>-<start>-<random>.tmp`, named
    by `atomic_directory`): a killed process cannot clean up, and a SIGKILLed `model export` left 359 MB behind
    that later exports neither removed nor mentioned (an attack, 2026-12-07). A live process's, and any other
    name, is left alone."""
    _drop_dead(target.parent, re.compile(rf"^\.{re.escape(target.name)}\.(?P<pid>\d+)-(?P<start>\d*)-[^.]+\.tmp$"))


def _drop_dead(parent: Path, pattern: re.Pattern) -> None:
    """Remove the folders in `parent` whose names `pattern` matches (its `pid` and `start` groups: the owner) and
    whose owner is gone. Links and files are left alone."""
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            match = pattern.match(entry.name)
            if match and entry.is_dir() and not entry.is_symlink() \
                    and not process_alive(int(match["pid"]), match["start"]):
                logging.getLogger(__name__).info("removing %s, left by process %s, which is gone", entry,
                                                 match["pid"])
                remove_entry(entry)


@contextlib.contextmanager
def scratch_directory(parent: str | os.PathLike[str], prefix: str) -> Iterator[Path]:
    """A folder in `parent` for this process's scratch files, removed when the block ends. Its name carries the
    process (`<prefix><pid>-<start>-<random>`), so the scratch of a process killed before it could clean up is
    removed by the next one to ask for scratch with that prefix: a SIGKILL during evaluation left a
    `tmp/gguf-evaluate-*` folder per kill that nothing removed (an attack, 2026-12-07)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    # The host is in the name too: a workspace on a shared disk (NFS, a worker's volume) holds other machines'
    # scratch, whose processes this one cannot see
    host = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())
    _drop_dead(parent, re.compile(rf"^{re.escape(prefix)}{re.escape(host)}-(?P<pid>\d+)-(?P<start>\d*)-[^.]+$"))
    owner = f"{host}-{os.getpid()}-{process_start(os.getpid())}"
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{owner}-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def give_umask_modes(folder: Path) -> None:
    """Give what a library wrote into a new output folder the modes the umask allows: safetensors' `save_file`
    (every `save_pretrained` of weights) creates its file 0o600 whatever the umask. Execute bits are kept."""
    file_mode, dir_mode = umask_mode(), umask_mode(directory=True)
    for root, dirs, files in os.walk(folder):  # does not follow links to folders
        for name, is_dir in [(d, True) for d in dirs] + [(f, False) for f in files]:
            path = os.path.join(root, name)
            if os.path.islink(path):  # a link's target is not ours to change
                continue
            os.chmod(path, dir_mode if is_dir else file_mode | (os.stat(path).st_mode & 0o111 & dir_mode))


def _drop_replaced(old: Path, target: Path) -> None:
    """Delete the folder `target` replaced, after moving out the files you put in it (`keep_your_files`; a stage
    output's workspace is two levels up); left in place, and said, when they cannot be moved."""
    log = logging.getLogger(__name__)
    try:
        kept = keep_your_files(target.parent.parent, old, target.name)
    except OSError as exc:
        log.warning("left %s (the output %s replaced) in place: your files in it could not be moved (%s)", old,
                    target.name, exc)
        return
    for path in kept:
        log.warning("kept your file %s (moved out of %s, which was recomputed)", path, target.name)
    remove_entry(old)
    if old.exists() or old.is_symlink():  # said, not hidden: an attack found one left without a word
        log.warning("could not delete %s (the output %s replaced); delete it by hand", old, target.name)


def require_new_folder(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """`path` resolved, refused in one line unless it is missing or an empty folder: a command that writes a whole
    folder never replaces one it did not create (`tiny-model mydocs` once wiped `mydocs`). A blank name is refused
    too: `tiny-model "  "` wrote a folder named by two spaces."""
    text, name = os.fspath(path), Path(path).name
    if not text.strip() or (name and not name.strip()):
        raise UserError(f"{what}: {text!r} is blank; name a folder (nothing was written)")
    if _has_control_character(text):  # printed, it broke every line naming it
        raise UserError(f"{what}: {clip_name(text)} contains a control character (a newline or tab); "
                        "choose a name without one (nothing was written)")
    target = Path(path).expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise UserError(f"{path} is a file; choose a new {what} (nothing was written)")
    if target.exists() and any(target.iterdir()):
        raise UserError(f"{path} already exists and is not empty; choose a new {what} (nothing was written)")
    writable_parent(target)
    return target


def writable_parent(target: Path) -> None:
    """Refuse in one line, before any work, a path whose nearest existing ancestor is a file or not writable."""
    problem = _parent_problem(target)
    if problem:
        raise UserError(f"cannot write {target}: {problem}; choose another path")


def _parent_problem(target: Path) -> str | None:
    """Why `target` cannot be created (its nearest existing ancestor is a file, or not writable), or None."""
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def remove_entry(path: Path) -> None:
    """Delete `path` itself, never what a symbolic link points to: a link (dangling or not) or a file is
    unlinked, a real directory removed with its contents (`shutil.rmtree` unlinks links inside it, it does not
    follow them). Errors are ignored: this is cleanup."""
    with contextlib.suppress(OSError):
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)


def inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """Whether the real path of `path` (every symbolic link followed) lies in the real path of `root`."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def remove_inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Delete a FaithForge output `path` of the workspace `root`, or nothing: a symbolic link is removed alone,
    and nothing is removed when the folder holding `path` lies (through a link) outside the workspace's real
    path. Returns whether something was removed. Every cleanup in a workspace goes through here."""
    path = Path(path)
    if not inside(path.parent, root):
        return False
    if path.is_symlink():
        path.unlink(missing_ok=True)
        return True
    if not path.exists() or not inside(path, root):
        return False
    remove_entry(path)
    return True


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


#: The file that says "FaithForge created this directory": only such a workspace may be cleaned by `--fresh`.
MARKER = ".faithforge-workspace"
#: Top-level names FaithForge writes in a workspace (a folder holding only these is an older FaithForge's).
KNOWN_TOP_LEVEL = frozenset(SUBDIRS) | {MARKER, "faithforge.db", "faithforge.db-wal", "faithforge.db-shm",
                                        "faithforge.db-journal", "gpu_calibration.json",
                                        "calibrations"}  # judge calibrations (faithforge.evaluation.heldout)
#: `train.report_to`'s TensorBoard/MLflow files and the export stage's models (faithforge.training.tracking, .model_export).
KNOWN_TOP_LEVEL = KNOWN_TOP_LEVEL | {"tracking", "exports"}
#: `faithforge judge train`'s default output folder (faithforge.app.cli_judge).
KNOWN_TOP_LEVEL = KNOWN_TOP_LEVEL | {"judges"}
#: Every run's shared lock of the workspace, which `--fresh` must hold alone (faithforge.core.locks.RUN_LOCK).
KNOWN_TOP_LEVEL = KNOWN_TOP_LEVEL | {".faithforge-run.lock"}
#: Sub-directories whose entries are recomputable stage outputs (`--fresh` removes FaithForge's ones).
DERIVED_DIRS = ("datasets", "pairs", "refcache", "models", "checkpoints", "adapters", "answers")
#: Names of what stages write there: `<kind>-<16 hex content key>`, a reference cache `<16 hex>`, and the
#: hidden temporary, lock and swap names of `atomic_write_bytes`, `atomic_directory` and `faithforge.core.locks`.
#: `questions` is a grounded-qa run's dataset (`faithforge.evaluation.wording`): without it `--fresh` kept every
#: earlier grounded-qa dataset as "not written by FaithForge" (a test builds each stage's name and checks it here).
_OUTPUT_NAME = re.compile(r"^((summaries|questions|generated|pairs|tiny|sft|sft-control|dpo|answers)-)?[0-9a-f]{16}$")
_HIDDEN_NAME = re.compile(r"^\..+\.(tmp|lock|old)$")
#: The generation flow's examples and export: generated data (LLM time), kept by `--fresh` without comment.
_GENERATED_DATA = re.compile(r"^generated(-.+\.jsonl)?$")


#: Where `--fresh` and a recompute move the files you put inside a FaithForge output folder (`keep_your_files`).
KEPT_DIR = "kept"
KNOWN_TOP_LEVEL = KNOWN_TOP_LEVEL | {KEPT_DIR}
#: The manifests a finished output folder holds, written last: `faithforge.json` / `manifest.json` with a
#: `checksums` map (faithforge.stages.reuse), or a reference cache's `manifest.json` with its `shards`
#: (faithforge.training.reference_cache, whose shards and ranks' sidecar entries are named as below).
MANIFEST_NAMES = ("faithforge.json", "manifest.json")
_SHARD_NAME = re.compile(r"^shard-\d+\.parquet(\.entry\.json)?$")
#: `atomic_write_bytes`' temporary of a file NAME: `.NAME.<8 random characters of tempfile>.tmp`.
_TEMPORARY_OF = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def files_written(folder: Path) -> Callable[[str], bool] | None:
    """For a finished output folder: a test of whether a relative file name is one FaithForge wrote there (its
    manifest lists it, or it is the manifest, a shard of a reference cache, or the half-written temporary of one).
    None when no readable manifest says what was written (a damaged folder: nothing can be told apart)."""
    for name in MANIFEST_NAMES:
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # missing, a folder, unreadable: try the other kind
            continue
        if isinstance(data, dict) and isinstance(data.get("checksums"), dict):
            listed = set(data["checksums"]) | {name}
            written = listed.__contains__
        elif isinstance(data, dict) and isinstance(data.get("shards"), list):
            written = lambda rel, name=name: rel == name or bool(_SHARD_NAME.match(rel))  # noqa: E731
        else:
            continue
        return lambda rel: written(rel) or _temporary_of(rel, written)
    return None


def _temporary_of(rel: str, written: Callable[[str], bool]) -> bool:
    """Whether `rel` is FaithForge's half-written temporary of a file it writes there (a user's `.draft.tmp` is
    not: an attack found such files deleted as FaithForge's)."""
    match = _TEMPORARY_OF.match(Path(rel).name)
    return bool(match) and written(str(Path(rel).parent / match["name"]).removeprefix("./"))


def keep_your_files(root: str | os.PathLike[str], folder: Path, name: str | None = None) -> list[Path]:
    """Before FaithForge deletes or replaces its output `folder` (`--fresh`; a recompute, when `atomic_directory`
    swaps the new one in), move the files in it that its manifest does not list — yours, put there by hand — to a
    new folder `<root>/kept/<sub-directory>/<name>.<UTC time>/` (`name`: the output's, default the folder's), and
    return where each went. A link is moved as a link. A folder without a readable manifest keeps nothing: its
    files cannot be told from FaithForge's (see the README's guarantees). Raises OSError when your files cannot
    be moved (the caller then leaves the folder in place)."""
    root, folder = Path(root).resolve(), Path(folder)
    if not (root / MARKER).is_file() or not inside(folder, root):
        return []  # only ever inside a workspace FaithForge created
    ours = files_written(folder) if folder.is_dir() and not folder.is_symlink() else None
    if ours is None:
        return []
    yours = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        links = [d for d in dirnames if (here / d).is_symlink()]  # os.walk lists them but does not enter them
        yours += [here / n for n in sorted(filenames + links) if not ours(str((here / n).relative_to(folder)))]
    if not yours:
        return []
    # A new folder per keep: an earlier keep's files (or a link among them) can never be in the way.
    kept_root = root / KEPT_DIR
    if os.path.realpath(kept_root / folder.parent.name) != str(kept_root / folder.parent.name):
        # A link anywhere on the way could lead out of the workspace, or into an output this run deletes.
        raise OSError(errno.EXDEV, f"{kept_root.relative_to(root)}/{folder.parent.name} is a link; make it a folder "
                      f"so your files in {folder.relative_to(root)} can be kept there")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (kept_root / folder.parent.name).mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        into = kept_root / folder.parent.name / f"{name or folder.name}.{stamp}{f'.{attempt}' if attempt else ''}"
        try:
            into.mkdir()
            break
        except FileExistsError:
            attempt += 1
    moved = []
    for source in yours:
        target = into / source.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(target))  # a rename; a copy where kept/ lies on another file system
        moved.append(target)
    return moved


def written_by_faithforge(entry: Path) -> bool:
    """Whether `entry` (directly under a derived sub-directory) is a stage output or FaithForge's temporary."""
    return bool(_OUTPUT_NAME.match(entry.name) or _HIDDEN_NAME.match(entry.name))


def may_own(path: Path) -> bool:
    """Whether FaithForge may treat `path` as its own: new, empty, marked, or an older FaithForge's workspace
    (its run database and nothing but FaithForge's names)."""
    if not path.exists():
        return True
    if not path.is_dir():
        return False
    entries = list(path.iterdir())
    if not entries or (path / MARKER).is_file():
        return True
    return (path / "faithforge.db").is_file() and all(p.name in KNOWN_TOP_LEVEL for p in entries)


def refuse_unowned(root: str | os.PathLike[str]) -> None:
    """`--fresh` refuses, before writing anything, a non-empty directory FaithForge did not create."""
    path = Path(root).expanduser().resolve()
    if not may_own(path):
        raise UserError(f"--fresh refuses to delete anything in {path}: it was not created by FaithForge "
                        f"(no {MARKER} file) and is not empty; pass --workspace NEW_DIR, or remove old "
                        "outputs yourself")


def _outside_link(root: Path, sub: str) -> str | None:
    """Where `root/sub` points when it is a symbolic link out of the workspace's real path (or dangling)."""
    entry = root / sub
    if not entry.is_symlink():
        return None
    if entry.exists() and inside(entry, root):
        return None
    return os.readlink(entry)


def _refuse_outside_link(root: Path, sub: str) -> None:
    target = _outside_link(root, sub)
    if target is not None:
        # --fresh drops the links of recomputable folders (drop_outside_links); reports and the cache it never
        # touches, so for them the advice is the user's own step.
        fresh = " (--fresh removes the link alone)" if sub in (*DERIVED_DIRS, "tmp") else ""
        raise UserError(f"{root / sub} is a symbolic link to {target}, outside the workspace (or missing); "
                        "FaithForge never deletes anything outside its workspace and cleans its outputs there, so it "
                        f"refuses it: replace the link by a folder{fresh}, or put the whole workspace on that disk")


def refuse_links_out(root: str | os.PathLike[str], rel: str) -> None:
    """Refuse, before anything is written or cleaned there, a folder on the way from `root` to `root/rel` — or
    one already below it — that is a symbolic link out of the workspace: FaithForge writes and cleans there, and
    `generate` deleted a user's hidden `.*.tmp` files behind `datasets/generated` linked to another disk (an
    attack, 2026-12-07). Links that stay inside the workspace are followed as usual."""
    path = Path(root).expanduser().resolve()
    parts = Path(rel).parts
    for depth in range(1, len(parts) + 1):
        _refuse_outside_link(path, str(Path(*parts[:depth])))
    for folder, subfolders, _files in os.walk(path / rel):  # links are listed, never followed
        for name in subfolders:
            _refuse_outside_link(path, os.path.relpath(os.path.join(folder, name), path))


def temporary_target(name: str) -> str | None:
    """The file name whose half-written temporary `name` is (`atomic_write_bytes`' naming), or None: a user's
    `.draft.tmp` is not FaithForge's to remove."""
    match = _TEMPORARY_OF.match(name)
    return match["name"] if match else None


def drop_outside_links(root: str | os.PathLike[str]) -> list[str]:
    """`--fresh` in a FaithForge workspace: remove each derived sub-directory that is a symbolic link out of the
    workspace — the link alone, never what it points to. Returns one message per link removed."""
    path = Path(root).expanduser().resolve()
    done = []
    for sub in (*DERIVED_DIRS, "tmp"):
        target = _outside_link(path, sub)
        if target is not None:
            (path / sub).unlink()
            done.append(f"removed the symbolic link {path / sub} alone (it pointed to {target}, outside the "
                        "workspace; nothing there was touched)")
    return done


def sqlite_url(path: str | os.PathLike[str]) -> str:
    """The SQLAlchemy URL of the SQLite file `path`, which must hold no `?` (`name_problem` refuses one)."""
    if "?" in str(path):
        raise UserError(f"{clip_name(str(path))} contains '?', which would change the meaning of a SQLite URL; "
                        "choose a folder name without it")
    return f"sqlite:///{path}"


def _has_control_character(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a workspace path taken literally, or None. A control character (a newline) would be
    printed and logged as something else; a `?` would turn the run database's SQLite URL into a query."""
    if _has_control_character(name):
        return (f"the workspace {clip_name(name)} contains a control character (a newline or tab); choose a folder "
                "name without one")
    if "?" in name:
        return (f"the workspace {clip_name(name)} contains '?', which would change the meaning of its run "
                "database's URL; choose a folder name without it")
    return None


def _shared_folder(path: Path) -> str | None:
    """What `path` is, when it is a folder that holds other things by nature (the filesystem's root, the home
    directory): never a workspace. None for any other folder."""
    if path.parent == path:
        return "the filesystem's root"
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError, OSError):  # no home directory can be found
        return None
    return "your home directory" if path == home else None


def clip_name(name: str, limit: int = 120) -> str:
    text = repr(name)
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass
class FreshResult:
    """What `Workspace.remove_outputs` (`--fresh`) did."""

    removed: list[Path] = field(default_factory=list)
    """FaithForge's outputs deleted."""
    not_ours: list[Path] = field(default_factory=list)
    """Entries beside the outputs that FaithForge did not write, left as they are."""
    moved: list[Path] = field(default_factory=list)
    """Your files, moved out of removed outputs into `kept/` (where each went)."""
    left: dict[Path, str] = field(default_factory=dict)
    """Outputs left in place because your files in them could not be moved, with why."""


@dataclass(frozen=True)
class Workspace:
    """The directory tree of one FaithForge workspace (default `./.faithforge`)."""

    root: Path

    @classmethod
    def check(cls, root: str | os.PathLike[str]) -> Path:
        """The workspace path resolved, or a `UserError` saying what to fix, creating nothing: what a command
        checks before long work whose result it then stores with `open` (a calibration, a trained judge)."""
        if not str(root).strip():
            raise UserError("the workspace is an empty string; pass --workspace DIR (or set workspace: / "
                            "FAITHFORGE_WORKSPACE) to a directory for FaithForge's files, e.g. .faithforge")
        problem = name_problem(str(root))
        if problem:
            raise UserError(problem + " (pass --workspace DIR)")
        path = Path(root).expanduser().resolve()
        if path.exists() and not path.is_dir():
            raise UserError(f"workspace {path} is a file, not a directory; pass --workspace DIR")
        shared = _shared_folder(path)
        if shared:  # `-w ~` or `-w /` put eleven folders and a database among the user's (an attack, 2026-12-07)
            raise UserError(f"workspace {path} is {shared}: FaithForge's folders (models, datasets, tmp, …) would go "
                            f"among yours; pass --workspace {path / '.faithforge'} or another folder of its own")
        if path.exists():
            problem = None if os.access(path, os.W_OK | os.X_OK) else "no write permission"
        else:
            problem = _parent_problem(path)
        if problem:
            raise UserError(f"workspace {path} is not writable ({problem}); pass --workspace DIR or set "
                            "FAITHFORGE_WORKSPACE to a directory you can write")
        return path

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> "Workspace":
        """Create the tree if needed and prove it is writable, or raise a `UserError` saying what to fix.

        A directory FaithForge creates (or finds empty) gets the `MARKER` file: it is FaithForge's, and
        `fresh` may clean it. An existing non-empty directory without the marker is used as it is (FaithForge
        only adds its own sub-directories) but is never cleaned.
        """
        path = cls.check(root)
        try:
            claimable = may_own(path)
            path.mkdir(parents=True, exist_ok=True)
            if claimable and not (path / MARKER).exists():
                atomic_write_json(path / MARKER, {"created_by": "faithforge", "note": "FaithForge owns this "
                                                  "directory; `faithforge demo --fresh` may delete outputs in it"})
            for sub in SUBDIRS:
                _refuse_outside_link(path, sub)
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

    @property
    def owned(self) -> bool:
        """FaithForge created this directory (it holds the marker)."""
        return (self.root / MARKER).is_file()

    def dir(self, kind: str) -> Path:
        if kind not in SUBDIRS:
            raise ValueError(f"unknown workspace sub-directory {kind!r}; known: {', '.join(SUBDIRS)}")
        return self.root / kind

    @property
    def database_url(self) -> str:
        return sqlite_url(self.root / "faithforge.db")

    @property
    def calibrations(self) -> Path:
        """The judge calibrations `faithforge eval calibrate --workspace` stores and every report reads
        (`faithforge.evaluation.heldout.save_calibration`)."""
        return self.root / "calibrations"

    def remove_outputs(self) -> FreshResult:
        """`--fresh`: delete the stage outputs FaithForge wrote (your files in them moved to `kept/` first).

        Refuses a workspace without the marker: FaithForge cannot tell its files from yours there. The run
        database and the reports are history and stay.
        """
        if not self.owned:
            refuse_unowned(self.root)
        result = FreshResult()
        for sub in DERIVED_DIRS:
            folder = self.dir(sub)
            if folder.is_symlink() or not inside(folder, self.root):  # its link alone, never what it points to
                if _outside_link(self.root, sub) is not None:
                    folder.unlink()
                    folder.mkdir()
                    result.removed.append(folder)
                continue
            if not folder.is_dir():
                continue
            for entry in sorted(folder.iterdir()):
                if entry.name.endswith(".lock") and entry.name.startswith("."):
                    continue  # another run's flock lives on this file: removing it would let a third one in
                if not written_by_faithforge(entry):
                    if not (sub == "datasets" and _GENERATED_DATA.match(entry.name)):
                        result.not_ours.append(entry)
                    continue
                try:
                    result.moved += keep_your_files(self.root, entry)
                except OSError as exc:  # your files there cannot be moved out: the output stays with them
                    result.left[entry] = exc.strerror or str(exc)
                    continue
                if remove_inside(self.root, entry):
                    result.removed.append(entry)
        return result

    def relative(self, path: str | os.PathLike[str]) -> str:
        """`path` relative to the workspace when it lies inside it (for keys and lineage that must survive a copied
        or moved workspace), else as given."""
        try:
            return str(Path(path).resolve().relative_to(self.root))
        except ValueError:
            return str(path)

    def output_dir(self, kind: str, name: str) -> Path:
        """`dir(kind) / name` for a stage to write and later delete: a symbolic link there is removed (the link
        alone), so the stage's cleanup can never reach outside the workspace."""
        path = self.dir(kind) / name
        if path.is_symlink():
            path.unlink()
        return path
