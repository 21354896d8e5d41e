#!/usr/bin/env bash
# The GPU half of the checks, in one go, on a machine with a CUDA GPU, CuPy and numba-cuda:
# the GPU test suite, then the GPU benchmarks (their tables land in benchmarks/results/).
#
#     bash benchmarks/run_gpu.sh [LOGDIR]      # from the repository root
#
# numba-cuda (0.30.4 and earlier) cannot compile kernels under NumPy 2.5 (it registers the
# removed np.row_stack): use NumPy < 2.5, as the gpu extra pins.
#
# Each step has its own time limit so that one hang cannot starve the others; the exit
# status is the number of steps that failed.
set -u
log=${1:-gpu-logs}
mkdir -p "$log"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
failed=0
step() {  # step NAME SECONDS COMMAND...: run, log, report
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout "$limit" "$@" >"$log/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc in $((SECONDS - start)) s"
    tail -n "${TAIL:-15}" "$log/$name.log"
    [ $rc -eq 0 ] || failed=$((failed + 1))
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
$py -c "import numpy, numba, cupy, torch; from numba import cuda; print('numpy', numpy.__version__, 'numba', numba.__version__, 'cupy', cupy.__version__, 'torch', torch.__version__, 'cuda ok', cuda.is_available())"
xdist=$($py -c "import xdist" 2>/dev/null && echo "-n 8")
step tests "${TEST_LIMIT:-180}" $py -m pytest -m "gpu or cudasim" tests -q -rf --tb=short $xdist -p no:cacheprovider
step bench_crf 75 $py benchmarks/bench_crf.py --device gpu
step bench_atrous 75 $py benchmarks/bench_atrous.py --device gpu
step bench_model 75 $py benchmarks/bench_model.py --device gpu
step bench_train 50 $py benchmarks/bench_train.py --device gpu
step profile 120 $py benchmarks/profile_gpu.py
exit $failed
