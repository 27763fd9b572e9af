// fastnn Hopper tensor-core GEMMs (wgmma, sm_90a) for float16 / bfloat16, and for
// float32 as TF32 (when matmuls may use TF32), used by csrc/cuda/linear.cu for large
// problems when the extension is built for sm_90a: wgmma_gemm_nt_kernel (cp.async,
// described first) and wgmma_gemm_tma_kernel (TMA and warp specialisation, at the end).
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
#include <type_traits>

#include <cuda.h>  // CUtensorMap (the tensor-memory accelerator's descriptor)
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

// A matrix descriptor for an operand in the 128-byte-swizzled layout (1024-byte-aligned
// pattern, base offset 0). K-major: rows 128 bytes apart, stride byte offset (SBO) 1024
// from one 8-row group to the next, leading byte offset (LBO) unused (1). MN-major:
// 64 MN-elements per 128-byte row, a K index per row, SBO 1024 from one group of 8 K
// rows to the next, LBO from one 64-element MN block to the next.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo_bytes = 16) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4)          // start address, 16-byte units
         | (static_cast<uint64_t>((lbo_bytes & 0x3FFFF) >> 4) << 16)  // leading byte offset
         | (static_cast<uint64_t>(1024 >> 4) << 32)            // stride byte offset
         | (static_cast<uint64_t>(1) << 62);                   // 128-byte swizzle
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
// (scale-a, scale-b, and for the 16-bit types trans-a, trans-b: operands %67, %68).
#define FASTNN_WGMMA_M64N128(INSTR, IMM, ...)                                               \
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
      : "l"(da), "l"(db), "r"(1) __VA_ARGS__)

// d += A . B^T for one 64 x 128 x (32 bytes of K) step: k16 for the 16-bit types, k8
// for TF32 (float32 read from shared memory, low mantissa bits ignored); scale-d = 1.
// TA / TB: the operand is MN-major in shared memory (wgmma's "transpose"; 16-bit
// types only), else K-major.
template <typename T, bool TA = false, bool TB = false>
__device__ __forceinline__ void wgmma_m64n128_step(float (&d)[64], uint64_t da, uint64_t db) {
  static_assert(sizeof(T) == 2 || (!TA && !TB), "wgmma reads TF32 operands K-major only");
#if defined(FASTNN_CUDA_EMULATOR)
  ::emu::wgmma_m64n128<T>(d, da, db, TA, TB);
#else
  if constexpr (std::is_same_v<T, __half>) {
    FASTNN_WGMMA_M64N128("wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16", "1, 1, %67, %68",
                         , "n"(int{TA}), "n"(int{TB}));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    FASTNN_WGMMA_M64N128("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16", "1, 1, %67, %68",
                         , "n"(int{TA}), "n"(int{TB}));
  } else {
    FASTNN_WGMMA_M64N128("wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32", "1, 1");
  }
#endif
}
#undef FASTNN_WGMMA_M64N128

// m64n256: the accumulators as two halves of 64 registers, d[0] columns 0..127 and d[1]
// columns 128..255 (register 4j + r of the instruction is d[j / 16][4 (j % 16) + r]).
#define FASTNN_ACC8_2(h, i)                                                                  \
  "+f"(d[h][i]), "+f"(d[h][i + 1]), "+f"(d[h][i + 2]), "+f"(d[h][i + 3]), "+f"(d[h][i + 4]),  \
      "+f"(d[h][i + 5]), "+f"(d[h][i + 6]), "+f"(d[h][i + 7])
// As FASTNN_WGMMA_M64N128 with 128 accumulators: descriptors %128, %129, scale-d %130,
// trans-a / trans-b %131, %132.
#define FASTNN_WGMMA_M64N256(INSTR, IMM, ...)                                               \
  asm volatile(                                                                             \
      "{\n"                                                                                 \
      ".reg .pred p;\n"                                                                      \
      "setp.ne.b32 p, %130, 0;\n"                                                            \
      INSTR "\n"                                                                            \
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,\n"            \
      " %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,\n"  \
      " %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,\n"  \
      " %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63,\n"  \
      " %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,\n"  \
      " %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,\n"  \
      " %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111,\n" \
      " %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127},\n" \
      " %128, %129, p, " IMM ";\n"                                                          \
      "}\n"                                                                                 \
      : FASTNN_ACC8_2(0, 0), FASTNN_ACC8_2(0, 8), FASTNN_ACC8_2(0, 16), FASTNN_ACC8_2(0, 24),   \
        FASTNN_ACC8_2(0, 32), FASTNN_ACC8_2(0, 40), FASTNN_ACC8_2(0, 48), FASTNN_ACC8_2(0, 56),   \
        FASTNN_ACC8_2(1, 0), FASTNN_ACC8_2(1, 8), FASTNN_ACC8_2(1, 16), FASTNN_ACC8_2(1, 24),   \
        FASTNN_ACC8_2(1, 32), FASTNN_ACC8_2(1, 40), FASTNN_ACC8_2(1, 48), FASTNN_ACC8_2(1, 56) \
      : "l"(da), "l"(db), "r"(1) __VA_ARGS__)

