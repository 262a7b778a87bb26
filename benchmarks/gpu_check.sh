#!/usr/bin/env bash
# GPU check in one call (< 10 min): build the CUDA extension in place, run the GPU tests, run the
# GPU benchmark, then (time allowing) compute-sanitizer on a few GPU tests; a short table last.
# Run from anywhere on a machine with a GPU:
#
#     bash benchmarks/gpu_check.sh            # logs and results under $OUT if it is set, else /tmp
#
# Knobs: GPU_CHECK_BUDGET_S (default 480, total wall budget), CMAKE_CUDA_ARCHITECTURES (default 90),
# BENCH_ARGS (extra arguments for benchmarks/bench_gpu.py), SKIP_BUILD=1 (reuse an in-place build),
# SANITIZE=0 (skip compute-sanitizer), PYTHON (interpreter; default python3, else python).
# Every stage has its own time cap and the summary is printed whatever fails before it.
set -u -o pipefail
cd "$(dirname "$0")/.."

BUDGET=${GPU_CHECK_BUDGET_S:-480}
LOGS=${OUT:-/tmp}/gpu_check_logs
mkdir -p "$LOGS"
export LLSH_WITH_CUDA=ON
export CMAKE_CUDA_ARCHITECTURES=${CMAKE_CUDA_ARCHITECTURES:-90}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# the repository root first on the path: the package is used in place, never pip-installed
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# the device image has python3 (with torch) and maybe no `python`
PY=${PYTHON:-$(command -v python3 || command -v python || echo python3)}
# setup.py runs `cmake`, which runs `ninja`: the pip-installed ones live beside the interpreter
PYBIN=$(dirname "$($PY -c 'import sys; print(sys.executable)' 2>/dev/null || echo /usr/bin/python3)")
export PATH="$PYBIN:$PATH"

left() { echo $((BUDGET - SECONDS)); }
cap() {  # cap WANTED RESERVE: min(WANTED, time left - RESERVE), at least 10 s
  local t=$(( $(left) - $2 )); (( t > $1 )) && t=$1; (( t < 10 )) && t=10; echo $t
}

# CMake looks for nvcc on PATH and in $CUDA_PATH/bin only
if ! command -v nvcc > /dev/null 2>&1; then
  for d in ${CUDA_HOME:-} ${CUDA_PATH:-} /usr/local/cuda /usr/local/cuda-13.0 /usr/local/cuda-13 /opt/cuda; do
    if [[ -n "$d" && -x "$d/bin/nvcc" ]]; then export PATH="$d/bin:$PATH"; break; fi
  done
fi
if command -v nvcc > /dev/null 2>&1; then export CUDACXX=${CUDACXX:-$(command -v nvcc)}; fi

echo "== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader 2>&1 | head -4
echo "python: $PY ($($PY --version 2>&1))"
echo "nvcc: $(command -v nvcc || echo 'not found') $( (nvcc --version 2>/dev/null || true) | tail -1)"
echo "cmake: $(cmake --version 2>/dev/null | head -1 || echo 'not found'); ninja: $(ninja --version 2>/dev/null || echo 'not found'); c++: $( (c++ --version 2>/dev/null || echo 'not found') | head -1)"
$PY - <<'EOF' 2>&1
import os, sysconfig
inc = sysconfig.get_paths()["include"]
print("Python.h:", "found" if os.path.exists(os.path.join(inc, "Python.h")) else f"MISSING in {inc}")
for name in ("pybind11", "setuptools", "torch", "cupy", "numpy", "sklearn", "hypothesis", "pytest"):
    try:
        m = __import__(name)
        extra = f" cuda {m.version.cuda} available {m.cuda.is_available()}" if name == "torch" else ""
        print(f"{name} {getattr(m, '__version__', '?')}{extra}")
    except Exception as e:
        print(f"{name}: not importable ({type(e).__name__})")
try:
    import faiss
    print("faiss", faiss.__version__, "gpus", faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0)
except Exception as e:
    print(f"faiss: not importable ({type(e).__name__}); the benchmark's kNN baseline uses torch")
