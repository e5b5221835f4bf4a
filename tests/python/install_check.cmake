# install_check.cmake — `cmake --install` of the build into a scratch prefix, then the package
# imported from there with nothing of the build tree on the path: the extension must find the
# installed libhybridmoe through its RPATH. Called by ctest with -DBUILD_DIR, -DWORK_DIR,
# -DPYTHON (the interpreter) and -DPACKAGE_DIR (HMOE_PYTHON_INSTALL_DIR, relative to the prefix).
file(REMOVE_RECURSE ${WORK_DIR})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix
                RESULT_VARIABLE rc OUTPUT_QUIET)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install failed: ${rc}")
endif()
set(site ${WORK_DIR}/prefix/${PACKAGE_DIR})
set(ENV{PYTHONPATH} ${site})
set(code [=[
import os, sys, hybridmoe
prefix = sys.argv[1]
assert hybridmoe.__file__.startswith(prefix + "/"), hybridmoe.__file__
libs = {line.split()[-1] for line in open("/proc/self/maps") if "libhybridmoe" in line}
assert libs and all(lib.startswith(prefix + "/") for lib in libs), libs
try:
    hybridmoe.hf_config(prefix)
except hybridmoe.Error as e:
    assert "config.json" in str(e), e
print("installed package ok:", hybridmoe.__version__, hybridmoe.__file__, sorted(libs))
]=])
execute_process(COMMAND ${PYTHON} -c "${code}" ${WORK_DIR}/prefix WORKING_DIRECTORY ${WORK_DIR}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message(STATUS "${out}${err}")
if(NOT rc EQUAL 0 OR NOT out MATCHES "installed package ok")
  message(FATAL_ERROR "importing the installed package from ${site} failed: ${rc}")
endif()
