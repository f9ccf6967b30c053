"""A standalone generation worker: `python -m faithforge.generation.worker --spec FILE --db URL --out DIR ...`.

Start several (on one machine or many) against one coverage database to share the work: each claims
slots atomically, and a worker that dies leaves claims that expire after `--claim-ttl` seconds. No Prefect
here; the Prefect flow (`flows/generate.py`) runs the same loop with progress reporting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from faithforge.errors import UserError
from faithforge.generation.backends import BACKEND_NAMES, HttpOptions, make_backend
from faithforge.generation.coverage import CoverageDB
from faithforge.generation.runner import GenerationOptions, default_worker_id, run_generation
from faithforge.generation.spec import load_spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m faithforge.generation.worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", required=True, help="generation spec YAML")
    p.add_argument("--db", required=True, help="coverage database URL (sqlite:///x.db, postgresql://...)")
    p.add_argument("--out", required=True, help="folder the example files are written to")
    p.add_argument("--backend", default="ollama", choices=BACKEND_NAMES)
    p.add_argument("--model", default="qwen3:8b")
    p.add_argument("--base-url", default=None)
    p.add_argument("--target", type=int, default=None, help="total examples (default: the spec's targets)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=4000)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--claim-ttl", type=float, default=900.0, help="lease of a claim, seconds")
    p.add_argument("--poll", type=float, default=1.0, help="wait between looks for free slots, seconds")
    p.add_argument("--limit", type=int, default=None, help="stop after storing this many examples")
    p.add_argument("--delay", type=float, default=0.0, help="template backend only: seconds per request")
    p.add_argument("--read-timeout", type=float, default=300.0, help="longest silence from the server, seconds")
    p.add_argument("--worker-id", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = load_spec(args.spec)
        backend = make_backend(args.backend, args.model, base_url=args.base_url, delay_s=args.delay,
                               http=HttpOptions(read_timeout_s=args.read_timeout))
        db = CoverageDB(args.db)
        options = GenerationOptions(target=args.target, batch_size=args.batch_size, max_tokens=args.max_tokens,
                                    temperature=args.temperature, seed=args.seed, claim_ttl_s=args.claim_ttl,
                                    poll_s=args.poll, limit=args.limit, worker_id=args.worker_id or default_worker_id())
        summary = run_generation(spec, backend, db, Path(args.out), options)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(summary.to_dict(), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
