# `ldm train --init` (tests/init_scenarios.sh: exact start from a file, bf16
# accepted, --resume auto, the refusals) and, with Debian's PyTorch,
# model/convert_dit_checkpoint.py on a PyTorch checkpoint in the public DiT's
# layout with learn_sigma, loaded by --init and checked against the PyTorch
# model (tests/check_init_torch.py; exits 77, skipped, without torch, like the
# other torch tests: tests/run.sh installs it). Included from
# tests/CMakeLists.txt after train_tests.cmake (ldm_poisoned_gradient) and
# evaluate_tests.cmake (LDM_EXPECT_ERROR).

if(TARGET ldm)
  set(LDM_INIT_WORK ${CMAKE_CURRENT_BINARY_DIR}/init)
  add_test(NAME cli_train_init COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/init_scenarios.sh ${LDM_INIT_WORK}/scenarios)
  set_tests_properties(cli_train_init PROPERTIES TIMEOUT 300
    ENVIRONMENT "LDM=$<TARGET_FILE:ldm>;LDM_POISONED=$<TARGET_FILE:ldm_poisoned_gradient>;LDM_PYTHON=${LDM_SYSTEM_PYTHON};\
LDM_TESTS=${CMAKE_CURRENT_SOURCE_DIR};LDM_CONFIGS=${CMAKE_SOURCE_DIR}/configs;LDM_EXPECT_ERROR=${LDM_EXPECT_ERROR}")
  add_test(NAME cli_train_init_torch COMMAND ${LDM_SYSTEM_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/check_init_torch.py
           $<TARGET_FILE:ldm> $<TARGET_FILE:ldm_poisoned_gradient> ${CMAKE_SOURCE_DIR}/configs ${LDM_INIT_WORK}/torch)
  set_tests_properties(cli_train_init_torch PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77)
endif()
