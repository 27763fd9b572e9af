// NLLLoss on CUDA: nll_loss_forward, nll_loss_backward (native semantics).
//
// What it computes (LossShape [N, C, S] from check_loss_inputs; M = N * S
// target positions; element (n, c, s) at n*C*S + c*S + s, target (n, s) at
// n*S + s; w[c] = weight[c] or 1 without a weight):
//   per position i = (n, s) with t = target[i]:
//     l_i = -w[t] * x[n, t, s],  w_i = w[t];   l_i = w_i = 0 when t == ignore_index
//   reduction none: loss = l (target's shape); sum: sum_i l_i;
//   mean: sum_i l_i / sum_i w_i (NaN when the total weight is 0, as native).
//   total_weight = sum_i w_i as a 0-dim tensor of acc_t<T> (the input dtype, float32
//   for the half types), for every reduction. Sums accumulate in acc_t<T> and the
//   loss is rounded once.
//   A target outside [0, C) that is not ignore_index fails a device-side
//   assertion (CUDA_KERNEL_ASSERT, like native); no host synchronisation.
//   backward: grad_input = zeros(input.shape) with, at every non-ignored (n, t, s),
//     -w[t] * g,  g = grad_output[i] (none), grad_output (sum) or
//     grad_output / total_weight (mean; total_weight read from device memory).
// Work split
//   forward (deterministic, no atomics): nll_fwd_kernel, 1024 threads, block b
//   owns positions [b * 8192, (b + 1) * 8192); each thread loads 4 targets, then
//   4 gathers, and sums its positions in order, then a fixed-order block
//   reduction. One block (M <= 8192: MNIST's N = 64, and batches up to 8192)
//   writes loss / total_weight directly (one launch); otherwise every
//   block writes a (loss, weight) partial to an at::empty scratch buffer and
//   loss_finalize_kernel (one block of 512 threads) combines them in fixed order.
//   (A block of 1024 threads has as many gathers in flight per thread as four of
//   256 would, and saves the finalize launch up to 8192 positions.)
//   reduction none writes l_i in the same pass.
//   backward: at::zeros, then nll_bwd_kernel (grid-stride over the M positions)
//   writes the one non-zero entry per non-ignored position.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "fastnn/checks.h"
#include "fastnn/cuda_utils.cuh"
#include "fastnn/dispatch.h"
#include "fastnn/loss_shapes.h"

