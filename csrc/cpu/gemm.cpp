// fastnn CPU GEMM: C[M, N] = A[M, K] * B[K, N] (+ bias[n]) (+ beta * C), and
// deterministic column sums. Used by linear.cpp for y = x W^T + b,
// dx = dy W, dW = dy^T x and db = colsum(dy).
//
// Structure (Goto / BLIS):
//   * K is cut into kb = ceil(K / KC_MAX) equal blocks (depends on K only).
//   * B is packed per K block into NR-wide micro-panels stored k-major
//     (kc x NR, zero-padded columns); A is packed per (row chunk, K block)
//     into MR-row micro-panels (kc x MR, k-major, zero-padded rows) in a
//     per-thread buffer. Packing reads any (row, col) strides, with AVX2
//     transposing fast paths for unit-k-stride operands. For small M, full
//     panels of a row-major B (unit column stride) are read in place instead
//     of copied, unless the row stride would make them collide in the caches.
//   * C is cut into tasks = (row chunk <= MC rows, a multiple of MR) x
//     (column chunk, a multiple of NR); a small cost model picks the chunk
//     counts so that the threads get balanced work. at::parallel_for hands
//     contiguous task ranges to threads.
//       - local mode (one row chunk, or one thread): a task owns whole
//         columns; it packs its own B panels and walks all rows: one
//         parallel region per GEMM.
//       - shared mode (several row chunks): B (per super-block of at most
//         4096 columns) is packed once by all threads, then the tasks run.
//     Inside a task: for each K block in order: pack A, then for each column
//     panel, for each row panel: micro-kernel.
//   * Micro-kernel: float 6 x 16 / double 6 x 8 AVX2+FMA register tiles
//     (12 ymm accumulators) when cpu_has_avx2_fma(), otherwise a portable
//     scalar kernel with the same tiling (same packing). The epilogue writes C:
//     first K block: C = acc + bias (+ beta * C); later blocks: C = C + acc.
//     Edge tiles go through a small stack buffer.
//   * Determinism: each C element is computed by exactly one task, with a
//     K blocking that depends only on K and a fixed k order, by the same
//     micro-kernel whatever the tiling; results are bitwise identical run to
//     run and for any thread count.
//   * Small problems (< ~200K multiply-adds) run on the calling thread.
//
// col_sum: out[n] = sum over rows of X, in blocks of 256 rows (partial sums
// per block, added to the total in order); threads split the columns.
#include "gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

#include "fastnn/cpu_features.h"
#include "fastnn/cpu_vec.h"

#if FASTNN_HAVE_X86
#include <immintrin.h>
#endif

