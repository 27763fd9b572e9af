// C++ entry points to fastnn's registered operators (schemas in csrc/registry.cpp).
//
// Each function calls its op through the dispatcher, exactly as a call from Python
// does, so the kernel for the tensors' device (CPU, CUDA, Meta/fake) runs. The
// autograd layer (csrc/autograd/*.cpp) calls these below the Autograd key to reach
// the device kernels. The typed handle is looked up once per op.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <optional>
#include <tuple>

namespace fastnn::ops {

// Declares `handle`, the op's typed handle, looked up on first use (thread-safe).
#define FASTNN_OP_HANDLE(name, ...)                                                         \
  static const auto handle = c10::Dispatcher::singleton()                                  \
                                 .findSchemaOrThrow("fastnn::" name, "")                   \
                                 .typed<__VA_ARGS__>()

using OptTensor = std::optional<at::Tensor>;

inline at::Tensor linear_forward(const at::Tensor& input, const at::Tensor& weight,
                                 const OptTensor& bias) {
  FASTNN_OP_HANDLE("linear_forward", at::Tensor(const at::Tensor&, const at::Tensor&,
                                                const OptTensor&));
  return handle.call(input, weight, bias);
}

inline std::tuple<OptTensor, OptTensor, OptTensor> linear_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> output_mask) {
  FASTNN_OP_HANDLE("linear_backward",
                   std::tuple<OptTensor, OptTensor, OptTensor>(
                       const at::Tensor&, const at::Tensor&, const at::Tensor&,
                       std::array<bool, 3>));
  return handle.call(grad_output, input, weight, output_mask);
}

inline at::Tensor relu_forward(const at::Tensor& input) {
  FASTNN_OP_HANDLE("relu_forward", at::Tensor(const at::Tensor&));
  return handle.call(input);
}

inline void relu_forward_(const at::Tensor& input) {
  FASTNN_OP_HANDLE("relu_forward_", void(const at::Tensor&));
  handle.call(input);
}

inline at::Tensor relu_backward(const at::Tensor& grad_output, const at::Tensor& output) {
  FASTNN_OP_HANDLE("relu_backward", at::Tensor(const at::Tensor&, const at::Tensor&));
  return handle.call(grad_output, output);
}

inline at::Tensor log_softmax_forward(const at::Tensor& input, int64_t dim) {
  FASTNN_OP_HANDLE("log_softmax_forward", at::Tensor(const at::Tensor&, int64_t));
  return handle.call(input, dim);
}

inline at::Tensor log_softmax_backward(const at::Tensor& grad_output, const at::Tensor& output,
                                       int64_t dim) {
  FASTNN_OP_HANDLE("log_softmax_backward",
                   at::Tensor(const at::Tensor&, const at::Tensor&, int64_t));
  return handle.call(grad_output, output, dim);
}

inline std::tuple<at::Tensor, at::Tensor> nll_loss_forward(const at::Tensor& input,
                                                           const at::Tensor& target,
                                                           const OptTensor& weight,
                                                           int64_t reduction,
                                                           int64_t ignore_index) {
  FASTNN_OP_HANDLE("nll_loss_forward",
                   std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                      const OptTensor&, int64_t, int64_t));
  return handle.call(input, target, weight, reduction, ignore_index);
}

inline at::Tensor nll_loss_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                    const at::Tensor& target, const OptTensor& weight,
                                    int64_t reduction, int64_t ignore_index,
                                    const at::Tensor& total_weight) {
  FASTNN_OP_HANDLE("nll_loss_backward",
                   at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const OptTensor&, int64_t, int64_t, const at::Tensor&));
  return handle.call(grad_output, input, target, weight, reduction, ignore_index, total_weight);
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_forward(
    const at::Tensor& input, const at::Tensor& target, const OptTensor& weight,
    int64_t reduction, int64_t ignore_index, double label_smoothing) {
  FASTNN_OP_HANDLE("cross_entropy_forward",
                   std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                       const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t,
                       int64_t, double));
  return handle.call(input, target, weight, reduction, ignore_index, label_smoothing);
}

inline at::Tensor cross_entropy_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                         const at::Tensor& target, const OptTensor& weight,
                                         int64_t reduction, int64_t ignore_index,
                                         const at::Tensor& lse, const at::Tensor& total_weight,
                                         double label_smoothing) {
  FASTNN_OP_HANDLE("cross_entropy_backward",
                   at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const OptTensor&, int64_t, int64_t, const at::Tensor&,
                              const at::Tensor&, double));
  return handle.call(grad_output, input, target, weight, reduction, ignore_index, lse,
                     total_weight, label_smoothing);
}

#undef FASTNN_OP_HANDLE

}  // namespace fastnn::ops
