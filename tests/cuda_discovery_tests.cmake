# Device discovery on the CPU emulation of CUDA (cmake -DLDM_CUDA=EMULATE): a
# machine without a GPU (LDM_CUDA_EMULATED_DEVICES=0: cudaErrorNoDevice) and a
# GPU machine whose driver is too old for the runtime
# (LDM_CUDA_EMULATED_DEVICES=insufficient-driver: cudaErrorInsufficientDriver)
# are told apart: a GPU test skips (77) on either, saying which, and fails
# with one line under LDM_REQUIRE_GPU=1, which a GPU machine's session sets
# (tests/gpu_session.sh); ldm names CUDA's error. Included from
# tests/CMakeLists.txt (LDM_EXPECT_ERROR and LDM_SYSTEM_PYTHON come from there).
if(NOT LDM_CUDA STREQUAL "EMULATE")
  return()
endif()

# cuda_discovery_expect_skip NAME DEVICES DEVICES_LINE SKIP_LINE: test_device with
# LDM_CUDA_EMULATED_DEVICES=DEVICES exits 77 and prints both lines (grep -E patterns).
function(cuda_discovery_expect_skip name devices devices_line skip_line)
  add_test(NAME ${name}
    COMMAND sh -c "devices=$0 skip=$1; shift; out=$(\"$@\"); s=$?; printf '%s\\n' \"$out\"; [ $s = 77 ] || { echo \"exit status $s, expected 77\"; exit 1; }; for p in \"$devices\" \"$skip\"; do printf '%s\\n' \"$out\" | grep -Eq \"$p\" || { echo \"no line matching: $p\"; exit 1; }; done"
            "${devices_line}" "${skip_line}" $<TARGET_FILE:test_device>)
  set_tests_properties(${name} PROPERTIES TIMEOUT 60 ENVIRONMENT "LDM_CUDA_EMULATED_DEVICES=${devices}")
endfunction()

set(ldm_driver_text "CUDA error: CUDA driver version is insufficient for CUDA runtime version")
cuda_discovery_expect_skip(cuda_discovery_no_device_skips 0
  "^devices: cpu [(][0-9]+ threads[)]; cuda: no device$" "^test_device: skipped [(]no CUDA device[)]$")
cuda_discovery_expect_skip(cuda_discovery_driver_error_skips insufficient-driver
  "^devices: cpu [(][0-9]+ threads[)]; cuda: ${ldm_driver_text}$" "^test_device: skipped [(]${ldm_driver_text}[)]$")

add_test(NAME cuda_discovery_no_device_required_fails
  COMMAND ${LDM_EXPECT_ERROR} 1 "^test_device: FAILED: LDM_REQUIRE_GPU=1 but no CUDA device$" --
          $<TARGET_FILE:test_device>)
add_test(NAME cuda_discovery_driver_error_required_fails
  COMMAND ${LDM_EXPECT_ERROR} 1 "^test_device: FAILED: LDM_REQUIRE_GPU=1 but ${ldm_driver_text}$" --
          $<TARGET_FILE:test_device>)
add_test(NAME cuda_discovery_driver_error_train_refused
  COMMAND ${LDM_EXPECT_ERROR} 2 "^ldm: error: ldm train: device[.]type: cuda: ${ldm_driver_text}$" --
          $<TARGET_FILE:ldm> train --config ${CMAKE_SOURCE_DIR}/configs/tiny.json --set device.type=cuda
          --data /nonexistent.h5 --run ${CMAKE_CURRENT_BINARY_DIR}/discovery-never)
set_tests_properties(cuda_discovery_no_device_required_fails PROPERTIES TIMEOUT 60
  ENVIRONMENT "LDM_CUDA_EMULATED_DEVICES=0;LDM_REQUIRE_GPU=1")
set_tests_properties(cuda_discovery_driver_error_required_fails PROPERTIES TIMEOUT 60
  ENVIRONMENT "LDM_CUDA_EMULATED_DEVICES=insufficient-driver;LDM_REQUIRE_GPU=1")
set_tests_properties(cuda_discovery_driver_error_train_refused PROPERTIES TIMEOUT 60
  ENVIRONMENT "LDM_CUDA_EMULATED_DEVICES=insufficient-driver")

# A GPU scenario of `ldm train` on a machine without a GPU: skipped, or failed
# with one line naming ldm's refusal under LDM_REQUIRE_GPU=1 (the scenario's
# own probe, before any training).
if(TARGET ldm)
  add_test(NAME cuda_discovery_scenario_required_fails
    COMMAND sh -c "out=$(sh \"$@\" 2>&1); s=$?; printf '%s\\n' \"$out\"; [ $s = 1 ] && printf '%s\\n' \"$out\" | grep -Eq '^FAIL: LDM_REQUIRE_GPU=1 but ldm refuses to train on cuda: ldm: error: ldm train: device[.]type: cuda: no CUDA device on this machine$'" sh
            ${CMAKE_CURRENT_SOURCE_DIR}/train_scenarios.sh cuda-precision ${CMAKE_CURRENT_BINARY_DIR}/train/discovery-required)
  add_test(NAME cuda_discovery_scenario_skips
    COMMAND sh -c "sh \"$@\"; s=$?; echo \"exit status $s, expected 77\"; [ $s = 77 ]" sh
            ${CMAKE_CURRENT_SOURCE_DIR}/train_scenarios.sh cuda-precision ${CMAKE_CURRENT_BINARY_DIR}/train/discovery-skips)
  set_tests_properties(cuda_discovery_scenario_skips PROPERTIES TIMEOUT 60)
  set_tests_properties(cuda_discovery_scenario_required_fails PROPERTIES TIMEOUT 60)
  foreach(t cuda_discovery_scenario_required_fails cuda_discovery_scenario_skips)
    set_property(TEST ${t} APPEND PROPERTY ENVIRONMENT "LDM_CUDA_EMULATED_DEVICES=0" "LDM=$<TARGET_FILE:ldm>"
      "LDM_PYTHON=${LDM_SYSTEM_PYTHON}" "LDM_TESTS=${CMAKE_CURRENT_SOURCE_DIR}" "LDM_CONFIGS=${CMAKE_SOURCE_DIR}/configs")
  endforeach()
  set_property(TEST cuda_discovery_scenario_required_fails APPEND PROPERTY ENVIRONMENT "LDM_REQUIRE_GPU=1")
endif()
