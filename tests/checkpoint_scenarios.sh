#!/bin/sh
# Command-line scenarios of `ldm inspect` on checkpoints that test_checkpoint
# --write-example publishes (a tiny DiT at steps 10 and 20).
# Usage: checkpoint_scenarios.sh SCENARIO WORK
# with the environment: LDM (the program), LDM_TEST_CHECKPOINT (the test binary).
# WORK is this scenario's own folder, emptied first.
set -u
scenario=$1; work=$2
rm -rf "$work" && mkdir -p "$work" || exit 1
cd "$work" || exit 1

fail() { echo "FAIL: $*" >&2; exit 1; }
# inspect PATH STATUS: runs ldm inspect into out.txt / err.txt, checks the status.
inspect() {
  "$LDM" inspect "$1" >out.txt 2>err.txt
  status=$?
  cat out.txt; cat err.txt >&2
  [ "$status" = "$2" ] || fail "ldm inspect $1: exit status $status, expected $2"
}
has() { grep -Eq -- "$2" "$1" || fail "$1 does not match: $2"; }
lacks() { ! grep -Eq -- "$2" "$1" || fail "$1 matches: $2"; }

case "$scenario" in
inspect-good)
  "$LDM_TEST_CHECKPOINT" --write-example run >/dev/null || fail "cannot write the example"
  inspect run/checkpoints/step-00000020 0
  has out.txt '^checkpoint: run/checkpoints/step-00000020$'
  has out.txt '^  step +20$'
  has out.txt '^  images_seen +160$'
  has out.txt '^  world_size +2$'
  has out.txt '^  model: type dit, input_size 8, in_channels 4, patch_size 2, hidden_size 64, depth 2, num_heads 4, num_classes 10$'
  has out.txt '^  train: batch_size 8, lr 0[.]0001, precision fp32$'
  has out.txt '^  x_embedder[.]proj[.]weight +F32 +\[64, 4, 2, 2\]$'
  has out.txt '^  pos_embed +F32 +\[1, 16, 64\]$'
  has out.txt '^  exp_avg_sq[.]final_layer[.]linear[.]bias +F32 +\[16\]$'
  has out.txt '^model[.]safetensors: [0-9]+ tensors, [0-9]+ parameters$'
  has out.txt '^optimizer[.]safetensors: [0-9]+ tensors, [0-9]+ values, step 20$'
  for f in model.safetensors ema.safetensors optimizer.safetensors state.json; do
    has out.txt "^  $f +ok$"
  done
  [ -s err.txt ] && fail "stderr is not empty"
  # The same run given as a run directory (which also holds the final weights,
  # as a trained run does): its newest checkpoint, nothing skipped.
  cp run/checkpoints/step-00000020/model.safetensors run/model.safetensors
  cp run/checkpoints/step-00000020/ema.safetensors run/ema.safetensors
  inspect run 0
  has out.txt '^checkpoint: run/checkpoints/step-00000020 [(]the newest that verifies[)]$'
  lacks out.txt '^skipped'
  # A state.json without the fields inspect shows: "?" and no crash (but the
  # manifest no longer matches, so exit 2).
  echo '{"format": "ldm-train-state"}' >run/checkpoints/step-00000010/state.json
  inspect run/checkpoints/step-00000010 2
  has out.txt '^  step +[?]$'
  has out.txt '^  model: type [?], input_size [?],'
  has err.txt '^ldm: error: run/checkpoints/step-00000010: 1 file[(]s[)] failed verification$'
  ;;
inspect-damaged)
  "$LDM_TEST_CHECKPOINT" --write-example run --damage >/dev/null || fail "cannot write the example"
  inspect run/checkpoints/step-00000020 2
  has out.txt '^  model[.]safetensors +run/checkpoints/step-00000020/model[.]safetensors: checksum mismatch [(]manifest [0-9a-f]{8}, file [0-9a-f]{8}[)]$'
  has out.txt '^  ema[.]safetensors +ok$'
  has err.txt '^ldm: error: run/checkpoints/step-00000020: 1 file[(]s[)] failed verification$'
  [ "$(wc -l <err.txt)" = 1 ] || fail "more than one line on stderr"
  # A missing manifest: still inspected as a checkpoint, and refused.
  rm run/checkpoints/step-00000010/manifest.json
  inspect run/checkpoints/step-00000010 2
  has out.txt '^  manifest[.]json +run/checkpoints/step-00000010/manifest[.]json: missing$'
  has out.txt '^  x_embedder[.]proj[.]weight +F32'
  has err.txt '^ldm: error: run/checkpoints/step-00000010: 1 file[(]s[)] failed verification$'
  ;;
inspect-run-skips)
  # The newest checkpoint is damaged: the run's report names it as skipped,
  # shows the one a resume would use, and exits 2.
  "$LDM_TEST_CHECKPOINT" --write-example run --damage >/dev/null || fail "cannot write the example"
  inspect run 2
  has out.txt '^run: run [(]2 checkpoints[)]$'
  has out.txt '^skipped: run/checkpoints/step-00000020: run/checkpoints/step-00000020/model[.]safetensors: checksum mismatch'
  has out.txt '^checkpoint: run/checkpoints/step-00000010 [(]the newest that verifies[)]$'
  has out.txt '^  step +10$'
  has err.txt '^ldm: error: run: 1 checkpoint[(]s[)] failed verification and were skipped$'
  # Every checkpoint damaged: the newest is shown with its faults.
  truncate -s 100 run/checkpoints/step-00000010/ema.safetensors
  inspect run 2
  has out.txt '^no checkpoint verifies; the newest:$'
  has out.txt '^checkpoint: run/checkpoints/step-00000020$'
  has err.txt '^ldm: error: run/checkpoints/step-00000020: 1 file[(]s[)] failed verification$'
  ;;
inspect-latest)
  "$LDM_TEST_CHECKPOINT" --write-example run >/dev/null || fail "cannot write the example"
  [ "$(readlink run/checkpoints/latest)" = step-00000020 ] || fail "latest is not step-00000020"
  inspect run/checkpoints/latest 0
  has out.txt '^  step +20$'
  ;;
*)
  fail "unknown scenario $scenario"
  ;;
esac
echo "ok: $scenario"
