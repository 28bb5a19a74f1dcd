# Command-line test of `ldm forward` against the PyTorch fixture, and of its bad-input
# errors (tests/test_forward_command.c). Included from tests/CMakeLists.txt; the test
# runs the ldm program given as its argument, from the repository root.

if(TARGET ldm)
  add_executable(test_forward_command test_forward_command.c)
  target_link_libraries(test_forward_command PRIVATE ldm_core)
  target_include_directories(test_forward_command PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  add_test(NAME test_forward_command
    COMMAND test_forward_command $<TARGET_FILE:ldm>
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
endif()
