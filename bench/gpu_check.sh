#!/usr/bin/env bash
# The GPU check for issue 13 on a bare lent machine (an H200 via the `device` tool), in under 8 minutes.
#
#   bench/gpu_check.sh prepare        # HERE, once: download the wheels the device image lacks into .whl/ (< 64 MiB)
#   bench/gpu_check.sh run            # THERE: install .whl/*.whl into /tmp/site, then bench/gpu_check.py --out $OUT
#   bench/gpu_check.sh dry-run DIR    # anywhere: the same Python on tiny shapes on the CPU (what CI runs)
#
# The device image (Python 3.12, torch 2.11 cu130, transformers 5.17, peft, accelerate, pyarrow, pandas, xxhash,
# fsspec) lacks trl, bitsandbytes, datasets (+ dill, multiprocess) and pydantic (+ pydantic-core,
# annotated-types, typing-inspection); gpu_check.py needs no Prefect. The bitsandbytes wheel ships one library per
# CUDA version (~125 MB); `prepare` repacks it with only the CUDA 13.0 library torch cu130 loads
# (libbitsandbytes_cuda130.so) and the CPU one, so everything fits the 64 MiB carry limit.
# The device call (see /work/.library/device/README.md): carry [".whl"], timeout_s 540, command
#   PYTHONUNBUFFERED=1 bash bench/gpu_check.sh run 2>&1 | tee $OUT/log
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pydantic==2.13.4 pydantic-core==2.46.4
        annotated-types==0.7.0 typing-inspection==0.4.2 bitsandbytes==0.50.2 sqlalchemy==2.0.44)
KEEP_BNB_LIBS='libbitsandbytes_cuda130.so libbitsandbytes_cpu.so'

case "${1:-}" in
  prepare)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
      -d .whl "${WHEELS[@]}"
    KEEP="$KEEP_BNB_LIBS" python3 - <<'EOF'
import os, zipfile, glob
keep = set(os.environ["KEEP"].split())
for path in glob.glob(".whl/bitsandbytes-*.whl"):
    src = zipfile.ZipFile(path)
    names = [n for n in src.namelist()
             if not (n.endswith(".so") and "libbitsandbytes" in n and os.path.basename(n) not in keep)]
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in names:
            data = src.read(name)
            if name.endswith(".dist-info/RECORD"):  # drop the removed libraries' lines, keep the rest verbatim
                lines = data.decode().splitlines()
                data = ("\n".join(l for l in lines if l.split(",")[0] in names or l.startswith(name)) + "\n").encode()
            dst.writestr(src.getinfo(name), data)
    os.replace(tmp, path)
EOF
    du -sh .whl && ls -la .whl
    ;;
  run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
    nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv || true
    timeout 480 python3 bench/gpu_check.py --out "${OUT:?set OUT to the folder that comes back}" "${@:2}"
    ;;
  dry-run)
    python3 bench/gpu_check.py --dry-run --out "${2:?dry-run needs an output folder}" --steps 1 --speed-steps 3
    ;;
  *)
    echo "usage: bench/gpu_check.sh prepare | run | dry-run DIR" >&2
    exit 2
    ;;
esac
