#!/bin/sh
# Builds the libFuzzer targets (a build of their own, -DLDM_FUZZ=ON with
# clang-14: ASan, UBSan and libFuzzer's coverage in every library) and runs
# each for SECONDS on a copy of its seed corpus (tests/fuzz/corpus/TARGET/,
# where the inputs of crashes found and fixed stay as regression inputs: every
# run replays the whole corpus first).
# Usage: tests/fuzz/run.sh SECONDS [TARGET...]
# Environment: LDM_FUZZ_BUILD (the build folder, default build-fuzz in the
# repository), LDM_FUZZ_WORK (corpora and findings, default
# $LDM_FUZZ_BUILD/fuzz-work), LDM_FUZZ_JOBS (build jobs, default 2).
# Prints one line per target: executions, coverage (libFuzzer's cov: and ft:),
# corpus size; exits 1 on the first crash, leak of a file descriptor, timeout
# (-timeout=10 s for one input) or out-of-memory, printing its report (run
# again on that input with the lines of ldm shown) and where the input is.
set -u
seconds=${1:?usage: tests/fuzz/run.sh SECONDS [TARGET...]}
shift
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=${LDM_FUZZ_BUILD:-$repo/build-fuzz}
work=${LDM_FUZZ_WORK:-$build/fuzz-work}
targets=${*:-safetensors config state manifest dataset png idx}

command -v clang-14 >/dev/null || { echo "fuzz: clang-14 is missing (launch/install-deps.sh installs it)" >&2; exit 1; }
CC=clang-14 cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLDM_CUDA=OFF -DLDM_FUZZ=ON \
  -DBUILD_TESTING=OFF >/dev/null || exit 1
cmake --build "$build" -j "${LDM_FUZZ_JOBS:-2}" --target fuzz_targets >/dev/null || {
  cmake --build "$build" -j 1 --target fuzz_targets 2>&1 | tail -30 >&2; exit 1; }

