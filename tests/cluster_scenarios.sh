#!/bin/sh
# Multi-host scenarios of `ldm train` on a test cluster of network-namespace
# hosts (launch/cluster.sh): ranks on different hosts talk over real TCP between
# separate network stacks, each host with its own name.
# Usage: cluster_scenarios.sh SCENARIO WORK
# with the environment: LDM (the program), LDM_MPIRUN (mpirun with its options,
# for the single-host runs), MPIRUN (mpirun itself, for the cluster), LDM_PYTHON
# (python3 with numpy), LDM_TESTS (this folder), LDM_CONFIGS (configs/),
# LDM_LAUNCH (launch/). WORK is this scenario's own folder, emptied first.
# Exit 77 (skipped) with the reason where network namespaces cannot be made
# (not root, a container that forbids them). Each run builds its own cluster,
# named after this process so that scenarios can run side by side, and removes
# it on the way out, whatever happened.
#
# Scenarios:
#   equivalence  2 hosts x 2 ranks, 1 host x 4 ranks and 1 rank, global batch 8:
#                the same losses (1e-5 relative) and weights; the 2-host run's
#                checkpoints equal the 1-host run's tensor for tensor (bit for
#                bit: the same world size reduces in the same order); the run
#                directory, read-only on host 1, is written by rank 0 alone.
#   layout       3 hosts x 2 ranks: each rank's host, local rank and local size.
#   host-failure every rank of one host killed in mid-run: every surviving rank
#                ends within 30 s with a line naming a lost rank on that host, no
#                process is left, the last checkpoint verifies, and --resume auto
#                on the remaining host (2 ranks instead of 4) continues the run.
#   host-partition host 1's link cut in mid-run (no process ends, so nothing is
#                reported at once: TCP keepalive finds it): the ranks of host 0
#                name a lost rank of host 1, mpirun ends, and no process is
#                left on host 0 nor any rank on host 1, within 30 s.
set -u
scenario=$1; work=$2
cluster="$LDM_LAUNCH/cluster.sh"
sh "$cluster" check || exit $?
rm -rf "$work" && mkdir -p "$work" || exit 1
cd "$work" || exit 1
# Clusters of earlier runs that were killed before their teardown (a ctest
# timeout kills without a trap) are removed: the process named in their id is gone.
for stale in $(ip netns list | sed -n 's/^\(ldmt[0-9]*\)-sw\( .*\)\{0,1\}$/\1/p'); do
  kill -0 "${stale#ldmt}" 2>/dev/null || LDM_CLUSTER_ID=$stale sh "$cluster" down
done
export LDM_CLUSTER_ID="ldmt$$"
trap 'sh "$cluster" down' EXIT
trap 'exit 130' INT TERM

fail() { echo "FAIL: $*" >&2; exit 1; }
run() { echo "+ $*" >&2; "$@" || fail "exit status $? from: $*"; }
# On the CPU: two ranks per emulated host would need two GPUs each on a GPU machine.
tiny="--config $LDM_CONFIGS/tiny.json --set device.type=cpu"
make_data() { run "$LDM" prepare synthetic --n "${2:-8}" --size 8 --classes 4 --channels 4 --out "$1" >/dev/null; }
# The ldm processes running on a host of the cluster.
ranks_on() {
  for pid in $(ip netns pids "$LDM_CLUSTER_ID-node$1" 2>/dev/null); do
    [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = ldm ] && echo "$pid"
  done
}
# Every process on the hosts (daemons too).
processes_on_hosts() {
  for h in 0 1 2 3; do ip netns pids "$LDM_CLUSTER_ID-node$h" 2>/dev/null; done
}

