// fastnn GEMM kernels (CUDA), used by csrc/cuda/linear.cu. See the comment
// block at the top of linear.cu for the overall design; this header holds the
// device code only.
//
// Problem: C[M, N] = sum_k A(m, k) * B(k, n) (+ bias[n]), all matrices dense
// row-major in global memory, in one of three layouts:
//   A_KMAJ = true : A is stored as [M][K] (k contiguous)   else [K][M] (m contiguous)
//   B_KMAJ = true : B is stored as [N][K] (k contiguous)   else [K][N] (n contiguous)
//   forward  y  = x  . W^T : A_KMAJ, B_KMAJ        ("NT")
//   backward dx = dy . W   : A_KMAJ, !B_KMAJ       ("NN")
//   backward dW = dy^T . x : !A_KMAJ, !B_KMAJ      ("TN")
//
// Kernels: simt_gemm_kernel (float / double, CUDA cores, register-staged double
// buffer: many tiles), simt_gemm_async_kernel (the same multiply fed by a STAGES-deep
// cp.async ring: few tiles), wmma_gemm_kernel (half / bfloat16 / TF32 tensor cores;
// ASYNC = a STAGES-deep cp.async ring, else register-staged), splitk_reduce_kernel,
// colsum_kernel (grad_bias), transpose_kernel (the wgmma GEMM's K-contiguous copies).
// Needs compute capability 8.0 or newer (cp.async, TF32 WMMA).
//
// Split-K: blockIdx.z selects a contiguous range of `kt_per_split` K tiles. With
// more than one split the kernel writes raw partial sums (no bias) to
// ws[z][M][N] and splitk_reduce_kernel adds them up in the fixed order
// z = 0, 1, ..., S-1 (plus bias), so results are bitwise reproducible.
//
// The cp.async helpers have a FASTNN_CUDA_EMULATOR branch: tests/cuda_emu runs these
// kernels on the CPU, where the asynchronous copies are queued and land at the wait.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "fastnn's CUDA kernels need compute capability 8.0 or newer: set TORCH_CUDA_ARCH_LIST to 8.0 or above"
#endif

namespace fastnn {
namespace gemm {

// ---------------------------------------------------------------------------
// Scalar conversions (torch builds with __CUDA_NO_HALF_CONVERSIONS__, so use
// the intrinsics explicitly).
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(float v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <typename T>
__device__ __forceinline__ T from_acc(double v);
template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }

// Raw storage type used to move elements around without arithmetic.
template <typename T>
struct RawOf { using type = T; };
template <>
struct RawOf<__half> { using type = unsigned short; };
template <>
struct RawOf<__nv_bfloat16> { using type = unsigned short; };

__host__ __device__ __forceinline__ bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// ---------------------------------------------------------------------------
// TileLoader: moves a TR x TC tile of a row-major global matrix g[R][C]
// (leading dimension C), starting at (r0, c0), through registers into shared
// memory. Elements outside [0,R) x [0,C) read as zero. Each thread owns PER
// chunks of VEC consecutive elements (16 bytes); when `vec` is true (C is a
// multiple of VEC and g is 16-byte aligned) a chunk is one 16-byte load,
// otherwise VEC guarded scalar loads.
template <typename S, int TR, int TC, int NT>
struct TileLoader {
  static constexpr int VEC = 16 / static_cast<int>(sizeof(S));
  static_assert(TC % VEC == 0, "tile width must be a multiple of the vector width");
  static constexpr int CPR = TC / VEC;  // chunks per row
  static constexpr int CHUNKS = TR * CPR;
  static constexpr int PER = (CHUNKS + NT - 1) / NT;
  static constexpr bool EXACT = (CHUNKS % NT) == 0;

  S v[PER][VEC];

  __device__ __forceinline__ void load(const S* __restrict__ g, int64_t R, int64_t C, int64_t r0,
                                       int64_t c0, bool vec, int tid) {
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      const int ch = tid + i * NT;
      const bool in_tile = EXACT || ch < CHUNKS;
      const int r = ch / CPR;
      const int c = (ch % CPR) * VEC;
      const int64_t gr = r0 + r;
      const int64_t gc = c0 + c;
      const bool row_ok = in_tile && gr < R;
      if (vec && row_ok && gc + VEC <= C) {
        const uint4 t = __ldg(reinterpret_cast<const uint4*>(g + gr * C + gc));
        memcpy(&v[i][0], &t, 16);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          v[i][j] = (row_ok && gc + j < C) ? g[gr * C + gc + j] : S(0);
        }
      }
    }
  }

  // s[r * pitch + c] = tile(r, c); pitch * sizeof(S) must be a multiple of 16.
  __device__ __forceinline__ void store(S* s, int pitch, int tid) const {
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      const int ch = tid + i * NT;
      if (EXACT || ch < CHUNKS) {
        const int r = ch / CPR;
        const int c = (ch % CPR) * VEC;
        uint4 t;
        memcpy(&t, &v[i][0], 16);
        *reinterpret_cast<uint4*>(s + r * pitch + c) = t;
      }
    }
  }

  // s[c * pitch + r] = tile(r, c) (transposed).
  __device__ __forceinline__ void store_t(S* s, int pitch, int tid) const {
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      const int ch = tid + i * NT;
      if (EXACT || ch < CHUNKS) {
        const int r = ch / CPR;
        const int c = (ch % CPR) * VEC;
#pragma unroll
        for (int j = 0; j < VEC; ++j) s[(c + j) * pitch + r] = v[i][j];
      }
    }
  }
};