# Refused inputs leak what the parser held (fatal_* jumps back: see
# fuzz_common.h), so leaks are not reported. An allocation too large to make
# returns NULL, as malloc does (HDF5 asks for whatever sizes a damaged file
# names and refuses the file when it gets none; ours end in fatal_internal);
# memory actually used beyond 2 GB (-rss_limit_mb) is a finding.
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:symbolize=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
for target in $targets; do
  corpus=$work/corpus/$target
  findings=$work/findings/$target
  rm -rf "$corpus" "$findings" && mkdir -p "$corpus" "$findings" || exit 1
  cp "$here/corpus/$target/"* "$corpus/" || exit 1
  log=$work/$target.log
  # HDF5 1.10.8 itself loops on some damaged files and overflows a buffer on
  # others (in H5HG_read, reading a variable-length string: h5dump hangs on
  # them too; docs/testing.md), so the data set target runs in fork mode,
  # where crashes and timeouts are counted and the run goes on; each is then
  # replayed below and fails the run unless its stack is inside libhdf5.
  # The idx target runs in fork mode too, going on past memory limits: a refused
  # input leaves its buffers and zlib's state behind (fatal_input jumps back),
  # so one process grows past the limit within seconds; each such finding is
  # replayed alone below and fails the run only if it happens again alone.
  # LDM_FUZZ_FORK=1 runs every target so (long runs: each job a fresh process,
  # so what refused inputs leaked is given back).
  mode=""
  [ "$target" = dataset ] || [ "$target" = idx ] || [ "${LDM_FUZZ_FORK:-0}" = 1 ] && mode="-fork=1"
  [ "$target" = dataset ] && mode="$mode -ignore_timeouts=1 -ignore_crashes=1"
  [ "$target" = idx ] && mode="$mode -ignore_ooms=1"
  # shellcheck disable=SC2086
  # -close_fd_mask=2: the lines of ldm's refusals (one per refused input) go
  # nowhere, libFuzzer's output and the sanitizers' reports still to the log.
  # (Sending stderr to /dev/null around each input, as this harness once did,
  # also swallowed the statistics a fork-mode job prints when it ends in a
  # crash or a hang, so such a job's executions were never counted.)
  "$build/fuzz_$target" $mode -close_fd_mask=2 -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1048576 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="$findings/" "$corpus" > "$log" 2>&1
  code=$?
  if [ -n "$mode" ]; then
    last=$(grep -E '^#[0-9]+: cov:' "$log" | tail -1)
    executions=$(echo "$last" | sed -E 's/^#([0-9]+):.*/\1/')
    coverage="$(echo "$last" | sed -E 's/.*(cov: [0-9]+ ft: [0-9]+ corp: [0-9]+).*/\1/'), oom/timeout/crash: $(echo "$last" | sed -E 's/.*oom\/timeout\/crash: ([0-9\/]+).*/\1/')"
  else
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    coverage=$(grep -E '^#[0-9]+' "$log" | tail -1 | sed -E 's/.*(cov: [0-9]+ ft: [0-9]+ corp: [0-9]+\/[^ ]+).*/\1/')
  fi
  echo "fuzz_$target: ${executions:-?} executions in ${seconds} s, $coverage"
  if [ "$target" = dataset ] || [ "$target" = idx ]; then
    # In fork mode libFuzzer's own exit status is that of the last finding
    # it went on past; what decides is the triage, once the run has ended
    # on its time.
    grep -q '^INFO: fuzzed for' "$log" && code=0
    # Triage: in the replay's stack, the first frame that is either HDF5's or
    # ldm's own (a file of this repository; frames of libc and of the
    # sanitizers come before both) must be HDF5's. A hang is stopped with
    # SIGABRT, whose report (handle_abort) has the stack; memory beyond the
    # limit is replayed with a malloc limit of 512 MB, whose report has the
    # stack of the allocation.
    in_hdf5=0 alone=0
    for input in "$findings"/crash-* "$findings"/timeout-* "$findings"/oom-*; do
      case "$input" in *.report) continue ;; esac
      [ -f "$input" ] || continue
      ASAN_OPTIONS="$ASAN_OPTIONS:handle_abort=1" timeout -s ABRT 30 \
        "$build/fuzz_$target" -rss_limit_mb=4096 -malloc_limit_mb=512 "$input" > "$input.report" 2>&1
      first=$(grep -E '^ +#[0-9]+ ' "$input.report" | grep -v "/fuzz_$target+0x" | grep -E "libhdf5|$repo/" | head -1)
      # One that does not happen again alone (no report) followed other inputs
      # in its job: HDF5's overflows can leave its state damaged for the next
      # file. Counted, not blamed.
      grep -q 'ERROR' "$input.report" || { alone=$((alone + 1)); continue; }
      case "$first" in
      *libhdf5*) in_hdf5=$((in_hdf5 + 1)) ;;
      *) code=1; echo "fuzz_$target: $input: not inside HDF5: ${first:-no stack}" >&2 ;;
      esac
    done
    [ "$in_hdf5" = 0 ] || echo "fuzz_$target: $in_hdf5 input(s) crash or hang inside HDF5 1.10.8 itself (kept in $findings)"
    [ "$alone" = 0 ] || echo "fuzz_$target: $alone finding(s) that do not happen again alone (kept in $findings)"
  fi
  if [ "$code" != 0 ]; then
    status=1
    echo "fuzz_$target: FAILED (exit status $code); the report:" >&2
    grep -v '^#[0-9]' "$log" | tail -40 >&2
    for input in "$findings"/crash-* "$findings"/oom-* "$findings"/leak-*; do
      case "$input" in *.report) continue ;; esac
      [ -f "$input" ] || continue
      echo "fuzz_$target: the input: $input (replay: $build/fuzz_$target $input)" >&2
      timeout 60 "$build/fuzz_$target" "$input" 2>&1 | grep -v '^INFO' | tail -20 >&2
    done
    break
  fi
done
exit $status
