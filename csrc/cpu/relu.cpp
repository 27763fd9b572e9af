// ReLU on the CPU: fastnn::relu_forward, relu_forward_ (in place), relu_backward.
//
// Forward:  y = x < 0 ? 0 : x  (= torch.relu: NaN stays NaN, -0.0 stays -0.0)
// Backward: dx = y <= 0 ? 0 : dy  (= aten::threshold_backward(dy, y, 0), so dy > 0
//           where y > 0, and where y is NaN the gradient passes through like native)
//
// Shapes: any shape; the op is elementwise over the dense (contiguous) data.
// Outputs are dense tensors of the input's shape and dtype. relu_forward_ updates
// the input's own elements: dense inputs are processed in place, strided ones via a
// dense temporary that is copied back into the input's view.
//
// Work split: the flat element range is split across threads with at::parallel_for
// in chunks of at least 32K elements (small tensors run on the calling thread); each
// chunk is processed with AVX2 (8 floats / 4 doubles per instruction, masked tail)
// when the CPU has it, else a scalar loop the compiler auto-vectorises.
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "fastnn/checks.h"
#include "fastnn/cpu_common.h"
#include "fastnn/cpu_features.h"
#include "fastnn/cpu_vec.h"
#include "fastnn/dispatch.h"

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

#if FASTNN_HAVE_X86
// _mm256_max_ps(0, x) returns its second operand x when x is NaN or when both are
// zeros, which gives exactly x < 0 ? 0 : x.
FASTNN_TARGET_AVX2 void relu_avx2(const float* x, float* y, int64_t n) {
  const __m256 z = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    _mm256_storeu_ps(y + i, _mm256_max_ps(z, _mm256_loadu_ps(x + i)));
    _mm256_storeu_ps(y + i + 8, _mm256_max_ps(z, _mm256_loadu_ps(x + i + 8)));
    _mm256_storeu_ps(y + i + 16, _mm256_max_ps(z, _mm256_loadu_ps(x + i + 16)));
    _mm256_storeu_ps(y + i + 24, _mm256_max_ps(z, _mm256_loadu_ps(x + i + 24)));
  }
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_max_ps(z, _mm256_loadu_ps(x + i)));
  if (i < n) {
    const __m256i m = vec::tail_mask_ps(n - i);
    _mm256_maskstore_ps(y + i, m, _mm256_max_ps(z, _mm256_maskload_ps(x + i, m)));
  }
}

FASTNN_TARGET_AVX2 void relu_avx2(const double* x, double* y, int64_t n) {
  const __m256d z = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_pd(y + i, _mm256_max_pd(z, _mm256_loadu_pd(x + i)));
    _mm256_storeu_pd(y + i + 4, _mm256_max_pd(z, _mm256_loadu_pd(x + i + 4)));
    _mm256_storeu_pd(y + i + 8, _mm256_max_pd(z, _mm256_loadu_pd(x + i + 8)));
    _mm256_storeu_pd(y + i + 12, _mm256_max_pd(z, _mm256_loadu_pd(x + i + 12)));
  }
  for (; i + 4 <= n; i += 4) _mm256_storeu_pd(y + i, _mm256_max_pd(z, _mm256_loadu_pd(x + i)));
  if (i < n) {
    const __m256i m = vec::tail_mask_pd(n - i);
    _mm256_maskstore_pd(y + i, m, _mm256_max_pd(z, _mm256_maskload_pd(x + i, m)));
  }
}

// dx = (y <= 0) ? 0 : dy; the ordered compare is false for NaN, so NaN passes dy.
FASTNN_TARGET_AVX2 void relu_bwd_avx2(const float* dy, const float* y, float* dx, int64_t n) {
  const __m256 z = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 le = _mm256_cmp_ps(_mm256_loadu_ps(y + i), z, _CMP_LE_OQ);
    _mm256_storeu_ps(dx + i, _mm256_andnot_ps(le, _mm256_loadu_ps(dy + i)));
  }
  if (i < n) {
    const __m256i m = vec::tail_mask_ps(n - i);
    const __m256 le = _mm256_cmp_ps(_mm256_maskload_ps(y + i, m), z, _CMP_LE_OQ);
    _mm256_maskstore_ps(dx + i, m, _mm256_andnot_ps(le, _mm256_maskload_ps(dy + i, m)));
  }
}