// One K tile of both operands of a register-staged kernel, held in registers: A's
// BM x BK tile (a: [M][K] or [K][M], as in global memory) and B's BN x BK tile (b), for
// the block's C tile at (m0, n0). 16-byte loads where the operand allows (aligned base,
// contiguous dimension whole chunks).
template <typename S, int BM, int BN, int BK, int NT, bool A_KMAJ, bool B_KMAJ>
struct StagedOperands {
  std::conditional_t<A_KMAJ, TileLoader<S, BM, BK, NT>, TileLoader<S, BK, BM, NT>> a;
  std::conditional_t<B_KMAJ, TileLoader<S, BN, BK, NT>, TileLoader<S, BK, BN, NT>> b;
  const S* A;
  const S* B;
  int64_t M, N, K, m0, n0;
  int tid;
  bool vec_a, vec_b;

  __device__ __forceinline__ StagedOperands(const S* A_, const S* B_, int64_t M_, int64_t N_,
                                            int64_t K_, int64_t m0_, int64_t n0_, int tid_)
      : A(A_), B(B_), M(M_), N(N_), K(K_), m0(m0_), n0(n0_), tid(tid_) {
    constexpr int VEC = 16 / static_cast<int>(sizeof(S));
    vec_a = aligned16(A) && ((A_KMAJ ? K : M) % VEC == 0);
    vec_b = aligned16(B) && ((B_KMAJ ? K : N) % VEC == 0);
  }

  // K tile kt of both operands into the registers.
  __device__ __forceinline__ void load(int64_t kt) {
    const int64_t k0 = kt * BK;
    if (A_KMAJ) a.load(A, M, K, m0, k0, vec_a, tid);
    else        a.load(A, K, M, k0, m0, vec_a, tid);
    if (B_KMAJ) b.load(B, N, K, n0, k0, vec_b, tid);
    else        b.load(B, K, N, k0, n0, vec_b, tid);
  }
};

// The K loop of the register-staged kernels over nt K tiles from kt_begin, with two
// shared-memory buffers: load(kt) fetches a tile into registers, store(buf) writes them
// to a buffer, multiply(buf) consumes one. Tile t+1 is fetched while tile t is
// multiplied, then stored into the other buffer; one barrier per tile. Returns after a
// barrier (also when nt == 0), so the buffers are free for the caller.
template <typename Load, typename Store, typename Multiply>
__device__ __forceinline__ void staged_k_loop(int nt, int64_t kt_begin, Load&& load, Store&& store,
                                              Multiply&& multiply) {
  if (nt > 0) {
    load(kt_begin);
    store(0);
  }
  __syncthreads();
  for (int t = 0; t < nt; ++t) {
    const int cur = t & 1;
    const bool more = t + 1 < nt;
    if (more) load(kt_begin + t + 1);
    multiply(cur);
    if (more) store(cur ^ 1);
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------
// Asynchronous global -> shared copies (cp.async): queued per thread, grouped by
// cp_async_commit, landed by cp_async_wait<N> (all groups but the newest N).

// 16-byte global -> shared copy to the shared-space address `smem`; !valid: nothing
// is read and the 16 bytes are zero-filled.
__device__ __forceinline__ void cp_async16(uint32_t smem, const void* gmem, bool valid) {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem),
               "r"(valid ? 16 : 0)
               : "memory");
#elif defined(FASTNN_CUDA_EMULATOR)  // tests/cuda_emu: queued, lands at the wait
  ::emu::cp_async16(smem, gmem, valid);
#endif
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  cp_async16(static_cast<uint32_t>(__cvta_generic_to_shared(smem)), gmem, valid);
}
// One float / double element global -> shared (cp.async of 4 or 8 bytes, so any
// element-aligned address); !valid: nothing is read and the element is zero-filled.
template <typename T>
__device__ __forceinline__ void cp_async_elem(T* smem, const T* gmem, bool valid) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "cp.async copies 4, 8 or 16 bytes");
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(
                   static_cast<uint32_t>(__cvta_generic_to_shared(smem))),
               "l"(gmem), "n"(static_cast<int>(sizeof(T))), "r"(valid ? static_cast<int>(sizeof(T)) : 0)
               : "memory");
#elif defined(FASTNN_CUDA_EMULATOR)
  ::emu::cp_async(static_cast<uint32_t>(__cvta_generic_to_shared(smem)), gmem, sizeof(T), valid);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif defined(FASTNN_CUDA_EMULATOR)
  ::emu::cp_async_commit();
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#elif defined(FASTNN_CUDA_EMULATOR)
  ::emu::cp_async_wait(N);
