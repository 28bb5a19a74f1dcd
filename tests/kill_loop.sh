#!/bin/sh
# The kill loop: tiny training on 2 ranks with a checkpoint every 5 steps is
# killed with SIGKILL N times at moments drawn from SEED, each time one of
#   one   - one rank, at a random moment;
#   all   - every rank at once, at a random moment;
#   write - the rank that writes checkpoints (rank 0), while a checkpoint's
#           partial directory exists (the write is slowed to make it likely),
#           or else while retention deletes an old one (slowed alike);
# and started again with --resume auto after each. After every cycle no ldm
# process may be left and `ldm inspect` must pass on every checkpoint left.
# At the end the run is taken to the step after its newest checkpoint plus 5
# and its model, EMA and optimizer files must equal, byte for byte, those of
# one uninterrupted run to the same step, and metrics.jsonl must hold every
# step once.
#
# Usage: tests/kill_loop.sh N SEED [WORK]
# Environment (defaults for a run from the repository root): LDM (build/ldm),
# LDM_MPIRUN (mpirun --oversubscribe, plus --allow-run-as-root as root),
# LDM_CONFIGS (configs/). CI runs a few cycles (ctest cli_kill_loop_cycles);
# docs/testing.md records a long run.
set -u
[ $# -ge 2 ] || { echo "usage: $0 N SEED [WORK]" >&2; exit 2; }
cycles=$1; seed=$2
repository=$(cd "$(dirname "$0")/.." && pwd)
work=${3:-$repository/build/kill-loop}
LDM=${LDM:-$repository/build/ldm}
LDM_CONFIGS=${LDM_CONFIGS:-$repository/configs}
if [ -z "${LDM_MPIRUN:-}" ]; then
  LDM_MPIRUN="mpirun --oversubscribe"
  [ "$(id -u)" = 0 ] && LDM_MPIRUN="$LDM_MPIRUN --allow-run-as-root"
fi
case $LDM in /*) ;; *) LDM=$PWD/$LDM ;; esac

fail() { echo "FAIL: $*" >&2; exit 1; }
# Whatever way the script ends, no rank of it is left running.
trap 'pkill -9 -f "^$LDM train --data $work/data.h5" 2> /dev/null' EXIT
run() { "$@" || fail "exit status $? from: $*"; }
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1

# The rank processes only (their command line starts with the program; mpirun's does not).
ranks() { pgrep -f "^$LDM train --data $work/data.h5"; }
rank_of() { tr '\0' '\n' < "/proc/$1/environ" 2>/dev/null | sed -n 's/^OMPI_COMM_WORLD_RANK=//p'; }
wait_gone() {
  for _ in $(seq 600); do ranks > /dev/null || return 0; sleep 0.1; done
  ranks | xargs -r ps -o pid,stat,args -p >&2
  fail "ldm processes left 60 s after cycle $1"
}
inspect_all() {
  for c in run/checkpoints/step-*; do
    [ -d "$c" ] || continue
    "$LDM" inspect "$c" > inspect.txt 2>&1 || { cat inspect.txt >&2; fail "ldm inspect fails on $c after cycle $1"; }
  done
}

run "$LDM" prepare synthetic --n 64 --size 8 --classes 4 --channels 4 --out data.h5 > /dev/null
config="--config $LDM_CONFIGS/tiny.json --set device.type=cpu --set train.ckpt_every=5 --set train.ckpt_keep=2"

# One line per cycle: the kind of kill and the delay in milliseconds, from SEED alone.
awk -v seed="$seed" -v n="$cycles" 'BEGIN { srand(seed); split("one all write", kinds, " ");
  for (i = 0; i < n; i++) printf "%s %d\n", kinds[1 + int(rand() * 3)], 300 + int(rand() * 2700) }' > plan.txt

cycle=0
while read -r kind delay_ms; do
  cycle=$((cycle + 1))
  slow=50; [ "$kind" = write ] && slow=400
  if [ $cycle = 1 ]; then start="$config --set train.steps=100000"; else start="--resume auto"; fi
  # shellcheck disable=SC2086
  LDM_TEST_SLOW_CHECKPOINT_MS=$slow $LDM_MPIRUN -x LDM_TEST_SLOW_CHECKPOINT_MS -np 2 \
    "$LDM" train --data "$work/data.h5" --run run $start > "cycle-$cycle.txt" 2>&1 &
  launcher=$!
  # The delay counts from when both ranks run (mpirun's start varies with the load).
  for _ in $(seq 600); do [ "$(ranks | wc -l)" = 2 ] && break; sleep 0.1; done
  [ "$(ranks | wc -l)" = 2 ] || { cat "cycle-$cycle.txt" >&2; fail "cycle $cycle: the ranks did not start within 60 s"; }
  stale=$(ls -d run/checkpoints/.partial-* 2> /dev/null)
  sleep "$(awk -v ms="$delay_ms" 'BEGIN { printf "%.3f", ms / 1000 }')"
  case $kind in
  one) victims=$(ranks | awk -v pick="$delay_ms" '{ p[NR] = $1 } END { if (NR) print p[1 + pick % NR] }') ;;
  all) victims=$(ranks) ;;
  write)
    # A partial directory of this cycle (one left by a killed cycle does not count):
    # a checkpoint being written, or else an old one being deleted by retention
    # (.partial-deleting-*, which exists right after a write and would otherwise
    # take most of these kills).
    fresh_partial() { ls -d run/checkpoints/.partial-$1* 2> /dev/null | grep -vxF "${stale:-none}" | head -1; }
    for _ in $(seq 200); do [ -n "$(fresh_partial step-)" ] && break; sleep 0.05; done
    partial=$(fresh_partial step-)
    [ -n "$partial" ] || partial=$(fresh_partial deleting-)
    [ -n "$partial" ] || fail "cycle $cycle: no checkpoint was being written within 10 s"
    kind="write (of $partial)"
    victims=""
    for p in $(ranks); do [ "$(rank_of "$p")" = 0 ] && victims=$p; done ;;
  esac
  [ -n "$victims" ] || { cat "cycle-$cycle.txt" >&2; fail "cycle $cycle: no rank to kill (did the run end early?)"; }
  # shellcheck disable=SC2086
  kill -9 $victims 2> /dev/null
  wait $launcher 2> /dev/null
  wait_gone $cycle
  inspect_all $cycle
  newest=$(ls -d run/checkpoints/step-* 2> /dev/null | tail -1)
  echo "cycle $cycle: kill $kind after ${delay_ms} ms; newest checkpoint ${newest:-none}"
done < plan.txt

newest=$(ls -d run/checkpoints/step-* 2> /dev/null | tail -1)
last=$(expr "${newest:-step-0}" : '.*step-0*\([0-9][0-9]*\)$' || echo 0)
final=$((last + 5))
echo "final: resuming to step $final; an uninterrupted run to step $final beside it"
run $LDM_MPIRUN -np 2 "$LDM" train --data "$work/data.h5" --run run --resume auto --set train.steps=$final > final.txt 2>&1
run $LDM_MPIRUN -np 2 "$LDM" train --data "$work/data.h5" --run straight $config --set train.steps=$final > straight.txt 2>&1
step_dir=checkpoints/step-$(printf %08d $final)
for f in model ema optimizer; do
  cmp "straight/$step_dir/$f.safetensors" "run/$step_dir/$f.safetensors" ||
    fail "$f.safetensors of step $final differs from the uninterrupted run's"
done
awk -v final=$final -F'"step": *' 'NF > 1 { split($2, a, /[,}]/); seen[a[1] + 0]++ }
  END { for (s = 1; s <= final; s++) if (seen[s] != 1) { printf "step %d logged %d times\n", s, seen[s]; bad = 1 }
        exit bad }' run/metrics.jsonl || fail "metrics.jsonl does not hold every step once"
inspect_all final
ls -d run/checkpoints/.partial-* 2> /dev/null && fail "partial checkpoint directories left at the end"
ranks > /dev/null && fail "ldm processes left at the end"
echo "kill loop: $cycles cycles (seed $seed) passed; step $final equals the uninterrupted run byte for byte"