// d += A . B^T for one 64 x 256 x (32 bytes of K) step, as wgmma_m64n128_step: one
// instruction reads A once for all 256 columns (two m64n128 steps read it twice).
template <typename T, bool TA = false, bool TB = false>
__device__ __forceinline__ void wgmma_m64n256_step(float (&d)[2][64], uint64_t da, uint64_t db) {
  static_assert(sizeof(T) == 2 || (!TA && !TB), "wgmma reads TF32 operands K-major only");
#if defined(FASTNN_CUDA_EMULATOR)
  ::emu::wgmma_m64n256<T>(d, da, db, TA, TB);
#else
  if constexpr (std::is_same_v<T, __half>) {
    FASTNN_WGMMA_M64N256("wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16", "1, 1, %131, %132",
                         , "n"(int{TA}), "n"(int{TB}));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    FASTNN_WGMMA_M64N256("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16", "1, 1, %131, %132",
                         , "n"(int{TA}), "n"(int{TB}));
  } else {
    FASTNN_WGMMA_M64N256("wgmma.mma_async.sync.aligned.m64n256k8.f32.tf32.tf32", "1, 1");
  }
#endif
}
#undef FASTNN_WGMMA_M64N256
#undef FASTNN_ACC8_2
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

// Epilogue: adds the bias to a warpgroup's 64 x 256 accumulators (acc0: columns
// 0..127, acc1: 128..255; rows row_base.., columns n0..) and stores them rounded once
// to T, straight from registers in the m64nN f32 layout (thread t, warp w = t / 32,
// lane l: register 4j + {0,1} is row 16w + l/4, columns 8j + 2(l%4) + {0,1}; 4j + {2,3}
// the same columns of row 16w + l/4 + 8). Pairs of columns as one store when N is even.
template <typename T>
__device__ __forceinline__ void store_rows(const float (&acc0)[64], const float (&acc1)[64],
                                           T* __restrict__ C, const T* __restrict__ bias,
                                           int64_t M, int64_t N, int64_t row_base, int64_t n0,
                                           int t) {
  const int lane = t % 32;
  const int64_t row0 = row_base + (t / 32) * 16 + lane / 4;
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

  store_rows(acc0, acc1, C, bias, M, N, m0 + wg * 64, n0, tid % 128);
#else
  __trap();  // built without sm_90a: linear.cu never launches this kernel then
#endif
}

