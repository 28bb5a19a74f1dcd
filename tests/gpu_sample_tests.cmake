# Tests of `ldm sample`, `ldm encode`, `ldm decode` and the pictures of
# `ldm train` on a GPU against the CPU (tests/gpu_sample_scenarios.sh; each
# skipped, 77, where ldm refuses cuda, failed instead under LDM_REQUIRE_GPU=1),
# and their --device refusals. Labelled cuda (tests/CMakeLists.txt: names with
# "cuda"), so the emulated build and tests/gpu_session.sh run them. Included from
# tests/CMakeLists.txt (LDM_MPIRUN, LDM_SYSTEM_PYTHON and LDM_EXPECT_ERROR come
# from there and prepare_tests.cmake).

if(TARGET ldm)
  set(LDM_GPU_SAMPLE_WORK ${CMAKE_CURRENT_BINARY_DIR}/gpu_sample)
  string(REPLACE ";" " " ldm_gpu_sample_mpirun "${LDM_MPIRUN}")
  foreach(scenario setup sample-cuda sample-ranks-cuda encode-cuda encode-ranks-cuda train-pictures-cuda
                  distill-pictures-cuda)
    string(REPLACE "-" "_" test_name "cli_${scenario}")
    if(scenario STREQUAL "setup")
      set(test_name cli_sample_cuda_setup)
    endif()
    add_test(NAME ${test_name}
      COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/gpu_sample_scenarios.sh ${scenario} ${LDM_GPU_SAMPLE_WORK}/${scenario}
              ${LDM_GPU_SAMPLE_WORK}/common)
    set_tests_properties(${test_name} PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77
      ENVIRONMENT "LDM=$<TARGET_FILE:ldm>;LDM_MPIRUN=${ldm_gpu_sample_mpirun};LDM_PYTHON=${LDM_SYSTEM_PYTHON};\
LDM_TESTS=${CMAKE_CURRENT_SOURCE_DIR};LDM_CONFIGS=${CMAKE_SOURCE_DIR}/configs")
    if(scenario STREQUAL "setup")
      set_tests_properties(${test_name} PROPERTIES FIXTURES_SETUP gpu_sample_inputs)
    elseif(NOT scenario MATCHES "pictures-cuda$")
      set_tests_properties(${test_name} PROPERTIES FIXTURES_REQUIRED gpu_sample_inputs)
    endif()
  endforeach()

  # --device cuda with no GPU to run on: one line and exit 2, before any input is read.
  set(ldm_never ${LDM_GPU_SAMPLE_WORK}/never.h5)
  foreach(command sample encode decode)
    if(command STREQUAL "sample")
      set(ldm_args --model /nonexistent --n 1 --out ${ldm_never})
    else()
      set(ldm_args --ae /nonexistent --data /nonexistent.h5 --out ${ldm_never})
    endif()
    add_test(NAME cli_${command}_device_cuda_refused
      COMMAND ${LDM_EXPECT_ERROR} 2
        "^ldm: error: ldm ${command}: option --device: cuda: (this build has no CUDA [(]cmake -DLDM_CUDA=ON[)]|no CUDA device on this machine|CUDA error: .+)$" --
        $<TARGET_FILE:ldm> ${command} --device cuda ${ldm_args})
    set_tests_properties(cli_${command}_device_cuda_refused PROPERTIES TIMEOUT 60 ENVIRONMENT "CUDA_VISIBLE_DEVICES=-1")
  endforeach()
  add_test(NAME cli_sample_device_bad_cuda
    COMMAND ${LDM_EXPECT_ERROR} 2 "^ldm: error: ldm sample: option --device: expected auto, cpu or cuda, got 'gpu'$" --
      $<TARGET_FILE:ldm> sample --device gpu --model /nonexistent --n 1 --out ${LDM_GPU_SAMPLE_WORK}/never.h5)
  set_tests_properties(cli_sample_device_bad_cuda PROPERTIES TIMEOUT 60)
endif()
