"""The user's own documents: read a JSONL, JSON, CSV or Parquet file or a `datasets.save_to_disk` folder.

Each row becomes a `Document` with an id (the id column's value, or a hash of the text when there is no id
column, so the same text always gets the same id and splits by id stay stable across runs), the text, and
every other column as metadata. Every bad row is reported at once with the file, its line (JSON lines, CSV)
or row number (Parquet, dataset folders) and what to fix, as one `DocumentError` (a `UserError`).
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from faithforge.core.errors import UserError, bad_rows_message

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")


class DocumentError(UserError):
    """A documents file that cannot be used as it is; the message names the file, the rows and the fix."""


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    meta: dict = field(default_factory=dict)


def content_id(text: str) -> str:
    """Id of a document without an id column: 16 hex digits of SHA-256 over the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_documents(
    path: str | Path,
    *,
    text_column: str = "document",
    id_column: str | None = None,
    split: str | None = None,
    allow_duplicates: bool = False,
    settings: dict[str, str] | None = None,
    max_chars: int | None = None,
) -> list[Document]:
    """Read every document of `path`. `split` picks one split of a `DatasetDict` folder.

    Duplicate texts (or duplicate ids) are bad rows unless `allow_duplicates`, in which case later copies are
    dropped: a repeated document would otherwise be counted twice and could sit on both sides of a split.
    `settings` names what the user sets for `path`, `text_column` and `id_column` where it is not the config's
    `data.*` (a command's flags: `judge train --documents`), so an error names what this entry point takes.
    `max_chars`: a longer document is a bad row (`data.max_document_chars`)."""
    path = Path(path)
    names = {"path": "data.documents_path", "text_column": "data.text_column", "id_column": "data.id_column",
             **(settings or {})}
    rows = read_rows(path, split, what="documents file", setting=names["path"])
    problems: list[str] = []
    documents: list[Document] = []
    seen_ids: dict[str, str] = {}
    columns_seen: set[str] = set()
    for where, row in rows:
        if isinstance(row, BadRow):
            problems.append(f"{where}: {row}")
            continue
        if not isinstance(row, dict):
            problems.append(f"{where}: not an object with named columns; write one JSON object per line")
            continue
        columns_seen.update(row)
        document, problem = _document(row, where, text_column, id_column, names["id_column"])
        if not problem and max_chars is not None and len(document.text) > max_chars:
            problem = (f"{where}: {len(document.text):,} characters, over data.max_document_chars ({max_chars:,}); "
                       "split it into shorter documents (or raise the limit for a long-context model)")
        if problem:
            problems.append(problem)
            continue
        first = seen_ids.get(document.id)
        if first is not None:
            if not allow_duplicates:
                what = "id" if id_column else "text"
                problems.append(f"{where}: repeats the {what} of {first} (id {document.id}); remove the duplicate")
            continue
        seen_ids[document.id] = where
        documents.append(document)
    missing_everywhere = [c for c in (text_column, id_column) if c and columns_seen and c not in columns_seen]
    if missing_everywhere:
        column = missing_everywhere[0]
        option = names["text_column" if column == text_column else "id_column"]
        raise DocumentError(f"{path}: no row has a column {column!r} (columns: {', '.join(sorted(columns_seen))}); "
                            f"set {option} to the column that holds it")
    if problems:
        raise DocumentError(bad_rows_message(path, problems))
    if not documents:
        raise DocumentError(f"{path} holds no documents; add rows with a non-empty {text_column!r} column")
    return documents