namespace fastnn {
namespace {

template <typename T>
struct Cfg;
template <>
struct Cfg<float> {
  static constexpr int MR = 6;
  static constexpr int NR = 16;
  static constexpr int64_t MC = 144;
  static constexpr int64_t KC = 512;
};
template <>
struct Cfg<double> {
  static constexpr int MR = 6;
  static constexpr int NR = 8;
  static constexpr int64_t MC = 96;
  static constexpr int64_t KC = 384;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// AVX2/FMA code paths; FASTNN_GEMM_FORCE_SCALAR (a test-only build flag)
// forces the portable fallback.
inline bool use_avx2() {
#ifdef FASTNN_GEMM_FORCE_SCALAR
  return false;
#else
  return cpu_has_avx2_fma();
#endif
}

// Growable 64-byte aligned scratch buffer, freed when its owner (a
// thread_local) is destroyed at thread exit.
struct AlignedBuf {
  void* p = nullptr;
  size_t cap = 0;
  AlignedBuf() = default;
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
  ~AlignedBuf() { std::free(p); }
  void* get(size_t bytes) {
    if (bytes > cap) {
      std::free(p);
      p = nullptr;
      cap = 0;
      const size_t sz = (bytes + 4095) / 4096 * 4096;
      p = std::aligned_alloc(64, sz);
      if (p == nullptr) throw std::bad_alloc();
      cap = sz;
    }
    return p;
  }
  void release() {
    std::free(p);
    p = nullptr;
    cap = 0;
  }
};

thread_local AlignedBuf tl_apack;  // per worker thread: one packed A block
thread_local AlignedBuf tl_bpack;  // per calling thread: the packed B

constexpr size_t kKeepBytes = size_t(32) << 20;  // larger B packs are freed after use

// Packs n <= P lines of kc elements, line i's k-th element at src[i * ls + k * ks], into a
// k-major kc x P micro-panel, dst[k * P + i], zero-padding lines n..P-1: MR rows of A
// (ls = A's row stride) or NR columns of B (ls = B's column stride). Memory is walked k
// outer when the lines lie closer together than a line's elements, else line by line.
template <int P, typename T>
void pack_lines(int64_t kc, int n, const T* src, int64_t ls, int64_t ks, T* dst) {
  if (std::abs(ls) <= std::abs(ks)) {
    for (int64_t k = 0; k < kc; ++k) {
      const T* s = src + k * ks;
      T* d = dst + k * P;
      int i = 0;
      for (; i < n; ++i) d[i] = s[i * ls];
      for (; i < P; ++i) d[i] = T(0);
    }
  } else {
    for (int i = 0; i < n; ++i) {
      const T* s = src + i * ls;
      for (int64_t k = 0; k < kc; ++k) dst[k * P + i] = s[k * ks];
    }
    for (int i = n; i < P; ++i)
      for (int64_t k = 0; k < kc; ++k) dst[k * P + i] = T(0);
  }
}

// --------------------------------------------------------------------------
// Micro-kernels. acc = sum_k a[k*MR + i] * b[k*NR + j]; then
//   C[i, j] = acc + (bias ? bias[j] : 0) (+ beta * C[i, j] if load_c)
// for i < mr, j < nr.
// --------------------------------------------------------------------------
template <typename T, int MR, int NR>
void kernel_scalar(int64_t kc, const T* __restrict a, const T* __restrict b, int64_t ldb,
                   T* __restrict c,
                   int64_t ldc, int mr, int nr, const T* bias, T beta, bool load_c) {
  T acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = T(0);
  for (int64_t k = 0; k < kc; ++k) {
    for (int i = 0; i < MR; ++i) {
      const T ai = a[i];
      for (int j = 0; j < NR; ++j) acc[i][j] += ai * b[j];
    }
    a += MR;
    b += ldb;
  }
  for (int i = 0; i < mr; ++i) {
    T* ci = c + i * ldc;
    for (int j = 0; j < nr; ++j) {
      T v = acc[i][j];
      if (bias) v += bias[j];
      if (load_c) v += beta * ci[j];
      ci[j] = v;
    }
  }
}

template <typename T>
void epilogue_edge(const T* tmp, int NR, T* c, int64_t ldc, int mr, int nr, const T* bias, T beta,
                   bool load_c) {
  for (int i = 0; i < mr; ++i) {
    T* ci = c + i * ldc;
    for (int j = 0; j < nr; ++j) {
      T v = tmp[i * NR + j];
      if (bias) v += bias[j];
      if (load_c) v += beta * ci[j];
      ci[j] = v;
    }
  }
}

#if FASTNN_HAVE_X86
#ifdef FASTNN_GEMM_TUNING
bool g_prefetch_c = true;
#define FASTNN_PREFETCH_C g_prefetch_c
#else
#define FASTNN_PREFETCH_C true
#endif
// Epilogue of one full tile row: C = x (+ bias) (+ beta * C).
template <class A>
FASTNN_TARGET_AVX2 inline void row_avx2(typename A::T* ci, typename A::V x0, typename A::V x1,
                                        typename A::V bias0, typename A::V bias1, bool hb,
                                        typename A::V vb, bool load_c) {
  if (hb) {
    x0 = A::add(x0, bias0);
    x1 = A::add(x1, bias1);
  }
  if (load_c) {
    x0 = A::fmadd(vb, A::load(ci), x0);
    x1 = A::fmadd(vb, A::load(ci + A::W), x1);
  }
  A::store(ci, x0);
  A::store(ci + A::W, x1);
}

// The 6 x 2W micro-kernel (6x16 floats, 6x8 doubles): twelve accumulator registers;
// per k, two vector loads of the B panel and one broadcast of A per row.
template <class A>
FASTNN_TARGET_AVX2 void kernel_avx2(int64_t kc, const typename A::T* __restrict a,
                                    const typename A::T* __restrict b, int64_t ldb,
                                    typename A::T* __restrict c, int64_t ldc, int mr, int nr,
                                    const typename A::T* bias, typename A::T beta, bool load_c) {
  using T = typename A::T;
  using V = typename A::V;
  constexpr int64_t W = A::W, NR = 2 * W;
  V c00 = A::zero(), c01 = A::zero();
  V c10 = A::zero(), c11 = A::zero();
  V c20 = A::zero(), c21 = A::zero();
  V c30 = A::zero(), c31 = A::zero();
  V c40 = A::zero(), c41 = A::zero();
  V c50 = A::zero(), c51 = A::zero();
  if (FASTNN_PREFETCH_C) {
    for (int i = 0; i < 6; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + NR - 1), _MM_HINT_T0);
    }
  }
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const V b0 = A::load(b);
    const V b1 = A::load(b + W);
    V av;
    av = A::broadcast(a + 0);
    c00 = A::fmadd(av, b0, c00);
    c01 = A::fmadd(av, b1, c01);
    av = A::broadcast(a + 1);
    c10 = A::fmadd(av, b0, c10);
    c11 = A::fmadd(av, b1, c11);
    av = A::broadcast(a + 2);
    c20 = A::fmadd(av, b0, c20);
    c21 = A::fmadd(av, b1, c21);
    av = A::broadcast(a + 3);
    c30 = A::fmadd(av, b0, c30);
    c31 = A::fmadd(av, b1, c31);
    av = A::broadcast(a + 4);
    c40 = A::fmadd(av, b0, c40);
    c41 = A::fmadd(av, b1, c41);
    av = A::broadcast(a + 5);
    c50 = A::fmadd(av, b0, c50);
    c51 = A::fmadd(av, b1, c51);
    a += 6;
    b += ldb;
  }
  if (mr == 6 && nr == NR) {
    const bool hb = bias != nullptr;
    const V bias0 = hb ? A::load(bias) : A::zero();
    const V bias1 = hb ? A::load(bias + W) : A::zero();
    const V vb = A::set1(beta);
    row_avx2<A>(c + 0 * ldc, c00, c01, bias0, bias1, hb, vb, load_c);
    row_avx2<A>(c + 1 * ldc, c10, c11, bias0, bias1, hb, vb, load_c);
    row_avx2<A>(c + 2 * ldc, c20, c21, bias0, bias1, hb, vb, load_c);
    row_avx2<A>(c + 3 * ldc, c30, c31, bias0, bias1, hb, vb, load_c);
    row_avx2<A>(c + 4 * ldc, c40, c41, bias0, bias1, hb, vb, load_c);
    row_avx2<A>(c + 5 * ldc, c50, c51, bias0, bias1, hb, vb, load_c);
  } else {
    alignas(32) T tmp[6 * NR];
    const V acc[12] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51};
    for (int r = 0; r < 12; ++r) A::store(tmp + r * W, acc[r]);
    epilogue_edge<T>(tmp, static_cast<int>(NR), c, ldc, mr, nr, bias, beta, load_c);
  }
}

