"""Pydantic models that specs may name as their output schema (`schema_model: module:Class`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GroundedSummary(BaseModel):
    """A source document, a summary that states only its facts, and optionally a hallucinated variant."""

    model_config = ConfigDict(extra="forbid")

    source_document: str = Field(min_length=20)
    """The document to summarize."""
    summary: str = Field(min_length=5)
    """A faithful summary: every fact in it is stated in the document."""
    key_facts: list[str] = Field(min_length=1)
    """The checkable facts (names, numbers, places, days) the summary keeps."""
    hallucinated_summary: str | None = None
    """Optional: a fluent summary that adds, swaps or contradicts exactly one fact (a rejected answer)."""
