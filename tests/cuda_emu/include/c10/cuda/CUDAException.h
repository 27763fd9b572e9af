// CUDA emulator (see ../../cuda_runtime.h): a failed launch has already thrown; a failed
// runtime call throws here.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
#define C10_CUDA_CHECK(expr)                                                                \
  do {                                                                                      \
    if ((expr) != cudaSuccess)                                                              \
      throw std::runtime_error(std::string("cuda emulator: ") + #expr + " failed");        \
  } while (0)
