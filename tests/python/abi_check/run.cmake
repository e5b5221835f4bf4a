# run.cmake — the pybind11 ABI check (cmake/HmoePybind11Abi.cmake) accepts torch's true values
# and refuses a torch whose PYBIND11_BUILD_ABI differs, naming both values. Called by ctest with
# -DSOURCE_DIR, -DWORK_DIR, -DCOMPILER_TYPE, -DSTDLIB, -DBUILD_ABI, -DINTERNALS_ID,
# -DINCLUDE_DIRS (torch's values, as the build's configuration found them).
function(configure_check name build_abi internals_id)
  file(REMOVE_RECURSE ${WORK_DIR}/${name})
  execute_process(
    COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/python/abi_check -B ${WORK_DIR}/${name}
            -DHMOE_SOURCE_DIR=${SOURCE_DIR} -DTORCH_COMPILER_TYPE=${COMPILER_TYPE}
            -DTORCH_STDLIB=${STDLIB} -DTORCH_BUILD_ABI=${build_abi}
            -DTORCH_INTERNALS_ID=${internals_id} "-DABI_INCLUDE_DIRS=${INCLUDE_DIRS}"
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  set(rc ${rc} PARENT_SCOPE)
  set(out "${out}${err}" PARENT_SCOPE)
endfunction()

configure_check(same "${BUILD_ABI}" "${INTERNALS_ID}")
if(NOT rc EQUAL 0 OR NOT out MATCHES "pybind11 ABI: the extension's equals torch's")
  message(FATAL_ERROR "torch's own values were refused (${rc}):\n${out}")
endif()
message(STATUS "torch's values accepted")

configure_check(other "${BUILD_ABI}_other" "")
string(REGEX REPLACE "[ \n]+" " " flat "${out}")
set(expected "PYBIND11_BUILD_ABI: the extension has ${BUILD_ABI}, torch has ${BUILD_ABI}_other")
if(rc EQUAL 0 OR NOT flat MATCHES "differs from torch's" OR NOT flat MATCHES "${expected}")
  message(FATAL_ERROR "a different PYBIND11_BUILD_ABI was not refused with '${expected}' "
                      "(${rc}):\n${out}")
endif()
message(STATUS "a different PYBIND11_BUILD_ABI refused: ${expected}")
