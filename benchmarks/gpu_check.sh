#!/usr/bin/env bash
# One call for a machine with a CUDA GPU: the GPU tests, then the GPU benchmark suite, results in benchmarks/results/.
#   bash benchmarks/gpu_check.sh [quick|full]
set -euo pipefail
cd "$(dirname "$0")/.."
SUITE="${1:-full}"
OUT=benchmarks/results
mkdir -p "$OUT"
make setup
PY=.venv/bin/python
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: torch sees no CUDA GPU (install a CUDA build of torch==2.13.0 first)')"
# The Triton tests: the GPU cases with compiled kernels, then the interpreter cases (CPU tensors). Two processes,
# because triton runs interpreted or compiled in a whole process, as TRITON_INTERPRET says at its first import.
env -u TRITON_INTERPRET "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_triton.py -k "not interpreter" \
  2>&1 | tee "$OUT/gpu-tests.txt"
TRITON_INTERPRET=1 "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_triton.py -k "not cuda" \
  2>&1 | tee -a "$OUT/gpu-tests.txt"
"$PY" -m benchmarks.run --device cuda --suite "$SUITE" --json "$OUT/gpu-$SUITE.json" 2>&1 | tail -n 60
echo "gpu_check: results in $OUT/gpu-tests.txt and $OUT/gpu-$SUITE.json/.md"