case "$scenario" in
equivalence)
  # 64 samples, global batches of 8 (2.5 epochs in 20 steps): one data order for
  # every world size, so every step of every run sees the same samples with the
  # same noise (keyed by sample index) on 1 rank, 4 ranks and 2 hosts x 2 ranks.
  make_data data.h5 64
  common="train --data $PWD/data.h5 $tiny --set train.steps=20 --set train.ckpt_every=10 --set train.log_every=10"
  run sh "$cluster" up 2
  # Host 1 sees the run directory read-only: a rank there that wrote to it
  # would fail the run.
  mkdir two_hosts
  LDM_CLUSTER_READONLY=$PWD/two_hosts run sh "$cluster" mpirun 2 2 -x LDM_COMM_VERBOSE=1 -- \
    "$LDM" $common --run "$PWD/two_hosts" > two_hosts.txt 2>&1
  cat two_hosts.txt
  for r in 0 1; do grep -q "^comm: rank $r/4 on ldm-node0: local rank $r/2$" two_hosts.txt || fail "rank $r: not on ldm-node0"; done
  for r in 2 3; do
    grep -q "^comm: rank $r/4 on ldm-node1: local rank $((r - 2))/2$" two_hosts.txt || fail "rank $r: not on ldm-node1"
  done
  run $LDM_MPIRUN -np 4 "$LDM" $common --run one_host >/dev/null
  run "$LDM" $common --run one_rank >/dev/null
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" one_rank two_hosts --steps 20 --loss-rtol 1e-5 --weights-rtol 1e-4
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" one_host two_hosts --steps 20 --loss-rtol 1e-5 --weights-rtol 1e-4
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" one_host two_hosts --steps 20 --exact
  for step in 00000010 00000020; do
    for f in model ema optimizer; do
      cmp two_hosts/checkpoints/step-$step/$f.safetensors one_host/checkpoints/step-$step/$f.safetensors ||
        fail "step $step: $f.safetensors of the 2-host run differs from the 1-host run's"
    done
  done
  # Only what rank 0 writes: no per-rank files, nothing else (the TensorBoard
  # events are named by their time and rank 0's host).
  (cd two_hosts && find . -type f | sed -e 's|/step-[0-9]*/|/step-N/|' -e 's|tfevents[.][0-9]*[.]|tfevents.T.|' |
    sort -u) > files.txt
  cat files.txt
  printf '%s\n' ./checkpoints/step-N/ema.safetensors ./checkpoints/step-N/manifest.json \
    ./checkpoints/step-N/model.safetensors ./checkpoints/step-N/optimizer.safetensors \
    ./checkpoints/step-N/state.json ./config.json ./ema.safetensors ./metrics.jsonl ./model.safetensors \
    ./tb/events.out.tfevents.T.ldm-node0 |
    sort > expected.txt
  cmp -s files.txt expected.txt || fail "the run directory holds other files than rank 0's: $(diff expected.txt files.txt)"
  run "$LDM" inspect two_hosts/checkpoints/latest > /dev/null
  ;;
layout)
  # Every host sees ranks 0..k-1 of k, whatever its ranks' global numbers.
  run sh "$cluster" up 3
  run sh "$cluster" mpirun 3 2 -x LDM_COMM_VERBOSE=1 -- "$LDM" version > out.txt 2>&1
  cat out.txt
  [ "$(grep -c '^comm: ' out.txt)" = 6 ] || fail "expected 6 layout lines"
  for r in 0 1 2 3 4 5; do
    grep -q "^comm: rank $r/6 on ldm-node$((r / 2)): local rank $((r % 2))/2$" out.txt ||
      fail "rank $r: expected host ldm-node$((r / 2)), local rank $((r % 2)) of 2"
  done
  ;;
