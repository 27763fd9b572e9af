// A CPU emulator for fastnn's CUDA kernels (csrc/cuda/), so that their logic is tested
// against the CPU reference on machines without a GPU (tests/test_cuda_emu.py). Test
// code only: tests/cuda_emu/build.py compiles the .cu files with the host compiler, this
// file standing in for <cuda_runtime.h> (mma.h, cuda_fp16.h, cuda_bf16.h and the
// c10/cuda headers beside it for theirs), after rewriting each
// `kernel<<<grid, block, smem, stream>>>(args)` into
// `::emu::launch(kernel, ::emu::config(grid, block, smem, stream), args)`.
//
// Model. A launch runs its blocks one after another. Each thread of a block is a fiber
// with its own stack; one OS thread runs them, switching only at barriers:
// __syncthreads() waits for every thread of the block, the warp-level operations
// (__shfl_*_sync, __syncwarp) for every live thread of the warp (the mask is not
// modelled). A thread that has returned counts as arrived, as on the hardware. If no
// thread can run while some still wait (threads at different barriers), the launch fails
// with "deadlock" instead of hanging. Shared memory reads 0xff bytes (NaN for floating
// point) until written in the block: `__shared__` arrays are function statics that
// build.py registers (shared_array) and that are poisoned at every block's start, and
// dynamic shared memory is a buffer of the launch's size, poisoned likewise, whose base
// is 128 bytes past a 1024-byte boundary (the alignment a kernel may assume). cp.async
// copies are queued per thread, poison their destination when issued and land only when
// a wait_group retires their group (gemm.cuh calls the emulator's versions under
// FASTNN_CUDA_EMULATOR), so a stage read before its wait, or overwritten while still
// read, shows. WMMA fragments hold whole tiles, but each lane stores only its share.
//
// Checked as the hardware would refuse it: block size 1..1024 threads and at most the
// kernel's __launch_bounds__, grid y/z <= 65535 and x < 2^31, dynamic shared memory <=
// 48 KB unless cudaFuncSetAttribute raised the kernel's limit (<= 227 KB), misaligned
// cp.async and WMMA addresses. A failed CUDA_KERNEL_ASSERT or a C++ exception in a
// thread fails the launch after its block (std::runtime_error naming the block and
// thread).
//
// wgmma (gemm_sm90.cuh, FASTNN_SM90A) is modelled from the PTX ISA's description of the
// matrix descriptors (K-major and MN-major), the 128-byte swizzle and the accumulator
// layout (see wgmma_m64n128 below); it checks the kernel against that reading, not the
// hardware. wgmma.fence and fence.proxy.async are no-ops here (a missing one cannot
// show), descriptor bits other than start address, LBO, SBO and swizzle mode are not
// checked, nor that the warpgroup's threads pass the same descriptors.
//
// mbarriers and the tensor-memory accelerator (the TMA GEMM): an mbarrier's state lives
// beside shared memory, keyed by its address (arrival count, pending arrivals,
// transaction bytes, phase); a phase completes when every arrival is in and the
// transaction count is back to 0. A TMA copy (tma_load_2d) poisons its box's
// destination when issued and lands (zeros outside the tensor, the 128-byte swizzle by
// address bits) when some thread next waits on its barrier, then counts its bytes; so a
// stage read before its barrier's wait shows poison, and one overwritten while its
// wgmmas are in flight fails their check. A thread waiting on a barrier sleeps until the
// barrier changes; if every live thread sleeps, the launch fails with "deadlock"
// (e.g. a transaction count that never reaches 0). setmaxnreg and the barrier-init fence
// are no-ops.
//
// Not modelled: memory ordering between threads beyond the barriers (all sharing in
// fastnn's kernels goes through barriers), warp-synchronous code without __syncwarp,
// atomics, blockDim.z <= 64, static shared memory's share of the 48 KB. Device math is
// the host's libm (CUDA's expf and logf may differ by an ulp or two) and tensor-core sums
// run in plain float order, so compare with tolerances, not bits.
#pragma once

#include <ucontext.h>
#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#define FASTNN_EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>

#include <map>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda.h"  // CUtensorMap

#define CUDART_VERSION 13000
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline dim3 threadIdx, blockIdx, blockDim, gridDim;  // of the fiber that runs now