// 8x8 float transpose of r0..r7 in place.
FASTNN_TARGET_AVX2 inline void transpose8_ps(__m256& r0, __m256& r1, __m256& r2, __m256& r3,
                                             __m256& r4, __m256& r5, __m256& r6, __m256& r7) {
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r0 = _mm256_permute2f128_ps(s0, s4, 0x20);
  r1 = _mm256_permute2f128_ps(s1, s5, 0x20);
  r2 = _mm256_permute2f128_ps(s2, s6, 0x20);
  r3 = _mm256_permute2f128_ps(s3, s7, 0x20);
  r4 = _mm256_permute2f128_ps(s0, s4, 0x31);
  r5 = _mm256_permute2f128_ps(s1, s5, 0x31);
  r6 = _mm256_permute2f128_ps(s2, s6, 0x31);
  r7 = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// 4x4 double transpose of r0..r3 in place.
FASTNN_TARGET_AVX2 inline void transpose4_pd(__m256d& r0, __m256d& r1, __m256d& r2, __m256d& r3) {
  const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
  const __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
  r0 = _mm256_permute2f128_pd(t0, t2, 0x20);
  r1 = _mm256_permute2f128_pd(t1, t3, 0x20);
  r2 = _mm256_permute2f128_pd(t0, t2, 0x31);
  r3 = _mm256_permute2f128_pd(t1, t3, 0x31);
}

// The AVX2 packers below compute pack_lines for a full panel whose lines are contiguous in
// k (ks == 1, ls = rs): whole vectors of k are transposed in registers, and the few k
// left over go through pack_lines itself.

// Eight k of R <= 8 float rows (rows R..7 read as zeros) into eight k-major rows of 8
// floats, ds apart: d[j * ds + i] = s[i * rs + j]. All 8 floats of each row are stored.
template <int R>
FASTNN_TARGET_AVX2 inline void transpose_k8_ps(const float* s, int64_t rs, float* d, int64_t ds) {
  __m256 r[8];
  for (int i = 0; i < 8; ++i) r[i] = i < R ? _mm256_loadu_ps(s + i * rs) : _mm256_setzero_ps();
  transpose8_ps(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]);
  for (int j = 0; j < 8; ++j) _mm256_storeu_ps(d + j * ds, r[j]);
}

