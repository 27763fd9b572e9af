// The Python module fastnn._C: build information, and direct entry points to the
// differentiable (forward) ops.
//
// `import fastnn._C` loads this shared object, which runs every op's static registration
// (schemas in registry.cpp, kernels in autograd/, cpu/ and cuda/). The module carries
//   TORCH_VERSION  the torch the extension was built against (fastnn/_loader.py compares it
//                  with the torch that is imported),
//   WITH_CUDA      1 when the CUDA kernels were compiled in,
//   WITH_SM90A     1 when the Hopper wgmma GEMM was (the arch list named 9.0a),
// and one function per forward op, with the op's arguments in schema order:
//   linear_forward(input, weight, bias)            relu_forward(input)
//   relu_forward_(input) -> None                   log_softmax_forward(input, dim)
//   nll_loss_forward(input, target, weight, reduction, ignore_index)
//   cross_entropy_forward(input, target, weight, reduction, ignore_index, label_smoothing)
//
// Each makes the op's dispatcher call (ops.h), as `torch.ops.fastnn.<op>` does, so every
// dispatch key takes part as usual: autograd, vmap, the device kernels, Python
// modes and fake tensors, the profiler, the JIT tracer. What it skips is torch.ops' generic
// path from Python (an OpOverload call that parses the arguments against the schema into
// a boxed stack and back), which costs 1-3 us a call, more than a small op's kernel:
// fastnn/_ops.py calls these in eager mode, and the OpOverloads where Dynamo traces. As in
// native bindings the GIL is released around the op, and C++ errors and warnings become
// their Python types (torch's HANDLE_TH_ERRORS).
#include <Python.h>
#include <c10/util/StringUtil.h>
#include <pybind11/pybind11.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/autograd/utils/wrap_outputs.h>

#include <optional>
#include <type_traits>
#include <utility>

#include "fastnn/ops.h"

#ifndef FASTNN_TORCH_VERSION
#error "setup.py must define FASTNN_TORCH_VERSION (the torch version the extension is built against)"
#endif

namespace fastnn {
namespace {

// The positional arguments of one call, converted with the schema's types. fastnn/_ops.py
// passes them already normalised; anything else is a TypeError naming the argument.
class Args {
 public:
  Args(const char* op, PyObject* const* args, Py_ssize_t nargs, Py_ssize_t expected)
      : op_(op), args_(args) {
    if (nargs != expected)
      throw torch::TypeError(c10::str("fastnn._C.", op, "() expects ", expected,
                                      expected == 1 ? " positional argument" : " positional arguments",
                                      ", got ", nargs));
  }

  at::Tensor tensor(int i, const char* name) const {
    PyObject* o = args_[i];
    if (!THPVariable_Check(o)) throw wrong_type(name, "Tensor", o);
    return THPVariable_Unpack(o);
  }

  std::optional<at::Tensor> optional_tensor(int i, const char* name) const {
    if (args_[i] == Py_None) return std::nullopt;
    return tensor(i, name);
  }

  int64_t integer(int i, const char* name) const {
    PyObject* o = args_[i];
    if (!PyLong_Check(o) || PyBool_Check(o)) throw wrong_type(name, "int", o);
    const long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) throw python_error();  // out of int64's range
    return static_cast<int64_t>(v);
  }

  double real(int i, const char* name) const {
    PyObject* o = args_[i];
    if (!PyFloat_Check(o) && !(PyLong_Check(o) && !PyBool_Check(o)))
      throw wrong_type(name, "float", o);
    const double v = PyFloat_AsDouble(o);
    if (v == -1.0 && PyErr_Occurred()) throw python_error();
    return v;
  }

 private:
  torch::TypeError wrong_type(const char* name, const char* want, PyObject* got) const {
    return torch::TypeError(c10::str("fastnn._C.", op_, "(): argument '", name, "' must be ",
                                     want, ", not ", Py_TYPE(got)->tp_name));
  }

