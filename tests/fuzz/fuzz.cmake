# The libFuzzer targets of tests/fuzz/ (a build of their own: -DLDM_FUZZ=ON with
# CC=clang-14, which instruments every library; tests/fuzz/run.sh makes it and
# runs them). Included from the top CMakeLists.txt.
set(LDM_FUZZ_TARGETS safetensors config state manifest dataset png idx)
foreach(target ${LDM_FUZZ_TARGETS})
  add_executable(fuzz_${target} tests/fuzz/fuzz_${target}.c tests/fuzz/fuzz_common.c)
  target_include_directories(fuzz_${target} PRIVATE ${CMAKE_SOURCE_DIR}/tests/fuzz)
  target_link_libraries(fuzz_${target} PRIVATE ldm_cli)
  target_link_options(fuzz_${target} PRIVATE -fsanitize=fuzzer)
endforeach()
add_custom_target(fuzz_targets)
foreach(target ${LDM_FUZZ_TARGETS})
  add_dependencies(fuzz_targets fuzz_${target})
endforeach()
