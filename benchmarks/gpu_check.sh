#!/usr/bin/env bash
# GPU check in one call (< 10 min): build the CUDA extension in place, run the GPU tests, run the
# GPU benchmark, print a short table last.  Run from the repository root on a machine with a GPU:
#
#     bash benchmarks/gpu_check.sh            # results also in $OUT/gpu_results.json if $OUT is set
#
# Knobs: GPU_CHECK_BUDGET_S (default 560, total wall budget), CMAKE_CUDA_ARCHITECTURES (default 90),
# BENCH_ARGS (extra arguments for benchmarks/bench_gpu.py), SKIP_BUILD=1 (reuse an in-place build).
set -u -o pipefail
cd "$(dirname "$0")/.."

BUDGET=${GPU_CHECK_BUDGET_S:-560}
LOGS=${OUT:-/tmp}/gpu_check_logs
mkdir -p "$LOGS"
export LLSH_WITH_CUDA=ON
export CMAKE_CUDA_ARCHITECTURES=${CMAKE_CUDA_ARCHITECTURES:-90}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
export PYTHONDONTWRITEBYTECODE=1
PY=${PYTHON:-python}

left() { echo $((BUDGET - SECONDS)); }
cap() {  # cap WANTED RESERVE: min(WANTED, time left - RESERVE), at least 10 s
  local t=$(( $(left) - $2 )); (( t > $1 )) && t=$1; (( t < 10 )) && t=10; echo $t
}

echo "== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader 2>&1 | head -4
(nvcc --version 2>&1 || echo "nvcc: not found") | tail -1
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
$PY -c "import cupy; print('cupy', cupy.__version__)" 2>/dev/null || echo "cupy: not importable"
$PY -c "import faiss; print('faiss', faiss.__version__, 'gpus', faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0)" 2>/dev/null || echo "faiss: not importable"

BUILD=skipped
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  echo "== build (LLSH_WITH_CUDA=ON, CMAKE_CUDA_ARCHITECTURES=$CMAKE_CUDA_ARCHITECTURES)"
  t0=$SECONDS
  if timeout "$(cap 330 200)" $PY setup.py build_ext --inplace > "$LOGS/build.log" 2>&1; then
    BUILD="ok ($((SECONDS - t0)) s)"
  else
    echo "setup.py build_ext failed, trying pip install -e"; tail -30 "$LOGS/build.log"
    if timeout "$(cap 300 180)" $PY -m pip install --no-build-isolation --no-deps -e . > "$LOGS/pip.log" 2>&1; then
      BUILD="ok via pip ($((SECONDS - t0)) s)"
    else
      BUILD="FAILED"; tail -40 "$LOGS/pip.log"
    fi
  fi
  grep -iE "warning|error" "$LOGS/build.log" | grep -v "^--" | head -20
fi
echo "build: $BUILD"
STATUS=$($PY -c "import llsh_index._C as C; print(C.cuda_status())" 2>&1 | tail -1)
echo "llsh_index._C.cuda_status(): $STATUS"

echo "== tests: pytest -m gpu tests/"
t0=$SECONDS
timeout "$(cap 200 150)" $PY -m pytest -m gpu tests/ -q -rfEs -p no:cacheprovider 2>&1 | tee "$LOGS/pytest.log" | tail -40
TESTS=$(grep -E "(passed|failed|error|skipped|no tests ran)" "$LOGS/pytest.log" | tail -1 | sed 's/=//g; s/^ *//')
[[ -z "$TESTS" ]] && TESTS="no summary (timed out?)"
TESTS="$TESTS [$((SECONDS - t0)) s]"

# ShardedIndex over the visible GPUs (two shards on one GPU on a single-GPU machine): a short run,
# capped at 60 s, before the main benchmark so the total budget stays as it was.
echo "== sharded (benchmarks/bench_sharded.py)"
SHARD="skipped (no time left)"
if (( $(left) > 260 )); then
  t0=$SECONDS
  timeout "$(cap 60 200)" $PY benchmarks/bench_sharded.py > "$LOGS/sharded.log" 2>&1
  SRC=$?
  SHARD="rc=$SRC [$((SECONDS - t0)) s] $(tail -1 "$LOGS/sharded.log")"
fi
echo "$SHARD"

echo "== benchmark"
t0=$SECONDS
BENCH_OUT=${OUT:+$OUT/gpu_results.json}
timeout "$(cap 330 8)" $PY benchmarks/bench_gpu.py ${BENCH_OUT:+--out "$BENCH_OUT"} ${BENCH_ARGS:-} \
  > "$LOGS/bench.log" 2>&1
BRC=$?
awk '/^N=/{exit} {print}' "$LOGS/bench.log" | tail -60  # all but the table, printed last
BENCH="rc=$BRC [$((SECONDS - t0)) s]"

echo
echo "== summary (total $SECONDS s)"
echo "build : $BUILD"
echo "cuda  : $STATUS"
echo "tests : $TESTS"
echo "shard : $SHARD"
echo "bench : $BENCH"
# the benchmark's own table: from its first line "N=..." to the end
awk '/^N=/{p=1} p' "$LOGS/bench.log" | tail -14
