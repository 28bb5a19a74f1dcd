# Tests of the independent Fashion-MNIST evaluator (tests/evaluate_fmnist_samples.py),
# which judges `ldm sample` output with its own classifier: on known inputs it must
# pass and fail as it should. The evaluate_fmnist_inputs fixture trains a small
# classifier once (20,000 images, 1 epoch, about 85% test accuracy, so the thresholds
# here are lower than for the full one) into the build folder and writes the first 3000
# images of the real test split (2000 repeated) as ldm data set files: as they are
# (32x32, and 28x28), with shuffled labels, and with each class collapsed to one image
# repeated (3000 rather than all 10,000: a third of the time, judged as surely). Real images with their labels pass
# --min-accuracy 0.8 and --min-variety 0.95; shuffled labels score below 0.2 and fail
# --min-accuracy; the repeated image scores variety ~0 and fails --min-variety.
# Every test exits 77 (skipped) when Debian's python3 cannot import torch (it is
# optional: launch/install-deps.sh installs it only with LDM_WITH_TORCH=1).
# Included from tests/CMakeLists.txt (LDM_SYSTEM_PYTHON comes from there).

set(LDM_EVALUATE_WORK ${CMAKE_CURRENT_BINARY_DIR}/evaluate)
set(ldm_evaluate_classifier ${LDM_EVALUATE_WORK}/classifier-20000x1.pt)
if(NOT LDM_EXPECT_ERROR)
  set(LDM_EXPECT_ERROR ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh)
endif()
# sh -c SCRIPT NAME ARGS...: runs ARGS, or exits 77 when torch cannot be imported
# (no semicolon in SCRIPT: CMake would split the argument there).
set(ldm_evaluate_guard sh -c "${LDM_SYSTEM_PYTHON} -c 'import torch' 2>/dev/null || exit 77 && exec \"$@\""
    evaluate_guard)
set(ldm_evaluate ${ldm_evaluate_guard} ${LDM_SYSTEM_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/evaluate_fmnist_samples.py)
set(ldm_evaluate_expect ${ldm_evaluate_guard} ${LDM_EXPECT_ERROR})
set(ldm_evaluate_script ${LDM_SYSTEM_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/evaluate_fmnist_samples.py)

# The fixture: the classifier (kept between runs: trained only when its file is missing)
# and the input files.
add_test(NAME evaluate_fmnist_classifier
  COMMAND ${ldm_evaluate} --train-only --classifier ${ldm_evaluate_classifier} --train-images 20000 --epochs 1)
set_tests_properties(evaluate_fmnist_classifier PROPERTIES TIMEOUT 600)
add_test(NAME evaluate_fmnist_write_real COMMAND ${ldm_evaluate} --real-test --n 3000 --out ${LDM_EVALUATE_WORK}/real.h5)
add_test(NAME evaluate_fmnist_write_real28
  COMMAND ${ldm_evaluate} --real-test --pad 28 --n 3000 --out ${LDM_EVALUATE_WORK}/real28.h5)
add_test(NAME evaluate_fmnist_write_shuffled
  COMMAND ${ldm_evaluate} --real-test --shuffle-labels --n 3000 --out ${LDM_EVALUATE_WORK}/shuffled.h5)
add_test(NAME evaluate_fmnist_write_repeated
  COMMAND ${ldm_evaluate} --real-test --repeat-one --n 2000 --out ${LDM_EVALUATE_WORK}/repeated.h5)
set_tests_properties(evaluate_fmnist_write_real evaluate_fmnist_write_real28 evaluate_fmnist_write_shuffled
  evaluate_fmnist_write_repeated PROPERTIES TIMEOUT 60)
set_tests_properties(evaluate_fmnist_classifier evaluate_fmnist_write_real evaluate_fmnist_write_real28
  evaluate_fmnist_write_shuffled evaluate_fmnist_write_repeated PROPERTIES
  FIXTURES_SETUP evaluate_fmnist_inputs SKIP_RETURN_CODE 77)

# It passes on real images with their labels, padded to 32x32 like ldm's or not.
add_test(NAME evaluate_fmnist_real
  COMMAND ${ldm_evaluate} ${LDM_EVALUATE_WORK}/real.h5 --classifier ${ldm_evaluate_classifier}
          --min-accuracy 0.8 --min-variety 0.95)
add_test(NAME evaluate_fmnist_real28
  COMMAND ${ldm_evaluate} ${LDM_EVALUATE_WORK}/real28.h5 --classifier ${ldm_evaluate_classifier}
          --min-accuracy 0.8 --min-variety 0.9)
# Shuffled labels: the accuracy of chance (below 0.2), exit 1 with one line.
add_test(NAME evaluate_fmnist_shuffled
  COMMAND ${ldm_evaluate_expect} 1
    "^evaluate_fmnist_samples: error: accuracy 0[.][01][0-9]* is below --min-accuracy 0[.]8$" --
    ${ldm_evaluate_script} ${LDM_EVALUATE_WORK}/shuffled.h5 --classifier ${ldm_evaluate_classifier}
    --min-accuracy 0.8)
# One image per class, repeated: recognisable (the accuracy passes) but variety ~0.
add_test(NAME evaluate_fmnist_repeated
  COMMAND ${ldm_evaluate_expect} 1
    "^evaluate_fmnist_samples: error: variety 0[.]0[0-9]* is below --min-variety 0[.]5$" --
    ${ldm_evaluate_script} ${LDM_EVALUATE_WORK}/repeated.h5 --classifier ${ldm_evaluate_classifier}
    --min-accuracy 0.5 --min-variety 0.5)
set_tests_properties(evaluate_fmnist_real evaluate_fmnist_real28 evaluate_fmnist_shuffled
  evaluate_fmnist_repeated PROPERTIES TIMEOUT 120 FIXTURES_REQUIRED evaluate_fmnist_inputs SKIP_RETURN_CODE 77)

# A file that is not a sample set is refused with one line and exit 2, before any training.
add_test(NAME evaluate_fmnist_missing_file
  COMMAND ${ldm_evaluate_expect} 2
    "^evaluate_fmnist_samples: error: /nonexistent[.]h5: cannot read the sample file" --
    ${ldm_evaluate_script} /nonexistent.h5 --classifier ${LDM_EVALUATE_WORK}/never.pt)
set_tests_properties(evaluate_fmnist_missing_file PROPERTIES TIMEOUT 60 SKIP_RETURN_CODE 77)
