"""Systematic, resumable data generation from a local LLM.

A spec (`configs/specs/*.yaml`) names categories with parameter axes, prompts, output schemas and targets.
`run_generation` walks the least-covered parameter combinations first, asks a backend (Ollama, an
OpenAI-compatible server, a local transformers model, or the offline template teacher) for one example
per slot, parses and validates it (one repair request, then quarantine), and commits each example to the
coverage database and an atomically written file before the next request. Several workers may share one
database: claims are atomic and a dead worker's claims expire.
"""

from faithforge.backends import ChatBackend, ChatResult, make_backend
from faithforge.generation.coverage_db import CoverageDB
from faithforge.generation.files import export_jsonl, reconcile, verify
from faithforge.generation.runner import GenerationOptions, run_generation
from faithforge.generation.spec import GenerationSpec, load_spec
from faithforge.generation.summary import GenerationSummary

__all__ = ["ChatBackend", "ChatResult", "CoverageDB", "GenerationOptions", "GenerationSpec",
           "GenerationSummary", "export_jsonl", "load_spec", "make_backend", "reconcile", "run_generation", "verify"]