#endif
}

// Issue cp.async for a TR x TC tile of row-major g[R][C] at (r0, c0) into
// s[r * pitch + c]. Requires C % VEC == 0 and g 16-byte aligned, so a chunk is
// either entirely inside or entirely outside the matrix.
template <typename S, int TR, int TC, int NT>
__device__ __forceinline__ void async_tile(S* s, int pitch, const S* g, int64_t R, int64_t C,
                                           int64_t r0, int64_t c0, int tid) {
  constexpr int VEC = 16 / static_cast<int>(sizeof(S));
  static_assert(TC % VEC == 0, "tile width must be a multiple of the vector width");
  constexpr int CPR = TC / VEC;
  constexpr int CHUNKS = TR * CPR;
  constexpr int PER = (CHUNKS + NT - 1) / NT;
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    const int ch = tid + i * NT;
    if ((CHUNKS % NT) == 0 || ch < CHUNKS) {
      const int r = ch / CPR;
      const int c = (ch % CPR) * VEC;
      const int64_t gr = r0 + r;
      const int64_t gc = c0 + c;
      const bool valid = gr < R && gc < C;
      cp_async16(s + r * pitch + c, valid ? g + gr * C + gc : g, valid);
    }
  }
}

// The K loop over a STAGES-deep ring of cp.async stages, for nt K tiles starting at
// kt_begin: issue(kt, stage) queues tile kt's copies into a stage, multiply(stage)
// consumes one. Tiles 0 .. STAGES-2 are issued first, one commit group per tile (empty
// groups past the end keep the count uniform). Then, per tile t, STAGES-1+t groups
// have been committed: waiting until at most STAGES-2 are pending means tiles 0..t
// have landed (for this thread); the barrier publishes them to every thread and
// guarantees everyone is done with tile t-1's stage, which is then refilled with tile
// t+STAGES-1 while tile t is multiplied. Returns with no copy in flight; the caller
// needs a barrier before it reuses the stages.
template <int STAGES, typename Issue, typename Multiply>
__device__ __forceinline__ void cp_async_k_loop(int nt, int64_t kt_begin, Issue&& issue,
                                                Multiply&& multiply) {
  static_assert(STAGES >= 2, "at least two stages");
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nt) issue(kt_begin + s, s);
    cp_async_commit();
  }
  for (int t = 0; t < nt; ++t) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    const int nxt = t + STAGES - 1;
    if (nxt < nt) issue(kt_begin + nxt, nxt % STAGES);
    cp_async_commit();
    multiply(t % STAGES);
  }
  cp_async_wait<0>();
}

// 4 consecutive shared-memory elements (16-byte aligned for float, 32 for double).
__device__ __forceinline__ void lds4(const float* p, float* o) {
  const float4 t = *reinterpret_cast<const float4*>(p);
  o[0] = t.x; o[1] = t.y; o[2] = t.z; o[3] = t.w;
}
__device__ __forceinline__ void lds4(const double* p, double* o) {
  const double2 t0 = *reinterpret_cast<const double2*>(p);
  const double2 t1 = *reinterpret_cast<const double2*>(p + 2);
  o[0] = t0.x; o[1] = t0.y; o[2] = t1.x; o[3] = t1.y;
}
// 4 consecutive global elements, 16-byte aligned.
__device__ __forceinline__ void stg4(float* p, const float* v) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void stg4(double* p, const double* v) {
  *reinterpret_cast<double2*>(p) = make_double2(v[0], v[1]);
  *reinterpret_cast<double2*>(p + 2) = make_double2(v[2], v[3]);
}

// ---------------------------------------------------------------------------
// SIMT GEMM for float / double (accumulates in T itself).
//   block tile BM x BN, K step BK, NT = (BM/TM)*(BN/TN) threads, each thread a
//   TM x TN register tile. Thread (ty, tx) owns rows
//   g*(BM/(TM/4)) + ty*4 + {0..3} for g < TM/4 (and likewise columns), so its
//   shared-memory reads are 16-byte vectors and conflict-free.
//   Shared memory holds both operands k-major (As[k][m], Bs[k][n], rows padded
//   by kSimtPad elements). Two kernels fill it:
//     simt_gemm_kernel        register-staged double buffer: tile t+1 is loaded
//                             into registers while tile t is multiplied, then
//                             stored into the other buffer (k-contiguous operands
//                             transposed on the store); one __syncthreads per K
//                             tile. Throughput-bound problems (many tiles).
//     simt_gemm_async_kernel  a STAGES-deep ring of cp.async element copies
//                             (transposing as they land), so STAGES-1 K tiles are
//                             in flight while one is multiplied. Small, latency-
//                             bound problems (few tiles, where each K tile would
//                             otherwise wait a whole global-memory round trip).
constexpr int kSimtPad = 4;

