# Bad inputs the other test files did not cover (tests/bad_input_scenarios.sh),
# each refused on 2 ranks with one line and exit status 2, its inputs left as
# they were: damaged checkpoints given to --resume, a run folder that is a file,
# data set files missing what the format requires, configs. docs/testing.md
# catalogues these with every other bad-input test. Included from
# tests/CMakeLists.txt (LDM_MPIRUN, LDM_SYSTEM_PYTHON come from there).

if(TARGET ldm)
  set(LDM_BAD_INPUT_WORK ${CMAKE_CURRENT_BINARY_DIR}/bad_input)
  string(REPLACE ";" " " ldm_bad_input_mpirun "${LDM_MPIRUN}")
  foreach(case setup resume-truncated-weights resume-no-manifest resume-other-format resume-missing run-is-a-file
               data-zero-samples data-zero-std data-no-num-classes data-no-latent-stats data-both-kinds
               config-section-twice config-empty config-comm-timeout)
    string(REPLACE "-" "_" test_name "cli_bad_input_${case}")
    add_test(NAME ${test_name}
      COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/bad_input_scenarios.sh ${case} ${LDM_BAD_INPUT_WORK}/${case}
              ${LDM_BAD_INPUT_WORK}/common)
    set_tests_properties(${test_name} PROPERTIES TIMEOUT 120
      ENVIRONMENT "LDM=$<TARGET_FILE:ldm>;LDM_MPIRUN=${ldm_bad_input_mpirun};LDM_PYTHON=${LDM_SYSTEM_PYTHON};\
LDM_TESTS=${CMAKE_CURRENT_SOURCE_DIR};LDM_CONFIGS=${CMAKE_SOURCE_DIR}/configs")
    if(case STREQUAL "setup")
      set_tests_properties(${test_name} PROPERTIES FIXTURES_SETUP bad_input_common)
    else()
      set_tests_properties(${test_name} PROPERTIES FIXTURES_REQUIRED bad_input_common)
    endif()
  endforeach()
endif()