// Four k of four double rows into four k-major rows of 4 doubles, ds apart.
FASTNN_TARGET_AVX2 inline void transpose_k4_pd(const double* s, int64_t rs, double* d,
                                               int64_t ds) {
  __m256d r[4];
  for (int i = 0; i < 4; ++i) r[i] = _mm256_loadu_pd(s + i * rs);
  transpose4_pd(r[0], r[1], r[2], r[3]);
  for (int j = 0; j < 4; ++j) _mm256_storeu_pd(d + j * ds, r[j]);
}

// B panel, float: 16 full columns, each contiguous in k (b_rs == 1; rs = the column stride).
FASTNN_TARGET_AVX2
void pack_b_f32_trans_avx2(int64_t kc, const float* src, int64_t rs, float* dst) {
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) {
    transpose_k8_ps<8>(src + k, rs, dst + k * 16, 16);                // columns 0-7
    transpose_k8_ps<8>(src + 8 * rs + k, rs, dst + k * 16 + 8, 16);  // columns 8-15
  }
  pack_lines<16>(kc - k, 16, src + k, rs, 1, dst + k * 16);
}

// A panel, float: 6 full rows, each contiguous in k (a_cs == 1). Each k's 8-float store
// spills 2 floats into the next k, which overwrites them; the last writes up to 2 floats
// past dst + 6 * kc (the buffer has slack).
FASTNN_TARGET_AVX2
void pack_a_f32_rows_avx2(int64_t kc, const float* src, int64_t rs, float* dst) {
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) transpose_k8_ps<6>(src + k, rs, dst + k * 6, 6);
  pack_lines<6>(kc - k, 6, src + k, rs, 1, dst + k * 6);
}

// B panel, double: 8 full columns contiguous in k.
FASTNN_TARGET_AVX2
void pack_b_f64_trans_avx2(int64_t kc, const double* src, int64_t rs, double* dst) {
  int64_t k = 0;
  for (; k + 4 <= kc; k += 4) {
    transpose_k4_pd(src + k, rs, dst + k * 8, 8);                // columns 0-3
    transpose_k4_pd(src + 4 * rs + k, rs, dst + k * 8 + 4, 8);  // columns 4-7
  }
  pack_lines<8>(kc - k, 8, src + k, rs, 1, dst + k * 8);
}

// A panel, double: 6 full rows contiguous in k. Rows 0-3 go through a 4x4 transpose,
// rows 4-5 in pairs: unpacklo gives (r4, r5) at k+0 and k+2, unpackhi at k+1 and k+3.
FASTNN_TARGET_AVX2
void pack_a_f64_rows_avx2(int64_t kc, const double* src, int64_t rs, double* dst) {
  int64_t k = 0;
  for (; k + 4 <= kc; k += 4) {
    const double* s = src + k;
    double* d = dst + k * 6;
    transpose_k4_pd(s, rs, d, 6);
    const __m256d r4 = _mm256_loadu_pd(s + 4 * rs), r5 = _mm256_loadu_pd(s + 5 * rs);
    const __m256d even = _mm256_unpacklo_pd(r4, r5), odd = _mm256_unpackhi_pd(r4, r5);
    _mm_storeu_pd(d + 0 * 6 + 4, _mm256_castpd256_pd128(even));
    _mm_storeu_pd(d + 1 * 6 + 4, _mm256_castpd256_pd128(odd));
    _mm_storeu_pd(d + 2 * 6 + 4, _mm256_extractf128_pd(even, 1));
    _mm_storeu_pd(d + 3 * 6 + 4, _mm256_extractf128_pd(odd, 1));
  }
  pack_lines<6>(kc - k, 6, src + k, rs, 1, dst + k * 6);
}
#endif  // FASTNN_HAVE_X86

// --------------------------------------------------------------------------
// Packing.
// --------------------------------------------------------------------------
template <typename T>
struct Fast {
  using Kernel = void (*)(int64_t, const T*, const T*, int64_t, T*, int64_t, int, int, const T*, T,
                          bool);
  using PackFn = void (*)(int64_t, const T*, int64_t, T*);
  Kernel kernel;
  PackFn pack_a_rows;   // full MR rows, unit k stride (nullptr: generic)
  PackFn pack_b_trans;  // full NR columns, unit k stride (nullptr: generic)
};