// acc[TM][TN] += as^T . bs over one K tile: as = As[BK][BM + pad], bs = Bs[BK][BN + pad].
template <typename T, int BM, int BN, int BK, int TM, int TN>
__device__ __forceinline__ void simt_tile_fma(const T* __restrict__ as, const T* __restrict__ bs,
                                              int tx, int ty, T (&acc)[TM][TN]) {
  constexpr int GM = TM / 4, GN = TN / 4;
#pragma unroll
  for (int k = 0; k < BK; ++k) {
    T a[TM], b[TN];
#pragma unroll
    for (int g = 0; g < GM; ++g) lds4(as + k * (BM + kSimtPad) + g * (BM / GM) + ty * 4, &a[g * 4]);
#pragma unroll
    for (int g = 0; g < GN; ++g) lds4(bs + k * (BN + kSimtPad) + g * (BN / GN) + tx * 4, &b[g * 4]);
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
  }
}

// C = acc + bias for the block's BM x BN tile at (m0, n0), or the raw partial sums to
// ws[blockIdx.z] when split-K (ws != nullptr).
template <typename T, int BM, int BN, int TM, int TN>
__device__ __forceinline__ void simt_epilogue(const T (&acc)[TM][TN], T* __restrict__ C,
                                              const T* __restrict__ bias, T* __restrict__ ws,
                                              int64_t M, int64_t N, int64_t m0, int64_t n0, int tx,
                                              int ty) {
  constexpr int GM = TM / 4, GN = TN / 4;
  T* out = C;
  const T* bptr = bias;
  if (ws != nullptr) {
    out = ws + static_cast<int64_t>(blockIdx.z) * M * N;
    bptr = nullptr;
  }
  const bool vec_out = aligned16(out) && (N % 4 == 0);
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + (i / 4) * (BM / GM) + ty * 4 + (i % 4);
    if (m >= M) continue;
    T* row = out + m * N;
#pragma unroll
    for (int g = 0; g < GN; ++g) {
      const int64_t n = n0 + g * (BN / GN) + tx * 4;
      T v[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        v[q] = acc[i][g * 4 + q];
        if (bptr != nullptr && n + q < N) v[q] += bptr[n + q];
      }
      if (vec_out && n + 3 < N) {
        stg4(row + n, v);
      } else {
#pragma unroll
        for (int q = 0; q < 4; ++q)
          if (n + q < N) row[n + q] = v[q];
      }
    }
  }
}

// The K-tile range [kt_begin, kt_begin + nt) of split blockIdx.z.
__device__ __forceinline__ int split_k_tiles(int64_t K, int BK, int kt_per_split, int64_t& kt_begin) {
  const int64_t k_tiles = (K + BK - 1) / BK;
  kt_begin = static_cast<int64_t>(blockIdx.z) * kt_per_split;
  const int64_t kt_end = kt_begin + kt_per_split < k_tiles ? kt_begin + kt_per_split : k_tiles;
  return kt_end > kt_begin ? static_cast<int>(kt_end - kt_begin) : 0;
}

// Where one thread of a SIMT GEMM block works: (tx, ty) in the block's (BN/TN) x (BM/TM)
// thread grid, the origin (m0, n0) of the block's C tile, and the K tiles
// [kt_begin, kt_begin + nt) of its split.
template <int BM, int BN, int BK, int TM, int TN>
struct SimtThread {
  static constexpr int NT = (BM / TM) * (BN / TN);  // threads per block
  static_assert(TM % 4 == 0 && TN % 4 == 0, "thread tile must be a multiple of 4");
  static_assert((BM / TM) * TM == BM && (BN / TN) * TN == BN, "bad tile config");
  int tid, tx, ty, nt;
  int64_t m0, n0, kt_begin;
  __device__ __forceinline__ SimtThread(int64_t K, int kt_per_split)
      : tid(static_cast<int>(threadIdx.x)), tx(tid % (BN / TN)), ty(tid / (BN / TN)),
        m0(static_cast<int64_t>(blockIdx.x) * BM), n0(static_cast<int64_t>(blockIdx.y) * BN) {
    nt = split_k_tiles(K, BK, kt_per_split, kt_begin);
  }
};

template <typename T, int BM, int BN, int BK, int TM, int TN, bool A_KMAJ, bool B_KMAJ, int MINB>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), MINB)
    simt_gemm_kernel(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C,
                     const T* __restrict__ bias, T* __restrict__ ws, int64_t M, int64_t N,
                     int64_t K, int kt_per_split) {
  using Th = SimtThread<BM, BN, BK, TM, TN>;
  constexpr int NT = Th::NT;
  constexpr int PAD = kSimtPad;

  __shared__ __align__(16) T As[2][BK][BM + PAD];
  __shared__ __align__(16) T Bs[2][BK][BN + PAD];

  const Th th(K, kt_per_split);
  StagedOperands<T, BM, BN, BK, NT, A_KMAJ, B_KMAJ> ops(A, B, M, N, K, th.m0, th.n0, th.tid);
  // shared memory is k-major (As[k][m], Bs[k][n]): k-contiguous operands are transposed
  auto store = [&](int buf) {
    if (A_KMAJ) ops.a.store_t(&As[buf][0][0], BM + PAD, th.tid);
    else        ops.a.store(&As[buf][0][0], BM + PAD, th.tid);
    if (B_KMAJ) ops.b.store_t(&Bs[buf][0][0], BN + PAD, th.tid);
    else        ops.b.store(&Bs[buf][0][0], BN + PAD, th.tid);
  };

  T acc[TM][TN] = {};
  staged_k_loop(th.nt, th.kt_begin, [&](int64_t kt) { ops.load(kt); }, store, [&](int buf) {
    simt_tile_fma<T, BM, BN, BK, TM, TN>(&As[buf][0][0], &Bs[buf][0][0], th.tx, th.ty, acc);
  });
  simt_epilogue<T, BM, BN, TM, TN>(acc, C, bias, ws, M, N, th.m0, th.n0, th.tx, th.ty);
}