EOF

BUILD=skipped
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  echo "== build (LLSH_WITH_CUDA=ON, CMAKE_CUDA_ARCHITECTURES=$CMAKE_CUDA_ARCHITECTURES, $CMAKE_BUILD_PARALLEL_LEVEL jobs)"
  t0=$SECONDS
  if timeout -k 10 "$(cap 300 220)" $PY setup.py build_ext --inplace > "$LOGS/build.log" 2>&1; then
    BUILD="ok ($((SECONDS - t0)) s)"
  else
    echo "setup.py build_ext failed, trying pip install -e"; tail -30 "$LOGS/build.log"
    if timeout -k 10 "$(cap 240 200)" $PY -m pip install --no-build-isolation --no-deps -e . > "$LOGS/pip.log" 2>&1; then
      BUILD="ok via pip ($((SECONDS - t0)) s)"
    else
      # both routes above parse pyproject.toml through setuptools (61-76 reject its license string):
      # CMake alone, as setup.py would call it, with nothing from setuptools
      echo "pip install -e failed too, trying CMake directly"; tail -20 "$LOGS/pip.log"
      if timeout -k 10 "$(cap 240 180)" bash -c "cmake -S . -B build/gpu_check -DCMAKE_BUILD_TYPE=Release \
          -DLLSH_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=$CMAKE_CUDA_ARCHITECTURES -DPython_EXECUTABLE=$PY \
          -Dpybind11_DIR=\$($PY -m pybind11 --cmakedir) -DCMAKE_LIBRARY_OUTPUT_DIRECTORY=$PWD/llsh_index/ \
          && cmake --build build/gpu_check" > "$LOGS/cmake.log" 2>&1; then
        BUILD="ok via CMake ($((SECONDS - t0)) s)"
      else
        BUILD="FAILED ($((SECONDS - t0)) s)"; tail -40 "$LOGS/cmake.log"
      fi
    fi
  fi
  grep -iE "warning|error" "$LOGS/build.log" | grep -v "^--" | head -20