template <typename T>
Fast<T> select_fast() {
  constexpr int MR = Cfg<T>::MR, NR = Cfg<T>::NR;
  Fast<T> f{&kernel_scalar<T, MR, NR>, nullptr, nullptr};
#if FASTNN_HAVE_X86
  if (use_avx2()) {
    if constexpr (std::is_same<T, float>::value) {
      f = Fast<T>{&kernel_avx2<vec::F32x8>, &pack_a_f32_rows_avx2, &pack_b_f32_trans_avx2};
    } else {
      f = Fast<T>{&kernel_avx2<vec::F64x4>, &pack_a_f64_rows_avx2, &pack_b_f64_trans_avx2};
    }
  }
#endif
  return f;
}

// Packs rows [0, mc) x k [0, kc) of A (pointer already at the block origin)
// into ceil(mc / MR) micro-panels of kc x MR (k-major), zero-padding rows.
template <typename T>
void pack_a(int64_t mc, int64_t kc, const T* A, int64_t rs, int64_t cs, T* dst,
            const Fast<T>& fast) {
  constexpr int MR = Cfg<T>::MR;
  for (int64_t i0 = 0; i0 < mc; i0 += MR, dst += MR * kc) {
    const int rows = static_cast<int>(std::min<int64_t>(MR, mc - i0));
    const T* src = A + i0 * rs;
    if (rows == MR && cs == 1 && fast.pack_a_rows) {
      fast.pack_a_rows(kc, src, rs, dst);
    } else {
      pack_lines<MR>(kc, rows, src, rs, cs, dst);
    }
  }
}

// Packs a kc x nc (nc <= NR) block of B into one kc x NR micro-panel.
template <typename T>
void pack_b_panel(int64_t kc, int nc, const T* B, int64_t rs, int64_t cs, T* dst,
                  const Fast<T>& fast) {
  constexpr int NR = Cfg<T>::NR;
  if (nc == NR && cs == 1) {
    for (int64_t k = 0; k < kc; ++k) std::memcpy(dst + k * NR, B + k * rs, sizeof(T) * NR);
  } else if (nc == NR && rs == 1 && fast.pack_b_trans) {
    fast.pack_b_trans(kc, B, cs, dst);
  } else {
    pack_lines<NR>(kc, nc, B, cs, rs, dst);
  }
}

// Problems below this many multiply-adds run on the calling thread.
constexpr double kParallelMinMacs = 192.0 * 1024;
// Packed B blocks cover at most this many columns (bounds the B buffer).
template <typename T>
constexpr int64_t kMaxPanels = 4096 / Cfg<T>::NR;
// Budget for one packed A block (MC x kc), in elements (~220 KB: half of L2).
constexpr int64_t kABlockElems = 56 * 1024;

#ifdef FASTNN_GEMM_TUNING
inline int64_t tune(const char* name, int64_t def) {
  const char* v = std::getenv(name);
  return v ? std::atoll(v) : def;
}
#define FASTNN_TUNE(name, def) tune(name, def)
#else
#define FASTNN_TUNE(name, def) (def)
#endif

// Whether kc rows of B with this row stride (bytes), read in place, stay
// spread over the L2 (512 KB, 8-way, 64 B lines): the strides of the rows
// modulo 64 KB hit 64 KB / gcd(stride, 64 KB) distinct lines positions, and
// each L2 set holds 8 lines; keep the panel within half of that.
inline bool direct_b_ok(int64_t stride_bytes, int64_t kc) {
  if (stride_bytes <= 0) return false;
  int64_t g = 65536;
  int64_t a = stride_bytes % 65536;
  while (a != 0) {  // gcd(stride, 65536)
    const int64_t t = g % a;
    g = a;
    a = t;
  }
  const int64_t sets = std::min<int64_t>(1024, 65536 / std::max<int64_t>(g, 64));
  return kc * 2 <= sets * 8;
}

// Runs the micro-kernels for rows [m0, m1) (packed in `ap`) against column
// panels [j0, j1) of one packed K block of B (panel j at bpan0 + (j - j0) * NR * kc).
// With `bdirect` (B row-major, unit column stride, already at this K block),
// full panels are read straight from B with row stride `ldb_direct`; only
// the partial last panel comes from the packed buffer.
template <typename T>
inline void macro_kernel(const Fast<T>& fast, int64_t kc, int64_t m0, int64_t m1, int64_t j0,
                         int64_t j1, int64_t N, const T* ap, const T* bpan0, const T* bdirect,
                         int64_t ldb_direct, T* C, int64_t ldc, const T* bias, T beta,
                         bool load_c) {
  constexpr int MR = Cfg<T>::MR, NR = Cfg<T>::NR;
  for (int64_t j = j0; j < j1; ++j) {
    const int nr = static_cast<int>(std::min<int64_t>(NR, N - j * NR));
    const bool direct = bdirect != nullptr && nr == NR;
    const T* bpan = direct ? bdirect + j * NR : bpan0 + (j - j0) * NR * kc;
    const int64_t ldb = direct ? ldb_direct : NR;
    const T* bias_j = bias ? bias + j * NR : nullptr;
    for (int64_t m = m0; m < m1; m += MR) {
      const int mr = static_cast<int>(std::min<int64_t>(MR, m1 - m));
      fast.kernel(kc, ap + (m - m0) * kc, bpan, ldb, C + m * ldc + j * NR, ldc, mr, nr, bias_j,
                  beta, load_c);
    }
  }
}

