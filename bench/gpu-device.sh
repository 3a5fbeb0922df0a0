#!/usr/bin/env bash
# bench/gpu.py on a lent device machine, as one self-contained command (well under 6 minutes):
#
#   run(command="bash bench/gpu-device.sh", carry=[".whl"], timeout_s=480)
#   run(command="bash bench/gpu-device.sh --tiny", carry=[".whl"], timeout_s=120)   # a smoke run
#
# It installs the carried wheels into /tmp/site, names the GPU and runs bench/gpu.py with any arguments
# given here. The JSON object is the last line of the output and $OUT/gpu.json; the whole log is
# $OUT/gpu.log (both come back with the run's files).
#
# The wheels to carry. What the engine imports at load time: torch, triton, numpy, gguf (which needs pyyaml,
# tqdm and requests), tokenizers, click and psutil. The device image (Python 3.12, torch 2.11, Triton 3.6)
# has all of them except gguf. Fetch it here, once, in the repo root (/.whl/ is in .gitignore, so it
# travels only when `carry` names it):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl gguf==0.19.0
#
# (gguf==0.19.0 is the version tests/constraints.txt pins; the wheel is pure Python.)
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
if ! python3 -c "import gguf" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null ||
    rocm-smi --showproductname 2>/dev/null || true
out=${OUT:-$(mktemp -d)}
echo "gpu-device.sh: set-up took $((SECONDS - started)) s; the log and the JSON go to $out"
python3 bench/gpu.py --json-out "$out/gpu.json" "$@" 2>&1 | tee "$out/gpu.log"
