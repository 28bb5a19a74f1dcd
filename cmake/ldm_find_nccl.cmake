# Where NCCL is: ldm_find_nccl(<ON|AUTO>) sets NCCL_LIBRARY and NCCL_INCLUDE_DIR
# (cache variables) and NCCL_FOUND. Looked for, in this order, under the
# NCCL_ROOT cache variable, the NCCL_ROOT environment variable (each a folder
# holding include/nccl.h and lib/ or lib64/ libnccl.so), the CUDA toolkit's
# folders (CUDAToolkit_INCLUDE_DIRS and CUDAToolkit_LIBRARY_DIR, else /usr/local/cuda),
# then CMake's system folders. Missing with ON: a configure error naming every
# folder searched and the variable to set; with AUTO: a warning (the build goes
# on without CUDA). Included by the top CMakeLists.txt, and by
# tests/find_nccl_probe.cmake, which runs it in script mode (cmake -P).

set(NCCL_ROOT "" CACHE PATH "Folder of an NCCL installation (include/nccl.h, lib/libnccl.so); also the NCCL_ROOT environment variable")

function(ldm_find_nccl requirement)
  set(roots "")
  if(NCCL_ROOT)
    list(APPEND roots "${NCCL_ROOT}")
  endif()
  if(DEFINED ENV{NCCL_ROOT} AND NOT "$ENV{NCCL_ROOT}" STREQUAL "")
    list(APPEND roots "$ENV{NCCL_ROOT}")
  endif()
  set(include_hints "")
  set(library_hints "")
  foreach(root IN LISTS roots)
    list(APPEND include_hints "${root}/include")
    list(APPEND library_hints "${root}/lib" "${root}/lib64")
  endforeach()
  if(CUDAToolkit_INCLUDE_DIRS OR CUDAToolkit_LIBRARY_DIR)
    list(APPEND include_hints ${CUDAToolkit_INCLUDE_DIRS})
    list(APPEND library_hints ${CUDAToolkit_LIBRARY_DIR})
  else()
    list(APPEND include_hints /usr/local/cuda/include)
    list(APPEND library_hints /usr/local/cuda/lib64 /usr/local/cuda/lib)
  endif()
  # What an earlier configure found (or the user set) stays in the cache,
  # unless NCCL_ROOT has changed since.
  if(DEFINED LDM_NCCL_SEARCHED_ROOTS AND NOT "${NCCL_ROOT}|$ENV{NCCL_ROOT}" STREQUAL "${LDM_NCCL_SEARCHED_ROOTS}")
    unset(NCCL_LIBRARY CACHE)
    unset(NCCL_INCLUDE_DIR CACHE)
  endif()
  set(LDM_NCCL_SEARCHED_ROOTS "${NCCL_ROOT}|$ENV{NCCL_ROOT}" CACHE INTERNAL "NCCL_ROOT of the last search")
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${include_hints})
  find_library(NCCL_LIBRARY nccl HINTS ${library_hints})
  # (a path given by hand must exist too)
  if(NCCL_LIBRARY AND EXISTS "${NCCL_LIBRARY}" AND NCCL_INCLUDE_DIR AND EXISTS "${NCCL_INCLUDE_DIR}/nccl.h")
    set(NCCL_FOUND TRUE PARENT_SCOPE)
    message(STATUS "ldm: NCCL ${NCCL_LIBRARY} (headers in ${NCCL_INCLUDE_DIR})")
    return()
  endif()
  set(NCCL_FOUND FALSE PARENT_SCOPE)
  set(missing "")
  if(NOT NCCL_INCLUDE_DIR OR NOT EXISTS "${NCCL_INCLUDE_DIR}/nccl.h")
    list(APPEND missing "nccl.h")
  endif()
  if(NOT NCCL_LIBRARY OR NOT EXISTS "${NCCL_LIBRARY}")
    list(APPEND missing "libnccl")
  endif()
  list(JOIN missing " and " missing_text)
  list(JOIN include_hints ", " include_text)
  list(JOIN library_hints ", " library_text)
  set(text "NCCL was not found (no ${missing_text}): looked for nccl.h in ${include_text} and libnccl in ${library_text}, then the system folders. Set NCCL_ROOT (cmake -DNCCL_ROOT=/path/to/nccl, or the NCCL_ROOT environment variable) to a folder with include/nccl.h and lib/libnccl.so")
  if(requirement STREQUAL "ON")
    message(FATAL_ERROR "LDM_CUDA=ON but ${text}")
  endif()
  message(WARNING "ldm: CUDA was found but ${text}; building without CUDA")
endfunction()