  const char* op_;
  PyObject* const* args_;
};

// Runs `call` (the op) without the GIL and returns its result as a Python object.
template <typename Call>
PyObject* without_gil(const Call& call) {
  using Result = decltype(call());
  if constexpr (std::is_void_v<Result>) {
    {
      pybind11::gil_scoped_release no_gil;
      call();
    }
    Py_RETURN_NONE;
  } else {
    Result out;
    {
      pybind11::gil_scoped_release no_gil;
      out = call();
    }
    return torch::autograd::utils::wrap(std::move(out));
  }
}

PyObject* linear_forward(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Args a("linear_forward", args, nargs, 3);
  const at::Tensor input = a.tensor(0, "input"), weight = a.tensor(1, "weight");
  const std::optional<at::Tensor> bias = a.optional_tensor(2, "bias");
  return without_gil([&] { return ops::linear_forward(input, weight, bias); });
  END_HANDLE_TH_ERRORS
}

PyObject* relu_forward(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const at::Tensor input = Args("relu_forward", args, nargs, 1).tensor(0, "input");
  return without_gil([&] { return ops::relu_forward(input); });
  END_HANDLE_TH_ERRORS
}

PyObject* relu_forward_(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const at::Tensor input = Args("relu_forward_", args, nargs, 1).tensor(0, "input");
  return without_gil([&] { ops::relu_forward_(input); });
  END_HANDLE_TH_ERRORS
}

PyObject* log_softmax_forward(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Args a("log_softmax_forward", args, nargs, 2);
  const at::Tensor input = a.tensor(0, "input");
  const int64_t dim = a.integer(1, "dim");
  return without_gil([&] { return ops::log_softmax_forward(input, dim); });
  END_HANDLE_TH_ERRORS
}

PyObject* nll_loss_forward(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Args a("nll_loss_forward", args, nargs, 5);
  const at::Tensor input = a.tensor(0, "input"), target = a.tensor(1, "target");
  const std::optional<at::Tensor> weight = a.optional_tensor(2, "weight");
  const int64_t reduction = a.integer(3, "reduction"), ignore_index = a.integer(4, "ignore_index");
  return without_gil([&] {
    return ops::nll_loss_forward(input, target, weight, reduction, ignore_index);
  });
  END_HANDLE_TH_ERRORS
}

PyObject* cross_entropy_forward(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Args a("cross_entropy_forward", args, nargs, 6);
  const at::Tensor input = a.tensor(0, "input"), target = a.tensor(1, "target");
  const std::optional<at::Tensor> weight = a.optional_tensor(2, "weight");
  const int64_t reduction = a.integer(3, "reduction"), ignore_index = a.integer(4, "ignore_index");
  const double label_smoothing = a.real(5, "label_smoothing");
  return without_gil([&] {
    return ops::cross_entropy_forward(input, target, weight, reduction, ignore_index,
                                      label_smoothing);
  });
  END_HANDLE_TH_ERRORS
}

#define FASTNN_ENTRY(name) \
  {#name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&name)), METH_FASTCALL, nullptr}

PyMethodDef methods[] = {
    FASTNN_ENTRY(linear_forward),      FASTNN_ENTRY(relu_forward),
    FASTNN_ENTRY(relu_forward_),       FASTNN_ENTRY(log_softmax_forward),
    FASTNN_ENTRY(nll_loss_forward),    FASTNN_ENTRY(cross_entropy_forward),
    {nullptr, nullptr, 0, nullptr}};

#undef FASTNN_ENTRY

PyModuleDef fastnn_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace
}  // namespace fastnn

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&fastnn::fastnn_module);
  if (m == nullptr) return nullptr;
  PyModule_AddStringConstant(m, "TORCH_VERSION", FASTNN_TORCH_VERSION);
#ifdef FASTNN_WITH_CUDA
  PyModule_AddIntConstant(m, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(m, "WITH_CUDA", 0);
#endif
#ifdef FASTNN_SM90A
  PyModule_AddIntConstant(m, "WITH_SM90A", 1);
#else
  PyModule_AddIntConstant(m, "WITH_SM90A", 0);
#endif
  return m;
}
