# Tests of comm/ (tests/test_comm.c): once as a single rank started without mpirun,
# and as 3 and 4 ranks under mpirun (more ranks than cores: LDM_MPIRUN oversubscribes).
# Included from tests/CMakeLists.txt, which defines ldm_c_test and LDM_MPIRUN.
# A multi-rank test that hangs (a rank stuck in a collective) fails on its timeout.

ldm_c_test(test_comm)
set_tests_properties(test_comm PROPERTIES TIMEOUT 60)
foreach(ranks 3 4)
  add_test(NAME test_comm_np${ranks}
    COMMAND ${LDM_MPIRUN} -np ${ranks} $<TARGET_FILE:test_comm>
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(test_comm_np${ranks} PROPERTIES TIMEOUT 120)
endforeach()

# These tests initialise and finalise MPI, whose plug-ins keep memory past
# MPI_Finalize. Leak checks stay on for our code; for LeakSanitizer to match those
# allocations to tests/lsan.supp it needs whole stacks (Open MPI is built without
# frame pointers, so the fast unwinder stops after a frame or two) and the
# plug-ins still loaded at exit (else their frames have no names).
set_property(TEST test_comm test_comm_np3 test_comm_np4 APPEND PROPERTY ENVIRONMENT
  "ASAN_OPTIONS=fast_unwind_on_malloc=0" "OMPI_MCA_mca_base_component_disable_dlclose=1")

# A rank stopped with SIGSTOP mid-training (tests/stalled_rank.sh): the other
# ranks name it within comm.timeout_s, the job ends, nothing is left running.
if(TARGET ldm)
  string(REPLACE ";" " " ldm_stalled_mpirun "${LDM_MPIRUN}")
  add_test(NAME cli_comm_stalled_rank
    COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/stalled_rank.sh ${CMAKE_CURRENT_BINARY_DIR}/stalled_rank)
  set_tests_properties(cli_comm_stalled_rank PROPERTIES TIMEOUT 240
    ENVIRONMENT "LDM=$<TARGET_FILE:ldm>;LDM_MPIRUN=${ldm_stalled_mpirun};LDM_CONFIGS=${CMAKE_SOURCE_DIR}/configs")
endif()

# Ranks that end together (tests/watch_goodbye.sh): each says goodbye to its two
# neighbours while they say theirs; no rank may take another's normal end for a
# lost rank. LDM_TEST_WATCH_BYE_PAUSE_MS widens the window between a goodbye
# being marked as said and being sent, where the watch once closed a connection
# before its goodbye went out (a job that ended normally failed with "lost rank").
if(TARGET ldm)
  add_test(NAME cli_comm_watch_goodbye
    COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/watch_goodbye.sh ${CMAKE_CURRENT_BINARY_DIR}/watch_goodbye)
  set_tests_properties(cli_comm_watch_goodbye PROPERTIES TIMEOUT 120
    ENVIRONMENT "LDM=$<TARGET_FILE:ldm>;LDM_MPIRUN=${ldm_stalled_mpirun}")
endif()
