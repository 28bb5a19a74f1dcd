# Multi-host tests (tests/cluster_scenarios.sh) on a test cluster of network
# namespaces (launch/cluster.sh): 2 hosts x 2 ranks train like 1 host x 4 ranks
# and like 1 rank, with the same checkpoints; local ranks per host; a host's
# ranks killed, or its link cut, in mid-run: every surviving rank names the lost
# one and ends, nothing is left running, and the run resumes on the remaining
# host. Skipped (exit 77) where network namespaces cannot be made (not root).
# Each scenario builds a cluster of its own (unique namespace names), so they
# may run side by side. Included from tests/CMakeLists.txt (LDM_MPIRUN and
# LDM_SYSTEM_PYTHON come from there).

if(TARGET ldm)
  set(LDM_CLUSTER_WORK ${CMAKE_CURRENT_BINARY_DIR}/cluster)
  string(REPLACE ";" " " ldm_cluster_mpirun "${LDM_MPIRUN}")
  foreach(scenario equivalence layout host-failure host-partition)
    string(REPLACE "-" "_" test_name "cli_cluster_${scenario}")
    add_test(NAME ${test_name}
      COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/cluster_scenarios.sh ${scenario} ${LDM_CLUSTER_WORK}/${scenario})
    set_tests_properties(${test_name} PROPERTIES TIMEOUT 240 SKIP_RETURN_CODE 77
      ENVIRONMENT "LDM=$<TARGET_FILE:ldm>;LDM_MPIRUN=${ldm_cluster_mpirun};MPIRUN=${MPIEXEC_EXECUTABLE};\
LDM_PYTHON=${LDM_SYSTEM_PYTHON};LDM_TESTS=${CMAKE_CURRENT_SOURCE_DIR};LDM_CONFIGS=${CMAKE_SOURCE_DIR}/configs;\
LDM_LAUNCH=${CMAKE_SOURCE_DIR}/launch")
  endforeach()
endif()
