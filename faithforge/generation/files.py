"""Example files on disk, written from the coverage database, and the checks that the two agree.

Layout: `<out_dir>/<category>/<ordinal:06d>.json` per accepted example, `<out_dir>/_quarantine/<id>.json`
per failed attempt, `<out_dir>/_reasoning/<category>/<ordinal:06d>.txt` for the reasoning a model wrote
beside an accepted answer (think blocks, a `thought` key): kept for inspection, never part of the data. Every file is written atomically (`faithforge.core.workspace`), so a reader sees a whole
file or none. The database row is committed first and holds the content; a process killed between the
commit and the file write leaves a missing file that `reconcile` rewrites from the row, so nothing
accepted is ever lost and no file exists without its row.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faithforge.generation.coverage_db import CoverageDB
from faithforge.generation.parsing import content_hash
from faithforge.generation.tables import ExampleRow
from faithforge.core.workspace import atomic_write_json, atomic_write_text, temporary_target

#: The files written here (examples, quarantined attempts, reasoning): whose temporaries `reconcile` may remove.
_EXAMPLE_FILE = re.compile(r"^\d{6,}\.(json|txt)$")
QUARANTINE_DIR = "_quarantine"
REASONING_DIR = "_reasoning"


def example_relpath(category: str, ordinal: int) -> str:
    return f"{category}/{ordinal:06d}.json"


def example_document(row: ExampleRow) -> dict[str, Any]:
    """The JSON written for one example: the generated object under `data`, provenance beside it."""
    return {"spec": row.spec, "category": row.category, "ordinal": row.ordinal, "params": row.params,
            "content_hash": row.content_hash, "backend": row.backend, "model": row.model,
            "repaired": row.repaired, "data": row.payload}


def write_example_file(out_dir: Path, row: ExampleRow) -> Path:
    return atomic_write_json(out_dir / row.relpath, example_document(row))


def write_reasoning_file(out_dir: Path, relpath: str, reasoning: str) -> Path:
    return atomic_write_text(out_dir / REASONING_DIR / (relpath.rsplit(".", 1)[0] + ".txt"), reasoning)


def write_quarantine_file(out_dir: Path, failure_id: int, record: dict[str, Any]) -> Path:
    return atomic_write_json(out_dir / QUARANTINE_DIR / f"{failure_id:08d}.json", record)


@dataclass
class ReconcileReport:
    rewritten: int = 0
    """Example files that were missing or differed from their row, rewritten from the database."""
    stale_temp_files_removed: int = 0
    """Temporary files left by killed writers, removed."""


def reconcile(db: CoverageDB, spec: str, out_dir: Path, stale_after_s: float = 3600.0) -> ReconcileReport:
    """Make the files match the database: rewrite missing or wrong example files; remove temporary files
    older than `stale_after_s` seconds (left by a killed writer; a live write never takes that long)."""
    report = ReconcileReport()
    for row in db.examples(spec):
        path = out_dir / row.relpath
        if not _file_matches(path, row.content_hash):
            write_example_file(out_dir, row)
            report.rewritten += 1
    cutoff = time.time() - stale_after_s
    for folder, _subfolders, names in os.walk(out_dir):  # never through a link: only what lies in `out_dir`
        for name in names:
            if not _EXAMPLE_FILE.match(temporary_target(name) or ""):
                continue  # not the temporary of a file written here: a user's, left alone
            tmp = Path(folder) / name
            try:
                if tmp.stat(follow_symlinks=False).st_mtime < cutoff:
                    tmp.unlink()
                    report.stale_temp_files_removed += 1
            except FileNotFoundError:
                pass
    return report


def _file_matches(path: Path, digest: str) -> bool:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and content_hash(document.get("data")) == digest


@dataclass
class ConsistencyReport:
    examples: int = 0
    files: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(db: CoverageDB, spec: str, out_dir: Path) -> ConsistencyReport:
    """Check database and files agree: one file per example with the same content, no stray files, unique
    content, done slots ↔ examples, and coverage counters equal to the rows they count."""
    report = ConsistencyReport()
    rows = list(db.examples(spec))
    report.examples = len(rows)
    hashes = Counter(r.content_hash for r in rows)
    report.problems += [f"content {h[:12]} stored {n} times" for h, n in hashes.items() if n > 1]
    expected = set()
    for row in rows:
        expected.add(row.relpath)
        if not _file_matches(out_dir / row.relpath, row.content_hash):
            report.problems.append(f"{row.relpath}: file missing or not matching its row")
    on_disk = {str(p.relative_to(out_dir)).replace(os.sep, "/") for p in out_dir.glob("*/*.json")
               if not p.parent.name.startswith("_")} if out_dir.is_dir() else set()
    report.files = len(on_disk)
    report.problems += [f"{p}: file without a database row" for p in sorted(on_disk - expected)]
    slots = db.slots(spec)
    done = {s.id for s in slots if s.status == "done"}
    with_rows = {r.slot_id for r in rows}
    if done != with_rows:
        report.problems.append(f"{len(done ^ with_rows)} slot(s) disagree between status done and stored examples")
    successes = Counter(r.combination_id for r in rows)
    failures = Counter(f.combination_id for f in db.failures(spec))
    for combo in db.combinations(spec):
        if combo.successes != successes[combo.id] or combo.failures != failures[combo.id] \
                or combo.attempts != combo.successes + combo.failures:
            report.problems.append(f"coverage row {combo.category}/{combo.params} counts "
                                   f"{combo.attempts}/{combo.successes}/{combo.failures} (attempts/successes/failures) "
                                   f"but the rows say {successes[combo.id]} successes, {failures[combo.id]} failures")
    return report


def export_jsonl(db: CoverageDB, spec: str, path: Path) -> int:
    """Write every example of `spec` as one JSONL file (atomically); returns the number of lines."""
    lines = [json.dumps(example_document(row), sort_keys=True, ensure_ascii=False) for row in db.examples(spec)]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)
