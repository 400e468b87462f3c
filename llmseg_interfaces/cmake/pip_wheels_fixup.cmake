# Used only when building against the ROS 2 PyPI wheels (scripts/build_interfaces.sh passes it as
# CMAKE_PROJECT_INCLUDE); a colcon build on a real ROS 2 install does not need it.
#
# The wheels export `<pkg>::<pkg>__rosidl_generator_py` targets whose INTERFACE_INCLUDE_DIRECTORIES
# name the wheel builder's Python and NumPy headers (/opt/python/cp3XX-cp3XX/...), which do not exist
# here; CMake refuses to generate with a non-existent imported include path. At the end of the
# top-level CMakeLists (after every find_package) re-point them to this interpreter's headers.

function(_llmseg_fix_wheel_python_includes)
  find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)
  get_directory_property(_targets DIRECTORY "${CMAKE_SOURCE_DIR}" IMPORTED_TARGETS)
  foreach(_target IN LISTS _targets)
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_fixed)
    set(_changed FALSE)
    foreach(_dir IN LISTS _dirs)
      if(_dir MATCHES "numpy" AND NOT EXISTS "${_dir}")
        list(APPEND _fixed ${Python3_NumPy_INCLUDE_DIRS})
        set(_changed TRUE)
      elseif(_dir MATCHES "/include/python3" AND NOT EXISTS "${_dir}")
        list(APPEND _fixed ${Python3_INCLUDE_DIRS})
        set(_changed TRUE)
      else()
        list(APPEND _fixed "${_dir}")
      endif()
    endforeach()
    if(_changed)
      list(REMOVE_DUPLICATES _fixed)
      set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_fixed}")
      message(STATUS "llmseg: re-pointed the Python/NumPy include dirs of ${_target}")
    endif()
  endforeach()
endfunction()

cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _llmseg_fix_wheel_python_includes)
