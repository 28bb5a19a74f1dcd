# RUN/tb/ of ldm train and train-ae against metrics.jsonl (tests/tensorboard_scenarios.sh,
# tests/check_tensorboard.py): read with the check's own TFRecord/protobuf reader
# (Debian's python3 alone), and with PyPI tensorboard's reader from the Python
# that -DLDM_TEST_TENSORBOARD_PYTHON names (tests/run.sh makes that venv,
# .venv-tests, and always passes it, so CI runs this test; where that Python
# lacks tensorboard the test fails). Included from tests/CMakeLists.txt.

set(LDM_TEST_TENSORBOARD_PYTHON "" CACHE FILEPATH
    "a python3 with PyPI tensorboard for the cli_tensorboard_pypi_reader test (tests/run.sh: .venv-tests/bin/python3)")
if(TARGET ldm)
  set(ldm_tensorboard_readers own ${LDM_SYSTEM_PYTHON})
  if(LDM_TEST_TENSORBOARD_PYTHON)
    list(APPEND ldm_tensorboard_readers tensorboard ${LDM_TEST_TENSORBOARD_PYTHON})
  endif()
  while(ldm_tensorboard_readers)
    list(POP_FRONT ldm_tensorboard_readers reader python)
    set(test_name cli_tensorboard_${reader}_reader)
    if(reader STREQUAL "tensorboard")
      set(test_name cli_tensorboard_pypi_reader)
    endif()
    add_test(NAME ${test_name} COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/tensorboard_scenarios.sh
             ${CMAKE_CURRENT_BINARY_DIR}/tensorboard/${reader} ${reader} ${python})
    set_tests_properties(${test_name} PROPERTIES TIMEOUT 300
      ENVIRONMENT "LDM=$<TARGET_FILE:ldm>;LDM_TESTS=${CMAKE_CURRENT_SOURCE_DIR};LDM_CONFIGS=${CMAKE_SOURCE_DIR}/configs")
  endwhile()
endif()
