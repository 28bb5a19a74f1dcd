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

# A process started without a launcher starts MPI without Open MPI's daemon and
# network probes (comm_init: 0.4 s of every command otherwise); one that a launcher
# started, or whose environment says so, starts as before.
if(TARGET ldm)
  add_test(NAME cli_comm_started_alone COMMAND $<TARGET_FILE:ldm> version)
  set_tests_properties(cli_comm_started_alone PROPERTIES ENVIRONMENT "LDM_COMM_VERBOSE=1"
    PASS_REGULAR_EXPRESSION "comm: rank 0/1 on [^\n]*: local rank 0/1 \\(started alone: no launcher, no MPI daemon\\)")
  add_test(NAME cli_comm_launcher_marked COMMAND $<TARGET_FILE:ldm> version)
  set_tests_properties(cli_comm_launcher_marked PROPERTIES ENVIRONMENT "LDM_COMM_VERBOSE=1;MPI_LOCALNRANKS=1"
    PASS_REGULAR_EXPRESSION "comm: rank 0/1 on [^\n]*: local rank 0/1\n" FAIL_REGULAR_EXPRESSION "started alone")
  add_test(NAME cli_comm_mpirun_not_alone COMMAND ${LDM_MPIRUN} -np 2 -x LDM_COMM_VERBOSE=1 $<TARGET_FILE:ldm> version)
  set_tests_properties(cli_comm_mpirun_not_alone PROPERTIES TIMEOUT 60
    PASS_REGULAR_EXPRESSION "comm: rank 1/2 on [^\n]*: local rank 1/2\n" FAIL_REGULAR_EXPRESSION "started alone")
endif()
