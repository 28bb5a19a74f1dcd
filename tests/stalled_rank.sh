#!/bin/sh
# A rank stopped with SIGSTOP in the middle of training (not dead: its
# connections stay open and its kernel answers TCP keepalive) on 3 ranks of
# the CPU path: the two others must each print one line naming the stopped
# rank and its host once it has been silent for comm.timeout_s, the job must
# end (the launcher given the watch's 10 s of grace), and no process of the job
# may be left, the stopped one included.
# Usage: stalled_rank.sh WORK, with the environment LDM (the program),
# LDM_MPIRUN (mpirun with its options) and LDM_CONFIGS (configs/).
# Timing on a loaded machine: the limit is 8 s (a healthy rank's watch thread
# starved that long would be reported, so it is not made shorter), and the job
# has 8 + 10 + 40 s to end after the stop; a watch that does not notice leaves
# the job running, which fails here, not on ctest's timeout.
set -u
work=$1
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
fail() { echo "FAIL: $*" >&2; exit 1; }
limit_s=8
grace_s=10
margin_s=40

"$LDM" prepare synthetic --n 24 --size 8 --classes 4 --channels 4 --latents float32 --out "$work/data.h5" >/dev/null ||
  fail "prepare failed"
# The ranks of this job: ldm processes whose command line names this folder's data.
ranks() {
  for pid in $(pgrep -f "train --data $work/data.h5"); do
    [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = ldm ] && echo "$pid"
  done
}
# A process that is gone or a zombie (its parent, mpirun, has ended) is not left running.
running() { state=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${state#Z}" = "$state" ]; }
cleanup() { for pid in $(ranks); do kill -9 "$pid" 2>/dev/null; done; }
trap cleanup EXIT

$LDM_MPIRUN -np 3 "$LDM" train --data "$work/data.h5" --config "$LDM_CONFIGS/tiny.json" --set device.type=cpu \
  --set train.batch_size=6 --set train.steps=1000000 --set train.ckpt_every=1000000 --set train.log_every=1 \
  --set data.virtual_shards=3 --set comm.timeout_s=$limit_s --run "$work/run" > out.txt 2> err.txt &
launcher=$!
# Training has started: a few steps done, with the short limit and no report.
for _ in $(seq 1200); do grep -q "^step *3/" out.txt || ! kill -0 "$launcher" 2>/dev/null && break; sleep 0.1; done
grep -q "^step *3/" out.txt || { cat err.txt >&2; fail "training did not start"; }
grep "ldm: error" err.txt && fail "a rank was reported before any was stopped"
stopped=""
for pid in $(ranks); do
  grep -qz "^OMPI_COMM_WORLD_RANK=1$" "/proc/$pid/environ" 2>/dev/null && stopped=$pid
done
[ -n "$stopped" ] || fail "rank 1's process not found among: $(ranks)"
all_ranks=$(ranks)
kill -STOP "$stopped"
started=$(date +%s)
echo "stopped rank 1 (pid $stopped) at step $(grep -c '^step' out.txt)" >&2

deadline=$((started + limit_s + grace_s + margin_s))
while kill -0 "$launcher" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
kill -0 "$launcher" 2>/dev/null && { cat err.txt >&2; fail "the job still runs $((limit_s + grace_s + margin_s)) s after rank 1 stopped"; }
ended=$(($(date +%s) - started))
wait "$launcher" && fail "the job ended with status 0"
echo "the job ended $ended s after the stop" >&2
cat err.txt >&2
[ "$ended" -ge "$((limit_s - 1))" ] || fail "the job ended after $ended s, before the limit of $limit_s s"

# One line from each of ranks 0 and 2, naming rank 1 and its host; no other line of ours.
host=$(hostname)
for survivor in 0 2; do
  count=$(grep -c "^ldm: error: rank $survivor on [^:]*: rank 1 on $host gave no sign of life for [0-9]* s (comm.timeout_s: its process is stopped or frozen); ending the job$" err.txt)
  [ "$count" = 1 ] || fail "rank $survivor printed $count lines naming rank 1, expected one"
done
[ "$(grep -c '^ldm: error' err.txt)" = 2 ] || fail "lines of ours other than the two expected"

# Nothing left: the stopped rank was ended too.
for _ in $(seq 100); do
  left=""
  for pid in $all_ranks; do running "$pid" && left="$left $pid"; done
  [ -z "$left" ] && break
  sleep 0.1
done
[ -z "$left" ] || fail "processes left running:$left"
echo "stalled_rank: passed (ended $ended s after the stop, limit $limit_s s)"