// ---------------------------------------------------------------------------------
// wgmma_gemm_tma_kernel: the same product and tiles, fed by the tensor-memory
// accelerator (TMA) and split into a producer and two consumers.
//
// Computes C[M,N] = A . B (+ bias[n]) with A K-major ([M][K], K contiguous) or, with
// A_MN, MN-major ([K][M], M contiguous), and B K-major ([N][K]) or, with B_MN,
// MN-major ([K][N]): Linear's forward is (K, K), dx = dy . W is (K, MN) and dW = dy^T . x
// is (MN, MN), so the backward reads its operands where they lie, without transposed
// copies. MN-major operands are 16-bit types only (wgmma reads TF32 K-major only). The
// host (linear.cu) describes each operand with a 2-D tensor map of 128-byte-swizzled
// boxes: K-major boxes are 64 half elements (32 floats) of K by 128 rows (A) or 256
// rows (B), the layout of the cp.async kernel above; MN-major boxes are 64 MN elements
// by 64 K rows (8 KB; 2 per A tile, 4 per B tile), one K index per 128-byte row.
// Rows and columns past the tensor's edge arrive as zeros (the TMA fills them), so tails
// in M, N and K need no guards on the load side.
//
// Work split: one block of 384 threads per 128 x 256 output tile (blockIdx.x: M tiles,
// blockIdx.y: N tiles). Warpgroup 0 is the producer: it drops to 40 registers, and one
// of its threads loops over the K tiles, waiting until stage s is free (its "empty"
// mbarrier), announcing the stage's 48 KB on its "full" mbarrier (arrive.expect_tx)
// and issuing the TMA copies, which complete on that barrier. Warpgroups 1 and 2 are
// the consumers of rows 0..63 and 64..127: they rise to 232 registers, wait on the
// stage's full barrier, issue its 4 wgmmas (one m64n256 per 32 bytes of K: A is read
// once per step, where the two m64n128 steps above read it twice), and once wait_group
// 1 shows the previous tile's wgmmas retired, one thread of each releases that tile's
// stage (an arrive on its empty barrier; 2 arrivals free it). So all 4
// stages can be in flight, no block-wide barrier is met in the loop, and no consumer
// thread computes a load address. Barrier phases: the k-th use of stage s (k =
// kt / STAGES) completes phase k of full[s]; its consumers wait for parity k & 1, and
// the producer waits for the release of the previous use with parity (k & 1) ^ 1 (the
// first round passes at once: a fresh barrier counts its "previous" phase as done).
// The epilogue is store_rows, as above.
namespace tma {
constexpr int THREADS = 384;          // producer warpgroup + 2 consumer warpgroups
// setmaxnreg moves registers within the block's allocation at launch: the consumers'
// rise waits until the producer has given up enough, so the kernel must start with at
// least LAUNCH_REGS per thread (what __launch_bounds__(384, 1) caps it at; linear.cu
// checks the compiled count before the first launch, as a smaller one would hang).
constexpr int PRODUCER_REGS = 40, CONSUMER_REGS = 232, LAUNCH_REGS = 168;
static_assert(128 * PRODUCER_REGS + 256 * CONSUMER_REGS <= THREADS * LAUNCH_REGS &&
                  THREADS * LAUNCH_REGS <= 65536,
              "the warpgroups' registers after setmaxnreg must fit the launch allocation");
// A wait on an mbarrier longer than this (clock cycles, about 10 s) is a protocol slip
// (a transaction count that never completes): trap, so it fails instead of hanging.
constexpr long long MBAR_TIMEOUT_CYCLES = 20'000'000'000LL;
constexpr int MN_BOX_BYTES = 64 * BK_BYTES;             // an MN-major box: 64 K rows, 8 KB
constexpr int BARRIER_BYTES = 2 * STAGES * 8;           // full[STAGES], empty[STAGES]
constexpr int SMEM_BYTES = STAGES * STAGE_BYTES + BARRIER_BYTES + 1024;
}  // namespace tma

#if defined(FASTNN_WGMMA_DEVICE)

#if defined(FASTNN_CUDA_EMULATOR)
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) { ::emu::mbar_init(bar, count); }
__device__ __forceinline__ void mbar_init_fence() {}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  ::emu::mbar_arrive(bar, bytes);
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) { ::emu::mbar_arrive(bar, 0); }
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) { ::emu::mbar_wait(bar, parity); }
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int c0, int c1,
                                            uint32_t bar) {
  ::emu::tma_load_2d(dst, map, c0, c1, bar);
}
template <int REGS> __device__ __forceinline__ void setmaxnreg_dec() {}
template <int REGS> __device__ __forceinline__ void setmaxnreg_inc() {}
#else
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes the initialised barriers visible to the async proxy (the TMA unit).
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}
// Returns once the phase of parity `parity` has completed (traps after about 10 s).
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  if (mbar_try_wait(bar, parity)) return;
  const long long start = clock64();
  while (!mbar_try_wait(bar, parity))
    if (clock64() - start > tma::MBAR_TIMEOUT_CYCLES) __trap();
}
// One box of the 2-D tensor `map` at coordinates (c0: innermost, c1) into shared memory
// at dst, completing `bar`'s transaction count by the box's bytes.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int c0, int c1,
                                            uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
template <int REGS>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(REGS));
}
template <int REGS>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(REGS));
}
#endif

#endif  // FASTNN_WGMMA_DEVICE

