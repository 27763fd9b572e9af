// The emulator's own op (tests/cuda_emu): torch.ops.fastnn_emu_rt.launches(name) is how
// many kernels whose (demangled) name contains `name` this process has launched.
#include <cuda_runtime.h>

#include <cxxabi.h>
#include <dlfcn.h>

#include <cstdlib>
#include <string>

#include <torch/library.h>

namespace {

std::string kernel_name(const void* fn) {
  Dl_info info{};
  if (dladdr(fn, &info) == 0 || info.dli_sname == nullptr) return {};
  int status = 0;
  char* d = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
  std::string out = status == 0 && d != nullptr ? d : info.dli_sname;
  std::free(d);
  return out;
}

int64_t launches(const std::string& name) {
  int64_t total = 0;
  for (const auto& [fn, n] : emu::launch_counts())
    if (kernel_name(fn).find(name) != std::string::npos) total += n;
  return total;
}

}  // namespace

TORCH_LIBRARY(fastnn_emu_rt, m) { m.def("launches(str name) -> int", &launches); }
