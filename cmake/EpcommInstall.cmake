# Install rules and the CMake package. After `cmake --install <build> --prefix <p>`, a project
# with `find_package(epcomm CONFIG REQUIRED)` (CMAKE_PREFIX_PATH=<p>) links epcomm::epcomm;
# `COMPONENTS mpi` adds epcomm::mpi. tests/package builds such a project in CI.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)
set(epcomm_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/epcomm)

# The exported header file sets give consumers the include directory from CMake 3.23 on; this
# gives it to older ones too.
target_include_directories(epcomm INTERFACE $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
install(TARGETS epcomm EXPORT epcommTargets FILE_SET HEADERS)
install(EXPORT epcommTargets NAMESPACE epcomm:: DESTINATION ${epcomm_cmake_dir})
# epcomm::mpi has an export of its own: the package loads it only for consumers that ask for
# it, so that the others need no MPI.
if(EPCOMM_HAS_MPI)
  install(TARGETS epcomm_mpi EXPORT epcommMpiTargets FILE_SET HEADERS)
  install(EXPORT epcommMpiTargets NAMESPACE epcomm:: DESTINATION ${epcomm_cmake_dir})
endif()

configure_package_config_file(cmake/epcommConfig.cmake.in
  ${PROJECT_BINARY_DIR}/epcommConfig.cmake
  INSTALL_DESTINATION ${epcomm_cmake_dir})
# 0.x: a minor release may change the API, so only the same major.minor is compatible.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/epcommConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/epcommConfig.cmake
              ${PROJECT_BINARY_DIR}/epcommConfigVersion.cmake
        DESTINATION ${epcomm_cmake_dir})
