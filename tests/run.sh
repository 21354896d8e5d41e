#!/usr/bin/env bash
# The whole check, exactly as CI runs it (.ci/run calls the README's test command, which
# runs this). Every step must pass; the script stops at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# pytest exits 5 when a selection collects no test; that is not a failure here.
run_pytest() { python -m pytest "$@" || { rc=$?; [ "$rc" -eq 5 ] || exit "$rc"; }; }

echo "== 1/5 unit, equivalence and reference tests (CPU; GPU tests skip without a GPU)"
run_pytest tests

echo "== 2/5 Numba CUDA kernels under the CUDA simulator"
NUMBA_ENABLE_CUDASIM=1 run_pytest tests -m cudasim -p no:cacheprovider

echo "== 3/5 Numba kernels with bounds checking (fresh cache: the flag changes the code)"
NUMBA_BOUNDSCHECK=1 NUMBA_CACHE_DIR="$(mktemp -d)" run_pytest tests -m "not slow and not cudasim" -p no:cacheprovider -q

echo "== 4/5 lessons, executed end to end"
run_pytest --nbmake lessons -p no:cacheprovider

echo "== 5/5 documentation site"
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir "$(mktemp -d)"
