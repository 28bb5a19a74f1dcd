#!/bin/sh
# Shows that the launch resource check can fail: it must refuse, naming the
# kernel, a kernel without __launch_bounds__, a launch with more threads than
# the bound, 64 KB of static shared memory, and (with a register file made small
# on purpose) registers x threads beyond the register file; and pass a good file.
# usage: planted_kernels.sh SOURCE_DIR NVCC
set -u
source_dir=$1
nvcc=$2
checker="$source_dir/tests/launch_resources/check_launch_resources.py"
planted="$source_dir/tests/launch_resources"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0

# expect_refusal NAME EXPECTED_LINE_REGEX ARGS...: the check exits 1 and prints the line
expect_refusal() {
    name=$1 pattern=$2
    shift 2
    status=0
    python3 "$checker" --nvcc "$nvcc" "$@" > "$work/$name.out" 2>&1 || status=$?
    if [ "$status" -ne 1 ]; then
        cat "$work/$name.out"
        echo "planted_kernels: $name: the check exited $status, expected 1"
        failed=1
    elif ! grep -q "$pattern" "$work/$name.out"; then
        cat "$work/$name.out"
        echo "planted_kernels: $name: no line matching '$pattern'"
        failed=1
    else
        echo "planted_kernels: $name refused: $(grep "$pattern" "$work/$name.out" | head -1)"
    fi
}

expect_refusal unbounded 'PROBLEM .*unbounded_kernel: no __launch_bounds__' \
    "$source_dir" "$planted/planted_unbounded.cu"
expect_refusal wrong_launch 'PROBLEM .*planted_sum_kernel: launched with block PLANTED_BIG_BLOCK but bounded by __launch_bounds__(PLANTED_THREADS)' \
    "$source_dir" "$planted/planted_wrong_launch.cu"
# ptxas itself refuses static shared memory beyond 48 KB: the check reports the file as not compiling (exit 2)
status=0
python3 "$checker" --nvcc "$nvcc" "$source_dir" "$planted/planted_big_shared.cu" > "$work/shared.out" 2>&1 || status=$?
if [ "$status" -eq 0 ] || ! grep -qi "shared" "$work/shared.out"; then
    cat "$work/shared.out"
    echo "planted_kernels: big_shared: the check exited $status without naming the shared memory"
    failed=1
else
    echo "planted_kernels: big_shared refused (exit $status): $(grep -i 'shared data\|PROBLEM' "$work/shared.out" | head -1)"
fi
# a good kernel (256 threads) against a register file of 1024: 256 threads need more
expect_refusal registers 'PROBLEM .*planted_sum_kernel.*exceed the 1024 registers of an SM' \
    --registers-per-sm 1024 "$source_dir" "$source_dir/model/cuda/ops_cuda_loss.cu" "$planted/planted_wrong_launch.cu"
# and a good file passes
if ! python3 "$checker" --nvcc "$nvcc" "$source_dir" "$source_dir/model/cuda/ops_cuda_loss.cu" > "$work/good.out" 2>&1; then
    cat "$work/good.out"
    echo "planted_kernels: the check refuses model/cuda/ops_cuda_loss.cu"
    failed=1
fi
[ "$failed" -eq 0 ] && echo "planted_kernels: every planted kernel refused"
exit "$failed"
