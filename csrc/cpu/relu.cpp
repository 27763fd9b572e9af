// ReLU on the CPU: fastnn::relu_forward, relu_forward_ (in place), relu_backward.
//
// Forward:  y = x < 0 ? 0 : x  (= torch.relu: NaN stays NaN, -0.0 stays -0.0)
// Backward: dx = y <= 0 ? 0 : dy  (= aten::threshold_backward(dy, y, 0), so dy > 0
//           where y > 0, and where y is NaN the gradient passes through like native)
//
// Shapes: any shape; the op is elementwise over dense data. Outputs have the input's
// shape, dtype and layout (as empty_like: see layout.h), as native relu's do; a
// non-dense operand is first copied into the output's layout. relu_forward_ updates
// the input's own elements: dense inputs are processed in place, strided ones via a
// dense temporary that is copied back into the input's view.
//
// Work split: the flat element range is split across threads with at::parallel_for
// in chunks of at least 32K elements (small tensors run on the calling thread); each
// chunk is processed with AVX2 (8 floats / 4 doubles per instruction, masked tail)
// when the CPU has it, else a scalar loop the compiler auto-vectorises.
// float16 / bfloat16 are handled on their bits, exactly: x < 0 means sign set and
// 0 < |x| <= inf (so not -0.0 and not NaN); y <= 0 means |y| == 0 or that. The loops
// are branch-free 16-bit integer code that the compiler vectorises (16 lanes in the
// AVX2-targeted copy, 8 with baseline SSE2).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cstdint>
#include <type_traits>

#include "fastnn/checks.h"
#include "fastnn/cpu_common.h"
#include "fastnn/cpu_features.h"
#include "fastnn/cpu_vec.h"
#include "fastnn/dispatch.h"
#include "fastnn/layout.h"

namespace fastnn {
namespace {

constexpr int64_t kGrain = 32768;

template <typename T>
void relu_scalar(const T* x, T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] < T(0) ? T(0) : x[i];
}

template <typename T>
void relu_bwd_scalar(const T* dy, const T* y, T* dx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] = y[i] <= T(0) ? T(0) : dy[i];
}

// ---------------------------------------------------------------- 16-bit floats
// The bits of +inf: |x| above it is NaN.
template <typename T>
constexpr uint16_t kInfBits = std::is_same_v<T, c10::BFloat16> ? 0x7F80 : 0x7C00;

template <uint16_t kInf>
inline __attribute__((always_inline)) void relu_bits(const uint16_t* x, uint16_t* y, int64_t n) {
  // bitwise (no short-circuit) so that the loop vectorises
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t v = x[i];
    const uint16_t neg = (v >> 15) & static_cast<uint16_t>(static_cast<uint16_t>((v & 0x7FFF) - 1) < kInf);
    y[i] = v & static_cast<uint16_t>(neg - 1);  // neg: 0, else v
  }
}

template <uint16_t kInf>
inline __attribute__((always_inline)) void relu_bwd_bits(const uint16_t* dy, const uint16_t* y,
                                                         uint16_t* dx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t v = y[i], mag = v & 0x7FFF;
    const uint16_t le0 = static_cast<uint16_t>(mag == 0) | ((v >> 15) & static_cast<uint16_t>(mag <= kInf));
    dx[i] = dy[i] & static_cast<uint16_t>(le0 - 1);  // le0: 0, else dy
  }
}

#if FASTNN_HAVE_X86
template <uint16_t kInf>
FASTNN_TARGET_AVX2 void relu_bits_avx2(const uint16_t* x, uint16_t* y, int64_t n) {
  relu_bits<kInf>(x, y, n);
}

template <uint16_t kInf>
FASTNN_TARGET_AVX2 void relu_bwd_bits_avx2(const uint16_t* dy, const uint16_t* y, uint16_t* dx,
                                           int64_t n) {
  relu_bwd_bits<kInf>(dy, y, dx, n);
}
#endif

template <typename T>
void relu_half(const T* x, T* y, int64_t n) {
  const auto* xb = reinterpret_cast<const uint16_t*>(x);
  auto* yb = reinterpret_cast<uint16_t*>(y);
#if FASTNN_HAVE_X86
  if (cpu_has_avx2_fma()) return relu_bits_avx2<kInfBits<T>>(xb, yb, n);
#endif
  relu_bits<kInfBits<T>>(xb, yb, n);
}

template <typename T>
void relu_bwd_half(const T* dy, const T* y, T* dx, int64_t n) {
  const auto* dyb = reinterpret_cast<const uint16_t*>(dy);
  const auto* yb = reinterpret_cast<const uint16_t*>(y);
  auto* dxb = reinterpret_cast<uint16_t*>(dx);
#if FASTNN_HAVE_X86
  if (cpu_has_avx2_fma()) return relu_bwd_bits_avx2<kInfBits<T>>(dyb, yb, dxb, n);
#endif
  relu_bwd_bits<kInfBits<T>>(dyb, yb, dxb, n);
}