template <typename T, bool A_MN, bool B_MN>
__global__ void __launch_bounds__(tma::THREADS, 1)
    wgmma_gemm_tma_kernel(const __grid_constant__ CUtensorMap map_a,
                          const __grid_constant__ CUtensorMap map_b, T* __restrict__ C,
                          const T* __restrict__ bias, int64_t M, int64_t N, int64_t K) {
#if defined(FASTNN_WGMMA_DEVICE)
  static_assert(sizeof(T) == 2 || (!A_MN && !B_MN), "wgmma reads TF32 operands K-major only");
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t ring = (raw + 1023u) & ~1023u;
  const uint32_t full = ring + STAGES * STAGE_BYTES;  // full[s] at full + 8 s
  const uint32_t empty = full + STAGES * 8;           // empty[s] at empty + 8 s
  const int tid = threadIdx.x;
  const int wg = tid / 128;
  const int m0 = static_cast<int>(blockIdx.x) * BM;  // linear.cu: M, N, K < 2^31
  const int n0 = static_cast<int>(blockIdx.y) * BN;
  constexpr int BK = BK_BYTES / static_cast<int>(sizeof(T));  // 64 half elements, 32 floats
  const int k_tiles = static_cast<int>((K + BK - 1) / BK);

  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full + 8 * s, 1);   // the producer's arrive.expect_tx (+ the copies' bytes)
      mbar_init(empty + 8 * s, 2);  // one arrive per consumer warpgroup
    }
    mbar_init_fence();
  }
  __syncthreads();

  if (wg == 0) {  // producer
    setmaxnreg_dec<tma::PRODUCER_REGS>();
    if (tid == 0) {
      for (int kt = 0; kt < k_tiles; ++kt) {
        const int s = kt % STAGES;
        const uint32_t a = ring + s * STAGE_BYTES, b = a + A_TILE_BYTES;
        const uint32_t bar = full + 8 * s;
        mbar_wait(empty + 8 * s, ((kt / STAGES) & 1) ^ 1);
        mbar_arrive_expect_tx(bar, STAGE_BYTES);
        const int k0 = kt * BK;
        if constexpr (A_MN) {
#pragma unroll
          for (int i = 0; i < BM / 64; ++i) tma_load_2d(a + i * tma::MN_BOX_BYTES, &map_a, m0 + 64 * i, k0, bar);
        } else {
          tma_load_2d(a, &map_a, k0, m0, bar);
        }
        if constexpr (B_MN) {
#pragma unroll
          for (int i = 0; i < BN / 64; ++i) tma_load_2d(b + i * tma::MN_BOX_BYTES, &map_b, n0 + 64 * i, k0, bar);
        } else {
          tma_load_2d(b, &map_b, k0, n0, bar);
        }
      }
    }
    return;
  }

  setmaxnreg_inc<tma::CONSUMER_REGS>();
  const int cw = wg - 1;  // rows 64 cw .. 64 cw + 63 of the tile
  float acc[2][64];       // columns 0..127 and 128..255
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[0][i] = acc[1][i] = 0.f;

  for (int kt = 0; kt < k_tiles; ++kt) {
    const int s = kt % STAGES;
    mbar_wait(full + 8 * s, (kt / STAGES) & 1);
    const uint32_t a_stage = ring + s * STAGE_BYTES, b_stage = a_stage + A_TILE_BYTES;
    fence_acc(acc[0]);
    fence_acc(acc[1]);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < BK_BYTES / 32; ++k) {
      // K-major: the k-th 32-byte column step of 128-byte rows. MN-major: K rows 16k..
      // 16k + 15 (2 groups of 8 rows, 2048 bytes), the next 64-element block 8 KB on.
      const uint64_t da = A_MN ? smem_desc(a_stage + cw * tma::MN_BOX_BYTES + 2048 * k, tma::MN_BOX_BYTES)
                               : smem_desc(a_stage + cw * 64 * BK_BYTES + 32 * k);
      const uint64_t db = B_MN ? smem_desc(b_stage + 2048 * k, tma::MN_BOX_BYTES)
                               : smem_desc(b_stage + 32 * k);
      wgmma_m64n256_step<T, A_MN, B_MN>(acc, da, db);
    }
    wgmma_commit();
    fence_acc(acc[0]);
    fence_acc(acc[1]);
    wgmma_wait<1>();  // the previous tile's wgmmas have retired: release its stage
    if (kt > 0 && tid % 128 == 0) mbar_arrive(empty + 8 * ((kt - 1) % STAGES));
  }
  wgmma_wait<0>();
  fence_acc(acc[0]);
  fence_acc(acc[1]);

  store_rows(acc[0], acc[1], C, bias, M, N, static_cast<int64_t>(m0) + cw * 64, n0, tid % 128);
#else
  __trap();  // built without sm_90a: linear.cu never launches this kernel then
#endif
}

}  // namespace sm90
}  // namespace gemm
}  // namespace fastnn