template <typename T>
void gemm_impl(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_rs, int64_t a_cs,
               const T* B, int64_t b_rs, int64_t b_cs, T* C, int64_t ldc, const T* bias,
               T beta) {
  constexpr int MR = Cfg<T>::MR, NR = Cfg<T>::NR;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t m = 0; m < M; ++m) {
      T* c = C + m * ldc;
      for (int64_t n = 0; n < N; ++n) {
        T v = bias ? bias[n] : T(0);
        if (beta != T(0)) v += beta * c[n];
        c[n] = v;
      }
    }
    return;
  }
  static const Fast<T> fast = select_fast<T>();
#ifdef FASTNN_GEMM_TUNING
  g_prefetch_c = FASTNN_TUNE("FASTNN_PFC", 1) != 0;
#endif

  // K blocking: depends on K only (determinism).
  const int64_t kc_max = FASTNN_TUNE("FASTNN_KC", Cfg<T>::KC);
  const int64_t kblocks = ceil_div(K, kc_max);
  const int64_t kcb = ceil_div(K, kblocks);
  const int64_t npanels = ceil_div(N, NR);
  const int64_t mpanels = ceil_div(M, MR);
  // Largest row chunk (in MR panels) whose packed A block fits the budget.
  const int64_t mc_max_panels = std::max<int64_t>(
      Cfg<T>::MC / MR,
      FASTNN_TUNE("FASTNN_ABLOCK", kABlockElems) / (int64_t(MR) * kcb));

  int nt = at::in_parallel_region() ? 1 : at::get_num_threads();
  const double macs = double(M) * double(N) * double(K);
  if (macs < double(FASTNN_TUNE("FASTNN_PARMIN", int64_t(kParallelMinMacs)))) nt = 1;

  // Epilogue parameters of K block p.
  auto epi_bias = [&](int64_t p) { return p == 0 ? bias : nullptr; };
  auto epi_beta = [&](int64_t p) { return p == 0 ? beta : T(1); };
  auto epi_load = [&](int64_t p) { return p == 0 ? beta != T(0) : true; };

  // ---- choose the task grid: mb row chunks x nb column chunks ----
  const int64_t mb_min = ceil_div(mpanels, mc_max_panels);
  int64_t mb = mb_min, nb = 1;
  if (nt > 1) {
    const double pack_cost = 6.0;  // cost of packing one A element, in MACs
    double best = -1;
    for (int64_t mbc = 1; mbc <= std::min<int64_t>(mpanels, mb_min + 2 * nt); ++mbc) {
      for (int64_t nbc = 1; nbc <= std::min<int64_t>(npanels, 2 * nt); ++nbc) {
        if (mbc > 1 && mbc < mb_min) continue;
        const int64_t ntasks = mbc * nbc;
        const int64_t per = ceil_div(ntasks, nt);
        // the first tasks are the largest ones; thread 0 gets `per` of them.
        const int64_t mp = ceil_div(mpanels, mbc), np = ceil_div(npanels, nbc);
        const double task_cost = double(mp * MR) * double(np * NR) * double(K) +
                                 pack_cost * double(mp * MR) * double(K);
        // mb == 1 (local B packing) saves a parallel region and B sharing.
        const double cost = task_cost * double(per) * (mbc == 1 ? 0.97 : 1.0) +
                            0.02 * task_cost * double(ntasks);
        if (best < 0 || cost < best) {
          best = cost;
          mb = mbc;
          nb = nbc;
        }
      }
    }
  }

  if (mb == 1 || nt == 1 || mb * nb == 1) {
    // ---- local mode: task ni owns column panels [j0, j1) and all rows; it
    // packs its own B (one K block at a time) and walks the row chunks. ----
    // Column chunks of at most kMaxPanels panels bound the packed B block.
    const int64_t per_chunk = ceil_div(npanels, nt == 1 ? 1 : nb);
    const int64_t ntasks = (nt == 1 ? 1 : nb) * ceil_div(per_chunk, kMaxPanels<T>);
    // Small M: each B element is used by few row panels, so copying B costs
    // about as much as using it; read unit-stride B in place instead.
    // Only when B's rows spread over enough L2 sets (a large power-of-two row
    // stride, e.g. 4 KB, would make the kc rows of a panel conflict).
    const bool direct_b = b_cs == 1 && FASTNN_TUNE("FASTNN_DIRECTB", 1) != 0 &&
                          mpanels <= FASTNN_TUNE("FASTNN_DIRECTB_MP", 16) &&
                          direct_b_ok(b_rs * int64_t(sizeof(T)), kcb);
    auto run_local = [&](int64_t t0, int64_t t1) {
      for (int64_t ni = t0; ni < t1; ++ni) {
        const int64_t j0 = ni * npanels / ntasks, j1 = (ni + 1) * npanels / ntasks;
        if (j0 >= j1) continue;
        const int64_t ncols = (j1 - j0) * NR;
        const int64_t rchunks = ceil_div(mpanels, mc_max_panels);
        const int64_t chunk_panels = ceil_div(mpanels, rchunks);
        T* ap = static_cast<T*>(
            tl_apack.get(sizeof(T) * size_t(chunk_panels * MR * kcb + 64)));
        T* bp = static_cast<T*>(tl_bpack.get(sizeof(T) * size_t(kcb * ncols + 64)));
        for (int64_t p = 0; p < kblocks; ++p) {
          const int64_t k0 = p * kcb, kc = std::min(kcb, K - k0);
          for (int64_t j = j0; j < j1; ++j) {
            const int nc = static_cast<int>(std::min<int64_t>(NR, N - j * NR));
            if (direct_b && nc == NR) continue;
            pack_b_panel<T>(kc, nc, B + k0 * b_rs + j * NR * b_cs, b_rs, b_cs,
                            bp + (j - j0) * NR * kc, fast);
          }
          for (int64_t r = 0; r < rchunks; ++r) {
            const int64_t m0 = r * chunk_panels * MR;
            const int64_t m1 = std::min(M, (r + 1) * chunk_panels * MR);
            if (m0 >= m1) continue;
            pack_a<T>(m1 - m0, kc, A + m0 * a_rs + k0 * a_cs, a_rs, a_cs, ap, fast);
            macro_kernel<T>(fast, kc, m0, m1, j0, j1, N, ap, bp,
                            direct_b ? B + k0 * b_rs : nullptr, b_rs, C, ldc, epi_bias(p),
                            epi_beta(p), epi_load(p));
          }
        }
        if (sizeof(T) * size_t(kcb * ncols) > kKeepBytes) tl_bpack.release();
      }
    };
    if (ntasks > 1 && nt > 1) {
      at::parallel_for(0, ntasks, ceil_div(ntasks, nt), run_local);
    } else {
      run_local(0, ntasks);
    }
    return;
  }

  // ---- shared mode: for each super-block of at most kMaxPanels column
  // panels, pack its B (all K blocks) once in parallel, then run the tasks. ----
  const int64_t sblocks = ceil_div(npanels, kMaxPanels<T>);
  const int64_t sb_panels = ceil_div(npanels, sblocks);
  const size_t bbytes = sizeof(T) * size_t(K) * size_t(sb_panels * NR) + 64;
  AlignedBuf& bbuf = tl_bpack;
  T* bp = static_cast<T*>(bbuf.get(bbytes));
  for (int64_t sb = 0; sb < sblocks; ++sb) {
    const int64_t js0 = sb * sb_panels, js1 = std::min(npanels, js0 + sb_panels);
    const int64_t sp = js1 - js0;  // panels in this super-block
    // K block p of panel j (js0 <= j < js1) is at bp + k0 * sp * NR + (j - js0) * NR * kc.
    const int64_t nbtasks = kblocks * sp;
    auto pack_b_range = [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t p = t / sp, j = js0 + t % sp;
        const int64_t k0 = p * kcb, kc = std::min(kcb, K - k0);
        const int nc = static_cast<int>(std::min<int64_t>(NR, N - j * NR));
        pack_b_panel<T>(kc, nc, B + k0 * b_rs + j * NR * b_cs, b_rs, b_cs,
                        bp + k0 * sp * NR + (j - js0) * NR * kc, fast);
      }
    };
    at::parallel_for(0, nbtasks, ceil_div(nbtasks, nt), pack_b_range);

    const int64_t ntasks = mb * nb;
    // Row chunk i covers panels [i * mpanels / mb, (i + 1) * mpanels / mb) (balanced),
    // column chunk c covers super-block panels [c * sp / nb, (c + 1) * sp / nb).
    auto run_tasks = [&](int64_t t0, int64_t t1) {
      T* ap = static_cast<T*>(
          tl_apack.get(sizeof(T) * size_t(ceil_div(mpanels, mb) * MR * kcb + 64)));
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t mi = t / nb, ni = t % nb;
        const int64_t p0 = mi * mpanels / mb, p1 = (mi + 1) * mpanels / mb;
        const int64_t j0 = js0 + ni * sp / nb, j1 = js0 + (ni + 1) * sp / nb;
        const int64_t m0 = p0 * MR, m1 = std::min(M, p1 * MR);
        if (m0 >= m1 || j0 >= j1) continue;
        for (int64_t p = 0; p < kblocks; ++p) {
          const int64_t k0 = p * kcb, kc = std::min(kcb, K - k0);
          pack_a<T>(m1 - m0, kc, A + m0 * a_rs + k0 * a_cs, a_rs, a_cs, ap, fast);
          macro_kernel<T>(fast, kc, m0, m1, j0, j1, N, ap,
                          bp + k0 * sp * NR + (j0 - js0) * NR * kc, nullptr, 0, C, ldc,
                          epi_bias(p), epi_beta(p), epi_load(p));
        }
      }
    };
    at::parallel_for(0, ntasks, ceil_div(ntasks, nt), run_tasks);
  }
  if (bbytes > kKeepBytes) bbuf.release();
}

