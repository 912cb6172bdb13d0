#!/usr/bin/env bash
# One prepared run on a machine with a CUDA GPU and a fresh checkout: installs from the Makefile
# (skipped when .venv is already there), then
#   1. tests/gpu: the engine's equality tests on CUDA (TF32 off) against the float64 CPU reference
#   2. benchmarks/engine.py --device cuda: every engine path, the NTK at n = 10,000 as a fraction of
#      the device's own measured float32 and TF32 matmul rates, peak memory next to each time
#   3. the demo job end to end with a worker on LELASTIC_DEVICE=cuda
# Everything goes under $OUT (default ./device-check); about 8 minutes on one data-centre GPU.
# Each step has its own time limit so that a hang in one leaves the others' output.
#   usage: OUT=/some/dir bash benchmarks/device_check.sh
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-device-check}"
mkdir -p "$OUT"
PY=.venv/bin/python
status=0

{
  date -u
  nvidia-smi || true
  git rev-parse HEAD 2>/dev/null || true
} >"$OUT/machine.txt" 2>&1

if [ ! -x "$PY" ]; then
  make install TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cu126}" >"$OUT/install.log" 2>&1 || {
    echo "install failed: see $OUT/install.log"
    exit 1
  }
fi
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.__version__, torch.cuda.get_device_name(0))' \
  >"$OUT/torch.txt" 2>&1 || { cat "$OUT/torch.txt"; exit 1; }

echo "== tests/gpu"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/gpu -o timeout=600 >"$OUT/tests_gpu.txt" 2>&1 || status=1
tail -3 "$OUT/tests_gpu.txt"

echo "== benchmarks/engine.py --device cuda"
timeout 300 "$PY" benchmarks/engine.py --device cuda --epochs 20 >"$OUT/engine_cuda.txt" 2>&1 || status=1
cat "$OUT/engine_cuda.txt"

echo "== demo job on LELASTIC_DEVICE=cuda"
LELASTIC_DEVICE=cuda timeout 120 .venv/bin/lelastic demo --out "$OUT/demo" >"$OUT/demo.txt" 2>&1 || status=1
tail -20 "$OUT/demo.txt"

echo "device check exit status $status (outputs in $OUT)"
exit $status