// cp.async a BMN x BK tile of an operand into its k-major stage s[k][BMN + pad]: the
// operand is [MN][K] (KMAJ, k contiguous: the copies transpose it) or [K][MN], and the
// tile starts at (mn0, k0). One element per copy, consecutive threads on consecutive
// global addresses; elements outside the matrix are zero-filled.
template <typename T, int BMN, int BK, int NT, bool KMAJ>
__device__ __forceinline__ void simt_async_tile(T* s, const T* __restrict__ g, int64_t MN,
                                                int64_t K, int64_t mn0, int64_t k0, int tid) {
  constexpr int ELEMS = BMN * BK;
  constexpr int PER = (ELEMS + NT - 1) / NT;
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    const int e = tid + i * NT;
    if (ELEMS % NT == 0 || e < ELEMS) {
      const int mn = KMAJ ? e / BK : e % BMN;
      const int k = KMAJ ? e % BK : e / BMN;
      const int64_t gmn = mn0 + mn, gk = k0 + k;
      const bool valid = gmn < MN && gk < K;
      const T* src = KMAJ ? g + gmn * K + gk : g + gk * MN + gmn;
      cp_async_elem(s + k * (BMN + kSimtPad) + mn, valid ? src : g, valid);
    }
  }
}

// Shared memory of simt_gemm_async_kernel: STAGES x (As[BK][BM + pad] + Bs[BK][BN + pad]).
template <typename T, int BM, int BN, int BK, int STAGES>
struct SimtAsyncCfg {
  static constexpr int A_SZ = BK * (BM + kSimtPad);  // elements per stage
  static constexpr int B_SZ = BK * (BN + kSimtPad);
  static constexpr int SMEM_BYTES = STAGES * (A_SZ + B_SZ) * static_cast<int>(sizeof(T));
  static_assert((A_SZ * sizeof(T)) % 16 == 0 && (B_SZ * sizeof(T)) % 16 == 0,
                "stages must stay 16-byte aligned (16-byte shared loads)");
};

template <typename T, int BM, int BN, int BK, int TM, int TN, int STAGES, bool A_KMAJ, bool B_KMAJ>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
    simt_gemm_async_kernel(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C,
                           const T* __restrict__ bias, T* __restrict__ ws, int64_t M, int64_t N,
                           int64_t K, int kt_per_split) {
  using Cfg = SimtAsyncCfg<T, BM, BN, BK, STAGES>;
  using Th = SimtThread<BM, BN, BK, TM, TN>;

  extern __shared__ __align__(16) unsigned char smem[];
  T* As = reinterpret_cast<T*>(smem);  // [STAGES][A_SZ]
  T* Bs = As + STAGES * Cfg::A_SZ;     // [STAGES][B_SZ]

  const Th th(K, kt_per_split);
  auto issue = [&](int64_t kt, int st) {
    const int64_t k0 = kt * BK;
    simt_async_tile<T, BM, BK, Th::NT, A_KMAJ>(As + st * Cfg::A_SZ, A, M, K, th.m0, k0, th.tid);
    simt_async_tile<T, BN, BK, Th::NT, B_KMAJ>(Bs + st * Cfg::B_SZ, B, N, K, th.n0, k0, th.tid);
  };

  T acc[TM][TN] = {};
  cp_async_k_loop<STAGES>(th.nt, th.kt_begin, issue, [&](int st) {
    simt_tile_fma<T, BM, BN, BK, TM, TN>(As + st * Cfg::A_SZ, Bs + st * Cfg::B_SZ, th.tx, th.ty, acc);
  });
  simt_epilogue<T, BM, BN, TM, TN>(acc, C, bias, ws, M, N, th.m0, th.n0, th.tx, th.ty);
}

