// fastnn Hopper tensor-core GEMM (wgmma, sm_90a) for float16 / bfloat16, and for
// float32 as TF32 (when matmuls may use TF32), used by csrc/cuda/linear.cu for large
// problems when the extension is built for sm_90a.
//
// Computes C[M,N] = A[M,K] . B[N,K]^T (+ bias[n]): both operands K-contiguous
// ("NT", Linear's forward y = x . W^T), float32 accumulators, bias added in
// float32 and the result rounded once to T. Needs K a multiple of a 16-byte chunk
// (8 half elements, 4 floats) and 16-byte aligned A and B; M and N are arbitrary
// (tails are zero-filled on load and skipped on store).
//
// Work split: one block of 256 threads = 2 warpgroups per 128 x 256 output tile
// (blockIdx.x: M tiles, blockIdx.y: N tiles). Warpgroup g owns rows 64g..64g+63
// and all 256 columns as two m64n128 accumulators (2 x 64 float registers per
// thread), advanced by wgmma m64n128k16 (16-bit types) or m64n128k8 (TF32): 32
// bytes of K per step either way.
//
// Shared memory: a STAGES-deep ring of K tiles of 128 bytes per row (64 half
// elements, 32 floats): A tile [128 rows] then B tile [256 rows] per stage, 48 KB,
// each row stored with the 128-byte swizzle that wgmma's descriptors name (16-byte chunk c of row r
// at chunk c ^ (r % 8); the ring starts 1024-byte aligned so the pattern lines up
// with the hardware's). Descriptor: start address, stride between 8-row groups
// (SBO) 1024 bytes, leading offset unused for a swizzled K-major operand; the k-th
// 32-byte step of a tile starts 32 * k bytes further.
//
// Pipeline, per K tile kt (all 256 threads both copy and multiply):
//   wait for this thread's copies of tile kt (cp.async groups), proxy fence (the
//   tensor cores read through the async proxy what cp.async wrote), barrier;
//   start copying tile kt + STAGES - 2 into the stage tile kt - 2 used: every
//   warpgroup has retired that tile's wgmmas (wait_group 1 in the last round);
//   issue the 8 wgmmas of tile kt, commit, and wait until only they are in flight.
// So STAGES - 2 tiles are in flight ahead of the one being multiplied, and one
// group of wgmmas overlaps the next round's copies.
//
// Epilogue: the accumulator layout of m64nN (f32) -- thread t of a warpgroup, warp
// w = t / 32, lane l: register 4j + {0,1} holds row 16w + l/4, columns
// 8j + 2(l%4) + {0,1}; register 4j + {2,3} the same columns of row 16w + l/4 + 8 --
// converted and stored straight from registers (pairs when N is even).
//
// Compiled only in the sm_90a pass (__CUDA_ARCH_FEAT_SM90_ALL), and for the CPU emulator
// of tests/cuda_emu (FASTNN_CUDA_EMULATOR: the wgmma and fence calls go to its models of
// them); in any other pass the kernel traps, and linear.cu launches it only on a
// compute-capability 9.0 device of a build whose arch list names 9.0a (FASTNN_SM90A).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gemm.cuh"  // to_acc / from_acc, cp_async16 / cp_async_commit / cp_async_wait

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FASTNN_WGMMA_DEVICE 1
#elif defined(FASTNN_CUDA_EMULATOR)  // tests/cuda_emu: the wgmma calls below have CPU models
#define FASTNN_WGMMA_DEVICE 1
#endif

