#!/bin/sh
# Command-line scenarios of `ldm prepare` that need more than one run or a check
# after the run. Usage: prepare_scenarios.sh SCENARIO WORK INPUTS
# with the environment: LDM (the program), LDM_MPIRUN (mpirun with its options),
# LDM_PYTHON (a python3 with numpy and h5py), LDM_TESTS (this folder), and for
# fmnist-* LDM_FMNIST_DIR. WORK is a folder of this scenario's own (emptied
# first); INPUTS the folder made by prepare_make_inputs.py.
set -u
scenario=$1; work=$2; inputs=$3
rm -rf "$work" && mkdir -p "$work" || exit 1
cd "$work" || exit 1

fail() { echo "FAIL: $*" >&2; exit 1; }
run() { echo "+ $*" >&2; "$@" || fail "exit status $? from: $*"; }
# same A B: the two files hold the same data sets and attributes, exactly.
same() { "$LDM_PYTHON" "$LDM_TESTS/prepare_compare_h5.py" "$1" "$2" || fail "$1 and $2 differ"; }
differ() { if "$LDM_PYTHON" "$LDM_TESTS/prepare_compare_h5.py" "$1" "$2" 2>/dev/null; then fail "$1 and $2 are the same"; fi; }
mpirun3() { run $LDM_MPIRUN -np 3 "$@"; }

case "$scenario" in
fmnist-test)
  run "$LDM" prepare fashion-mnist --split test --dir "$LDM_FMNIST_DIR" --out plain.h5
  run "$LDM_PYTHON" "$LDM_TESTS/prepare_check_fashion_mnist.py" "$LDM_FMNIST_DIR" test plain.h5
  run "$LDM" prepare fashion-mnist --split test --dir "$LDM_FMNIST_DIR" --pad 32 --out padded.h5
  run "$LDM_PYTHON" "$LDM_TESTS/prepare_check_fashion_mnist.py" "$LDM_FMNIST_DIR" test padded.h5 32
  # An odd margin (35 - 28 = 7) and 3 ranks give the same file as 1 rank; both
  # write in several batches (12 MB of pixels, 2 MiB batches).
  run "$LDM" prepare fashion-mnist --split test --dir "$LDM_FMNIST_DIR" --pad 35 --out odd.h5
  run "$LDM_PYTHON" "$LDM_TESTS/prepare_check_fashion_mnist.py" "$LDM_FMNIST_DIR" test odd.h5 35
  mpirun3 "$LDM" prepare fashion-mnist --split test --dir "$LDM_FMNIST_DIR" --pad 35 --out odd3.h5
  same odd.h5 odd3.h5
  ;;
synthetic-determinism)
  args="--n 50 --size 16 --classes 7 --channels 3"
  run "$LDM" prepare synthetic $args --seed 3 --out a.h5
  run "$LDM" prepare synthetic $args --seed 3 --out b.h5
  same a.h5 b.h5
  mpirun3 "$LDM" prepare synthetic $args --seed 3 --out ranks3.h5
  same a.h5 ranks3.h5
  run "$LDM" prepare synthetic $args --seed 4 --out seed4.h5
  differ a.h5 seed4.h5
  # Several write batches (2 MiB: 42 rows of 128x128x3), shards of 43, 42, 42
  # rows: ranks 1 and 2 join the second collective write with no rows.
  args="--n 127 --size 128 --classes 4 --channels 3"
  run "$LDM" prepare synthetic $args --out batches.h5
  mpirun3 "$LDM" prepare synthetic $args --out batches3.h5
  same batches.h5 batches3.h5
  ;;
synthetic-latents)
  # 4 channels, as a latent space has; float32 and float16; 1 and 3 ranks.
  args="--n 40 --size 8 --classes 5 --channels 4 --seed 11"
  run "$LDM" prepare synthetic $args --out images.h5
  for type in float32 float16; do
    run "$LDM" prepare synthetic $args --latents $type --out $type.h5
    mpirun3 "$LDM" prepare synthetic $args --latents $type --out $type-ranks3.h5
    same $type.h5 $type-ranks3.h5
    run "$LDM_PYTHON" "$LDM_TESTS/prepare_check_latents.py" images.h5 $type.h5 $type
  done
  ;;
images-ranks)
  run "$LDM" prepare images "$inputs/pngs" --size 16 --out one.h5
  run "$LDM_PYTHON" "$LDM_TESTS/prepare_check_images.py" "$inputs/pngs" one.h5 16 3 ant/solid.png 200,100,50
  mpirun3 "$LDM" prepare images "$inputs/pngs/" --size 16 --out three.h5
  same one.h5 three.h5
  run "$LDM" prepare images "$inputs/pngs" --size 16 --channels 1 --out gray.h5
  run "$LDM_PYTHON" "$LDM_TESTS/prepare_check_images.py" "$inputs/pngs" gray.h5 16 1 ant/solid.png 0,0,0
  mpirun3 "$LDM" prepare images "$inputs/pngs" --size 16 --channels 1 --out gray3.h5
  same gray.h5 gray3.h5
  differ one.h5 gray.h5
  # No class folders: no labels.
  run "$LDM" prepare images "$inputs/pngs-flat" --size 8 --out flat.h5
  run "$LDM_PYTHON" -c "import h5py, sys; f = h5py.File('flat.h5', 'r'); \
sys.exit(0 if 'labels' not in f and f['images'].shape == (2, 8, 8, 3) else 'flat.h5: expected 2 images, no labels')"
  ;;