host-failure)
  make_data data.h5 32
  run sh "$cluster" up 2
  common="train --data $PWD/data.h5 $tiny --set train.ckpt_every=10 --set train.log_every=10"
  sh "$cluster" mpirun 2 2 -- "$LDM" $common --set train.steps=100000 --run "$PWD/run" > out.txt 2>&1 &
  launcher=$!
  for _ in $(seq 1200); do [ -d run/checkpoints/step-00000020 ] && break; sleep 0.1; done
  [ -d run/checkpoints/step-00000020 ] || { cat out.txt; fail "no checkpoint of step 20"; }
  victims=$(ranks_on 1)
  [ "$(echo $victims | wc -w)" = 2 ] || fail "expected 2 ranks on ldm-node1, found: $victims"
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  kill -9 $victims
  # The job ends and every process on every host is gone, within 30 s.
  ended=""
  for _ in $(seq 300); do
    if ! kill -0 "$launcher" 2>/dev/null && [ -z "$(processes_on_hosts)" ]; then ended=1; break; fi
    sleep 0.1
  done
  elapsed=$(echo "$(date +%s.%N) - $start" | bc)
  cat out.txt
  [ -n "$ended" ] || { ps -o pid,args -p "$(processes_on_hosts | paste -sd, -)" >&2; fail "processes left 30 s after the kill"; }
  wait "$launcher" && fail "the job exited 0 after losing a host"
  echo "the job ended ${elapsed} s after the kill"
  # A surviving rank says which rank (of the lost host) it lost. Not
  # necessarily both: when the first one aborts, mpirun tears the job down, and
  # on a loaded machine that can reach the other before its own watch fires.
  grep -Eq "^ldm: error: rank [01] on ldm-node0: lost rank [23] on ldm-node1 " out.txt ||
    fail "no surviving rank named a lost rank on ldm-node1"
  # The newest checkpoint is whole, and the run continues from it on the
  # remaining host with another world size.
  newest=$(readlink run/checkpoints/latest)
  run "$LDM" inspect run > inspect.txt
  total=$(( $(echo "$newest" | sed 's/step-0*//') + 10 ))
  run sh "$cluster" mpirun 1 2 -- "$LDM" train --data "$PWD/data.h5" --run "$PWD/run" --resume auto \
    --set train.steps=$total > resumed.txt 2>&1
  cat resumed.txt
  grep -q "resuming from $PWD/run/checkpoints/$newest at step" resumed.txt || fail "did not resume from $newest"
  grep -q "saved by 4 ranks; another world size" resumed.txt || fail "the change of world size was not reported"
  STEPS=$total run "$LDM_PYTHON" - <<'PY'
import json, os
rows = [json.loads(l) for l in open("run/metrics.jsonl")]
total = int(os.environ["STEPS"])
assert [r["step"] for r in rows] == list(range(1, total + 1)), "steps missing or repeated"
assert all(r["loss"] == r["loss"] for r in rows)
PY
  [ -f run/model.safetensors ] || fail "the resumed run did not finish"
  ;;
host-partition)
  make_data data.h5 32
  run sh "$cluster" up 2
  sh "$cluster" mpirun 2 2 -- "$LDM" train --data "$PWD/data.h5" $tiny --set train.ckpt_every=10 \
    --set train.steps=100000 --run "$PWD/run" > out.txt 2>&1 &
  launcher=$!
  for _ in $(seq 1200); do [ -d run/checkpoints/step-00000010 ] && break; sleep 0.1; done
  [ -d run/checkpoints/step-00000010 ] || { cat out.txt; fail "no checkpoint of step 10"; }
  start=$(date +%s.%N)
  ip -n "$LDM_CLUSTER_ID-sw" link set port1 down || fail "cannot cut the link of ldm-node1"
  # mpirun ends, nothing is left on host 0 and no rank on host 1. (Open MPI's
  # daemon on host 1 may linger: the output it still has for host 0 is stuck
  # in TCP retransmission, minutes; a real cut-off node is cleaned up by its
  # resource manager. The teardown kills it here.)
  ended=""
  for _ in $(seq 300); do
    if ! kill -0 "$launcher" 2>/dev/null && [ -z "$(ip netns pids "$LDM_CLUSTER_ID-node0")$(ranks_on 1)" ]; then
      ended=1; break
    fi
    sleep 0.1
  done
  elapsed=$(echo "$(date +%s.%N) - $start" | bc)
  cat out.txt
  [ -n "$ended" ] || { ps -o pid,args -p "$(processes_on_hosts | paste -sd, -)" >&2; fail "processes left 30 s after the cut"; }
  wait "$launcher" && fail "the job exited 0 after losing a host"
  echo "the job ended ${elapsed} s after the cut"
  for r in 0 1; do
    grep -Eq "^ldm: error: rank $r on ldm-node0: lost rank [23] on ldm-node1 " out.txt ||
      fail "rank $r did not name a lost rank on ldm-node1"
  done
  run "$LDM" inspect run > inspect.txt
  ;;
*)
  fail "unknown scenario $scenario"
  ;;
esac
echo "ok: $scenario"
