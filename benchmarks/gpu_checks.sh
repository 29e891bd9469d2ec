#!/usr/bin/env bash
# One-shot checks on a CUDA machine: the engine's GPU tests and workload W on the GPU.
# Usage (from the repository root): OUT=dir bash benchmarks/gpu_checks.sh  (GPU_BENCH=0: tests only)
# Uses the machine's python3 with torch/transformers/peft already installed; the project runs
# from the source tree (PYTHONPATH), nothing is installed.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers',
 transformers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/gpu.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/gpu 2>&1 \
  | tee "$OUT/gpu-tests.log"
DELTASERVE_TEST_DEVICE=cuda timeout 300 python3 -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/integration/engine 2>&1 | tee "$OUT/engine-tests-cuda.log"
[ "${GPU_BENCH:-1}" = 1 ] || exit 0
timeout 420 python3 -m benchmarks.run_w --device cuda --out /tmp/bench-gpu --update-readme 2>&1 \
  | tee "$OUT/bench-cuda.log"
cp /tmp/bench-gpu/results.json "$OUT/results-cuda.json" 2>/dev/null
cp /tmp/bench-gpu/throughput.png "$OUT/throughput-cuda.png" 2>/dev/null
cp benchmarks/README.md "$OUT/README-bench.md"
