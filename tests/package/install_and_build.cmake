# cmake -P script behind the package_consumer test: installs epcomm's build tree into a fresh
# prefix, then configures, builds and runs consumer/ against that prefix alone.
# -D inputs: BUILD_DIR, WORK_DIR, CONSUMER_DIR, CONFIG (may be empty), GENERATOR,
# MAKE_PROGRAM, CXX_COMPILER, VERSION; optional CUDA_ROOT, MPIEXEC (a command line to run a
# program on 2 processes, separated by spaces).
cmake_minimum_required(VERSION 3.25)

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " line "${ARGN}")
    message(FATAL_ERROR "failed (${rc}): ${line}")
  endif()
endfunction()

set(config_args)
if(CONFIG)
  set(config_args --config ${CONFIG})
endif()
set(prefix ${WORK_DIR}/prefix)
set(build ${WORK_DIR}/build)
file(REMOVE_RECURSE ${WORK_DIR})

run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix} ${config_args})

set(configure ${CMAKE_COMMAND} -S ${CONSUMER_DIR} -B ${build} -G ${GENERATOR}
    -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_CXX_COMPILER=${CXX_COMPILER}
    -DEPCOMM_EXPECTED_VERSION=${VERSION}
    # Only the prefix may provide epcomm: no package registries.
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
if(MAKE_PROGRAM)
  list(APPEND configure -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM})
endif()
if(CONFIG)
  list(APPEND configure -DCMAKE_BUILD_TYPE=${CONFIG})
endif()
if(CUDA_ROOT)
  list(APPEND configure -DCUDAToolkit_ROOT=${CUDA_ROOT})
endif()
run(${configure})
file(STRINGS ${build}/CMakeCache.txt found REGEX "^epcomm_DIR:")
if(NOT found STREQUAL "epcomm_DIR:PATH=${prefix}/lib/cmake/epcomm")
  message(FATAL_ERROR "the consumer found epcomm elsewhere: ${found}")
endif()
run(${CMAKE_COMMAND} --build ${build} ${config_args})

# Multi-config generators put the programs in a folder per configuration.
find_program(consumer NAMES consumer PATHS ${build} ${build}/${CONFIG} NO_DEFAULT_PATH
             REQUIRED)
run(${consumer})
if(MPIEXEC)
  find_program(consumer_mpi NAMES consumer_mpi PATHS ${build} ${build}/${CONFIG}
               NO_DEFAULT_PATH REQUIRED)
  separate_arguments(mpiexec UNIX_COMMAND "${MPIEXEC}")
  run(${mpiexec} ${consumer_mpi})
endif()
