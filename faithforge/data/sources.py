"""Which sources and which prompt a run uses: the template tasks, or the user's own documents.

`task_examples(config, split, count)` yields the examples of one split for the template backend's task;
`document_splits(config)` turns `data.documents_path` (and `data.eval_path`) into train / val / test examples,
split by document id so one document never sits on two sides; `system_prompt(config)` is the one system
prompt every stage (on-policy sampling, evaluation) renders the sources with.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

from faithforge.data.documents import Document, read_documents
from faithforge.core.errors import UserError
from faithforge.data.teacher import SYSTEM_PROMPT as SUMMARY_PROMPT
from faithforge.data.teacher import Example, generate_split

#: The prompt for the user's own documents: the summary task in ordinary prose.
DOCUMENTS_PROMPT = "Summarize the document. State only facts the document states."


def _refuse_contained(held_out, documents, data) -> None:
    """The overlap guard on the two files themselves, before any work: a held-out document whose words (spacing,
    case and punctuation aside) occur inside a training document. Found only at the evaluate stage, after every
    training stage had run, it cost a whole run (an attack, 2026-12-07)."""
    from faithforge.data.overlap import overlapping_sources

    found = overlapping_sources({d.id: d.text for d in held_out}, [d.text for d in documents])
    if found:
        first = next(d for d in held_out if d.id == found[0])
        raise UserError(f"{len(found)} document(s) of data.eval_path {data.eval_path} occur inside documents of "
                        f"data.documents_path (e.g. id {first.id}: {' '.join(first.text.split())[:60]!r}); a "
                        "held-out file must hold only text the model is not trained on — remove them from one of "
                        "the files")


def system_prompt(config) -> str:
    if config.data.documents_path:
        return config.data.system_prompt or DOCUMENTS_PROMPT
    if config.generate.task == "grounded-qa":
        from faithforge.data.grounded_qa import SYSTEM_PROMPT

        return SYSTEM_PROMPT
    return SUMMARY_PROMPT


def task_examples(config, split: str, count: int) -> Iterator[Example]:
    if config.generate.task == "grounded-qa":
        from faithforge.data.grounded_qa import generate_questions

        return generate_questions(split, count, config.seed)
    return generate_split(split, count, config.seed, config.generate.omitted_fact_share)


def _key_facts(document: Document, column: str | None, where: str) -> tuple[str, ...]:
    if not column:
        return ()
    value = document.meta.get(column)
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(f.strip() for f in value.split(";") if f.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(f, str) for f in value):
        return tuple(value)
    raise UserError(f"{where}: document {document.id} has {column}={value!r}; write key facts as a list of strings "
                    "or as text separated by ';'")


def _example(document: Document, split: str, key_facts_column: str | None, where: str) -> Example:
    facts = _key_facts(document, key_facts_column, where)
    meta = {k: v for k, v in document.meta.items() if k != key_facts_column}
    # No reference answer exists for a user's document: `faithful` stays empty and pairs come from the model's
    # own samples (on-policy) or from pairs.path; warm start needs references and is refused for documents.
    return Example(id=document.id, split=split, category="document", source=document.text, faithful="",
                   warm_start_reference="", facts=None, key_facts=facts, extra={"meta": meta} if meta else {})


def _split_of(document_id: str, seed: int, val_share: float, test_share: float) -> str:
    position = int.from_bytes(hashlib.sha256(f"split:{seed}:{document_id}".encode()).digest()[:8], "big") / 2**64
    if position < test_share:
        return "test"
    return "val" if position < test_share + val_share else "train"


def document_splits(config) -> dict[str, list[Example]]:
    """train / val / test examples from the user's documents (test from `data.eval_path` when set)."""
    data, gen = config.data, config.generate
    options = {"text_column": data.text_column, "id_column": data.id_column, "split": data.split,
               "max_chars": data.max_document_chars}
    documents = read_documents(data.documents_path, **options)
    splits: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    test_share = 0.0 if data.eval_path else gen.test_share
    for document in documents:
        split = _split_of(document.id, config.seed, gen.val_share, test_share)
        splits[split].append(_example(document, split, data.key_facts_column, data.documents_path))
    if data.eval_path:
        held_out = read_documents(data.eval_path, **options)
        splits["test"] = [_example(d, "test", data.key_facts_column, data.eval_path) for d in held_out]
        shared = {d.id for d in held_out} & {d.id for d in documents}
        if shared:
            raise UserError(f"{len(shared)} document(s) of data.eval_path {data.eval_path} also occur in "
                            f"data.documents_path (e.g. id {sorted(shared)[0]}); a held-out file must hold only "
                            "documents the model is not trained on — remove them from one of the files")
        _refuse_contained(held_out, documents, data)
    empty = [name for name, rows in splits.items() if not rows]
    if empty:
        raise UserError(f"{data.documents_path}: {len(documents)} documents leave the {', '.join(empty)} split(s) "
                        "empty; add documents or change generate.val_share / generate.test_share")
    return splits