// ---------------------------------------------------------------------------
// Tensor-core GEMM (WMMA) for float16 / bfloat16 (16x16x16) and float32 as
// TF32 (16x16x8); float32 accumulators.
//   block tile BM x BN, K step BK, warps of WM x WN (FM x FN fragments each).
//   Shared memory keeps each operand in its global orientation (so 16-byte
//   global chunks are stored unchanged), rows padded by 16 bytes:
//     A_KMAJ: As[BM][BK+PAD] -> matrix_a row_major;  else As[BK][BM+PAD] col_major
//     B_KMAJ: Bs[BN][BK+PAD] -> matrix_b col_major;  else Bs[BK][BN+PAD] row_major
//   Pipeline (ASYNC = false): two stages, next K tile fetched into registers
//   (TileLoader: any alignment, guarded edges) while the current one is used.
//   Pipeline (ASYNC = true, needs 16-byte aligned operands whose rows are a
//   multiple of 16 bytes): STAGES-deep cp.async ring (16-byte copies, zero-fill
//   outside the matrix), one __syncthreads per K tile.
//   Epilogue: each warp stages one 16x16 accumulator at a time through shared
//   memory (reusing the operand buffers), adds the bias in float and rounds
//   once to T (or writes raw float partials to the split-K workspace).
//   Shared memory is dynamic; WmmaCfg::SMEM_BYTES bytes per block.
template <typename T>
struct WmmaTraits;
template <>
struct WmmaTraits<__half> {
  using frag_t = __half;
  static constexpr int WK = 16;
};
template <>
struct WmmaTraits<__nv_bfloat16> {
  using frag_t = __nv_bfloat16;
  static constexpr int WK = 16;
};
template <>
struct WmmaTraits<float> {
  using frag_t = nvcuda::wmma::precision::tf32;
  static constexpr int WK = 8;
};

template <typename T, int BM, int BN, int BK, int WM, int WN, int STAGES, bool A_KMAJ, bool B_KMAJ>
struct WmmaCfg {
  static constexpr int NWARPS = (BM / WM) * (BN / WN);
  static constexpr int NT = NWARPS * 32;
  static constexpr int PAD = 16 / static_cast<int>(sizeof(T));
  static constexpr int A_PITCH = A_KMAJ ? BK + PAD : BM + PAD;
  static constexpr int B_PITCH = B_KMAJ ? BK + PAD : BN + PAD;
  static constexpr int A_SZ = A_KMAJ ? BM * A_PITCH : BK * A_PITCH;  // elements per stage
  static constexpr int B_SZ = B_KMAJ ? BN * B_PITCH : BK * B_PITCH;
  static constexpr int MAIN_BYTES = STAGES * (A_SZ + B_SZ) * static_cast<int>(sizeof(T));
  static constexpr int EPI_BYTES = NWARPS * 16 * 16 * static_cast<int>(sizeof(float));
  static constexpr int SMEM_BYTES = MAIN_BYTES > EPI_BYTES ? MAIN_BYTES : EPI_BYTES;
  static_assert((A_SZ * sizeof(T)) % 32 == 0 && (B_SZ * sizeof(T)) % 32 == 0,
                "wmma tiles must stay 32-byte aligned");
};

// Blocks per SM the async WMMA kernels are compiled for. For the 128x128 ones (256
// threads) 2 caps them at 128 registers (16 warps per SM). ptxas -v (CUDA 13.0,
// sm_90): no spills except bfloat16 "NN" (dx), 24 bytes of stack (4 LDL per K tile,
// L1 hits); 1 removes that spill but lets the kernels use ~130-165 registers (8
// warps/SM). For the 64x64 ones (128 threads) it caps nothing (255); they use 92-128.
constexpr int kAsyncMinBlocks = 2;

template <typename T, int BM, int BN, int BK, int WM, int WN, int STAGES, bool ASYNC, bool A_KMAJ,
          bool B_KMAJ>
