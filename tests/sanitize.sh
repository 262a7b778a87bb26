#!/usr/bin/env bash
# Builds the native engine with AddressSanitizer + UndefinedBehaviorSanitizer into a separate build
# folder (the in-place llsh_index/_C*.so is never touched) and runs the core engine tests against it.
#
#   tests/sanitize.sh                 # build + run test_engine.py, test_fuzz.py, test_files.py
#   tests/sanitize.sh tests/test_index.py -k chunk    # other pytest arguments instead
#
# Environment: LLSH_SANITIZE_BUILD (build folder, default build/sanitize), CXX (compiler, default g++).
# The run copies the package and the tests to a temporary folder with the instrumented _C, preloads
# libasan (Python itself is not instrumented) and turns any ASan or UBSan report into a failure.
# Leak detection is off: CPython and torch keep allocations alive until exit by design.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${LLSH_SANITIZE_BUILD:-$ROOT/build/sanitize}"
PY="${PYTHON:-python}"
CXX="${CXX:-g++}"
export CXX
start=$(date +%s)

PYBIND11_DIR="$("$PY" -c 'import pybind11; print(pybind11.get_cmake_dir())')"
GEN=()
if "$PY" -c 'import ninja' 2>/dev/null || command -v ninja >/dev/null; then GEN=(-G Ninja); fi
if [[ -f "$BUILD/CMakeCache.txt" ]] && ! grep -q 'LLSH_SANITIZE:BOOL=ON' "$BUILD/CMakeCache.txt"; then
  rm -rf "$BUILD"
fi
mkdir -p "$BUILD/out"
cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" \
  -DLLSH_SANITIZE=ON -DLLSH_WITH_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$BUILD/out/" -DPython_EXECUTABLE="$(command -v "$PY")" \
  -Dpybind11_DIR="$PYBIND11_DIR" >"$BUILD/configure.log"
cmake --build "$BUILD" --parallel "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
SO="$(ls "$BUILD"/out/_C*.so | head -n1)"
if ! nm -D "$SO" | grep __asan_init >/dev/null; then  # no grep -q: with pipefail, nm's SIGPIPE would fail the test
  echo "sanitize.sh: $SO is not instrumented" >&2
  exit 2
fi
built=$(date +%s)

WORK="$(mktemp -d "${TMPDIR:-/tmp}/llsh-sanitize.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/llsh_index"
cp "$ROOT"/llsh_index/*.py "$WORK/llsh_index/"
[[ -d "$ROOT/llsh_index/data" ]] && cp -r "$ROOT/llsh_index/data" "$WORK/llsh_index/"
cp "$SO" "$WORK/llsh_index/"
cp -r "$ROOT/tests" "$WORK/tests"
rm -rf "$WORK/tests/__pycache__"
cp "$ROOT/pyproject.toml" "$WORK/"

LIBASAN="$("$CXX" -print-file-name=libasan.so)"
LIBUBSAN="$("$CXX" -print-file-name=libubsan.so)"
if [[ $# -eq 0 ]]; then
  set -- tests/test_engine.py tests/test_fuzz.py tests/test_files.py
fi
cd "$WORK"
# The instrumented module must be the one imported: check before running anything.
env LD_PRELOAD="$LIBASAN $LIBUBSAN" ASAN_OPTIONS=detect_leaks=0 PYTHONPATH="$WORK" "$PY" -c "
import llsh_index._C as c, sys
assert c.__file__.startswith('$WORK'), c.__file__
print('sanitize.sh: instrumented engine', c.__file__)"
# Canary: an out-of-bounds read through the engine (a table_start past the end of keys, which
# load() would reject) must be reported, or the sanitizer is not live and a green run means nothing.
canary=$(env LD_PRELOAD="$LIBASAN $LIBUBSAN" ASAN_OPTIONS=detect_leaks=0 PYTHONPATH="$WORK" "$PY" -c "
import numpy as np
from llsh_index import _C
U = 4096  # keys 0..U-1, but table 0 claims U + 2 of them: the binary search for a larger key reads keys[U]
# straight to the native lookup without a directory (_engine.lookup would first build one, and its
# builder rejects this table_start before any read)
_C.lookup_cpu(np.arange(U, dtype=np.uint64), np.array([0, U + 2], np.int64), np.arange(U + 1, dtype=np.int64),
              np.zeros((U, 1), np.float32), np.zeros((U, 1)), np.zeros(U), U, np.zeros((1, 1, 1), np.float32),
              np.array([[U + 10]], np.uint64), 0, 1.0, 1, True, None)
" 2>&1 || true)
if ! grep -q "AddressSanitizer: heap-buffer-overflow" <<<"$canary"; then
  echo "sanitize.sh: the canary out-of-bounds read was not reported; is ASan active?" >&2
  echo "$canary" | head -30 >&2
  exit 3
fi
echo "sanitize.sh: canary OK (ASan reports an out-of-bounds read in the engine)"
set +e
env LD_PRELOAD="$LIBASAN $LIBUBSAN" \
  ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=0:allocator_may_return_null=1" \
  UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1" \
  LLSH_SANITIZED=1 PYTHONPATH="$WORK" \
  "$PY" -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
end=$(date +%s)
echo "sanitize.sh: pytest exit code $rc; build $((built - start)) s, tests $((end - built)) s, total $((end - start)) s"
exit $rc
