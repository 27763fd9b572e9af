// ReLU on CUDA: relu_forward, relu_forward_ (in place), relu_backward.
//
// What it computes
//   forward:   y = max(x, 0) elementwise; NaN propagates (relu(NaN) = NaN) like
//              torch.relu, with native CUDA's formula (see relu_value).
//   backward:  dx = dy where y > 0, else 0 (native threshold_backward:
//              `y <= 0 ? 0 : dy`, so a NaN in y passes dy through and a NaN in
//              dy is zeroed where y <= 0).
// Shapes: any shape (0-d and empty included); outputs have the input's shape, dtype
//   and layout (as empty_like: see layout.h), as native relu's do; a non-dense operand
//   is first copied into the output's layout.
// Work split
//   One grid-stride kernel over the flat element range. When every pointer is
//   16-byte aligned each thread handles AlignedVec<T, 16 / sizeof(T)> vectors
//   (4 floats / 8 halves / 2 doubles), UNROLL = 4 independent vectors in flight
//   per iteration (all loads issued before the first store); the < VEC leftover
//   elements form a scalar tail done by the first threads. Unaligned pointers
//   (a storage offset) take the same kernel with VEC = 1. 256 threads per block,
//   at most 32 blocks per multiprocessor. 64-bit indices throughout.
//   relu_forward_ on a tensor that is not "non-overlapping and dense" computes on a
//   contiguous copy and copies the result back into the tensor's own elements.
// dtypes: float32, float64, float16, bfloat16 (comparisons in acc_t<T>; the
//   value itself is passed through unchanged, so no rounding happens).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "fastnn/checks.h"
#include "fastnn/cuda_utils.cuh"
#include "fastnn/dispatch.h"
#include "fastnn/layout.h"

namespace fastnn {
namespace {

using namespace fastnn::cuda;

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

// Native's CUDA relu (clamp_min(x, 0)) formula: NaN passes, else max(x, 0) in acc_t, so
// signed zeros come out as native's do. The conversion back is exact (max returns x or 0).
template <typename T>
__device__ __forceinline__ T relu_value(T x) {
  const acc_t<T> f = to_acc(x);
  return f != f ? x : from_acc<T>(::max(f, acc_t<T>(0)));
}

template <typename T>
__device__ __forceinline__ T relu_grad_value(T dy, T y) {
  return to_acc(y) <= acc_t<T>(0) ? static_cast<T>(0.0f) : dy;
}

// y = relu(x); x == y is allowed (in place), so no __restrict__.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    relu_forward_kernel(const T* x, T* y, int64_t n) {
  using V = AlignedVec<T, VEC>;
  const int64_t nvec = n / VEC;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const V* xv = reinterpret_cast<const V*>(x);
  V* yv = reinterpret_cast<V*>(y);
  for (int64_t base = tid; base < nvec; base += stride * kUnroll) {
    V v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * stride;
      if (i < nvec) v[u] = xv[i];
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * stride;
      if (i < nvec) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) v[u].val[k] = relu_value(v[u].val[k]);
        yv[i] = v[u];
      }
    }
  }
  const int64_t t = nvec * VEC + tid;  // scalar tail (< VEC elements)
  if (t < n) y[t] = relu_value(x[t]);
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    relu_backward_kernel(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx,
                         int64_t n) {
  using V = AlignedVec<T, VEC>;
  const int64_t nvec = n / VEC;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const V* dyv = reinterpret_cast<const V*>(dy);
  const V* yv = reinterpret_cast<const V*>(y);
  V* dxv = reinterpret_cast<V*>(dx);
  for (int64_t base = tid; base < nvec; base += stride * kUnroll) {
    V g[kUnroll], o[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * stride;
      if (i < nvec) {
        g[u] = dyv[i];
        o[u] = yv[i];
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * stride;
      if (i < nvec) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) g[u].val[k] = relu_grad_value(g[u].val[k], o[u].val[k]);
        dxv[i] = g[u];
      }
    }
  }
  const int64_t t = nvec * VEC + tid;
  if (t < n) dx[t] = relu_grad_value(dy[t], y[t]);
}