namespace fastnn {
namespace {

using namespace fastnn::cuda;

constexpr int kThreads = 256;     // backward
constexpr int kFwdThreads = 1024;
constexpr int kUnroll = 4;
constexpr int64_t kChunk = kFwdThreads * 8;  // positions per forward block

template <typename T>
__global__ void __launch_bounds__(kFwdThreads)
    nll_fwd_kernel(const T* __restrict__ x, const int64_t* __restrict__ tgt,
                   const T* __restrict__ w, T* __restrict__ out_none,
                   acc_t<T>* __restrict__ partials, T* __restrict__ loss,
                   acc_t<T>* __restrict__ total_weight, int64_t M, int64_t C, int64_t S,
                   int64_t ignore_index, int reduction) {
  using A = acc_t<T>;
  __shared__ A red[kWarpSize];
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk;
  const int64_t end = begin + kChunk < M ? begin + kChunk : M;
  A ls = A(0), ws = A(0);
  // kUnroll positions per thread and step: all target loads, then all gathers,
  // then the sums in a fixed order.
  for (int64_t i0 = begin + threadIdx.x; i0 < end; i0 += static_cast<int64_t>(blockDim.x) * kUnroll) {
    int64_t t[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + static_cast<int64_t>(u) * blockDim.x;
      t[u] = i < end ? tgt[i] : ignore_index;
    }
    A l[kUnroll], wt[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + static_cast<int64_t>(u) * blockDim.x;
      l[u] = A(0);
      wt[u] = A(0);
      if (t[u] != ignore_index) {
        CUDA_KERNEL_ASSERT(t[u] >= 0 && t[u] < C);
        if (t[u] >= 0 && t[u] < C) {
          wt[u] = w != nullptr ? to_acc(w[t[u]]) : A(1);
          const int64_t n = S == 1 ? i : i / S;
          const int64_t s = i - n * S;
          l[u] = -wt[u] * to_acc(x[(n * C + t[u]) * S + s]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + static_cast<int64_t>(u) * blockDim.x;
      if (i < end) {
        if (out_none != nullptr) out_none[i] = from_acc<T>(l[u]);
        ls += l[u];
        ws += wt[u];
      }
    }
  }
  block_loss_epilogue<T>(ls, ws, red, partials, loss, total_weight, reduction);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    nll_bwd_kernel(const T* __restrict__ grad_out, const int64_t* __restrict__ tgt,
                   const T* __restrict__ w, const acc_t<T>* __restrict__ total_weight,
                   T* __restrict__ grad_in, int64_t M, int64_t C, int64_t S, int64_t ignore_index,
                   int reduction) {
  using A = acc_t<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < M;
       i += stride) {
    const int64_t t = tgt[i];
    if (t == ignore_index) continue;
    CUDA_KERNEL_ASSERT(t >= 0 && t < C);
    if (t < 0 || t >= C) continue;
    A g = to_acc(grad_out[reduction == at::Reduction::None ? i : 0]);
    if (reduction == at::Reduction::Mean) g = g / total_weight[0];
    const A wt = w != nullptr ? to_acc(w[t]) : A(1);
    const int64_t n = S == 1 ? i : i / S;
    const int64_t s = i - n * S;
    grad_in[(n * C + t) * S + s] = from_acc<T>(-wt * g);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> nll_loss_forward_cuda(const at::Tensor& input,
                                                         const at::Tensor& target,
                                                         const c10::optional<at::Tensor>& weight,
                                                         int64_t reduction, int64_t ignore_index) {
  const LossShape sh = check_loss_inputs("nll_loss_forward", input, target, weight, reduction);
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor t = target.contiguous();
  const bool has_w = weight.has_value() && weight->defined();
  const at::Tensor w = has_w ? weight->contiguous() : at::Tensor();
  const int64_t M = sh.N * sh.S;
  const bool none = reduction == at::Reduction::None;
  at::Tensor loss = none ? at::empty(target.sizes(), x.options()) : at::empty({}, x.options());
  const auto acc_opts = x.options().dtype(acc_scalar_type(x.scalar_type()));
  at::Tensor total_weight = at::empty({}, acc_opts);
  const int64_t nblocks = std::max<int64_t>(1, ceil_div(M, kChunk));
  at::Tensor partials;
  if (nblocks > 1) partials = at::empty({2 * nblocks}, acc_opts);
  auto stream = c10::cuda::getCurrentCUDAStream();
  FASTNN_DISPATCH_CUDA(x.scalar_type(), "nll_loss_forward_cuda", [&] {
    using A = acc_t<scalar_t>;
    A* part = nblocks > 1 ? partials.mutable_data_ptr<A>() : nullptr;
    scalar_t* loss_scalar = none ? nullptr : loss.mutable_data_ptr<scalar_t>();
    nll_fwd_kernel<scalar_t><<<static_cast<unsigned>(nblocks), kFwdThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), t.const_data_ptr<int64_t>(),
        has_w ? w.const_data_ptr<scalar_t>() : nullptr,
        none ? loss.mutable_data_ptr<scalar_t>() : nullptr, part, loss_scalar,
        total_weight.mutable_data_ptr<A>(), M, sh.C, sh.S, ignore_index,
        static_cast<int>(reduction));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (nblocks > 1) {
      loss_finalize_kernel<scalar_t><<<1, kFinalizeThreads, 0, stream>>>(
          part, nblocks, loss_scalar, total_weight.mutable_data_ptr<A>(),
          static_cast<int>(reduction));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return std::make_tuple(loss, total_weight);
}

at::Tensor nll_loss_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& target, const c10::optional<at::Tensor>& weight,
                                  int64_t reduction, int64_t ignore_index,
                                  const at::Tensor& total_weight) {
  constexpr const char* op = "nll_loss_backward";
  const LossShape sh = check_loss_backward_inputs(op, grad_output, input, target, weight, reduction,
                                                  total_weight);
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor t = target.contiguous();
  const at::Tensor go = grad_output.contiguous();
  const at::Tensor tw = total_weight.contiguous();
  const bool has_w = weight.has_value() && weight->defined();
  const at::Tensor w = has_w ? weight->contiguous() : at::Tensor();
  at::Tensor grad_input = at::zeros(x.sizes(), x.options());
  const int64_t M = sh.N * sh.S;
  if (M == 0) return grad_input;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t cap = static_cast<int64_t>(sm_count(x.get_device())) * 8;
  const int grid = static_cast<int>(std::min(ceil_div(M, kThreads), cap));
  FASTNN_DISPATCH_CUDA(x.scalar_type(), "nll_loss_backward_cuda", [&] {
    using A = acc_t<scalar_t>;
    nll_bwd_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        go.const_data_ptr<scalar_t>(), t.const_data_ptr<int64_t>(),
        has_w ? w.const_data_ptr<scalar_t>() : nullptr, tw.const_data_ptr<A>(),
        grad_input.mutable_data_ptr<scalar_t>(), M, sh.C, sh.S, ignore_index,
        static_cast<int>(reduction));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input;
}

TORCH_LIBRARY_IMPL(fastnn, CUDA, m) {
  m.impl("nll_loss_forward", &nll_loss_forward_cuda);
  m.impl("nll_loss_backward", &nll_loss_backward_cuda);
}

}  // namespace fastnn
