// Input checks shared by every fastnn kernel (CPU and CUDA).
//
// Every message names the op, the argument and what the user should do, e.g.
//   fastnn::linear_forward: `input` has dtype Long, but fastnn supports
//   float32, float64, float16 and bfloat16; convert it first (for example `input.float()`).
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace fastnn {

// Floating dtypes with a fastnn kernel (CPU and CUDA): float32, float64, float16, bfloat16.
inline bool dtype_supported(const at::Tensor& t) {
  const auto s = t.scalar_type();
  return s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16;
}

// The dtype a kernel accumulates in: float32 for float16 / bfloat16, else the dtype itself.
inline at::ScalarType acc_scalar_type(at::ScalarType s) {
  return s == at::kHalf || s == at::kBFloat16 ? at::kFloat : s;
}

inline void check_floating(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), "fastnn::", op, ": `", arg, "` is an undefined tensor.");
  TORCH_CHECK(dtype_supported(t), "fastnn::", op, ": `", arg, "` has dtype ", t.scalar_type(),
              ", but fastnn supports float32, float64, float16 and bfloat16; convert it first (for example `", arg, ".float()`).");
}

inline void check_same_dtype(const char* op, const char* arg, const at::Tensor& t,
                             const char* ref_arg, const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "fastnn::", op, ": `", arg, "` has dtype ",
              t.scalar_type(), " but `", ref_arg, "` has dtype ", ref.scalar_type(),
              "; both must have the same dtype.");
}

inline void check_same_device(const char* op, const char* arg, const at::Tensor& t,
                              const char* ref_arg, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), "fastnn::", op, ": `", arg, "` is on ", t.device(),
              " but `", ref_arg, "` is on ", ref.device(),
              "; move them to the same device first.");
}

inline void check_dim(const char* op, const char* arg, const at::Tensor& t, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, "fastnn::", op, ": `", arg, "` must be ", dim, "-D, got shape ",
              t.sizes(), ".");
}

inline void check_same_shape(const char* op, const char* arg, const at::Tensor& t,
                             const char* ref_arg, const at::Tensor& ref) {
  TORCH_CHECK(t.sizes() == ref.sizes(), "fastnn::", op, ": `", arg, "` has shape ", t.sizes(),
              " but `", ref_arg, "` has shape ", ref.sizes(), "; they must match.");
}

// Wraps a possibly negative `dim` into [0, ndim) like PyTorch does; a 0-d
// tensor accepts dim 0 and -1.
// The inputs of an elementwise backward (relu_backward, log_softmax_backward): a
// gradient of the forward's output, so the same dtype, device and shape as it.
inline void check_grad_of_output(const char* op, const at::Tensor& grad_output,
                                 const at::Tensor& output) {
  check_floating(op, "output", output);
  check_floating(op, "grad_output", grad_output);
  check_same_dtype(op, "grad_output", grad_output, "output", output);
  check_same_device(op, "grad_output", grad_output, "output", output);
  check_same_shape(op, "grad_output", grad_output, "output", output);
}

// An in-place op cannot update a tensor whose elements share memory (an expand()ed view).
inline void check_no_internal_overlap(const char* op, const at::Tensor& t) {
  TORCH_CHECK(at::has_internal_overlap(t) != at::MemOverlap::Yes, "fastnn::", op,
              ": `input` has elements that share memory (e.g. a view made with expand()), so it "
              "cannot be updated in place; clone() it first or use the out-of-place op.");
}

inline int64_t wrap_dim(const char* op, int64_t dim, int64_t ndim) {
  const int64_t n = ndim == 0 ? 1 : ndim;
  TORCH_CHECK_INDEX(dim >= -n && dim < n, "fastnn::", op, ": dim ", dim,
                    " is out of range for a tensor with ", ndim, " dimension(s) (expected in [",
                    -n, ", ", n - 1, "]).");
  return dim < 0 ? dim + n : dim;
}

}  // namespace fastnn