int grid_for(int64_t nvec, int device) {
  const int64_t want = ceil_div(nvec, static_cast<int64_t>(kThreads) * kUnroll);
  const int64_t cap = static_cast<int64_t>(sm_count(device)) * 32;
  return static_cast<int>(std::max<int64_t>(1, std::min(want, cap)));
}

// Launches y = relu(x) over n dense elements (x may equal y).
void launch_relu_forward(const at::Tensor& ref, const void* x, void* y, int64_t n) {
  if (n == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int device = ref.get_device();
  FASTNN_DISPATCH_CUDA(ref.scalar_type(), "relu_forward_cuda", [&] {
    constexpr int VEC = vec_size<scalar_t>();
    const auto* xp = static_cast<const scalar_t*>(x);
    auto* yp = static_cast<scalar_t*>(y);
    if (is_aligned(xp, 16) && is_aligned(yp, 16)) {
      relu_forward_kernel<scalar_t, VEC>
          <<<grid_for(n / VEC, device), kThreads, 0, stream>>>(xp, yp, n);
    } else {
      relu_forward_kernel<scalar_t, 1><<<grid_for(n, device), kThreads, 0, stream>>>(xp, yp, n);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

at::Tensor relu_forward_cuda(const at::Tensor& input) {
  check_floating("relu_forward", "input", input);
  c10::cuda::CUDAGuard guard(input.device());
  at::Tensor y =
      empty_with_layout_of(input, [&] { return at::empty(input.sizes(), input.options()); });
  const at::Tensor x = in_layout_of(input, y);
  launch_relu_forward(x, x.const_data_ptr(), y.mutable_data_ptr(), x.numel());
  return y;
}

void relu_forward_inplace_cuda(const at::Tensor& input) {
  check_floating("relu_forward_", "input", input);
  check_no_internal_overlap("relu_forward_", input);
  c10::cuda::CUDAGuard guard(input.device());
  if (input.numel() == 0) return;
  if (input.is_non_overlapping_and_dense()) {
    // Every element exactly once in [data_ptr, data_ptr + numel): order is
    // irrelevant for an elementwise op, so work on the memory directly.
    launch_relu_forward(input, input.const_data_ptr(), input.mutable_data_ptr(), input.numel());
  } else {
    at::Tensor tmp = input.contiguous();
    launch_relu_forward(tmp, tmp.const_data_ptr(), tmp.mutable_data_ptr(), tmp.numel());
    input.copy_(tmp);
  }
}

at::Tensor relu_backward_cuda(const at::Tensor& grad_output, const at::Tensor& output) {
  constexpr const char* op = "relu_backward";
  check_grad_of_output(op, grad_output, output);
  c10::cuda::CUDAGuard guard(output.device());
  at::Tensor dx =
      empty_with_layout_of(output, [&] { return at::empty(output.sizes(), output.options()); });
  const int64_t n = output.numel();
  if (n == 0) return dx;
  const at::Tensor dy = in_layout_of(grad_output, dx);
  const at::Tensor y = in_layout_of(output, dx);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int device = y.get_device();
  FASTNN_DISPATCH_CUDA(y.scalar_type(), "relu_backward_cuda", [&] {
    constexpr int VEC = vec_size<scalar_t>();
    const auto* dyp = dy.const_data_ptr<scalar_t>();
    const auto* yp = y.const_data_ptr<scalar_t>();
    auto* dxp = dx.mutable_data_ptr<scalar_t>();
    if (is_aligned(dyp, 16) && is_aligned(yp, 16) && is_aligned(dxp, 16)) {
      relu_backward_kernel<scalar_t, VEC>
          <<<grid_for(n / VEC, device), kThreads, 0, stream>>>(dyp, yp, dxp, n);
    } else {
      relu_backward_kernel<scalar_t, 1>
          <<<grid_for(n, device), kThreads, 0, stream>>>(dyp, yp, dxp, n);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

TORCH_LIBRARY_IMPL(fastnn, CUDA, m) {
  m.impl("relu_forward", &relu_forward_cuda);
  m.impl("relu_forward_", &relu_forward_inplace_cuda);
  m.impl("relu_backward", &relu_backward_cuda);
}

}  // namespace fastnn