// The vector types fastnn's kernels use, with CUDA's sizes and alignment.
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) double2 { double x, y; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline double2 make_double2(double x, double y) { return {x, y}; }

using cudaStream_t = void*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace emu {
constexpr int kEmulatedSMs = 132;  // an H100 SXM (compute capability 9.0)

// Kernels whose dynamic shared-memory limit was raised (cudaFuncSetAttribute).
inline std::vector<std::pair<const void*, int>>& smem_limits() {
  static std::vector<std::pair<const void*, int>> v;
  return v;
}
}  // namespace emu

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = emu::kEmulatedSMs; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
inline cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value > 227 * 1024)
    return cudaErrorInvalidValue;  // 227 KB: the sm_90 opt-in maximum
  emu::smem_limits().emplace_back(func, value);
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
enum cudaDriverEntryPointQueryResult {
  cudaDriverEntryPointSuccess = 0,
  cudaDriverEntryPointSymbolNotFound = 1,
};
constexpr unsigned long long cudaEnableDefault = 0;
// The driver functions fastnn looks up: cuTensorMapEncodeTiled (the emulator's, cuda.h).
inline cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** fn, unsigned int,
                                                    unsigned long long,
                                                    cudaDriverEntryPointQueryResult* status) {
  const bool found = std::strcmp(symbol, "cuTensorMapEncodeTiled") == 0;
  *fn = found ? reinterpret_cast<void*>(&cuTensorMapEncodeTiled) : nullptr;
  if (status) *status = found ? cudaDriverEntryPointSuccess : cudaDriverEntryPointSymbolNotFound;
  return cudaSuccess;
}
inline const char* cudaGetErrorString(cudaError_t) { return "cuda emulator error"; }

// Device math that CUDA provides in the global namespace.
inline float max(float a, float b) { return ::fmaxf(a, b); }
inline double max(double a, double b) { return ::fmax(a, b); }
inline float min(float a, float b) { return ::fminf(a, b); }
inline double min(double a, double b) { return ::fmin(a, b); }

template <typename T>
inline T __ldg(const T* p) { return *p; }

