# Tests of the checkpoint format (tests/test_checkpoint.c) and of `ldm inspect`
# on a good checkpoint, a damaged one, a run whose newest checkpoint is damaged,
# and paths that are no checkpoint (tests/checkpoint_scenarios.sh). Included from
# tests/CMakeLists.txt (ldm_c_test, LDM_EXPECT_ERROR come from there).

ldm_c_test(test_checkpoint)
set_tests_properties(test_checkpoint PROPERTIES TIMEOUT 120)

if(TARGET ldm)
  set(LDM_CHECKPOINT_WORK ${CMAKE_CURRENT_BINARY_DIR}/checkpoint)
  foreach(scenario inspect-good inspect-damaged inspect-run-skips inspect-latest)
    string(REPLACE "-" "_" test_name "cli_${scenario}")
    add_test(NAME ${test_name}
      COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/checkpoint_scenarios.sh ${scenario} ${LDM_CHECKPOINT_WORK}/${scenario})
    set_tests_properties(${test_name} PROPERTIES TIMEOUT 60
      ENVIRONMENT "LDM=$<TARGET_FILE:ldm>;LDM_TEST_CHECKPOINT=$<TARGET_FILE:test_checkpoint>")
  endforeach()

  add_test(NAME cli_inspect_missing_path
    COMMAND ${LDM_EXPECT_ERROR} 2 "^ldm: error: /nonexistent/run: cannot inspect: No such file or directory$" --
      $<TARGET_FILE:ldm> inspect /nonexistent/run)
  add_test(NAME cli_inspect_not_a_run
    COMMAND ${LDM_EXPECT_ERROR} 2
      "^ldm: error: .*/configs: neither a checkpoint directory [(]no manifest[.]json[)] nor a run directory with checkpoints" --
      $<TARGET_FILE:ldm> inspect ${CMAKE_SOURCE_DIR}/configs)
  add_test(NAME cli_inspect_no_path
    COMMAND ${LDM_EXPECT_ERROR} 2 "^ldm: error: ldm inspect: expected a checkpoint or run directory" --
      $<TARGET_FILE:ldm> inspect)
  set_tests_properties(cli_inspect_missing_path cli_inspect_not_a_run cli_inspect_no_path PROPERTIES TIMEOUT 60)
endif()