__global__ void __launch_bounds__((BM / WM) * (BN / WN) * 32, ASYNC ? kAsyncMinBlocks : 1)
    wmma_gemm_kernel(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C,
                     const T* __restrict__ bias, float* __restrict__ ws, int64_t M, int64_t N,
                     int64_t K, int kt_per_split) {
  namespace wmma = nvcuda::wmma;
  using Cfg = WmmaCfg<T, BM, BN, BK, WM, WN, STAGES, A_KMAJ, B_KMAJ>;
  using S = typename RawOf<T>::type;
  using FragT = typename WmmaTraits<T>::frag_t;
  constexpr int WK = WmmaTraits<T>::WK;
  constexpr int NT = Cfg::NT;
  constexpr int FM = WM / 16, FN = WN / 16;
  constexpr int A_PITCH = Cfg::A_PITCH, B_PITCH = Cfg::B_PITCH;
  constexpr int A_SZ = Cfg::A_SZ, B_SZ = Cfg::B_SZ;
  static_assert(BK % WK == 0 && WM % 16 == 0 && WN % 16 == 0, "bad wmma tile config");
  static_assert(ASYNC || STAGES == 2, "the register-staged pipeline has two stages");
  static_assert(STAGES >= 2, "at least two stages");

  extern __shared__ __align__(128) unsigned char smem[];
  T* As = reinterpret_cast<T*>(smem);  // [STAGES][A_SZ]
  T* Bs = As + STAGES * A_SZ;          // [STAGES][B_SZ]

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int wm0 = (warp / (BN / WN)) * WM;
  const int wn0 = (warp % (BN / WN)) * WN;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * BN;

  int64_t kt_begin;
  const int nt = split_k_tiles(K, BK, kt_per_split, kt_begin);

  constexpr int VEC = 16 / static_cast<int>(sizeof(T));
  const S* Ar = reinterpret_cast<const S*>(A);
  const S* Br = reinterpret_cast<const S*>(B);

  using LayA = std::conditional_t<A_KMAJ, wmma::row_major, wmma::col_major>;
  using LayB = std::conditional_t<B_KMAJ, wmma::col_major, wmma::row_major>;
  wmma::fragment<wmma::accumulator, 16, 16, WK, float> acc[FM][FN];
#pragma unroll
  for (int i = 0; i < FM; ++i)
#pragma unroll
    for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  // acc += (stage `st` of As) x (stage `st` of Bs)
  auto mma_stage = [&](int st) {
    const T* as = As + st * A_SZ;
    const T* bs = Bs + st * B_SZ;
#pragma unroll
    for (int kk = 0; kk < BK; kk += WK) {
      // all B fragments first, then one A fragment at a time (fewer live registers)
      wmma::fragment<wmma::matrix_b, 16, 16, WK, FragT, LayB> fb[FN];
#pragma unroll
      for (int j = 0; j < FN; ++j) {
        const T* p = B_KMAJ ? bs + (wn0 + j * 16) * B_PITCH + kk : bs + kk * B_PITCH + wn0 + j * 16;
        wmma::load_matrix_sync(fb[j], p, B_PITCH);
        if constexpr (std::is_same<T, float>::value) {
#pragma unroll
          for (int e = 0; e < fb[j].num_elements; ++e) fb[j].x[e] = wmma::__float_to_tf32(fb[j].x[e]);
        }
      }
#pragma unroll
      for (int i = 0; i < FM; ++i) {
        wmma::fragment<wmma::matrix_a, 16, 16, WK, FragT, LayA> fa;
        const T* p = A_KMAJ ? as + (wm0 + i * 16) * A_PITCH + kk : as + kk * A_PITCH + wm0 + i * 16;
        wmma::load_matrix_sync(fa, p, A_PITCH);
        if constexpr (std::is_same<T, float>::value) {
#pragma unroll
          for (int e = 0; e < fa.num_elements; ++e) fa.x[e] = wmma::__float_to_tf32(fa.x[e]);
        }
#pragma unroll
        for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], fa, fb[j], acc[i][j]);
      }
    }
  };

  if constexpr (ASYNC) {
    auto issue = [&](int64_t kt, int st) {
      const int64_t k0 = kt * BK;
      S* as = reinterpret_cast<S*>(As + st * A_SZ);
      S* bs = reinterpret_cast<S*>(Bs + st * B_SZ);
      if (A_KMAJ) async_tile<S, BM, BK, NT>(as, A_PITCH, Ar, M, K, m0, k0, tid);
      else        async_tile<S, BK, BM, NT>(as, A_PITCH, Ar, K, M, k0, m0, tid);
      if (B_KMAJ) async_tile<S, BN, BK, NT>(bs, B_PITCH, Br, N, K, n0, k0, tid);
      else        async_tile<S, BK, BN, NT>(bs, B_PITCH, Br, K, N, k0, n0, tid);
    };
    cp_async_k_loop<STAGES>(nt, kt_begin, issue, mma_stage);
    __syncthreads();  // operand buffers are free for the epilogue
  } else {
    StagedOperands<S, BM, BN, BK, NT, A_KMAJ, B_KMAJ> ops(Ar, Br, M, N, K, m0, n0, tid);
    auto store = [&](int buf) {  // each operand in its global orientation
      ops.a.store(reinterpret_cast<S*>(As + buf * A_SZ), A_PITCH, tid);
      ops.b.store(reinterpret_cast<S*>(Bs + buf * B_SZ), B_PITCH, tid);
    };
    staged_k_loop(nt, kt_begin, [&](int64_t kt) { ops.load(kt); }, store, mma_stage);
  }

  float* stage = reinterpret_cast<float*>(smem) + warp * 256;
  const int r = lane / 2;
  const int c0 = (lane % 2) * 8;
  const bool split = ws != nullptr;
  float* wsz = split ? ws + static_cast<int64_t>(blockIdx.z) * M * N : nullptr;
  const bool vec_c = aligned16(C) && (N % VEC == 0);
  const bool vec_ws = split && aligned16(wsz) && (N % 4 == 0);
