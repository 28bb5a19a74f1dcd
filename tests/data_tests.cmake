# Tests of the sharded, prefetching loader (data/loader.c) and of its bad-input
# errors through `ldm bench --data`. Included from tests/CMakeLists.txt, which
# defines ldm_c_test and LDM_MPIRUN. Test files are written into the build tree.

# tests/test_loader.c: one rank without mpirun, two and four ranks; then the
# global sequences the three wrote must be the same bytes (one order for every
# world size that divides the virtual shards).
ldm_c_test(test_loader ${CMAKE_CURRENT_BINARY_DIR}/loader-np1)
set_tests_properties(test_loader PROPERTIES TIMEOUT 60 FIXTURES_SETUP loader_orders)
foreach(ranks 2 4)
  add_test(NAME test_loader_np${ranks}
    COMMAND ${LDM_MPIRUN} -np ${ranks} $<TARGET_FILE:test_loader> ${CMAKE_CURRENT_BINARY_DIR}/loader-np${ranks}
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(test_loader_np${ranks} PROPERTIES TIMEOUT 120 FIXTURES_SETUP loader_orders)
endforeach()
add_test(NAME test_loader_same_order
  COMMAND sh -c "cmp \"$1-np1-order.txt\" \"$1-np2-order.txt\" && cmp \"$1-np1-order.txt\" \"$1-np4-order.txt\" && \
    test \"$(grep -c '^[0-9]' \"$1-np1-order.txt\")\" -eq 384" sh ${CMAKE_CURRENT_BINARY_DIR}/loader)
set_tests_properties(test_loader_same_order PROPERTIES FIXTURES_REQUIRED loader_orders)

# test_loader initialises and finalises MPI, whose plug-ins keep memory past
# MPI_Finalize: as for test_comm (tests/comm_tests.cmake), whole stacks and
# plug-ins kept loaded, so that tests/lsan.supp matches them while leak checks
# stay on for our own code.
set_property(TEST test_loader test_loader_np2 test_loader_np4 APPEND PROPERTY ENVIRONMENT
  "ASAN_OPTIONS=fast_unwind_on_malloc=0" "OMPI_MCA_mca_base_component_disable_dlclose=1")

if(TARGET ldm)
  # The files are written with h5py: Debian's python3 (python3-h5py) rather than
  # another python3 that may come first on the PATH.
  set(LDM_BAD_DATA ${CMAKE_CURRENT_BINARY_DIR}/bad-data)
  add_test(NAME data_make_bad_datasets
    COMMAND ${LDM_SYSTEM_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/make_bad_datasets.py ${LDM_BAD_DATA})
  set_tests_properties(data_make_bad_datasets PROPERTIES FIXTURES_SETUP bad_datasets)

  # ldm_cli_data_test(NAME FILE REGEX [ARGS...]): `ldm bench --config
  # configs/tiny.json --data FILE --steps 1 ARGS...` (a DiT on 4x8x8 latents,
  # 10 classes) exits 2 with one line matching REGEX.
  function(ldm_cli_data_test name file regex)
    add_test(NAME cli_data_${name}
      COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh 2 "${regex}" --
              $<TARGET_FILE:ldm> bench --config ${CMAKE_SOURCE_DIR}/configs/tiny.json
              --data ${LDM_BAD_DATA}/${file} --steps 1 ${ARGN}
      WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    set_tests_properties(cli_data_${name} PROPERTIES FIXTURES_REQUIRED bad_datasets TIMEOUT 30)
  endfunction()

  ldm_cli_data_test(missing_file missing.h5
    "^ldm: error: .*/missing[.]h5: cannot read the data set file: No such file or directory$")
  ldm_cli_data_test(not_hdf5 not-hdf5.h5 "^ldm: error: .*/not-hdf5[.]h5: not an HDF5 file")
  ldm_cli_data_test(no_samples no-samples.h5 "^ldm: error: .*/no-samples[.]h5: no data set /images or /latents")
  ldm_cli_data_test(wrong_rank wrong-rank.h5
    "^ldm: error: .*/wrong-rank[.]h5: /latents: expected 4 dimensions [(]N, C, H, W[)], found 3$")
  ldm_cli_data_test(wrong_dtype wrong-dtype.h5
    "^ldm: error: .*/wrong-dtype[.]h5: /latents: expected float16 [(]IEEE[)] or float32 elements, found float64$")
  ldm_cli_data_test(labels_out_of_range labels-out-of-range.h5
    "^ldm: error: .*/labels-out-of-range[.]h5: /labels[[]5[]]: expected a class in [[]0, 10[)] .*found 12$")
  ldm_cli_data_test(wrong_shape wrong-shape.h5
    "^ldm: error: .*/wrong-shape[.]h5: /latents: expected samples of 4x8x8 .*found 3x8x8$")
  ldm_cli_data_test(wrong_image_size wrong-image-size.h5
    "^ldm: error: .*/wrong-image-size[.]h5: /images: expected samples of 4x8x8 .*found 4x16x16$")
  ldm_cli_data_test(too_many_classes too-many-classes.h5
    "^ldm: error: .*/too-many-classes[.]h5: /labels: expected labels below the model's 10 classes, found 10 at sample 10")

  # A chunk that fails its checksum: read at open when the shard is held in
  # memory, on the loader thread when streamed (budget 0: one block at a time),
  # and reported by the main thread either way.
  ldm_cli_data_test(damaged_chunk_in_memory damaged-chunk.h5
    "^ldm: error: .*/damaged-chunk[.]h5: cannot read /latents rows [4-7] to [5-8] [(]damaged file[?][)]$")
  ldm_cli_data_test(damaged_chunk_streamed damaged-chunk.h5
    "^ldm: error: .*/damaged-chunk[.]h5: cannot read /latents rows [4-7] to [5-8] [(]damaged file[?][)]$"
    --set data.memory_budget_mb=0)

  # Fewer samples than ranks: both ranks refuse the file before any collective
  # call and the run ends with status 2 instead of hanging (the timeout would
  # catch a hang). Open MPI may add lines of its own to stderr.
  add_test(NAME cli_data_fewer_samples_than_ranks
    COMMAND sh -c "config=$1 data=$2; shift 2; \"$@\" bench --config \"$config\" --data \"$data\" --steps 1 >/dev/null 2>stderr.txt; s=$?; cat stderr.txt >&2; [ $s = 2 ] || { echo \"exit status $s, expected 2\" >&2; exit 1; }; grep -q '^ldm: error: .*/one-sample[.]h5: /latents: expected at least one sample per rank [(]2 ranks[)], found N = 1$' stderr.txt"
            sh ${CMAKE_SOURCE_DIR}/configs/tiny.json ${LDM_BAD_DATA}/one-sample.h5 ${LDM_MPIRUN} -np 2 $<TARGET_FILE:ldm>
    WORKING_DIRECTORY ${LDM_BAD_DATA})
  set_tests_properties(cli_data_fewer_samples_than_ranks PROPERTIES FIXTURES_REQUIRED bad_datasets TIMEOUT 60)

  # A good file from `ldm prepare synthetic`: the loader is timed and its ratio
  # to training reported; on one rank in memory, on two ranks streamed (a budget
  # of 0: one chunk at a time).
  add_test(NAME data_make_synthetic
    COMMAND $<TARGET_FILE:ldm> prepare synthetic --n 64 --size 8 --classes 10 --channels 4 --latents float16
            --out ${CMAKE_CURRENT_BINARY_DIR}/loader-synthetic.h5 --force)
  # It runs the ldm program, which ends with Open MPI's memory still held: leak
  # checks off, as for the cli_* tests.
  set_tests_properties(data_make_synthetic PROPERTIES FIXTURES_SETUP synthetic_dataset
    ENVIRONMENT "ASAN_OPTIONS=detect_leaks=0")
  set(bench_output "bench: loader_samples_per_s=[0-9]+ .*\nbench: images_per_s=[0-9.]+ .* loader_ratio=[0-9.]+\n")
  add_test(NAME cli_data_bench
    COMMAND $<TARGET_FILE:ldm> bench --config configs/tiny.json --data ${CMAKE_CURRENT_BINARY_DIR}/loader-synthetic.h5
            --steps 2 --warmup 1
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  add_test(NAME cli_data_bench_np2_streamed
    COMMAND ${LDM_MPIRUN} -np 2 $<TARGET_FILE:ldm> bench --config configs/tiny.json
            --data ${CMAKE_CURRENT_BINARY_DIR}/loader-synthetic.h5 --set data.memory_budget_mb=0 --steps 2 --warmup 1
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(cli_data_bench cli_data_bench_np2_streamed PROPERTIES
    FIXTURES_REQUIRED synthetic_dataset TIMEOUT 60 PASS_REGULAR_EXPRESSION "${bench_output}")
endif()

# data/npz_writer.c: tests/test_npz_writer.c writes small archives (one with
# every field in zip64 form), tests/check_npz.py reads them with numpy.
add_executable(test_npz_writer test_npz_writer.c)
target_link_libraries(test_npz_writer PRIVATE ldm_core)
add_test(NAME test_npz_writer
  COMMAND sh -c "rm -rf \"$1\" && mkdir -p \"$1\" && \"$2\" \"$1\" && exec \"$3\" \"$4\" \"$1\"" sh
          ${CMAKE_CURRENT_BINARY_DIR}/npz $<TARGET_FILE:test_npz_writer> ${LDM_SYSTEM_PYTHON}
          ${CMAKE_CURRENT_SOURCE_DIR}/check_npz.py)