FASTNN_TARGET_AVX2 void relu_bwd_avx2(const double* dy, const double* y, double* dx, int64_t n) {
  const __m256d z = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m256d le = _mm256_cmp_pd(_mm256_loadu_pd(y + i), z, _CMP_LE_OQ);
    _mm256_storeu_pd(dx + i, _mm256_andnot_pd(le, _mm256_loadu_pd(dy + i)));
  }
  if (i < n) {
    const __m256i m = vec::tail_mask_pd(n - i);
    const __m256d le = _mm256_cmp_pd(_mm256_maskload_pd(y + i, m), z, _CMP_LE_OQ);
    _mm256_maskstore_pd(dx + i, m, _mm256_andnot_pd(le, _mm256_maskload_pd(dy + i, m)));
  }
}
#endif

// y may alias x (in place).
template <typename T>
void relu_impl(const T* x, T* y, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
#if FASTNN_HAVE_X86
    if (cpu_has_avx2_fma()) return relu_avx2(x + b, y + b, e - b);
#endif
    relu_scalar(x + b, y + b, e - b);
  });
}

void relu_dense(const at::Tensor& x, const at::Tensor& y) {
  FASTNN_DISPATCH_CPU(x.scalar_type(), "fastnn::relu_forward", [&] {
    relu_impl<scalar_t>(x.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), x.numel());
  });
}

}  // namespace

at::Tensor relu_forward_cpu(const at::Tensor& input) {
  check_floating("relu_forward", "input", input);
  const c10::MaybeOwned<at::Tensor> x = input.expect_contiguous();
  at::Tensor y = dense_empty(input.sizes(), input);
  if (input.numel() > 0) relu_dense(*x, y);
  return y;
}

void relu_forward_inplace_cpu(const at::Tensor& input) {
  check_floating("relu_forward_", "input", input);
  TORCH_CHECK(at::has_internal_overlap(input) != at::MemOverlap::Yes,
              "fastnn::relu_forward_: `input` has elements that share memory (e.g. a view made "
              "with expand()), so it cannot be updated in place; clone() it first or use "
              "relu_forward.");
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
  check_floating(op, "output", output);
  check_floating(op, "grad_output", grad_output);
  check_same_dtype(op, "grad_output", grad_output, "output", output);
  check_same_device(op, "grad_output", grad_output, "output", output);
  check_same_shape(op, "grad_output", grad_output, "output", output);
  const c10::MaybeOwned<at::Tensor> dy = grad_output.expect_contiguous();
  const c10::MaybeOwned<at::Tensor> y = output.expect_contiguous();
  at::Tensor dx = dense_empty(output.sizes(), output);
  const int64_t n = output.numel();
  if (n == 0) return dx;
  FASTNN_DISPATCH_CPU(output.scalar_type(), "fastnn::relu_backward", [&] {
    const scalar_t* pdy = dy->const_data_ptr<scalar_t>();
    const scalar_t* py = y->const_data_ptr<scalar_t>();
    scalar_t* pdx = dx.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
#if FASTNN_HAVE_X86
      if (cpu_has_avx2_fma()) return relu_bwd_avx2(pdy + b, py + b, pdx + b, e - b);
#endif
      relu_bwd_scalar(pdy + b, py + b, pdx + b, e - b);
    });
  });
  return dx;
}

TORCH_LIBRARY_IMPL(fastnn, CPU, m) {
  m.impl("relu_forward", &relu_forward_cpu);
  m.impl("relu_forward_", &relu_forward_inplace_cpu);
  m.impl("relu_backward", &relu_backward_cpu);
}

}  // namespace fastnn