namespace fastnn {
namespace gemm {
namespace sm90 {

constexpr int BM = 128, BN = 256, BK_BYTES = 128, STAGES = 4, THREADS = 256;
constexpr int A_TILE_BYTES = BM * BK_BYTES;                  // 16 KB
constexpr int B_TILE_BYTES = BN * BK_BYTES;                  // 32 KB
constexpr int STAGE_BYTES = A_TILE_BYTES + B_TILE_BYTES;      // 48 KB
constexpr int SMEM_BYTES = STAGES * STAGE_BYTES + 1024;       // + slack for 1024-byte alignment

#if defined(FASTNN_WGMMA_DEVICE)

__device__ __forceinline__ uint64_t smem_desc(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4)   // start address, 16-byte units
         | (static_cast<uint64_t>(1) << 16)             // leading byte offset (unused here)
         | (static_cast<uint64_t>(1024 >> 4) << 32)     // stride byte offset: 8 rows x 128 B
         | (static_cast<uint64_t>(1) << 62);            // 128-byte swizzle
}

// Keeps the compiler from moving accumulator accesses across the wgmma fences.
__device__ __forceinline__ void fence_acc([[maybe_unused]] float (&d)[64]) {
#if !defined(FASTNN_CUDA_EMULATOR)
#pragma unroll
  for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
#endif
}

#define FASTNN_ACC8(i)                                                                      \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
      "+f"(d[i + 6]), "+f"(d[i + 7])
// INSTR: the instruction with its shape and types; IMM: the immediates after scale-d
// (scale-a, scale-b, and for the 16-bit types trans-a, trans-b: 0 = K-major).
#define FASTNN_WGMMA_M64N128(INSTR, IMM)                                                    \
  asm volatile(                                                                             \
      "{\n"                                                                                 \
      ".reg .pred p;\n"                                                                      \
      "setp.ne.b32 p, %66, 0;\n"                                                             \
      INSTR "\n"                                                                            \
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,\n"            \
      " %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,\n"  \
      " %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,\n"  \
      " %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63},\n" \
      " %64, %65, p, " IMM ";\n"                                                            \
      "}\n"                                                                                 \
      : FASTNN_ACC8(0), FASTNN_ACC8(8), FASTNN_ACC8(16), FASTNN_ACC8(24), FASTNN_ACC8(32),   \
        FASTNN_ACC8(40), FASTNN_ACC8(48), FASTNN_ACC8(56)                                    \
      : "l"(da), "l"(db), "r"(1))

// d += A . B^T for one 64 x 128 x (32 bytes of K) step: k16 for the 16-bit types, k8
// for TF32 (float32 read from shared memory, low mantissa bits ignored); scale-d = 1.
template <typename T>
__device__ __forceinline__ void wgmma_m64n128_step(float (&d)[64], uint64_t da, uint64_t db);
#if defined(FASTNN_CUDA_EMULATOR)
template <typename T>
__device__ __forceinline__ void wgmma_m64n128_step(float (&d)[64], uint64_t da, uint64_t db) {
  ::emu::wgmma_m64n128<T>(d, da, db);
}
#else
template <>
__device__ __forceinline__ void wgmma_m64n128_step<__half>(float (&d)[64], uint64_t da,
                                                           uint64_t db) {
  FASTNN_WGMMA_M64N128("wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16", "1, 1, 0, 0");
}
template <>
__device__ __forceinline__ void wgmma_m64n128_step<__nv_bfloat16>(float (&d)[64], uint64_t da,
                                                                  uint64_t db) {
  FASTNN_WGMMA_M64N128("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16", "1, 1, 0, 0");
}
template <>
__device__ __forceinline__ void wgmma_m64n128_step<float>(float (&d)[64], uint64_t da,
                                                          uint64_t db) {
  FASTNN_WGMMA_M64N128("wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32", "1, 1");
}
#endif
#undef FASTNN_WGMMA_M64N128
#undef FASTNN_ACC8

#if defined(FASTNN_CUDA_EMULATOR)
__device__ __forceinline__ void wgmma_fence() {}
__device__ __forceinline__ void wgmma_commit() { ::emu::wgmma_commit(); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { ::emu::wgmma_wait(N); }
// The tensor cores read what cp.async wrote through the async proxy.
__device__ __forceinline__ void fence_proxy_async() {}
#else
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// The tensor cores read what cp.async wrote through the async proxy.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
#endif

// Two adjacent outputs rounded and stored as one 4-byte word (dst 4-byte aligned).
__device__ __forceinline__ void store_pair(__half* dst, float a, float b) {
  *reinterpret_cast<__half2*>(dst) = __floats2half2_rn(a, b);
}
__device__ __forceinline__ void store_pair(__nv_bfloat16* dst, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(a, b);
}
__device__ __forceinline__ void store_pair(float* dst, float a, float b) {
  *reinterpret_cast<float2*>(dst) = make_float2(a, b);
}

// Copies K tile kt of the block's A rows and B rows into one stage (swizzled).
template <typename T>
__device__ __forceinline__ void load_stage(uint32_t stage, const T* __restrict__ A,
                                           const T* __restrict__ B, int64_t M, int64_t N,
                                           int64_t K, int64_t m0, int64_t n0, int64_t kt, int tid) {
  constexpr int EPC = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte chunk
  constexpr int CPR = BK_BYTES / 16;                      // chunks per row: 8
  const int c = tid % CPR;
  const int64_t k = kt * (BK_BYTES / static_cast<int>(sizeof(T))) + c * EPC;
  const bool k_ok = k < K;
#pragma unroll
  for (int i = 0; i < BM * CPR / THREADS; ++i) {
    const int r = tid / CPR + i * (THREADS / CPR);
    const bool ok = k_ok && m0 + r < M;
    const uint32_t dst = stage + r * BK_BYTES + ((c ^ (r & 7)) << 4);
    cp_async16(dst, ok ? A + (m0 + r) * K + k : A, ok);
  }
#pragma unroll
  for (int i = 0; i < BN * CPR / THREADS; ++i) {
    const int r = tid / CPR + i * (THREADS / CPR);
    const bool ok = k_ok && n0 + r < N;
    const uint32_t dst = stage + A_TILE_BYTES + r * BK_BYTES + ((c ^ (r & 7)) << 4);
    cp_async16(dst, ok ? B + (n0 + r) * K + k : B, ok);
  }
}

#endif  // FASTNN_WGMMA_DEVICE

template <typename T>
__global__ void __launch_bounds__(THREADS, 1)
    wgmma_gemm_nt_kernel(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C,
                         const T* __restrict__ bias, int64_t M, int64_t N, int64_t K) {
#if defined(FASTNN_WGMMA_DEVICE)
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t ring = (raw + 1023u) & ~1023u;
  const int tid = threadIdx.x;
  const int wg = tid / 128;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * BN;
  constexpr int64_t BK = BK_BYTES / static_cast<int>(sizeof(T));  // 64 elements
  const int64_t k_tiles = (K + BK - 1) / BK;

  float acc0[64], acc1[64];  // columns 0..127 and 128..255 of the warpgroup's 64 rows
#pragma unroll
  for (int i = 0; i < 64; ++i) acc0[i] = acc1[i] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 2; ++s) {
    if (s < k_tiles) load_stage(ring + s * STAGE_BYTES, A, B, M, N, K, m0, n0, s, tid);
    cp_async_commit();
  }

  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<STAGES - 3>();
    fence_proxy_async();
    __syncthreads();
    const int64_t next = kt + STAGES - 2;
    if (next < k_tiles)
      load_stage(ring + static_cast<uint32_t>(next % STAGES) * STAGE_BYTES, A, B, M, N, K, m0, n0,
                 next, tid);
    cp_async_commit();

    const uint32_t stage = ring + static_cast<uint32_t>(kt % STAGES) * STAGE_BYTES;
    const uint32_t a_base = stage + wg * 64 * BK_BYTES;
    const uint32_t b_base = stage + A_TILE_BYTES;
    fence_acc(acc0);
    fence_acc(acc1);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < BK_BYTES / 32; ++k) {
      const uint64_t da = smem_desc(a_base + 32 * k);
      wgmma_m64n128_step<T>(acc0, da, smem_desc(b_base + 32 * k));
      wgmma_m64n128_step<T>(acc1, da, smem_desc(b_base + 128 * BK_BYTES + 32 * k));
    }
    wgmma_commit();
    fence_acc(acc0);
    fence_acc(acc1);
    wgmma_wait<1>();
  }
  wgmma_wait<0>();
  fence_acc(acc0);
  fence_acc(acc1);

  const int t = tid % 128;
  const int lane = t % 32;
  const int64_t row0 = m0 + wg * 64 + (t / 32) * 16 + lane / 4;
  const bool pairs = (N % 2) == 0;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float* d = h == 0 ? acc0 : acc1;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int64_t col = n0 + h * 128 + 8 * j + 2 * (lane % 4);
      if (col >= N) continue;
      const bool two = col + 1 < N;
      const float b0 = bias ? to_acc(bias[col]) : 0.f;
      const float b1 = bias && two ? to_acc(bias[col + 1]) : 0.f;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int64_t row = row0 + 8 * half;
        if (row >= M) continue;
        const float v0 = d[4 * j + 2 * half] + b0;
        const float v1 = d[4 * j + 2 * half + 1] + b1;
        T* dst = C + row * N + col;
        if (two && pairs) {
          store_pair(dst, v0, v1);
        } else {
          dst[0] = from_acc<T>(v0);
          if (two) dst[1] = from_acc<T>(v1);
        }
      }
    }
  }
#else
  __trap();  // built without sm_90a: linear.cu never launches this kernel then
#endif
}

}  // namespace sm90
}  // namespace gemm
}  // namespace fastnn
