# HmoePybind11Abi.cmake — hmoe_check_pybind11_abi(): does an extension compiled here share
# pybind11's internals with torch? A pybind11 module finds the classes other modules registered
# (torch's Tensor casters aside: c10d's ProcessGroup, Store, ...) only through internals stored
# under the same PYBIND11_INTERNALS_ID, which encodes the internals version, compiler type,
# standard library and C++ ABI. torch publishes three of them (torch._C._PYBIND11_COMPILER_TYPE,
# _PYBIND11_STDLIB, _PYBIND11_BUILD_ABI), and importing torch leaves its internals capsule in
# builtins under the whole ID (pybind11 versions that keep it elsewhere leave none: that part of
# the check is then skipped, and said so).
#
# The check compiles python/src/pybind11_abi_check.cpp (static_asserts comparing pybind11's
# macros with torch's values, written to <header_dir>/hmoe_torch_abi.h) with this compiler; the
# extension compiles the same file again with its own flags. A difference stops configuration
# with a message naming both values.
#
#   hmoe_check_pybind11_abi(
#     COMPILER_TYPE <torch's> STDLIB <torch's> BUILD_ABI <torch's> INTERNALS_ID <torch's or "">
#     SOURCE <pybind11_abi_check.cpp> HEADER_DIR <dir> INCLUDE_DIRS <pybind11 and Python headers>)
function(hmoe_check_pybind11_abi)
  cmake_parse_arguments(ARG "" "COMPILER_TYPE;STDLIB;BUILD_ABI;INTERNALS_ID;SOURCE;HEADER_DIR"
                        "INCLUDE_DIRS" ${ARGN})
  file(WRITE ${ARG_HEADER_DIR}/hmoe_torch_abi.h.tmp
       "// hmoe_torch_abi.h — torch's pybind11 ABI, written by cmake/HmoePybind11Abi.cmake.\n"
       "#pragma once\n"
       "#define HMOE_TORCH_PYBIND11_COMPILER_TYPE \"${ARG_COMPILER_TYPE}\"\n"
       "#define HMOE_TORCH_PYBIND11_STDLIB \"${ARG_STDLIB}\"\n"
       "#define HMOE_TORCH_PYBIND11_BUILD_ABI \"${ARG_BUILD_ABI}\"\n"
       "#define HMOE_TORCH_PYBIND11_INTERNALS_ID \"${ARG_INTERNALS_ID}\"\n")
  # Rewritten only when it changes, so that the extension is not recompiled on every configure.
  configure_file(${ARG_HEADER_DIR}/hmoe_torch_abi.h.tmp ${ARG_HEADER_DIR}/hmoe_torch_abi.h COPYONLY)

  set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
  try_compile(_abi_same ${CMAKE_CURRENT_BINARY_DIR}/CMakeFiles/hmoe-pybind11-abi-check
              SOURCES ${ARG_SOURCE}
              CMAKE_FLAGS "-DINCLUDE_DIRECTORIES=${ARG_HEADER_DIR};${ARG_INCLUDE_DIRS}"
              CXX_STANDARD 17 CXX_STANDARD_REQUIRED ON
              OUTPUT_VARIABLE _abi_output)
  # try_compile may cache its result (CMake < 3.25 and policy-dependent): check every time.
  set(_same ${_abi_same})
  unset(_abi_same CACHE)
  if(NOT _same)
    # The static_asserts' messages name the macro and both values.
    string(REGEX MATCHALL "hybridmoe: PYBIND11_[A-Z_]+: the extension has [^\n]*, torch has [^\n]*"
           _differences "${_abi_output}")
    list(REMOVE_DUPLICATES _differences)
    if(NOT _differences)
      message(FATAL_ERROR "pybind11 ABI check: ${ARG_SOURCE} does not compile:\n${_abi_output}")
    endif()
    string(REPLACE ";" "\n  " _differences "${_differences}")
    message(FATAL_ERROR
            "The pybind11 ABI of an extension built here differs from torch's, so torch's types "
            "(e.g. its ProcessGroup) could not cross into hybridmoe:\n  ${_differences}\n"
            "Build with the compiler and pybind11 torch was built with (a pip wheel ships its "
            "pybind11 in torch/include), or configure with -DHMOE_PYTHON=OFF.")
  endif()
  if(ARG_INTERNALS_ID)
    set(_internals "internals ${ARG_INTERNALS_ID}")
  else()
    set(_internals "internals ID not published by torch (not in builtins): not compared")
  endif()
  message(STATUS "pybind11 ABI: the extension's equals torch's: ${ARG_COMPILER_TYPE} "
                 "${ARG_STDLIB} ${ARG_BUILD_ABI}, ${_internals}")
endfunction()
