# Every writer onto a full disk (tests/full_disk_scenarios.sh): prepare (1 and 2
# ranks), encode, sample (.h5 and .png) and a checkpoint, each on a small tmpfs
# the scenario mounts in its own mount namespace: exit status 2, one line saying
# the disk is full and where, no partial file, the previous checkpoint whole and
# `latest`, and the run resumed exactly once there is space. Skipped (77) where
# a tmpfs cannot be mounted, unless LDM_REQUIRE_MOUNT=1 (tests/run.sh: CI runs
# as root). Included from tests/CMakeLists.txt (LDM_MPIRUN comes from there).

if(TARGET ldm)
  set(LDM_FULL_DISK_WORK ${CMAKE_CURRENT_BINARY_DIR}/full_disk)
  string(REPLACE ";" " " ldm_full_disk_mpirun "${LDM_MPIRUN}")
  foreach(scenario setup prepare encode sample checkpoint)
    add_test(NAME cli_full_disk_${scenario}
      COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/full_disk_scenarios.sh ${scenario} ${LDM_FULL_DISK_WORK}/${scenario}
              ${LDM_FULL_DISK_WORK}/common)
    set_tests_properties(cli_full_disk_${scenario} PROPERTIES TIMEOUT 180 SKIP_RETURN_CODE 77
      ENVIRONMENT "LDM=$<TARGET_FILE:ldm>;LDM_MPIRUN=${ldm_full_disk_mpirun};LDM_CONFIGS=${CMAKE_SOURCE_DIR}/configs")
    if(scenario STREQUAL "setup")
      set_tests_properties(cli_full_disk_${scenario} PROPERTIES FIXTURES_SETUP full_disk_inputs)
    else()
      set_tests_properties(cli_full_disk_${scenario} PROPERTIES FIXTURES_REQUIRED full_disk_inputs)
    endif()
  endforeach()
endif()
