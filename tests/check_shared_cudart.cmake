# Every link of a CUDA build uses the shared CUDA runtime (see the top
# CMakeLists.txt): cmake -DBUILD_DIR=DIR -P check_shared_cudart.cmake reads the
# link lines CMake generated under DIR (link.txt and the response files they
# name) and fails when one names cudart_static, or when none names libcudart
# (then it looked at the wrong files, and would pass whatever the build does).
cmake_minimum_required(VERSION 3.20)
file(GLOB_RECURSE link_files "${BUILD_DIR}/*/link.txt" "${BUILD_DIR}/*/linkLibs.rsp")
set(static "")
set(shared_seen 0)
foreach(f IN LISTS link_files)
  file(READ "${f}" text)
  if(text MATCHES "cudart_static")
    list(APPEND static "${f}")
  endif()
  if(text MATCHES "libcudart[.]so|-lcudart( |$)")
    set(shared_seen 1)
  endif()
endforeach()
list(LENGTH link_files count)
if(static)
  list(JOIN static "\n  " static_text)
  message(FATAL_ERROR "the static CUDA runtime is linked by:\n  ${static_text}")
endif()
if(NOT shared_seen)
  message(FATAL_ERROR "no link line under ${BUILD_DIR} names the shared CUDA runtime (${count} files read)")
endif()
message("every link line under ${BUILD_DIR} uses the shared CUDA runtime (${count} files read)")