#if FASTNN_HAVE_X86
// A::max(0, x) (_mm256_max_ps/pd) returns its second operand x when x is NaN or when
// both are zeros, which gives exactly x < 0 ? 0 : x.
template <class A>
FASTNN_TARGET_AVX2 void relu_avx2(const typename A::T* x, typename A::T* y, int64_t n) {
  constexpr int64_t W = A::W;
  const typename A::V z = A::zero();
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    A::store(y + i, A::max(z, A::load(x + i)));
    A::store(y + i + W, A::max(z, A::load(x + i + W)));
    A::store(y + i + 2 * W, A::max(z, A::load(x + i + 2 * W)));
    A::store(y + i + 3 * W, A::max(z, A::load(x + i + 3 * W)));
  }
  for (; i + W <= n; i += W) A::store(y + i, A::max(z, A::load(x + i)));
  if (i < n) {
    const __m256i m = A::mask(n - i);
    A::mstore(y + i, m, A::max(z, A::mload(x + i, m)));
  }
}

// dx = (y <= 0) ? 0 : dy; the ordered compare is false for NaN, so NaN passes dy.
template <class A>
FASTNN_TARGET_AVX2 void relu_bwd_avx2(const typename A::T* dy, const typename A::T* y,
                                      typename A::T* dx, int64_t n) {
  constexpr int64_t W = A::W;
  const typename A::V z = A::zero();
  int64_t i = 0;
  for (; i + W <= n; i += W) A::store(dx + i, A::andnot(A::le(A::load(y + i), z), A::load(dy + i)));
  if (i < n) {
    const __m256i m = A::mask(n - i);
    A::mstore(dx + i, m, A::andnot(A::le(A::mload(y + i, m), z), A::mload(dy + i, m)));
  }
}
#endif

// y may alias x (in place).
template <typename T>
void relu_impl(const T* x, T* y, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
    if constexpr (is_half_v<T>) {
      relu_half(x + b, y + b, e - b);
    } else {
#if FASTNN_HAVE_X86
      if (cpu_has_avx2_fma()) return relu_avx2<typename vec::Avx2Of<T>::type>(x + b, y + b, e - b);
#endif
      relu_scalar(x + b, y + b, e - b);
    }
  });
}

template <typename T>
void relu_bwd_range(const T* dy, const T* y, T* dx, int64_t n) {
  if constexpr (is_half_v<T>) {
    relu_bwd_half(dy, y, dx, n);
  } else {
#if FASTNN_HAVE_X86
    if (cpu_has_avx2_fma()) return relu_bwd_avx2<typename vec::Avx2Of<T>::type>(dy, y, dx, n);
#endif
    relu_bwd_scalar(dy, y, dx, n);
  }
}

void relu_dense(const at::Tensor& x, const at::Tensor& y) {
  FASTNN_DISPATCH_CPU(x.scalar_type(), "fastnn::relu_forward", [&] {
    relu_impl<scalar_t>(x.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), x.numel());
  });
}

}  // namespace

at::Tensor relu_forward_cpu(const at::Tensor& input) {
  check_floating("relu_forward", "input", input);
  at::Tensor y = empty_with_layout_of(input, [&] { return dense_empty(input.sizes(), input); });
  if (input.numel() > 0) relu_dense(in_layout_of(input, y), y);
  return y;
}

void relu_forward_inplace_cpu(const at::Tensor& input) {
  check_floating("relu_forward_", "input", input);
  check_no_internal_overlap("relu_forward_", input);
  if (input.numel() == 0) return;
  if (input.is_contiguous()) {
    relu_dense(input, input);
    return;
  }
  // Strided view: compute densely, then write back into the view's own elements.
  at::Tensor dense = input.contiguous();
  relu_dense(dense, dense);
  const_cast<at::Tensor&>(input).copy_(dense);
}

at::Tensor relu_backward_cpu(const at::Tensor& grad_output, const at::Tensor& output) {
  constexpr const char* op = "relu_backward";
  check_grad_of_output(op, grad_output, output);
  at::Tensor dx = empty_with_layout_of(output, [&] { return dense_empty(output.sizes(), output); });
  const int64_t n = output.numel();
  if (n == 0) return dx;
  const at::Tensor dy = in_layout_of(grad_output, dx);
  const at::Tensor y = in_layout_of(output, dx);
  FASTNN_DISPATCH_CPU(output.scalar_type(), "fastnn::relu_backward", [&] {
    const scalar_t* pdy = dy.const_data_ptr<scalar_t>();
    const scalar_t* py = y.const_data_ptr<scalar_t>();
    scalar_t* pdx = dx.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain,
                     [&](int64_t b, int64_t e) { relu_bwd_range(pdy + b, py + b, pdx + b, e - b); });
  });
  return dx;
}

TORCH_LIBRARY_IMPL(fastnn, CPU, m) {
  m.impl("relu_forward", &relu_forward_cpu);
  m.impl("relu_forward_", &relu_forward_inplace_cpu);
  m.impl("relu_backward", &relu_backward_cpu);
}

}  // namespace fastnn