namespace emu {

struct Config {
  dim3 grid, block;
  size_t smem;
};
inline Config config(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) {
  return {grid, block, smem};
}

constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 256 << 10;
constexpr size_t kMaxDynamicSmem = 48 << 10;

// A suspended execution context, and the switch between two of them. On x86-64 a
// hand-written switch (callee-saved registers, MXCSR and the x87 control word, as the
// SysV ABI requires, then the stack pointer): ucontext's swapcontext also saves the
// signal mask with a system call on every switch, ten times the cost.
//
// Under AddressSanitizer (tests/cuda_emu/asan.sh) every switch is announced to it
// (__sanitizer_start/finish_switch_fiber) and a fiber stack is unpoisoned before reuse,
// since a fiber's last frames never return.
// The stack of the context that switched to this one (the scheduler's, for a fiber).
struct StackRange {
  const void* bottom = nullptr;
  size_t size = 0;
};
inline StackRange& scheduler_stack() {
  static StackRange r;
  return r;
}
inline void asan_before_switch([[maybe_unused]] void** fake, [[maybe_unused]] const StackRange& to) {
#if defined(FASTNN_EMU_ASAN)
  __sanitizer_start_switch_fiber(fake, to.bottom, to.size);
#endif
}
inline void asan_after_switch([[maybe_unused]] void* fake, [[maybe_unused]] StackRange* from) {
#if defined(FASTNN_EMU_ASAN)
  const void* bottom;
  size_t size;
  __sanitizer_finish_switch_fiber(fake, &bottom, &size);
  if (from != nullptr) *from = {bottom, size};
#endif
}

#if defined(__x86_64__) && defined(__GNUC__)
struct Context {
  void* sp = nullptr;
  StackRange stack;  // empty for the scheduler (its thread's own stack)
};
__attribute__((naked, noinline)) inline void switch_stack(void** /*save_sp*/, void* /*load_sp*/) {
  asm volatile(
      "pushq %rbp\n\tpushq %rbx\n\tpushq %r12\n\tpushq %r13\n\tpushq %r14\n\tpushq %r15\n\t"
      "subq $8, %rsp\n\tstmxcsr (%rsp)\n\tfnstcw 4(%rsp)\n\t"
      "movq %rsp, (%rdi)\n\tmovq %rsi, %rsp\n\t"
      "ldmxcsr (%rsp)\n\tfldcw 4(%rsp)\n\taddq $8, %rsp\n\t"
      "popq %r15\n\tpopq %r14\n\tpopq %r13\n\tpopq %r12\n\tpopq %rbx\n\tpopq %rbp\n\t"
      "ret\n\t");
}
inline void raw_switch(Context& from, Context& to) { switch_stack(&from.sp, to.sp); }
// A context that starts `entry` (which must never return) on the given stack: the frame
// switch_stack pops (control words, six registers, the return address), placed so that
// `entry` starts with the stack aligned as after a call.
inline void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t(15);
  auto* frame = reinterpret_cast<uint64_t*>(top - 72);
  std::memset(frame, 0, 72);
  const uint32_t mxcsr = 0x1f80;  // defaults: all exceptions masked, round to nearest
  const uint16_t fpcw = 0x037f;
  std::memcpy(frame, &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(frame) + 4, &fpcw, 2);
  frame[7] = reinterpret_cast<uint64_t>(entry);
  c.sp = frame;
}
#else
struct Context {
  ucontext_t uc;
  StackRange stack;
};
inline void raw_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
inline void make_context_impl(Context& c, char* stack, size_t bytes, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
#endif

// A fiber context on a fresh (or reused) stack.
inline void make_fiber(Context& c, char* stack, size_t bytes, void (*entry)()) {
#if defined(FASTNN_EMU_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(stack, bytes);
#endif
  c.stack = {stack, bytes};
#if defined(__x86_64__) && defined(__GNUC__)
  make_context(c, stack, bytes, entry);
#else
  make_context_impl(c, stack, bytes, entry);
#endif
}

// Scheduler -> fiber and back. A fiber that has finished leaves with `exiting`.
inline void switch_context(Context& from, Context& to, bool exiting = false) {
  void* fake = nullptr;
  asan_before_switch(exiting ? nullptr : &fake, to.stack.size ? to.stack : scheduler_stack());
  raw_switch(from, to);
  asan_after_switch(fake, from.stack.size ? &scheduler_stack() : nullptr);
}

// One cp.async (4, 8 or 16 bytes): done when a later cp.async.wait_group retires its group.
struct AsyncCopy {
  void* dst;
  const void* src;
  size_t bytes;
  bool valid;  // false: zero-fill, nothing read
};

// One wgmma.mma_async of a thread (its 64 or 128 accumulator registers of an m64n128 or
// m64n256 step):
// the product is computed when issued and again when its group is waited for; the
// two must agree (the hardware may read the shared-memory operands at any time in
// between), then it is added to the accumulators.
struct Wgmma {
  float* d;        // n / 2 accumulators
  int n;           // 128 or 256 columns
  int elem;        // bytes per operand element (2, or 4 for TF32)
  bool bf16;       // 16-bit operands: bfloat16 (else float16)
  bool ta, tb;     // operand MN-major ("transposed"), else K-major
  uint64_t da, db;
  float product[128];
};

// One TMA box copy: issued into `dst`, lands at the next wait on its barrier.
struct TmaCopy {
  uint32_t dst;
  emu::TensorMap2d map;
  int64_t c0, c1;
};
// An mbarrier (see the model above).
struct Mbarrier {
  int count = 0, pending = 0;
  int64_t tx = 0;
  uint32_t phase = 0;  // phases completed
  std::vector<TmaCopy> copies;
};

// A thread's asynchronous operations in commit groups, as cp.async and wgmma have them:
// add() to the open group, commit() closes it (an empty group counts), retire(n, done)
// calls done on every operation of all but the newest n committed groups, oldest first.
template <typename Op>
struct Groups {
  std::vector<Op> open;
  std::vector<std::vector<Op>> committed;  // oldest first

  void commit() {
    committed.push_back(std::move(open));
    open.clear();
  }
  template <typename Done>
  void retire(int pending, Done&& done) {
    while (static_cast<int>(committed.size()) > pending) {
      for (const Op& op : committed.front()) done(op);
      committed.erase(committed.begin());
    }
  }
  bool empty() const { return open.empty() && committed.empty(); }
};

struct Fiber {
  enum State { kReady, kWaitBlock, kWaitWarp, kWaitMbar, kDone };
  Context ctx;
  dim3 tid;
  int linear = 0;
  State state = kReady;
  Groups<AsyncCopy> copies;
  Groups<Wgmma> wgmmas;
  uint32_t waiting_on = 0;  // the mbarrier a kWaitMbar thread waits on
};

struct Launch {
  Config cfg;
  std::function<void()> body;
  std::vector<Fiber> fibers;
  Context scheduler;
  int current = -1;
  int nthreads = 0;
  int live = 0, block_arrived = 0;
  std::vector<int> warp_live, warp_arrived;
  std::vector<std::array<std::array<unsigned char, 16>, 32>> shfl;  // [warp][lane]
  // Dynamic shared memory: `smem` bytes (alignment: see run()).
  std::vector<unsigned char> dyn_storage;
  unsigned char* smem = nullptr;
  size_t smem_bytes = 0;
  std::string error;
  bool failed = false;
  // Static __shared__ arrays (function statics, see shared_array) met in this launch.
  std::vector<std::pair<void*, size_t>> statics;
  std::map<uint32_t, Mbarrier> mbarriers;  // by shared-memory offset; reset per block
};

// Launches per kernel (function address) in this process; read by launches() in
// emu_ops.cpp, so tests can check which kernel a product took.
inline std::vector<std::pair<const void*, int64_t>>& launch_counts() {
  static std::vector<std::pair<const void*, int64_t>> v;
  return v;
}
inline void count_launch(const void* kernel) {
  for (auto& [k, n] : launch_counts())
    if (k == kernel) {
      ++n;
      return;
    }
  launch_counts().emplace_back(kernel, 1);
}

inline Launch*& current_launch() {
  static Launch* l = nullptr;
  return l;
}

// One pool of fiber stacks for the process (address space only until touched).
inline char* stack_pool() {
  static char* base = [] {
    void* p = mmap(nullptr, kStackBytes * kMaxThreads, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("cuda emulator: cannot map fiber stacks");
    return static_cast<char*>(p);
  }();
  return base;
}

inline void* dynamic_smem() { return current_launch()->smem; }

// build.py turns `__shared__ T name[...];` into a function static followed by this call:
// the array is poisoned (0xff) when a launch first meets it and at the start of every
// block after, so a read before the block's first write shows, as for dynamic memory.
inline void shared_array(void* p, size_t bytes) {
  Launch& L = *current_launch();
  for (const auto& [q, n] : L.statics)
    if (q == p) return;
  L.statics.emplace_back(p, bytes);
  std::memset(p, 0xff, bytes);
}

inline Fiber& me() {
  Launch& L = *current_launch();
  return L.fibers[L.current];
}

inline void yield_to_scheduler() {
  Launch& L = *current_launch();
  switch_context(L.fibers[L.current].ctx, L.scheduler);
}

inline void release(Launch& L, Fiber::State waiting, int warp) {
  const int begin = warp < 0 ? 0 : 32 * warp;
  const int end = warp < 0 ? L.nthreads : std::min(L.nthreads, begin + 32);
  for (int t = begin; t < end; ++t) {
    if (L.fibers[t].state == waiting) L.fibers[t].state = Fiber::kReady;
  }
}

inline void block_barrier() {
  Launch& L = *current_launch();
  if (++L.block_arrived == L.live) {
    L.block_arrived = 0;
    release(L, Fiber::kWaitBlock, -1);
    return;
  }
  me().state = Fiber::kWaitBlock;
  yield_to_scheduler();
}

inline void warp_barrier() {
  Launch& L = *current_launch();
  const int w = me().linear / 32;
  if (++L.warp_arrived[w] == L.warp_live[w]) {
    L.warp_arrived[w] = 0;
    release(L, Fiber::kWaitWarp, w);
    return;
  }
  me().state = Fiber::kWaitWarp;
  yield_to_scheduler();
}

// The value `var` of lane `src(lane)` of this warp. As CUDA's shuffles: a source lane in
// a later width-group than the reading lane, or past the warp, gives the reader's own
// value; earlier groups may be read. The shuffle mask is not modelled: every live lane
// of the warp takes part (fastnn's kernels use the full mask).
template <typename T, typename SrcLane>
inline T shuffle(T var, int width, SrcLane src_of) {
  static_assert(sizeof(T) <= 16, "shuffle of a type wider than 16 bytes");
  Launch& L = *current_launch();
  const int linear = me().linear;
  const int w = linear / 32, lane = linear % 32;
  std::memcpy(L.shfl[w][lane].data(), &var, sizeof(T));
  warp_barrier();
  int src = src_of(lane);
  const int warp_threads = std::min(32, L.nthreads - 32 * w);
  if (src < 0 || src >= warp_threads || src / width > lane / width) src = lane;
  T out;
  std::memcpy(&out, L.shfl[w][src].data(), sizeof(T));
  warp_barrier();  // every lane has read before the buffer is reused
  return out;
}

// cp.async as the hardware orders it: copies are queued per thread, grouped by
// commit_group, and land only when wait_group<N> retires every group but the newest N.
// The destination is poisoned (0xff) when the copy is issued (the hardware may write it
// at any time until the wait), so a read of a stage before its wait, or a stage still
// being read (by wgmma) when a copy into it is issued, sees the poison, not the data.
inline void do_copy(const AsyncCopy& c) {
  if (c.valid) std::memcpy(c.dst, c.src, c.bytes);
  else std::memset(c.dst, 0, c.bytes);
}
inline uint32_t shared_offset(const void* p) {
  Launch& L = *current_launch();
  const auto* base = L.smem;
  const auto* q = static_cast<const unsigned char*>(p);
  if (q < base || q >= base + L.smem_bytes)
    throw std::runtime_error("cuda emulator: shared-memory address outside dynamic shared memory");
  return static_cast<uint32_t>(q - base);
}
// cp.async of `bytes` (4, 8 or 16; both addresses aligned to it) into dynamic shared memory.
inline void cp_async(uint32_t smem, const void* gmem, size_t bytes, bool valid) {
  Launch& L = *current_launch();
  if (bytes != 4 && bytes != 8 && bytes != 16)
    throw std::runtime_error("cuda emulator: cp.async copies 4, 8 or 16 bytes");
  if (smem % bytes != 0 || (valid && reinterpret_cast<uintptr_t>(gmem) % bytes != 0))
    throw std::runtime_error("cuda emulator: cp.async of " + std::to_string(bytes) +
                             " bytes with a misaligned address");
  if (smem + bytes > L.smem_bytes)
    throw std::runtime_error("cuda emulator: cp.async past the end of dynamic shared memory");
  void* dst = L.smem + smem;
  std::memset(dst, 0xff, bytes);
  me().copies.open.push_back({dst, gmem, bytes, valid});
}
inline void cp_async16(uint32_t smem, const void* gmem, bool valid) {
  cp_async(smem, gmem, 16, valid);
}
inline void cp_async_commit() { me().copies.commit(); }
inline void cp_async_wait(int pending) { me().copies.retire(pending, do_copy); }

// wgmma (sm_90a) on shared-memory operands described by matrix descriptors, as
// gemm_sm90.cuh uses it: operands with the 128-byte swizzle, m64n128 or m64n256 with 32
// bytes of K per instruction (k16 for float16 / bfloat16, k8 for TF32), float accumulators.
// The descriptor gives the start address (bits 0-13, 16-byte units), the leading byte
// offset (LBO, bits 16-29) and the stride byte offset (SBO, bits 32-45). K-major: row r (of
// M or N), element k at start + (r / 8) SBO + (r % 8) 128 + k bytes-per-element. MN-major
// (trans-a / trans-b = 1, 16-bit types): start + (r / 64) LBO + (k / 8) SBO + (k % 8) 128 +
// (r % 64) 2 (PTX ISA, "Leading / Stride Dimension Byte Offset" and the canonical layouts:
// ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)) in 16-byte units). The swizzle XORs address bits 4-6
// with bits 7-9 in both. TF32 reads float32 and ignores the low 13 mantissa bits. The
// accumulator layout (thread t of the warpgroup, w = t / 32, l = t % 32): register 4j +
// {0,1} is row 16w + l/4, columns 8j + 2(l%4) + {0,1}; 4j + {2,3} the same columns of row
// 16w + l/4 + 8 (PTX ISA, "Matrix fragments for wgmma .m64nNk16"). The emulator takes the
// layout from the same document as the kernel's epilogue, so it checks the kernel's
// addressing and pipeline, not that layout.
inline float wgmma_operand(const Wgmma& op, uint64_t desc, bool mn_major, int row, int k) {
  Launch& L = *current_launch();
  if ((desc >> 62) != 1)
    throw std::runtime_error("cuda emulator: wgmma descriptor without the 128-byte swizzle");
  if (mn_major && op.elem != 2)
    throw std::runtime_error("cuda emulator: wgmma with an MN-major operand of a 32-bit type");
  const uint32_t start = static_cast<uint32_t>(desc & 0x3fff) << 4;
  const uint32_t lbo = static_cast<uint32_t>((desc >> 16) & 0x3fff) << 4;
  const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3fff) << 4;
  const uint32_t lin = mn_major ? start + (row / 64) * lbo + (k / 8) * sbo + (k % 8) * 128 + (row % 64) * 2
                                : start + (row / 8) * sbo + (row % 8) * 128 + k * op.elem;
  const uint32_t phys = lin ^ (((lin >> 7) & 7u) << 4);
  if (phys + op.elem > L.smem_bytes)
    throw std::runtime_error("cuda emulator: wgmma operand outside dynamic shared memory");
  const unsigned char* p = L.smem + phys;
  if (op.elem == 4) {
    uint32_t u;
    std::memcpy(&u, p, 4);
    u &= 0xffffe000u;  // TF32: the low mantissa bits are ignored
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  if (op.bf16) {
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  return static_cast<float>(c10::Half(h, c10::Half::from_bits()));
}

inline void wgmma_product(const Wgmma& op, float (&out)[128]) {
  const int t = me().linear % 128, w = t / 32, l = t % 32;
  const int K = 32 / op.elem;
  for (int j = 0; j < op.n / 8; ++j)
    for (int r = 0; r < 4; ++r) {
      const int row = 16 * w + l / 4 + (r >= 2 ? 8 : 0);
      const int col = 8 * j + 2 * (l % 4) + (r & 1);
      float s = 0.f;
      for (int k = 0; k < K; ++k)
        s += wgmma_operand(op, op.da, op.ta, row, k) * wgmma_operand(op, op.db, op.tb, col, k);
      out[4 * j + r] = s;
    }
}

template <typename T>
inline void wgmma_issue(float* d, int n, uint64_t da, uint64_t db, bool ta, bool tb) {
  Wgmma op{d, n, static_cast<int>(sizeof(T)), std::is_same<T, c10::BFloat16>::value, ta, tb, da, db, {}};
  wgmma_product(op, op.product);
  me().wgmmas.open.push_back(op);
}
template <typename T>
inline void wgmma_m64n128(float (&d)[64], uint64_t da, uint64_t db, bool ta, bool tb) {
  wgmma_issue<T>(d, 128, da, db, ta, tb);
}
// m64n256: accumulator register 4j + r is d[j / 16][4 (j % 16) + r], i.e. d flattened.
template <typename T>
inline void wgmma_m64n256(float (&d)[2][64], uint64_t da, uint64_t db, bool ta, bool tb) {
  wgmma_issue<T>(&d[0][0], 256, da, db, ta, tb);
}
inline void wgmma_commit() { me().wgmmas.commit(); }
inline void wgmma_wait(int pending) {
  me().wgmmas.retire(pending, [](const Wgmma& op) {
    float now[128];
    wgmma_product(op, now);
    if (std::memcmp(now, op.product, sizeof(float) * (op.n / 2)) != 0)
      throw std::runtime_error(
          "cuda emulator: a wgmma's shared-memory operands changed between its issue and "
          "its wait_group (a stage reused too early, or read before its data landed)");
    for (int i = 0; i < op.n / 2; ++i) op.d[i] += op.product[i];
  });
}

// mbarriers and TMA copies (see the model at the top of this file).
inline Mbarrier& mbarrier_at(uint32_t bar, bool init = false) {
  Launch& L = *current_launch();
  if (bar % 8 != 0 || bar + 8 > L.smem_bytes)
    throw std::runtime_error("cuda emulator: mbarrier at a misaligned or out-of-range address");
  auto it = L.mbarriers.find(bar);
  if (it == L.mbarriers.end()) {
    if (!init) throw std::runtime_error("cuda emulator: mbarrier used before mbarrier.init");
    it = L.mbarriers.emplace(bar, Mbarrier{}).first;
  }
  return it->second;
}
inline void mbar_wake(uint32_t bar) {
  Launch& L = *current_launch();
  for (int t = 0; t < L.nthreads; ++t) {
    Fiber& f = L.fibers[t];
    if (f.state == Fiber::kWaitMbar && f.waiting_on == bar) f.state = Fiber::kReady;
  }
}
inline void mbar_try_complete(uint32_t bar, Mbarrier& m) {
  if (m.pending == 0 && m.tx == 0) {
    ++m.phase;
    m.pending = m.count;
  }
  mbar_wake(bar);
}
inline void mbar_init(uint32_t bar, uint32_t count) {
  if (count == 0) throw std::runtime_error("cuda emulator: mbarrier.init with a count of 0");
  Mbarrier& m = mbarrier_at(bar, /*init=*/true);
  m = Mbarrier{};
  m.count = m.pending = static_cast<int>(count);
}
// mbarrier.arrive (expect_bytes 0) or mbarrier.arrive.expect_tx (expect_bytes > 0).
inline void mbar_arrive(uint32_t bar, uint32_t expect_bytes) {
  Mbarrier& m = mbarrier_at(bar);
  m.tx += expect_bytes;
  if (--m.pending < 0) throw std::runtime_error("cuda emulator: more mbarrier arrivals than its count");
  mbar_try_complete(bar, m);
}
inline void tma_land(const TmaCopy& c) {
  Launch& L = *current_launch();
  const TensorMap2d& t = c.map;
  const uint32_t row_bytes = t.box[0] * t.elem;
  for (uint32_t r = 0; r < t.box[1]; ++r)
    for (uint32_t i = 0; i < t.box[0]; ++i) {
      const int64_t x = c.c0 + i, y = c.c1 + r;
      const uint32_t lin = c.dst + r * row_bytes + i * t.elem;
      const uint32_t phys = lin ^ (((lin >> 7) & 7u) << 4);
      unsigned char* dst = L.smem + phys;
      if (x >= 0 && y >= 0 && static_cast<uint64_t>(x) < t.dims[0] && static_cast<uint64_t>(y) < t.dims[1])
        std::memcpy(dst, t.base + static_cast<uint64_t>(y) * t.stride + static_cast<uint64_t>(x) * t.elem, t.elem);
      else
        std::memset(dst, 0, t.elem);  // outside the tensor: zeros
    }
}
// cp.async.bulk.tensor.2d ... mbarrier::complete_tx::bytes [dst], [map, {c0, c1}], [bar]
inline void tma_load_2d(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
  Launch& L = *current_launch();
  const TensorMap2d t = decode(map);
  if (t.swizzle != CU_TENSOR_MAP_SWIZZLE_128B || t.box[0] * t.elem != 128)
    throw std::runtime_error("cuda emulator: TMA modelled for 128-byte-swizzled 128-byte box rows only");
  const uint32_t bytes = t.box[0] * t.box[1] * t.elem;
  if (dst % 1024 != 0 || dst + bytes > L.smem_bytes)
    throw std::runtime_error("cuda emulator: TMA destination not 1024-byte aligned or past shared memory");
  Mbarrier& m = mbarrier_at(bar);
  std::memset(L.smem + dst, 0xff, bytes);  // the hardware may write it any time until it lands
  m.copies.push_back({dst, t, c0, c1});
  mbar_wake(bar);
}
// Waits until the phase of parity `parity` of the barrier has completed (as a loop on
// mbarrier.try_wait.parity); first lands the barrier's copies and counts their bytes.
inline void mbar_wait(uint32_t bar, uint32_t parity) {
  for (;;) {
    Mbarrier& m = mbarrier_at(bar);
    if (!m.copies.empty()) {
      std::vector<TmaCopy> landing;
      landing.swap(m.copies);
      for (const TmaCopy& c : landing) {
        tma_land(c);
        m.tx -= static_cast<int64_t>(c.map.box[0]) * c.map.box[1] * c.map.elem;
      }
      mbar_try_complete(bar, m);
    }
    if ((m.phase & 1u) != (parity & 1u)) return;
    me().state = Fiber::kWaitMbar;
    me().waiting_on = bar;
    yield_to_scheduler();
  }
}

inline void thread_exit(Launch& L, Fiber& f) {
  if (!f.wgmmas.empty()) {
    if (!L.failed) L.error = "a thread exited with wgmma operations not waited for";
    L.failed = true;
  }
  f.wgmmas = {};
  f.copies.commit();
  f.copies.retire(0, do_copy);  // copies never waited for still land
  f.state = Fiber::kDone;
  L.shfl[f.linear / 32][f.linear % 32].fill(0xff);  // an exited lane has no value to give
  --L.live;
  const int w = f.linear / 32;
  --L.warp_live[w];
  if (L.live > 0 && L.block_arrived == L.live) {
    L.block_arrived = 0;
    release(L, Fiber::kWaitBlock, -1);
  }
  if (L.warp_live[w] > 0 && L.warp_arrived[w] == L.warp_live[w]) {
    L.warp_arrived[w] = 0;
    release(L, Fiber::kWaitWarp, w);
  }
}

inline std::string where(const Launch& L, const Fiber& f) {
  std::ostringstream s;
  s << "block (" << blockIdx.x << ", " << blockIdx.y << ", " << blockIdx.z << "), thread ("
    << f.tid.x << ", " << f.tid.y << ", " << f.tid.z << ")";
  (void)L;
  return s.str();
}

inline void fiber_entry() {
  asan_after_switch(nullptr, &scheduler_stack());  // first arrival from the scheduler
  Launch& L = *current_launch();
  Fiber& f = L.fibers[L.current];
  try {
    L.body();
  } catch (const std::exception& e) {
    if (!L.failed) L.error = where(L, f) + ": " + e.what();
    L.failed = true;
  } catch (...) {
    if (!L.failed) L.error = where(L, f) + ": unknown exception";
    L.failed = true;
  }
  thread_exit(L, L.fibers[L.current]);
  switch_context(L.fibers[L.current].ctx, L.scheduler, /*exiting=*/true);  // never resumed
  std::abort();
}

inline void run_block(Launch& L) {
  const dim3 b = L.cfg.block;
  L.live = L.nthreads;
  L.block_arrived = 0;
  for (int w = 0; w < static_cast<int>(L.warp_live.size()); ++w) {
    L.warp_live[w] = std::min(32, L.nthreads - 32 * w);
    L.warp_arrived[w] = 0;
  }
  if (L.smem_bytes) std::memset(L.smem, 0xff, L.smem_bytes);
  for (const auto& [p, n] : L.statics) std::memset(p, 0xff, n);
  L.mbarriers.clear();
  char* stacks = stack_pool();
  for (int t = 0; t < L.nthreads; ++t) {
    Fiber& f = L.fibers[t];
    f.linear = t;
    f.tid = dim3(t % b.x, (t / b.x) % b.y, t / (b.x * b.y));
    f.state = Fiber::kReady;
    make_fiber(f.ctx, stacks + kStackBytes * t, kStackBytes, &fiber_entry);
  }
  for (;;) {
    bool ran = false;
    for (int t = 0; t < L.nthreads; ++t) {
      Fiber& f = L.fibers[t];
      if (f.state != Fiber::kReady) continue;
      ran = true;
      L.current = t;
      threadIdx = f.tid;
      switch_context(L.scheduler, f.ctx);
    }
    if (L.live == 0) break;
    if (!ran) {
      // Threads left waiting for one that failed: report that failure (run() throws it);
      // their fibers are abandoned (their stacks are reset for the next launch).
      if (L.failed) return;
      throw std::runtime_error(
          "cuda emulator: deadlock in block (" + std::to_string(blockIdx.x) + ", " +
          std::to_string(blockIdx.y) + ", " + std::to_string(blockIdx.z) + "): " +
          std::to_string(L.live) + " threads wait at different barriers");
    }
  }
}

inline void run(const void* kernel, const Config& cfg, std::function<void()> body) {
  const int64_t nthreads = static_cast<int64_t>(cfg.block.x) * cfg.block.y * cfg.block.z;
  if (nthreads < 1 || nthreads > kMaxThreads)
    throw std::runtime_error("cuda emulator: invalid block size " + std::to_string(nthreads));
  if (cfg.grid.x < 1 || cfg.grid.y < 1 || cfg.grid.z < 1 || cfg.grid.x > 0x7fffffffu ||
      cfg.grid.y > 65535 || cfg.grid.z > 65535)
    throw std::runtime_error("cuda emulator: invalid grid (" + std::to_string(cfg.grid.x) + ", " +
                             std::to_string(cfg.grid.y) + ", " + std::to_string(cfg.grid.z) + ")");
  size_t smem_limit = kMaxDynamicSmem;
  for (const auto& [fn, bytes] : smem_limits())
    if (fn == kernel) smem_limit = static_cast<size_t>(bytes);
  if (cfg.smem > smem_limit)
    throw std::runtime_error("cuda emulator: " + std::to_string(cfg.smem) +
                             " bytes of dynamic shared memory requested, the kernel's limit is " +
                             std::to_string(smem_limit));
  if (current_launch() != nullptr)
    throw std::runtime_error("cuda emulator: a kernel launched another kernel");
  count_launch(kernel);
  Launch L;
  L.cfg = cfg;
  L.body = std::move(body);
  L.nthreads = static_cast<int>(nthreads);
  L.fibers.resize(L.nthreads);
  const int nwarps = (L.nthreads + 31) / 32;
  L.warp_live.resize(nwarps);
  L.warp_arrived.resize(nwarps);
  L.shfl.resize(nwarps);
  // The base is 128 bytes past a 1024-byte boundary: the alignment kernels may rely on
  // (extern __shared__ __align__(128)), and no more, so a kernel that needs 1024-byte
  // alignment (the wgmma ring) must align itself, as on the hardware.
  L.dyn_storage.resize(cfg.smem + 2048);
  L.smem = reinterpret_cast<unsigned char*>(
      ((reinterpret_cast<uintptr_t>(L.dyn_storage.data()) + 1023) & ~uintptr_t(1023)) + 128);
  L.smem_bytes = cfg.smem;
#if defined(FASTNN_EMU_ASAN)
  ASAN_POISON_MEMORY_REGION(L.smem + cfg.smem, L.dyn_storage.data() + L.dyn_storage.size() - (L.smem + cfg.smem));
#endif
  current_launch() = &L;
  blockDim = cfg.block;
  gridDim = cfg.grid;
  try {
    for (unsigned z = 0; z < cfg.grid.z && !L.failed; ++z)
      for (unsigned y = 0; y < cfg.grid.y && !L.failed; ++y)
        for (unsigned x = 0; x < cfg.grid.x && !L.failed; ++x) {
          blockIdx = dim3(x, y, z);
          run_block(L);
        }
  } catch (...) {
    current_launch() = nullptr;
    throw;
  }
  current_launch() = nullptr;
  if (L.failed) throw std::runtime_error("cuda emulator: kernel failed in " + L.error);
}

// kernel<<<cfg>>>(args...): the arguments are converted to the kernel's parameter
// types once, as a launch does, and every thread calls the kernel with them.
template <typename... P, typename... A>
void launch(void (*kernel)(P...), const Config& cfg, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "wrong number of kernel arguments");
  std::tuple<std::decay_t<P>...> params(static_cast<std::decay_t<P>>(std::forward<A>(args))...);
  run(reinterpret_cast<const void*>(kernel), cfg, [&] { std::apply(kernel, params); });
}

}  // namespace emu

// --- device intrinsics ---------------------------------------------------------------
inline void __syncthreads() { emu::block_barrier(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_barrier(); }

template <typename T>
inline T __shfl_xor_sync(unsigned, T var, int lane_mask, int width = 32) {
  return emu::shuffle(var, width, [&](int lane) { return (lane ^ lane_mask) & 31; });
}
template <typename T>
inline T __shfl_down_sync(unsigned, T var, unsigned delta, int width = 32) {
  return emu::shuffle(var, width, [&](int lane) {
    const int src = lane + static_cast<int>(delta);
    return src / width == lane / width ? src : lane;
  });
}
template <typename T>
inline T __shfl_sync(unsigned, T var, int src_lane, int width = 32) {
  return emu::shuffle(var, width,
                      [&](int lane) { return (lane / width) * width + (src_lane % width); });
}

// build.py puts this at the top of every kernel that declares __launch_bounds__(n, ...).
#define EMU_CHECK_BOUNDS(n)                                                                 \
  do {                                                                                      \
    if (static_cast<int64_t>(blockDim.x) * blockDim.y * blockDim.z > (n))                   \
      throw std::runtime_error("launch with more threads per block than __launch_bounds__"); \
  } while (0)

#define EMU_KERNEL_ASSERT(cond)                                                          \
  do {                                                                                   \
    if (!(cond)) throw std::runtime_error("device-side assertion `" #cond "` failed");   \
  } while (0)

[[noreturn]] inline void __trap() { throw std::runtime_error("__trap()"); }

inline size_t __cvta_generic_to_shared(const void* p) { return emu::shared_offset(p); }
