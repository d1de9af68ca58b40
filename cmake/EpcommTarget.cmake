# epcomm_target_defaults(<target>): the language level and code model of every epcomm target.
# Set per target, not through global CMAKE_* variables, so that a project that adds epcomm with
# add_subdirectory keeps its own settings for its own targets.
function(epcomm_target_defaults target)
  set_target_properties(${target} PROPERTIES
    CXX_STANDARD 17
    CXX_STANDARD_REQUIRED ON
    CXX_EXTENSIONS OFF
    # libepcomm (static) goes into the Python module and into consumers' shared libraries.
    POSITION_INDEPENDENT_CODE ON)
  if(EPCOMM_HAS_CUDA)
    set_target_properties(${target} PROPERTIES
      CUDA_STANDARD 17
      CUDA_STANDARD_REQUIRED ON
      CUDA_EXTENSIONS OFF
      CUDA_ARCHITECTURES "${EPCOMM_CUDA_ARCHITECTURES}")
  endif()
endfunction()