#pragma unroll
  for (int i = 0; i < FM; ++i) {
#pragma unroll
    for (int j = 0; j < FN; ++j) {
      wmma::store_matrix_sync(stage, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      const int64_t m = m0 + wm0 + i * 16 + r;
      const int64_t n = n0 + wn0 + j * 16 + c0;
      float v[8];
#pragma unroll
      for (int q = 0; q < 8; ++q) v[q] = stage[r * 16 + c0 + q];
      if (m < M) {
        if (split) {
          float* dst = wsz + m * N + n;
          if (vec_ws && n + 8 <= N) {
            *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
            *reinterpret_cast<float4*>(dst + 4) = make_float4(v[4], v[5], v[6], v[7]);
          } else {
#pragma unroll
            for (int q = 0; q < 8; ++q)
              if (n + q < N) dst[q] = v[q];
          }
        } else {
          if (bias != nullptr) {
#pragma unroll
            for (int q = 0; q < 8; ++q)
              if (n + q < N) v[q] += to_acc(bias[n + q]);
          }
          T* dst = C + m * N + n;
          T o[8];
#pragma unroll
          for (int q = 0; q < 8; ++q) o[q] = from_acc<T>(v[q]);
          // VEC == 8 for 16-bit types (one 16-byte store), 4 for float (two).
#pragma unroll
          for (int h = 0; h < 8; h += VEC) {
            if (vec_c && n + h + VEC <= N) {
              uint4 t;
              memcpy(&t, &o[h], 16);
              *reinterpret_cast<uint4*>(dst + h) = t;
            } else {
#pragma unroll
              for (int q = h; q < h + VEC; ++q)
                if (n + q < N) dst[q] = o[q];
            }
          }
        }
      }
      __syncwarp();
    }
  }
}

// ---------------------------------------------------------------------------
// out[m][n] = sum_{s=0}^{S-1} ws[s][m][n] (+ bias[n]), summed in order s = 0..S-1.
template <typename T, typename Acc>
__global__ void splitk_reduce_kernel(const Acc* __restrict__ ws, T* __restrict__ out,
                                     const T* __restrict__ bias, int64_t MN, int64_t N,
                                     int splits) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < MN;
       idx += stride) {
    Acc s = ws[idx];
    for (int z = 1; z < splits; ++z) s += ws[static_cast<int64_t>(z) * MN + idx];
    if (bias != nullptr) s += to_acc(bias[idx % N]);
    out[idx] = from_acc<T>(s);
  }
}

// ---------------------------------------------------------------------------
// Column sums (grad_bias): out[chunk][c] = sum of in[r][c] over the rows
// r in [chunk*rows_per_chunk, (chunk+1)*rows_per_chunk) (clipped to rows).
// Block (32 x 8 threads) = 32 columns; thread row-group ty sums rows ty, ty+8,
// ... of the chunk in order, then thread ty == 0 adds the 8 group sums in
// order 0..7. Chunks are fixed by size, so the result does not depend on the
// hardware; a second launch over the [chunks][cols] partials (one chunk)
// finishes the sum in fixed order.
template <typename Tin, typename Tout, typename Acc>
__global__ void colsum_kernel(const Tin* __restrict__ in, Tout* __restrict__ out, int64_t rows,
                              int64_t cols, int64_t rows_per_chunk) {
  __shared__ Acc part[8][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * 32 + tx;
  const int64_t chunk = blockIdx.y;
  const int64_t r_begin = chunk * rows_per_chunk;
  const int64_t r_end = r_begin + rows_per_chunk < rows ? r_begin + rows_per_chunk : rows;
  Acc s = Acc(0);
  if (col < cols) {
    for (int64_t r = r_begin + ty; r < r_end; r += 8) s += to_acc(in[r * cols + col]);
  }
  part[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && col < cols) {
    Acc t = part[0][tx];
#pragma unroll
    for (int g = 1; g < 8; ++g) t += part[g][tx];
    out[chunk * cols + col] = from_acc<Tout>(t);
  }
}

// out[c][r] = in[r][c] for a row-major [rows][cols] matrix: the K-contiguous copies the
// wgmma GEMM takes for the backward (W^T, dy^T, x^T). 32 x 32 tiles through shared memory
// (one padding column: the column reads hit 32 different banks for 4-byte types), 256
// threads, 4 elements each way; both the reads and the writes are row-contiguous across a
// warp. Tiles are strided by the grid (any size).
constexpr int kTransposeTile = 32;
constexpr int kTransposeThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kTransposeThreads)
    transpose_kernel(const T* __restrict__ in, T* __restrict__ out, int64_t rows, int64_t cols) {
  constexpr int TS = kTransposeTile, STEP = kTransposeThreads / kTransposeTile;
  __shared__ T tile[TS][TS + 1];
  const int tx = threadIdx.x % TS, ty = threadIdx.x / TS;
  const int64_t tiles_c = (cols + TS - 1) / TS;
  const int64_t tiles = tiles_c * ((rows + TS - 1) / TS);
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int64_t r0 = (t / tiles_c) * TS, c0 = (t % tiles_c) * TS;
#pragma unroll
    for (int j = ty; j < TS; j += STEP) {
      const int64_t r = r0 + j, c = c0 + tx;
      if (r < rows && c < cols) tile[j][tx] = in[r * cols + c];
    }
    __syncthreads();
#pragma unroll
    for (int j = ty; j < TS; j += STEP) {
      const int64_t c = c0 + j, r = r0 + tx;
      if (r < rows && c < cols) out[c * rows + r] = tile[tx][j];
    }
    __syncthreads();  // the tile is rewritten by the next iteration
  }
}

}  // namespace gemm
}  // namespace fastnn
