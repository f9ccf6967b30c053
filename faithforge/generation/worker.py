"""A standalone generation worker: `python -m faithforge.generation.worker --spec FILE --db URL --out DIR ...`.

Start several (on one machine or many) against one coverage database to share the work: each claims
slots atomically and renews its leases with a heartbeat; a worker that dies on the same machine loses its
slots at once, one on another machine when its lease (`--claim-ttl` seconds) runs out. No Prefect here;
the Prefect flow (`flows/generate.py`) and `faithforge generate` run the same `job.generate`.
"""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError

from faithforge.backends import backend_settings
from faithforge.core.errors import USER_ERRORS, UserError
from faithforge.core.settings import SettingsError
from faithforge.generation import job
from faithforge.core.backend_registry import BACKENDS
from faithforge.generation.parameters import GenerateParameters

_FIELDS = GenerateParameters.model_fields


def _default(name: str):
    return _FIELDS[name].default


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m faithforge.generation.worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", required=True, help="generation spec YAML")
    p.add_argument("--db", required=True, help="coverage database URL (sqlite:///x.db, postgresql://...)")
    p.add_argument("--out", required=True, help="folder the example files are written to")
    p.add_argument("--backend", default=_default("backend"), choices=[*BACKENDS.names(), *BACKENDS.renamed],
                   help="a renamed backend's old name (local) is read as its new one")
    p.add_argument("--model", default=_default("model"))
    p.add_argument("--base-url", default=None)
    p.add_argument("--target", type=int, default=None, help="total examples (default: the spec's targets)")
    p.add_argument("--batch-size", type=int, default=_default("batch_size"))
    p.add_argument("--max-tokens", type=int, default=_default("max_tokens"))
    p.add_argument("--temperature", type=float, default=_default("temperature"))
    p.add_argument("--seed", type=int, default=_default("seed"))
    p.add_argument("--claim-ttl", type=float, default=_default("claim_ttl_s"),
                   help="lease of a claim, seconds (renewed by the heartbeat while the worker runs)")
    p.add_argument("--poll", type=float, default=_default("poll_s"), help="wait between looks for free slots, seconds")
    p.add_argument("--limit", type=int, default=None, help="stop after storing this many examples")
    p.add_argument("--delay", type=float, default=0.0, help="template backend only: seconds per request")
    p.add_argument("--read-timeout", type=float, default=_default("read_timeout_s"),
                   help="longest silence from the server, seconds")
    p.add_argument("--documents", default=None, help="documents file for a spec with a documents: section")
    p.add_argument("--worker-id", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:  # --delay is the template teacher's own setting `delay_s`, its bounds checked by its `Options`
        if args.delay and args.backend != "template":
            raise UserError("applies to --backend template only")
        backend_settings("template", {"delay_s": args.delay})
    except UserError as exc:
        problem = exc.problem if isinstance(exc, SettingsError) else str(exc)
        print(f"error: --delay is the template backend's seconds per request: {problem}", file=sys.stderr)
        return 2
    try:
        params = GenerateParameters(spec=args.spec, backend=args.backend, model=args.model, base_url=args.base_url,
                                    target=args.target, batch_size=args.batch_size, max_tokens=args.max_tokens,
                                    temperature=args.temperature, seed=args.seed, claim_ttl_s=args.claim_ttl,
                                    poll_s=args.poll, limit=args.limit,
                                    backend_options={"template": {"delay_s": args.delay}} if args.delay else {},
                                    read_timeout_s=args.read_timeout, documents=args.documents,
                                    database_url=args.db, examples_dir=args.out, worker_id=args.worker_id,
                                    use_gpu_gate=False)
        plan = job.plan(params)
        summary = job.generate(params, plan, log=lambda line: print(line, file=sys.stderr))
    except ValidationError as exc:
        print("error: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()), file=sys.stderr)
        return 2
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(summary.to_dict(), sort_keys=True))
    if summary.stopped == "interrupted":  # a stop is neither a success nor a failure: a supervisor reruns it
        return 130
    return 1 if summary.stored_nothing else 0


if __name__ == "__main__":
    sys.exit(main())