images-pil)
  # JPEGs and PNGs of every kind (made with PIL) against PIL's own decoding and
  # center_crop_arr, RGB and gray; 3 ranks (8 files each a step) write the same file.
  run "$LDM_PYTHON" "$LDM_TESTS/prepare_check_center_crop.py" make images
  run "$LDM" prepare images images --size 16 --out rgb.h5
  run "$LDM_PYTHON" "$LDM_TESTS/prepare_check_center_crop.py" check images rgb.h5 16 3
  mpirun3 "$LDM" prepare images images --size 16 --out rgb3.h5
  cmp rgb.h5 rgb3.h5 || fail "rgb.h5 and rgb3.h5 differ"
  run "$LDM" prepare images images --size 24 --channels 1 --out gray.h5
  run "$LDM_PYTHON" "$LDM_TESTS/prepare_check_center_crop.py" check images gray.h5 24 1
  ;;
images-skip-bad)
  # Unreadable files (a truncated JPEG, a truncated PNG, a damaged PNG, text
  # named .jpg): the first ends the run with one line naming it; with
  # --skip-bad all are skipped and counted, the rows are the good files in
  # order, and 1 and 3 ranks write the same file.
  run "$LDM_PYTHON" "$LDM_TESTS/prepare_check_center_crop.py" make images
  run "$LDM_TESTS/expect_error.sh" 2 "^ldm: error: images-bad/n01_jpeg/bad_truncated[.]jpg: truncated JPEG: .*--skip-bad" -- \
    "$LDM" prepare images images-bad --size 16 --out never.h5
  [ ! -e never.h5 ] && [ ! -e never.h5.partial ] || fail "a failed run left never.h5 or its partial file"
  "$LDM" prepare images images-bad --size 16 --skip-bad --out one.h5 2>stderr || fail "exit status $? with --skip-bad"
  cat stderr >&2
  grep -q "^prepare images: skipped 4 of 30 files that could not be read" stderr || fail "no count of 4 skipped files"
  for bad in n01_jpeg/bad_truncated.jpg n02_png/bad_damaged.png n02_png/bad_text.jpg n02_png/bad_truncated.png; do
    grep -q "^prepare images: skipped images-bad/$bad: " stderr || fail "$bad not reported as skipped"
  done
  run "$LDM_PYTHON" "$LDM_TESTS/prepare_check_center_crop.py" check images-bad one.h5 16 3
  mpirun3 "$LDM" prepare images images-bad --size 16 --skip-bad --out three.h5
  cmp one.h5 three.h5 || fail "one.h5 and three.h5 differ"
  # Nothing readable: refused even with --skip-bad, nothing left behind.
  mkdir -p allbad/x && echo "not an image" > allbad/x/a.jpg && : > allbad/x/b.png
  run "$LDM_TESTS/expect_error.sh" 2 "^ldm: error: allbad: none of the 2 image files could be read" -- \
    "$LDM" prepare images allbad --size 16 --skip-bad --out never.h5
  [ ! -e never.h5 ] && [ ! -e never.h5.partial ] || fail "a failed run left never.h5 or its partial file"
  # 156 damaged copies (cut short, bytes overwritten): ldm keeps what PIL decodes.
  run "$LDM_PYTHON" "$LDM_TESTS/prepare_check_center_crop.py" make-damaged images damaged
  "$LDM" prepare images damaged --size 16 --skip-bad --out damaged.h5 2>damaged.err || fail "exit status $? on damaged/"
  run "$LDM_PYTHON" "$LDM_TESTS/prepare_check_center_crop.py" check-damaged damaged damaged.h5 damaged.err
  ;;
existing-output)
  # Refused without --force, the file untouched; replaced with --force.
  echo "precious, not a data set" > out.h5
  cp out.h5 before
  run "$LDM_TESTS/expect_error.sh" 2 "^ldm: error: out[.]h5: .*exists.*--force" -- \
    "$LDM" prepare synthetic --n 4 --size 8 --classes 2 --channels 1 --out out.h5
  cmp -s out.h5 before || fail "out.h5 was modified"
  [ ! -e out.h5.partial ] || fail "out.h5.partial left behind"
  run "$LDM" prepare synthetic --n 4 --size 8 --classes 2 --channels 1 --out out.h5 --force
  run "$LDM_PYTHON" -c "import h5py; assert h5py.File('out.h5', 'r')['images'].shape == (4, 8, 8, 1)"
  ;;
failed-run-1rank|failed-run-3ranks)
  # A corrupt PNG (file 10 of 12: rank 1's under 3 ranks) ends the run with
  # exit status 2 and leaves neither the output nor its partial file.
  if [ "$scenario" = failed-run-1rank ]; then
    run "$LDM_TESTS/expect_error.sh" 2 "^ldm: error: .*pngs-corrupt/b/truncated[.]png: damaged PNG" -- \
      "$LDM" prepare images "$inputs/pngs-corrupt" --size 8 --out out.h5
  else
    $LDM_MPIRUN -np 3 "$LDM" prepare images "$inputs/pngs-corrupt" --size 8 --out out.h5 >/dev/null 2>stderr
    status=$?
    cat stderr >&2
    [ "$status" = 2 ] || fail "exit status $status, expected 2"
    grep -q "^ldm: error: .*pngs-corrupt/b/truncated[.]png: damaged PNG" stderr || fail "no error line naming the PNG"
  fi
  [ ! -e out.h5 ] || fail "out.h5 exists after a failed run"
  [ ! -e out.h5.partial ] || fail "out.h5.partial left behind"
  ;;
*)
  fail "unknown scenario $scenario"
  ;;
esac
echo "$scenario: ok"
