#!/usr/bin/env bash
# Everything the GPU work needs, in one command on a machine with an NVIDIA GPU: build
# lowprec._C with its CUDA kernels in place, run `pytest -m gpu`, then the four GPU benchmarks
# (quantize, Hadamard, FP4 GEMM, and a converted model's training step against bf16). One log (session.log) and the benchmarks' JSON land in $OUT (default ./gpu_out);
# copy the JSON into benchmarks/results/ and commit it with the device named in each file.
#
#   bash benchmarks/gpu_session.sh             # full sizes (4096-16384); about 10 minutes
#   QUICK=1 bash benchmarks/gpu_session.sh     # small sizes, to check the set-up
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} LOWPREC_BENCH_DIR=$OUT
PY=${PYTHON:-python3}
{
  echo "== device"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  echo "== commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "== build (LOWPREC_BUILD_CUDA=1)"
  LOWPREC_BUILD_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} $PY setup.py -q build_ext --inplace 2>&1 | grep -v "^\(copying\|running\)" | tail -40
  $PY -m lowprec.cli backends
  echo "== pytest -m gpu"
  $PY -m pytest -m gpu -q -rs -p no:cacheprovider tests 2>&1 | tail -60
  if [ "${QUICK:-0}" = 1 ]; then
    sizes=(--size 4096); gemm=(--sizes 4096); step=(--width 2048 --repeats 3)
  else
    sizes=(); gemm=(); step=()
  fi
  echo "== benchmarks"
  $PY benchmarks/bench_gpu_quantize.py "${sizes[@]}" 2>&1
  $PY benchmarks/bench_gpu_hadamard.py "${sizes[@]}" 2>&1
  $PY benchmarks/bench_gpu_gemm.py "${gemm[@]}" 2>&1
  $PY benchmarks/bench_gpu_train_step.py "${step[@]}" 2>&1
} 2>&1 | tee "$OUT/session.log"
