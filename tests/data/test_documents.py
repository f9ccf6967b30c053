"""The user's documents are read from every supported format, and each bad row is named with file, line, fix."""

from __future__ import annotations

import csv
import json

import pytest

from faithforge.data.documents import Document, DocumentError, content_id, read_documents
from faithforge.core.errors import UserError

ROWS = [
    {"document": "Ada bought 3 lamps in Oslo on Monday.", "title": "lamps"},
    {"document": "Bruno sold 5 chairs in Lima.", "title": "chairs"},
    {"document": "Chen repaired 2 clocks in Riga, \"quickly\", said the owner.", "title": "clocks"},
]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _csv(path, rows, fields=("document", "title")):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _expected(rows):
    return [Document(id=content_id(r["document"]), text=r["document"], meta={"title": r["title"]}) for r in rows]


def test_jsonl_csv_parquet_and_dataset_folder_give_the_same_documents(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "docs.parquet")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    (tmp_path / "array.json").write_text(json.dumps(ROWS))
    sources = [_jsonl(tmp_path / "docs.jsonl", ROWS), _csv(tmp_path / "docs.csv", ROWS),
               tmp_path / "docs.parquet", tmp_path / "ds", tmp_path / "dd", tmp_path / "array.json"]
    for source in sources:
        assert read_documents(source) == _expected(ROWS), source


def test_content_ids_are_stable_and_differ_by_text():
    assert content_id("a") == content_id("a") != content_id("b")
    assert len(content_id("a")) == 16


def test_id_and_text_columns_are_configurable(tmp_path):
    rows = [{"doc_id": 7, "body": "x y z", "lang": "en"}, {"doc_id": "b", "body": "p q", "lang": "de"}]
    docs = read_documents(_jsonl(tmp_path / "d.jsonl", rows), text_column="body", id_column="doc_id")
    assert [(d.id, d.text, d.meta) for d in docs] == [("7", "x y z", {"lang": "en"}), ("b", "p q", {"lang": "de"})]


def test_every_bad_jsonl_row_is_named_with_its_line_and_fix(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(
        json.dumps(ROWS[0]) + "\n"
        + "\n"                                       # line 2: blank lines are skipped, not errors
        + "{not json\n"                              # line 3
        + json.dumps({"document": "  "}) + "\n"      # line 4
        + json.dumps({"document": 12}) + "\n"        # line 5
        + json.dumps(ROWS[0]) + "\n"                 # line 6: duplicate of line 1
        + json.dumps(["a", "list"]) + "\n"           # line 7
    )
    with pytest.raises(DocumentError) as error:
        read_documents(path)
    message = str(error.value)
    assert isinstance(error.value, UserError) and "\n" not in message
    assert "5 bad row(s)" in message
    assert f"{path}:3: not valid JSON" in message and "fix the line or remove it" in message
    assert f"{path}:4: 'document' is empty" in message
    assert f"{path}:5: 'document' is int, not text" in message
    assert f"{path}:6: repeats the text of {path}:1" in message
    assert f"{path}:7: not an object" in message


def test_many_bad_rows_are_listed_up_to_ten_then_counted(tmp_path):
    path = tmp_path / "docs.jsonl"  # 12 documents, each followed by its copy: 12 different problems
    path.write_text("".join(json.dumps({"document": f"Doc {n}."}) + "\n" for n in range(12) for _ in range(2)))
    with pytest.raises(DocumentError) as error:
        read_documents(path)
    shown = "; ".join(f"{path}:{2 * n + 2}: repeats the text of {path}:{2 * n + 1} (id {content_id(f'Doc {n}.')}); "
                      "remove the duplicate" for n in range(10))
    assert str(error.value) == f"{path}: 12 bad row(s): {shown}; … and 2 more"


def test_rows_with_the_same_problem_are_said_once_with_their_lines(tmp_path):
    """50 copies of one document made a 1,600-character line saying the same thing ten times (an attack)."""
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"document": n}) + "\n" for n in range(12)))
    with pytest.raises(DocumentError) as error:
        read_documents(path)
    assert str(error.value) == (f"{path}: 12 bad row(s): {path}:1, 2, 3, 4, 5, … (12 rows): 'document' is int, not "
                                "text; write the document as a string")


def test_duplicates_can_be_dropped_instead(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [ROWS[0], ROWS[1], ROWS[0]])
    assert read_documents(path, allow_duplicates=True) == _expected(ROWS[:2])


def test_csv_lines_count_the_header_and_multiline_fields(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text('document,title\n"two\nlines",a\n,b\n"ok",c,extra\n')
    with pytest.raises(DocumentError) as error:
        read_documents(path)
    message = str(error.value)
    assert f"{path}:4: 'document' is empty" in message
    assert f"{path}:5: has 3 fields but the header has 2" in message


def test_a_missing_column_names_the_columns_there_are_and_the_setting(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(DocumentError, match=r"no row has a column 'document' \(columns: text\); set data.text_column"):
        read_documents(path)
    with pytest.raises(DocumentError, match="set data.id_column"):
        read_documents(path, text_column="text", id_column="uid")


def test_parquet_and_dataset_rows_are_numbered(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [ROWS[0], {"document": None, "title": "t"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    with pytest.raises(DocumentError, match=r"d.parquet row 2: no 'document' value"):
        read_documents(tmp_path / "d.parquet")
    datasets.DatasetDict({"a": datasets.Dataset.from_list(ROWS), "b": datasets.Dataset.from_list(ROWS)}).save_to_disk(
        str(tmp_path / "dd"))
    with pytest.raises(DocumentError, match="holds the splits a, b; choose one with data.split"):
        read_documents(tmp_path / "dd")
    assert len(read_documents(tmp_path / "dd", split="b")) == 3


@pytest.mark.parametrize("name, content, problem", [
    ("missing.jsonl", None, "does not exist"),
    ("d.xlsx", "x", "unknown documents format '.xlsx'"),
    ("empty.jsonl", "", "holds no documents"),
    ("bad.parquet", "not parquet", "not a readable Parquet file"),
    ("latin.csv", b"document\n\xe9t\xe9\n", "not UTF-8 text"),
])
def test_unusable_files_say_what_to_fix(tmp_path, name, content, problem):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DocumentError, match=problem):
        read_documents(path)


def test_a_plain_folder_is_not_a_dataset(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(DocumentError, match="not a datasets.save_to_disk folder"):
        read_documents(tmp_path / "folder")


def test_a_document_longer_than_the_limit_is_a_bad_row_named_with_its_line(tmp_path):
    """A 47 MB document was tokenized for minutes before the run failed on it (an attack, 2026-12-07)."""
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"document": "Ann went to Rome. " * 10}) + "\n"
                    + json.dumps({"document": "x" * 5000}) + "\n")
    with pytest.raises(DocumentError, match=rf"{path}:2: 5,000 characters, over data.max_document_chars \(1,000\)"):
        read_documents(path, max_chars=1000)
    assert len(read_documents(path)) == 2  # no limit unless one is given


def test_a_named_pipe_is_refused_not_waited_on(tmp_path):
    """`--documents fifo.jsonl` hung with no word: opening a named pipe waits for a writer (an attack)."""
    import os

    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(DocumentError, match="is not a regular file"):
        read_documents(fifo)
