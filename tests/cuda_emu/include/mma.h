// CUDA emulator (see cuda_runtime.h): the WMMA API (nvcuda::wmma) for the shapes fastnn
// uses, m16n16k16 (float16 / bfloat16) and m16n16k8 (TF32), float accumulators.
//
// The hardware spreads a fragment over the 32 lanes of a warp in an unspecified layout;
// here every lane holds the whole tile (num_elements = rows x cols) for loads and mma,
// and store_matrix_sync writes only the lane's share (elements e with e % 32 == lane), so
// a read of the stored tile by another lane without a __syncwarp between reads poison
// or stale data. The products are summed
// in float in k order; the tensor cores' own summation differs in rounding only.
// Checked as the hardware requires: a 32-byte aligned pointer and a leading dimension
// that is a multiple of 16 bytes.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

template <typename Use, int M, int N, int K>
struct tile_shape;
template <int M, int N, int K>
struct tile_shape<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K>
struct tile_shape<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K>
struct tile_shape<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

template <typename T>
struct storage { using type = T; };
template <>
struct storage<precision::tf32> { using type = float; };  // TF32 fragments hold floats

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = tile_shape<Use, M, N, K>::rows;
  static constexpr int cols = tile_shape<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  using element_type = typename storage<T>::type;
  element_type x[num_elements];  // x[r * cols + c]
};

inline void check_access(const void* p, unsigned ldm, size_t elem) {
  if ((reinterpret_cast<uintptr_t>(p) & 31u) != 0)
    throw std::runtime_error("cuda emulator: wmma load/store pointer not 32-byte aligned");
  if ((ldm * elem) % 16 != 0)
    throw std::runtime_error("cuda emulator: wmma leading dimension not a multiple of 16 bytes");
}

template <typename Use, int M, int N, int K, typename T, typename Layout, typename P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  static_assert(!std::is_same<Use, accumulator>::value,
                "an accumulator fragment is loaded with a layout_t argument");
  check_access(p, ldm, sizeof(P));
  constexpr bool row = std::is_same<Layout, row_major>::value;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = static_cast<typename F::element_type>(row ? p[r * ldm + c] : p[c * ldm + r]);
}

template <int M, int N, int K, typename T>
inline void fill_fragment(fragment<accumulator, M, N, K, T>& f, T v) {
  for (auto& e : f.x) e = v;
}

template <int M, int N, int K, typename T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm,
                              layout_t layout) {
  check_access(p, ldm, sizeof(T));
  const int lane = emu::me().linear % 32;
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      if ((r * N + c) % 32 == lane)
        (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r * N + c];
}

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d,
                     const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b,
                     const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N], bf[K * N];
  for (int e = 0; e < K * N; ++e) bf[e] = static_cast<float>(b.x[e]);
  std::memcpy(out, c.x, sizeof(out));
  for (int i = 0; i < M; ++i)  // each out[i][j] summed in k order; the j loop vectorises
    for (int k = 0; k < K; ++k) {
      const float av = static_cast<float>(a.x[i * K + k]);
      for (int j = 0; j < N; ++j) out[i * N + j] += av * bf[k * N + j];
    }
  std::memcpy(d.x, out, sizeof(out));
}

// float -> TF32 (10 explicit mantissa bits), round to nearest, ties away from zero, as
// cvt.rna.tf32.f32; NaN and inf pass through.
inline float __float_to_tf32(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&v, &u, 4);
  return v;
}

}  // namespace wmma
}  // namespace nvcuda