def _document(row: dict, where: str, text_column: str, id_column: str | None,
              id_option: str = "data.id_column") -> tuple[Document | None, str]:
    if text_column not in row or row[text_column] is None:
        return None, f"{where}: no {text_column!r} value; add the document text or remove the row"
    text = row[text_column]
    if not isinstance(text, str):
        return None, f"{where}: {text_column!r} is {type(text).__name__}, not text; write the document as a string"
    if not text.strip():
        return None, f"{where}: {text_column!r} is empty; add the document text or remove the row"
    if id_column:
        raw_id = row.get(id_column)
        if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
            return None, f"{where}: no {id_column!r} value; give every row an id (or drop {id_option})"
        if isinstance(raw_id, (dict, list, float)):
            return None, f"{where}: {id_column!r} is {type(raw_id).__name__}; use a string or integer id"
        doc_id = str(raw_id).strip()
    else:
        doc_id = content_id(text)
    meta = {k: v for k, v in row.items() if k not in (text_column, id_column)}
    return Document(id=doc_id, text=text, meta=meta), ""


def read_rows(path: str | Path, split: str | None = None, *, what: str = "file",
              setting: str = "the path") -> Iterator[tuple[str, Any]]:
    """(where, row) for every row of a JSONL/JSON/CSV/Parquet file or dataset folder; `where` is `file:line`
    (JSON lines, CSV) or `file row N`. A row that cannot be parsed is a `BadRow` (a string saying why)."""
    path = Path(path)
    if not path.exists():
        raise DocumentError(f"{what} {path} does not exist; check {setting}")
    if not path.is_dir() and not path.is_file():  # opening a named pipe waits for a writer: it hung, silent
        raise DocumentError(f"{what} {path} is not a regular file (a pipe or a device); write the rows to a file "
                            f"and point {setting} at it")
    return _rows(path, split)


def _rows(path: Path, split: str | None) -> Iterator[tuple[str, Any]]:
    if path.is_dir():
        return _dataset_rows(path, split)
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return _json_rows(path)
    if suffix in CSV_SUFFIXES:
        return _csv_rows(path, delimiter="\t" if suffix == ".tsv" else ",")
    if suffix in PARQUET_SUFFIXES:
        return _parquet_rows(path)
    raise DocumentError(f"{path}: unknown documents format {suffix or '(no suffix)'!r}; use .jsonl, .json, .csv, "
                        ".tsv, .parquet or a datasets.save_to_disk folder")


def _json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    text = _read_text(path)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DocumentError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); fix the file") from None
        return ((f"{path} record {n}", r) for n, r in enumerate(records, start=1))
    return _json_lines(path, text)


def _json_lines(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError as exc:
            yield f"{path}:{number}", BadRow(f"not valid JSON ({exc.msg}); fix the line or remove it")


class BadRow(str):
    """A row that could not even be parsed; reported as `not an object` with its parse error."""


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[str, Any]]:
    text = _read_text(path)
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise DocumentError(f"{path}:1: unreadable header ({exc}); fix the first line") from None
    header = [h.strip() for h in header]
    start = reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield f"{path}:{start}", BadRow(f"unreadable CSV ({exc}); fix the quoting")
            start = reader.line_num + 1
            continue
        where = f"{path}:{start}"
        start = reader.line_num + 1
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) != len(header):
            yield where, BadRow(f"has {len(values)} fields but the header has {len(header)}; "
                                 "quote fields that contain the delimiter")
            continue
        yield where, dict(zip(header, values))


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged or non-Parquet file
        raise DocumentError(f"{path}: not a readable Parquet file ({exc}); re-export it") from None
    return ((f"{path} row {n}", r) for n, r in enumerate(table.to_pylist(), start=1))


def _dataset_rows(path: Path, split: str | None) -> Iterator[tuple[str, Any]]:
    import datasets

    if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        raise DocumentError(f"{path} is a folder but not a datasets.save_to_disk folder (no dataset_info.json or "
                            "dataset_dict.json); point it at a file or such a folder")
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError or its own errors for a bad folder
        raise DocumentError(f"{path}: cannot load the dataset folder ({exc}); save it again with save_to_disk") from None
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        if split is None and len(names) == 1:
            split = names[0]
        if split not in loaded:
            raise DocumentError(f"{path} holds the splits {', '.join(names)}; choose one with data.split")
        loaded = loaded[split]
    return ((f"{path} row {n}", r) for n, r in enumerate(loaded, start=1))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
