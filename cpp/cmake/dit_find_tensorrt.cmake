# dit_find_tensorrt(): sets TENSORRT_INCLUDE_DIR (NvInfer.h) and TENSORRT_LIBRARY (libnvinfer).
#
# Linux packages and tars ship libnvinfer.so; the Windows zips name the library after the
# TensorRT major (nvinfer_10.lib / nvinfer_10.dll, nvinfer_11.lib, ...), so both spellings are
# searched, plain name first, under TENSORRT_ROOT (CMake or environment) and the default paths.
# The plugin / lean / dispatch libraries (nvinfer_plugin_10, nvinfer_lean_10, ...) never match.
function(dit_find_tensorrt)
  set(_names nvinfer)
  foreach(_major RANGE 10 19)
    list(APPEND _names nvinfer_${_major})
  endforeach()
  find_path(TENSORRT_INCLUDE_DIR NvInfer.h
            HINTS ${TENSORRT_ROOT} $ENV{TENSORRT_ROOT} PATH_SUFFIXES include include/x86_64-linux-gnu)
  find_library(TENSORRT_LIBRARY NAMES ${_names} NAMES_PER_DIR
               HINTS ${TENSORRT_ROOT} $ENV{TENSORRT_ROOT} PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu)
endfunction()
