# Tests of `ldm prepare` and its converters. Included from tests/CMakeLists.txt
# (which defines LDM_MPIRUN). test_prepare_units checks the converters' pieces;
# the cli_prepare_* tests run the program: the Fashion-MNIST output against the
# idx files parsed in Python, determinism and rank-count independence, and every
# bad input (exit status 2, one line naming the file). Their inputs are made by
# tests/prepare_make_inputs.py in the build folder (the prepare_inputs fixture);
# the checks read the files with h5py, so Debian's python3 (with python3-h5py and
# python3-numpy) is preferred over another python3 on the PATH.

ldm_c_test(test_prepare_units)

if(TARGET ldm)
  set(LDM_PREPARE_WORK ${CMAKE_CURRENT_BINARY_DIR}/prepare)
  set(LDM_PREPARE_INPUTS ${LDM_PREPARE_WORK}/inputs)
  set(LDM_EXPECT_ERROR ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh)

  # The work folder starts empty, so that nothing from an earlier run is mistaken for this run's.
  add_test(NAME prepare_make_inputs
    COMMAND sh -c "rm -rf \"$1\" && exec \"$2\" \"$3\" \"$1/inputs\"" sh ${LDM_PREPARE_WORK}
            ${LDM_SYSTEM_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/prepare_make_inputs.py)
  set_tests_properties(prepare_make_inputs PROPERTIES FIXTURES_SETUP prepare_inputs)

  # ldm_prepare_scenario(NAME): tests/prepare_scenarios.sh NAME in its own folder.
  function(ldm_prepare_scenario scenario)
    string(REPLACE "-" "_" test_name "cli_prepare_${scenario}")
    add_test(NAME ${test_name}
      COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/prepare_scenarios.sh ${scenario}
              ${LDM_PREPARE_WORK}/${scenario} ${LDM_PREPARE_INPUTS})
    string(REPLACE ";" " " mpirun "${LDM_MPIRUN}")
    set_tests_properties(${test_name} PROPERTIES
      FIXTURES_REQUIRED prepare_inputs
      ENVIRONMENT "LDM=$<TARGET_FILE:ldm>;LDM_MPIRUN=${mpirun};LDM_PYTHON=${LDM_SYSTEM_PYTHON};\
LDM_TESTS=${CMAKE_CURRENT_SOURCE_DIR};LDM_FMNIST_DIR=/usr/share/datasets/fashion-mnist")
  endfunction()
  foreach(scenario fmnist-test synthetic-determinism synthetic-latents images-ranks images-pil images-skip-bad existing-output
                   failed-run-1rank failed-run-3ranks)
    ldm_prepare_scenario(${scenario})
  endforeach()

  # ldm_prepare_error(NAME REGEX ARGS...): `ldm prepare ARGS...` must exit 2 with
  # one line matching REGEX. @IN@ in ARGS stands for the inputs folder; outputs
  # go to the work folder, where none may be left behind.
  function(ldm_prepare_error name regex)
    string(REPLACE "@IN@" "${LDM_PREPARE_INPUTS}" args "${ARGN}")
    add_test(NAME cli_prepare_${name}
      COMMAND ${LDM_EXPECT_ERROR} 2 "${regex}" -- $<TARGET_FILE:ldm> prepare ${args}
      WORKING_DIRECTORY ${LDM_PREPARE_WORK})
    set_tests_properties(cli_prepare_${name} PROPERTIES FIXTURES_REQUIRED prepare_inputs)
  endfunction()

  set(synthetic_args synthetic --n 4 --size 8 --classes 2 --channels 1)
  ldm_prepare_error(no_kind "^ldm: error: ldm prepare: expected a kind: fashion-mnist, images, synthetic")
  ldm_prepare_error(unknown_kind "^ldm: error: ldm prepare: unknown kind 'mnist'; expected one of: fashion-mnist, images, synthetic"
    mnist --out never.h5)
  ldm_prepare_error(missing_out "^ldm: error: ldm prepare synthetic: option --out is required$" ${synthetic_args})
  ldm_prepare_error(missing_value "^ldm: error: ldm prepare synthetic: option --out needs a value$" ${synthetic_args} --out)
  ldm_prepare_error(unknown_option "^ldm: error: ldm prepare synthetic: unknown option '--sized'"
    ${synthetic_args} --sized 3 --out never.h5)
  ldm_prepare_error(bad_number "^ldm: error: ldm prepare synthetic: option --n: expected an integer in [[]1, .*got 'ten'$"
    synthetic --n ten --size 8 --classes 2 --channels 1 --out never.h5)
  ldm_prepare_error(bad_latents "^ldm: error: ldm prepare synthetic: option --latents: expected float32 or float16, got 'int8'$"
    ${synthetic_args} --latents int8 --out never.h5)
  ldm_prepare_error(bad_split "^ldm: error: ldm prepare fashion-mnist: option --split: expected train or test, got 'bogus'$"
    fashion-mnist --split bogus --out never.h5)
  ldm_prepare_error(bad_pad "^ldm: error: ldm prepare fashion-mnist: option --pad: expected an integer in [[]28, 4096[]], got '20'$"
    fashion-mnist --split test --pad 20 --out never.h5)
  ldm_prepare_error(fmnist_missing_dir
    "^ldm: error: .*no-such-dir/t10k-images-idx3-ubyte[.]gz: cannot open: No such file or directory"
    fashion-mnist --split test --dir @IN@/no-such-dir --out never.h5)
  ldm_prepare_error(fmnist_truncated
    "^ldm: error: .*fmnist-truncated/t10k-images-idx3-ubyte[.]gz: (truncated: expected 78400 bytes of pixel data, found [0-9]+|damaged gzip)"
    fashion-mnist --split test --dir @IN@/fmnist-truncated --out never.h5)
  ldm_prepare_error(fmnist_corrupt
    "^ldm: error: .*fmnist-corrupt/t10k-images-idx3-ubyte[.]gz: damaged gzip data while reading the pixel data: "
    fashion-mnist --split test --dir @IN@/fmnist-corrupt --out never.h5)
  # Headers naming 9 M images in front of 100 (tests/prepare_make_inputs.py): the
  # reader grows its buffer as the bytes arrive, so the file is refused as
  # truncated under a 3 GB address-space limit instead of failing to allocate the
  # 7 GB the headers name. (Not in the sanitizer build, whose shadow memory needs
  # more address space than any such limit.)
  if(NOT LDM_SANITIZE)
    add_test(NAME cli_prepare_fmnist_count_lies
      COMMAND ${LDM_EXPECT_ERROR} 2
        "^ldm: error: .*fmnist-count-lies/t10k-images-idx3-ubyte[.]gz: truncated: expected 7056000000 bytes of pixel data, found 78400$"
        -- sh -c "ulimit -v 3000000 && exec \"$0\" \"$@\"" $<TARGET_FILE:ldm> prepare fashion-mnist --split test
        --dir ${LDM_PREPARE_INPUTS}/fmnist-count-lies --out never.h5
      WORKING_DIRECTORY ${LDM_PREPARE_WORK})
    set_tests_properties(cli_prepare_fmnist_count_lies PROPERTIES FIXTURES_REQUIRED prepare_inputs)
  endif()
  ldm_prepare_error(fmnist_bad_magic
    "^ldm: error: .*fmnist-bad-magic/t10k-images-idx3-ubyte[.]gz: bad magic number: expected 2051 .*found 2049$"
    fashion-mnist --split test --dir @IN@/fmnist-bad-magic --out never.h5)
  ldm_prepare_error(fmnist_count_mismatch
    "^ldm: error: .*fmnist-count-mismatch/t10k-labels-idx1-ubyte[.]gz: 99 labels, but .* holds 100 images"
    fashion-mnist --split test --dir @IN@/fmnist-count-mismatch --out never.h5)
  ldm_prepare_error(corrupt_png "^ldm: error: .*pngs-corrupt/b/truncated[.]png: damaged PNG"
    images @IN@/pngs-corrupt --size 8 --out never.h5)
  ldm_prepare_error(empty_dir "^ldm: error: .*empty-dir: no image files found"
    images @IN@/empty-dir --size 8 --out never.h5)
  ldm_prepare_error(missing_image_dir "^ldm: error: .*no-such-dir: cannot read the image folder: No such file or directory$"
    images @IN@/no-such-dir --size 8 --out never.h5)
  ldm_prepare_error(stray_png "^ldm: error: .*pngs-stray/stray[.]png: an image directly in .*pngs-stray, which also has class subfolders"
    images @IN@/pngs-stray --size 8 --out never.h5)
  ldm_prepare_error(images_no_dir "^ldm: error: ldm prepare images: expected the image folder first"
    images --size 8 --out never.h5)
  ldm_prepare_error(bad_channels "^ldm: error: ldm prepare images: option --channels: expected 1 or 3, got '2'$"
    images @IN@/pngs --size 8 --channels 2 --out never.h5)
  # None of the failures above may leave an output behind.
  add_test(NAME cli_prepare_errors_leave_nothing
    COMMAND sh -c "! ls never.h5* 2>/dev/null | grep ."
    WORKING_DIRECTORY ${LDM_PREPARE_WORK})
  set_tests_properties(cli_prepare_errors_leave_nothing PROPERTIES FIXTURES_REQUIRED prepare_inputs)
  get_property(prepare_error_tests DIRECTORY PROPERTY TESTS)
  list(FILTER prepare_error_tests INCLUDE REGEX "^cli_prepare_")
  list(REMOVE_ITEM prepare_error_tests cli_prepare_errors_leave_nothing)
  set_tests_properties(cli_prepare_errors_leave_nothing PROPERTIES DEPENDS "${prepare_error_tests}")
endif()