// ---- column sums ----
constexpr int64_t kColBlock = 64;
constexpr int64_t kRowBlock = 256;

// The body, inlined into a portable and an AVX2 copy (the compiler vectorises each for
// its target); per column both make the same adds in the same order.
template <typename T>
inline __attribute__((always_inline)) void col_sum_body(int64_t M, int64_t nc, const T* X,
                                                        int64_t ldx, T* out) {
  T total[kColBlock];
  T part[kColBlock];
  for (int64_t c = 0; c < nc; ++c) total[c] = T(0);
  for (int64_t r0 = 0; r0 < M; r0 += kRowBlock) {
    const int64_t r1 = std::min(M, r0 + kRowBlock);
    for (int64_t c = 0; c < nc; ++c) part[c] = T(0);
    for (int64_t r = r0; r < r1; ++r) {
      const T* x = X + r * ldx;
      for (int64_t c = 0; c < nc; ++c) part[c] += x[c];
    }
    for (int64_t c = 0; c < nc; ++c) total[c] += part[c];
  }
  for (int64_t c = 0; c < nc; ++c) out[c] = total[c];
}

template <typename T>
void col_sum_block(int64_t M, int64_t nc, const T* X, int64_t ldx, T* out) {
  col_sum_body(M, nc, X, ldx, out);
}

