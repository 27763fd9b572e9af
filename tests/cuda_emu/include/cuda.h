// Stand-in for the CUDA driver API's <cuda.h> in the CPU emulator (see cuda_runtime.h):
// the tensor-map types and cuTensorMapEncodeTiled, which fastnn's wgmma GEMM uses to
// describe its operands to the tensor-memory accelerator. The map keeps what the
// emulator's TMA copy (emu::tma_load_2d) needs, and encoding checks the conditions the
// driver documents for them.
#pragma once

#include <cstdint>
#include <cstring>

using cuuint32_t = uint32_t;
using cuuint64_t = uint64_t;

enum CUresult { CUDA_SUCCESS = 0, CUDA_ERROR_INVALID_VALUE = 1 };
enum CUtensorMapDataType {
  CU_TENSOR_MAP_DATA_TYPE_FLOAT16 = 6,
  CU_TENSOR_MAP_DATA_TYPE_FLOAT32 = 7,
  CU_TENSOR_MAP_DATA_TYPE_FLOAT64 = 8,
  CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 = 9,
};
enum CUtensorMapInterleave { CU_TENSOR_MAP_INTERLEAVE_NONE = 0 };
enum CUtensorMapSwizzle {
  CU_TENSOR_MAP_SWIZZLE_NONE = 0,
  CU_TENSOR_MAP_SWIZZLE_32B,
  CU_TENSOR_MAP_SWIZZLE_64B,
  CU_TENSOR_MAP_SWIZZLE_128B,
};
enum CUtensorMapL2promotion {
  CU_TENSOR_MAP_L2_PROMOTION_NONE = 0,
  CU_TENSOR_MAP_L2_PROMOTION_L2_64B,
  CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
  CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
};
enum CUtensorMapFloatOOBfill { CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE = 0 };

struct alignas(64) CUtensorMap {
  cuuint64_t opaque[16];
};

namespace emu {
// What the emulator keeps in a CUtensorMap's 128 bytes (2-D maps only).
struct TensorMap2d {
  const unsigned char* base;
  uint64_t dims[2];    // elements; dims[0] innermost
  uint64_t stride;     // bytes from one dims[1] index to the next
  uint32_t box[2];     // elements
  uint32_t elem;       // bytes per element
  CUtensorMapSwizzle swizzle;
};
static_assert(sizeof(TensorMap2d) <= sizeof(CUtensorMap), "emulated tensor map too large");
inline TensorMap2d decode(const CUtensorMap* map) {
  TensorMap2d t;
  std::memcpy(&t, map->opaque, sizeof(t));
  return t;
}
}  // namespace emu

inline CUresult cuTensorMapEncodeTiled(CUtensorMap* map, CUtensorMapDataType type, cuuint32_t rank,
                                       void* address, const cuuint64_t* dims,
                                       const cuuint64_t* strides, const cuuint32_t* box,
                                       const cuuint32_t* element_strides,
                                       CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle,
                                       CUtensorMapL2promotion, CUtensorMapFloatOOBfill fill) {
  const uint32_t elem = type == CU_TENSOR_MAP_DATA_TYPE_FLOAT16 || type == CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 ? 2
                        : type == CU_TENSOR_MAP_DATA_TYPE_FLOAT32 ? 4
                        : type == CU_TENSOR_MAP_DATA_TYPE_FLOAT64 ? 8 : 0;
  // the driver's documented limits, for the subset modelled (rank 2, no interleave)
  if (elem == 0 || rank != 2 || interleave != CU_TENSOR_MAP_INTERLEAVE_NONE ||
      fill != CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE || reinterpret_cast<uintptr_t>(address) % 16 != 0)
    return CUDA_ERROR_INVALID_VALUE;
  for (int d = 0; d < 2; ++d)
    if (dims[d] == 0 || dims[d] > (uint64_t{1} << 32) || box[d] == 0 || box[d] > 256 ||
        element_strides[d] != 1)
      return CUDA_ERROR_INVALID_VALUE;
  if (strides[0] % 16 != 0 || strides[0] >= (uint64_t{1} << 40) || (box[0] * elem) % 16 != 0)
    return CUDA_ERROR_INVALID_VALUE;
  const uint32_t span = swizzle == CU_TENSOR_MAP_SWIZZLE_128B ? 128
                        : swizzle == CU_TENSOR_MAP_SWIZZLE_64B ? 64
                        : swizzle == CU_TENSOR_MAP_SWIZZLE_32B ? 32 : 0;
  if (span != 0 && box[0] * elem > span) return CUDA_ERROR_INVALID_VALUE;
  emu::TensorMap2d t{static_cast<const unsigned char*>(address), {dims[0], dims[1]}, strides[0],
                     {box[0], box[1]}, elem, swizzle};
  std::memset(map, 0, sizeof(*map));
  std::memcpy(map->opaque, &t, sizeof(t));
  return CUDA_SUCCESS;
}
