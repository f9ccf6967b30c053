"""Predicted vs measured peak GPU memory for each stage, on random-init models of real shapes.

    python bench/gpu_estimate.py                  # measure on CUDA (prints a notice and exits 0 without)
    python bench/gpu_estimate.py --predict-only   # the estimator's table only; runs anywhere

Each row builds the model from gpu/model_configs/<model>.json (NF4 via bitsandbytes for the quantized
stages), runs `--steps` real steps of the stage code (faithforge.gpu_calibration.calibrate.measure_stage) and compares
torch.cuda.max_memory_reserved() with the prediction minus the CUDA context (torch does not count the
context). ratio = measured / predicted; above 1 means the estimator was optimistic.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faithforge.gpu.estimate import Estimate, estimate_hf_generate, estimate_reference, estimate_train  # noqa: E402
from faithforge.gpu.units import GiB_bytes as GIB  # noqa: E402
from faithforge.gpu.model_shape import SHIPPED_CONFIGS_DIR, SHIPPED_MODELS, load_model_config, load_model_shape  # noqa: E402

# stage label → (estimator stage, reference strategy, reference model)
CASES = {
    "reference": ("reference", None, None),
    "train-cached": ("train", "cached", "adapters-disabled"),
    "train-live": ("train", "live", "adapters-disabled"),
    "train-live-2copies": ("train", "live", "separate-copy"),
    "evaluate": ("evaluate", None, None),
}


def predict(model: str, case: str, batch: int, seq_len: int, new_tokens: int) -> Estimate:
    shape = load_model_shape(model)
    stage, ref, ref_model = CASES[case]
    if stage == "reference":
        return estimate_reference(shape, batch_size=batch, seq_len=seq_len)
    if stage == "train":
        return estimate_train(shape, micro_batch=batch, seq_len=seq_len, ref_strategy=ref, reference_model=ref_model)
    return estimate_hf_generate(shape, batch_size=batch, prompt_tokens=seq_len, max_new_tokens=new_tokens)


def measure(model: str, case: str, batch: int, seq_len: int, new_tokens: int, steps: int) -> int | str:
    """Peak reserved bytes of the real stage code (faithforge.gpu_calibration.calibrate.measure_stage) on CUDA."""
    from faithforge.gpu_calibration.calibrate import measure_stage

    stage, ref, ref_model = CASES[case]
    if ref == "live" or ref_model == "separate-copy":
        return "n/a"  # FaithForge trains on cached reference log-probs only; bench/gpu_check.py times TRL's live one
    try:
        run = measure_stage(load_model_config(SHIPPED_CONFIGS_DIR / f"{model}.json"), stage, precision="nf4",
                            seq_len=seq_len, batch_size=batch, steps=steps, max_new_tokens=new_tokens)
        return int(run["peak_reserved_bytes"])
    except Exception as exc:  # an OOM is a result here: it says the prediction should have refused
        if "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError":
            return "OOM"
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predict-only", action="store_true", help="print predictions only (no GPU needed)")
    parser.add_argument("--models", nargs="+", default=list(SHIPPED_MODELS), choices=SHIPPED_MODELS)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--seq-lens", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--new-tokens", type=int, default=128, help="evaluate: new tokens per prompt")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    device_name = None
    if not args.predict_only:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device; nothing measured (use --predict-only for the estimator's table)")
            return 0
        device_name = torch.cuda.get_device_name(0)
    print(f"# device: {device_name or 'none (prediction only)'}; GiB = 2**30 bytes; predicted excludes the "
          f"CUDA context, as torch.cuda.max_memory_reserved() does")
    print(f"{'model':<12} {'case':<19} {'batch':>5} {'seq':>5} {'predicted GiB':>13} {'measured GiB':>12} {'ratio':>6}")
    rows = []
    for model in args.models:
        for case in args.cases:
            for seq_len in args.seq_lens:
                for batch in args.batch_sizes:
                    est = predict(model, case, batch, seq_len, args.new_tokens)
                    predicted = est.total_bytes - est.terms["cuda_context_bytes"]
                    measured = None if args.predict_only else measure(model, case, batch, seq_len,
                                                                      args.new_tokens, args.steps)
                    ratio = measured / predicted if isinstance(measured, int) else None
                    rows.append({"model": model, "case": case, "batch": batch, "seq_len": seq_len,
                                 "predicted_bytes": predicted, "measured_bytes": measured, "ratio": ratio,
                                 "terms": est.terms, "device": device_name})
                    shown = "—" if measured is None else measured if isinstance(measured, str) else f"{measured / GIB:.2f}"
                    print(f"{model:<12} {case:<19} {batch:>5} {seq_len:>5} {predicted / GIB:>13.2f} {shown:>12} "
                          f"{'—' if ratio is None else f'{ratio:.2f}':>6}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
