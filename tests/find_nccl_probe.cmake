# The NCCL lookup of cmake/ldm_find_nccl.cmake in script mode, where nvcc and
# the CUDA toolkit are not needed (tests/CMakeLists.txt runs it):
#   cmake [-DNCCL_ROOT=DIR] [-DFAKE_NCCL=DIR] -DREQUIREMENT=ON|AUTO -P find_nccl_probe.cmake
# FAKE_NCCL: first make DIR an NCCL installation of empty files (include/nccl.h,
# lib/libnccl.so), which the lookup must find through NCCL_ROOT (given here or
# in the environment). Only the hints are searched (not this machine's own
# NCCL), and the toolkit's folders are taken to be empty, so that the test
# means the same everywhere. Prints "NCCL: LIBRARY INCLUDE_DIR" when found.
cmake_minimum_required(VERSION 3.20)
if(FAKE_NCCL)
  file(WRITE "${FAKE_NCCL}/include/nccl.h" "")
  file(WRITE "${FAKE_NCCL}/lib/libnccl.so" "")
endif()
set(CMAKE_FIND_USE_SYSTEM_ENVIRONMENT_PATH FALSE)
set(CMAKE_FIND_USE_CMAKE_SYSTEM_PATH FALSE)
set(CMAKE_FIND_USE_CMAKE_ENVIRONMENT_PATH FALSE)
set(CMAKE_FIND_LIBRARY_PREFIXES lib)
set(CMAKE_FIND_LIBRARY_SUFFIXES .so)
set(CUDAToolkit_INCLUDE_DIRS "${CMAKE_CURRENT_LIST_DIR}/no-toolkit/include")
set(CUDAToolkit_LIBRARY_DIR "${CMAKE_CURRENT_LIST_DIR}/no-toolkit/lib64")
include(${CMAKE_CURRENT_LIST_DIR}/../cmake/ldm_find_nccl.cmake)
ldm_find_nccl(${REQUIREMENT})
message("NCCL: ${NCCL_LIBRARY} ${NCCL_INCLUDE_DIR}")