fi
echo "build: $BUILD"
STATUS=$($PY -c "
import llsh_index._C as C
print(C.__file__.rsplit('/', 1)[-1], C.cuda_status(), 'lookup_cuda' if hasattr(C, 'lookup_cuda') else 'NO CUDA FUNCTIONS')" 2>&1 | tail -1)
echo "llsh_index._C: $STATUS"
# a driver older than the CUDA runtime the extension links (CUDA 13 needs R580+) reports no device:
# every GPU test would then skip itself and the run would look green
CUDA_OK=$($PY -c "
import llsh_index as L
ok, why = L.cuda_available(verbose=True)
print('yes' if ok else 'NO: ' + why)" 2>&1 | tail -1)
echo "cuda_available: $CUDA_OK"

echo "== tests: pytest -m gpu tests/"
t0=$SECONDS
# CUDA_LAUNCH_BLOCKING: a kernel fault is reported by the launch check of the kernel that made it.
# --continue-on-collection-errors: a test module that cannot import here must not stop the GPU tests.
CUDA_LAUNCH_BLOCKING=1 timeout -k 10 "$(cap 180 130)" $PY -m pytest -m gpu tests/ -v -rfEs -p no:cacheprovider \
  --continue-on-collection-errors --durations=8 > "$LOGS/pytest.log" 2>&1
TRC=$?
grep -vE " (PASSED|SKIPPED|DESELECTED)( |$)" "$LOGS/pytest.log" | tail -45
TESTS=$(grep -E "^=+ .*(passed|failed|error|skipped|no tests ran).* =+$" "$LOGS/pytest.log" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')
if [[ -z "$TESTS" ]]; then
  TESTS="no summary (rc=$TRC, timed out?): $(grep -cE " PASSED" "$LOGS/pytest.log") passed, $(grep -cE " (FAILED|ERROR)" "$LOGS/pytest.log") failed so far"
fi
TESTS="$TESTS [$((SECONDS - t0)) s]"
if [[ "$CUDA_OK" != yes ]] || ! grep -qE "^=+ .*[1-9][0-9]* passed" "$LOGS/pytest.log"; then
  TESTS="GPU TESTS DID NOT RUN (cuda_available: $CUDA_OK): $TESTS"
fi

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
# SIGTERM at the cap: bench_gpu.py stops and still prints the table of what it measured
timeout -k 20 "$(cap 240 25)" $PY benchmarks/bench_gpu.py ${BENCH_OUT:+--out "$BENCH_OUT"} ${BENCH_ARGS:-} \
  > "$LOGS/bench.log" 2>&1
BRC=$?
awk '/^N=/{exit} {print}' "$LOGS/bench.log" | tail -60  # all but the table, printed last
BENCH="rc=$BRC [$((SECONDS - t0)) s]"

SANIT="skipped"
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [[ "${SANITIZE:-1}" == 0 ]]; then
  SANIT="skipped (SANITIZE=0)"
elif [[ -z "$SAN" ]]; then
  SANIT="skipped (compute-sanitizer not found)"
elif (( $(left) < 70 )); then
  SANIT="skipped (only $(left) s left)"
elif ! timeout -k 5 40 "$SAN" --tool memcheck --report-api-errors no $PY -c \
    "import torch; torch.zeros(1, device='cuda').add_(1); torch.cuda.synchronize()" > "$LOGS/sanitizer_probe.log" 2>&1 \
    || grep -qiE "not supported|error 999" "$LOGS/sanitizer_probe.log"; then
  # gVisor machines: compute-sanitizer refuses the device ("Device not supported", error 999)
  SANIT="skipped (compute-sanitizer does not run here: $(grep -iE 'not supported|error' "$LOGS/sanitizer_probe.log" | head -1 | cut -c1-80))"
else
  echo "== compute-sanitizer on a few GPU tests ($(left) s left)"
  # one cudaMalloc per tensor, so that an access past a tensor's end leaves its allocation
  export PYTORCH_NO_CUDA_MEMORY_CACHING=1
  SANIT=""
  for tool in memcheck racecheck; do
    (( $(left) < 40 )) && { SANIT="$SANIT $tool: no time;"; continue; }
    if [[ $tool == memcheck ]]; then
      sel="b2-n6000 or b5-n700 or b6-n1 or b3-n2000-r64-proto-float32 or empty or binarize or stream"
      want=$(cap 150 45)
    else
      sel="b2-n6000 or b4-n3000-r32-proto-float32"
      want=$(cap 120 15)
    fi
    t0=$SECONDS
    # --report-api-errors no: torch probes the driver with calls that are allowed to fail
    timeout -k 10 "$want" "$SAN" --tool $tool --report-api-errors no --print-limit 20 $PY -m pytest tests/test_cuda_engine.py -q \
      -p no:cacheprovider -k "$sel" > "$LOGS/$tool.log" 2>&1
    src=$?
    errs=$(grep -E "ERROR SUMMARY" "$LOGS/$tool.log" | tail -1 | sed 's/=//g; s/^ *//')
    res=$(grep -E "(passed|failed|skipped|error|deselected).* in [0-9.]+s" "$LOGS/$tool.log" | tail -1 | sed 's/=//g; s/^ *//')
    [[ -z "$errs" ]] && errs="no summary (rc=$src, timed out?)"
    SANIT="$SANIT $tool: $errs, ${res:-no pytest summary} [$((SECONDS - t0)) s];"
    grep -E "^=+ (Invalid|Race|Error|Uninitialized|Program hit)" "$LOGS/$tool.log" | sort | uniq -c | head -8
  done
  unset PYTORCH_NO_CUDA_MEMORY_CACHING
fi

echo
echo "== summary (total $SECONDS s)"
echo "build : $BUILD"
echo "_C    : $STATUS"
echo "tests : $TESTS"
echo "shard : $SHARD"
echo "sanit : ${SANIT# }"
echo "bench : $BENCH"
# the benchmark's own table: from its first line "N=..." to the end
awk '/^N=/{p=1} p' "$LOGS/bench.log" | tail -16