#if FASTNN_HAVE_X86
template <typename T>
FASTNN_TARGET_AVX2 void col_sum_block_avx2(int64_t M, int64_t nc, const T* X, int64_t ldx,
                                           T* out) {
  col_sum_body(M, nc, X, ldx, out);
}
#endif

}  // namespace

template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_rs, int64_t a_cs, const T* B,
          int64_t b_rs, int64_t b_cs, T* C, int64_t ldc, const T* bias, T beta) {
  gemm_impl<T>(M, N, K, A, a_rs, a_cs, B, b_rs, b_cs, C, ldc, bias, beta);
}

template <typename T>
void col_sum(int64_t M, int64_t N, const T* X, int64_t ldx, T* out) {
  if (N <= 0) return;
  const int64_t nblocks = ceil_div(N, kColBlock);
  const bool avx = use_avx2();
  auto body = [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * kColBlock, nc = std::min(kColBlock, N - n0);
#if FASTNN_HAVE_X86
      if (avx) {
        col_sum_block_avx2<T>(M, nc, X + n0, ldx, out + n0);
        continue;
      }
#endif
      col_sum_block<T>(M, nc, X + n0, ldx, out + n0);
    }
  };
  (void)avx;
  if (double(M) * double(N) >= 262144.0 && nblocks > 1) {
    at::parallel_for(0, nblocks, 1, body);
  } else {
    body(0, nblocks);
  }
}

template void gemm<float>(int64_t, int64_t, int64_t, const float*, int64_t, int64_t,
                          const float*, int64_t, int64_t, float*, int64_t, const float*, float);
template void gemm<double>(int64_t, int64_t, int64_t, const double*, int64_t, int64_t,
                           const double*, int64_t, int64_t, double*, int64_t, const double*,
                           double);
template void col_sum<float>(int64_t, int64_t, const float*, int64_t, float*);
template void col_sum<double>(int64_t, int64_t, const double*, int64_t, double*);

}  // namespace fastnn
