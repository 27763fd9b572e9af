// AVX2/FMA vector helpers shared by fastnn's CPU kernels.
//
// Every function here is compiled for AVX2+FMA via FASTNN_TARGET_AVX2 and must
// only be called after cpu_has_avx2_fma() returned true (see cpu_features.h);
// kernels keep a portable scalar fallback next to each AVX2 path.
//
// Contents (namespace fastnn::vec):
//   exp_ps(x)            8 x expf, Cephes polynomial (~1-2 ulp), exp(-inf) = 0,
//                        exp(+inf) = inf, NaN in -> NaN out, underflow (< -87.3) -> 0.
//   exp_nonpos_ps(x)     cheaper expf for x <= 0 (softmax sums); tiny inputs give ~1e-38.
//   log_ps(x)            8 x logf (Cephes, ~1 ulp).
//   exp_pd(x)            4 x exp in double precision (~1 ulp), same special cases.
//   hmax_ps / hsum_ps / hsum_pd, hsum_ps_as_double   horizontal reductions.
//   tail_mask_ps(n)      lane mask for the first n (0..8) lanes, for maskload/maskstore.
//   bf16_to_ps, ps_to_bf16, f16_to_ps, ps_to_f16   8 x 16-bit float <-> 8 x float.
//   F32x8 / F64x4        traits wrapping one AVX2 register (load/store/masked tails/exp/log...)
//                        so kernels are written once as template <class A>.
//   Half16x8<H>          float16 / bfloat16 in memory, F32x8 in registers (A::T is the
//                        element type in memory, A::C the scalar type computed in).
//   row_max<A>, row_sumexp<A>   max / sum exp(x - m) of a contiguous row (masked tail).
//   cols_max_sumexp<A>   the same for W adjacent columns of a [rows, stride] block.
//   rows_max_sumexp<A>   the same for W short contiguous rows, one row per lane (gathers).
//
// NaN handling: max ignores NaN lanes the way _mm256_max_ps does, but exp(NaN)
// is NaN, so a NaN anywhere in a row makes its sum-of-exp (and so the whole
// log-softmax row / log-sum-exp) NaN, matching torch.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "fastnn/cpu_features.h"

#if FASTNN_HAVE_X86
#include <immintrin.h>
#endif

// AVX2 helpers are force-inlined into the (AVX2-targeted) kernels that use them.
#define FASTNN_VEC_INLINE FASTNN_TARGET_AVX2 inline __attribute__((always_inline))

namespace fastnn {
namespace vec {

#if FASTNN_HAVE_X86

// ------------------------------------------------------------------ masks
alignas(32) static const int32_t kTailMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                       0,  0,  0,  0,  0,  0,  0,  0};

// Mask with the first n lanes (0 <= n <= 8) set.
FASTNN_VEC_INLINE __m256i tail_mask_ps(int64_t n) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTailMaskTable + 8 - n));
}

// Mask with the first n lanes (0 <= n <= 4) of a 4 x double vector set.
FASTNN_VEC_INLINE __m256i tail_mask_pd(int64_t n) {
  alignas(32) static const int64_t t[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + 4 - n));
}

// Loads the first n lanes from p; the other lanes are `fill`.
FASTNN_VEC_INLINE __m256 load_tail_ps(const float* p, int64_t n, float fill) {
  const __m256i m = tail_mask_ps(n);
  const __m256 v = _mm256_maskload_ps(p, m);
  return _mm256_blendv_ps(_mm256_set1_ps(fill), v, _mm256_castsi256_ps(m));
}

FASTNN_VEC_INLINE void store_tail_ps(float* p, int64_t n, __m256 v) {
  _mm256_maskstore_ps(p, tail_mask_ps(n), v);
}

// ------------------------------------------------------------------ 16-bit floats
// 8 float16 / bfloat16 values (raw bits) <-> 8 floats. Widening is exact; narrowing
// rounds to nearest even, as c10::Half / c10::BFloat16 do (a NaN stays a NaN).
FASTNN_VEC_INLINE __m256 bf16_to_ps(__m128i h) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

FASTNN_VEC_INLINE __m128i ps_to_bf16(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(nan));
  // every lane is in [0, 0xFFFF], so the saturating pack keeps it as it is
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

FASTNN_VEC_INLINE __m256 f16_to_ps(__m128i h) { return _mm256_cvtph_ps(h); }

FASTNN_VEC_INLINE __m128i ps_to_f16(__m256 v) {
  return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// ------------------------------------------------------------------ exp
// expf for 8 lanes. Range reduction x = n ln2 + r (|r| <= ln2/2, Cody-Waite in two
// parts), e^r by the Cephes degree-6 polynomial, result scaled by 2^n via the
// exponent bits. Inputs below -87.33654 (where 2^n would be denormal) give 0.
FASTNN_VEC_INLINE __m256 exp_ps(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.72283935546875f);
  const __m256 lo = _mm256_set1_ps(-87.33654022216797f);
  // operand order keeps NaN: min/max return the second operand when one is NaN
  __m256 xc = _mm256_min_ps(hi, x);
  xc = _mm256_max_ps(lo, xc);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  const __m256 r2 = _mm256_mul_ps(r, r);
  p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n: n in [-126, 128]; n = 128 only for x in (88.38, 88.72], handled as 2 * 2^127
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i ni1 = _mm256_srai_epi32(ni, 1);
  const __m256 s1 = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(ni1, _mm256_set1_epi32(127)), 23));
  const __m256 s2 = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, ni1), _mm256_set1_epi32(127)), 23));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  // x < lo -> 0 (also exp(-inf) = 0), x > hi -> inf; comparisons are false for NaN
  y = _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), y);
  y = _mm256_blendv_ps(y, _mm256_set1_ps(std::numeric_limits<float>::infinity()),
                       _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
  return y;
}

// exp for inputs known to be <= 0 (or NaN), e.g. x - max(x) in softmax sums: same
// accuracy as exp_ps (~1-2 ulp) but cheaper: a shorter polynomial, no overflow handling, 2^n from the
// rounding "magic number" bits, and inputs below -87.34 (including -inf) give
// 2^-126 * e^r ~ 1e-38 instead of 0, which is harmless inside a sum that is >= 1.
FASTNN_VEC_INLINE __m256 exp_nonpos_ps(__m256 x) {
  const __m256 xc = _mm256_max_ps(_mm256_set1_ps(-87.33654022216797f), x);  // keeps NaN
  // t = x*log2(e) + 1.5*2^23 rounds to an integer n held in t's low mantissa bits
  const __m256 magic = _mm256_set1_ps(12582912.0f);
  const __m256 t = _mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), magic);
  const __m256 n = _mm256_sub_ps(t, magic);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  // e^r = 1 + r + r^2 q(r), q a degree-4 least-relative-error fit on |r| <= ln2/2
  // (one term shorter than Cephes; max relative error 1.2e-7 in float, as Cephes)
  __m256 p = _mm256_set1_ps(1.3750664038e-03f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3691210751e-03f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1669565430e-02f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666516754e-01f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.9999988400e-01f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // (n + 127) << 23; the magic's own bits are shifted out
  const __m256 scale = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127)), 23));
  return _mm256_mul_ps(p, scale);
}

// log for 8 floats (Cephes logf polynomial, ~1 ulp) for positive normal inputs;
// 0 -> -inf, negative / NaN -> NaN, +inf -> +inf. Used for per-row log-sum-exp.
FASTNN_VEC_INLINE __m256 log_ps(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 invalid = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_NGE_UQ);  // x < 0 or NaN
  const __m256 zero_in = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_EQ_OQ);
  const __m256 inf_in = _mm256_cmp_ps(x, _mm256_set1_ps(INFINITY), _CMP_EQ_OQ);
  __m256 xm = _mm256_max_ps(x, _mm256_set1_ps(1.17549435e-38f));  // min normal
  __m256i e = _mm256_srli_epi32(_mm256_castps_si256(xm), 23);
  xm = _mm256_and_ps(xm, _mm256_castsi256_ps(_mm256_set1_epi32(~0x7f800000)));
  xm = _mm256_or_ps(xm, _mm256_set1_ps(0.5f));  // mantissa in [0.5, 1)
  e = _mm256_sub_epi32(e, _mm256_set1_epi32(126));
  __m256 ef = _mm256_cvtepi32_ps(e);
  const __m256 small = _mm256_cmp_ps(xm, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
  // if xm < sqrt(1/2): e -= 1, xm = 2xm - 1 else xm = xm - 1
  ef = _mm256_sub_ps(ef, _mm256_and_ps(one, small));
  xm = _mm256_add_ps(_mm256_sub_ps(xm, one), _mm256_and_ps(xm, small));
  const __m256 z = _mm256_mul_ps(xm, xm);
  __m256 y = _mm256_set1_ps(7.0376836292E-2f);
  y = _mm256_fmadd_ps(y, xm, _mm256_set1_ps(-1.1514610310E-1f));
  y = _mm256_fmadd_ps(y, xm, _mm256_set1_ps(1.1676998740E-1f));
  y = _mm256_fmadd_ps(y, xm, _mm256_set1_ps(-1.2420140846E-1f));
  y = _mm256_fmadd_ps(y, xm, _mm256_set1_ps(1.4249322787E-1f));
  y = _mm256_fmadd_ps(y, xm, _mm256_set1_ps(-1.6668057665E-1f));
  y = _mm256_fmadd_ps(y, xm, _mm256_set1_ps(2.0000714765E-1f));
  y = _mm256_fmadd_ps(y, xm, _mm256_set1_ps(-2.4999993993E-1f));
  y = _mm256_fmadd_ps(y, xm, _mm256_set1_ps(3.3333331174E-1f));
  y = _mm256_mul_ps(_mm256_mul_ps(y, xm), z);
  y = _mm256_fmadd_ps(ef, _mm256_set1_ps(-2.12194440e-4f), y);
  y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), y);
  __m256 r = _mm256_add_ps(xm, y);
  r = _mm256_fmadd_ps(ef, _mm256_set1_ps(0.693359375f), r);
  r = _mm256_blendv_ps(r, _mm256_set1_ps(-INFINITY), zero_in);
  r = _mm256_blendv_ps(r, _mm256_set1_ps(INFINITY), inf_in);
  return _mm256_or_ps(r, invalid);  // all-ones lanes are NaN
}

// exp for 4 doubles: n = round(x / ln2), r = x - n ln2 (two-part ln2), e^r by a
// degree-13 Taylor/Horner polynomial (|r| <= 0.347, truncation error < 1e-17
// relative), scaled by 2^n in two halves. x < -708.39 -> 0, x > 709.78 -> inf.
FASTNN_VEC_INLINE __m256d exp_pd(__m256d x) {
  const __m256d hi = _mm256_set1_pd(709.782712893384);
  const __m256d lo = _mm256_set1_pd(-708.3964185322641);
  __m256d xc = _mm256_min_pd(hi, x);
  xc = _mm256_max_pd(lo, xc);
  const __m256d n = _mm256_round_pd(_mm256_mul_pd(xc, _mm256_set1_pd(1.4426950408889634)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256d r = _mm256_fnmadd_pd(n, _mm256_set1_pd(6.93147180369123816490e-01), xc);
  r = _mm256_fnmadd_pd(n, _mm256_set1_pd(1.90821492927058770002e-10), r);
  __m256d p = _mm256_set1_pd(1.0 / 6227020800.0);
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 479001600.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 39916800.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 3628800.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 362880.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 40320.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 5040.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 720.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 120.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 24.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 6.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(0.5));
  p = _mm256_fmadd_pd(p, _mm256_mul_pd(r, r), _mm256_add_pd(r, _mm256_set1_pd(1.0)));
  // 2^n with n in [-1022, 1024], split in two halves so each stays a normal double
  const __m128i ni = _mm256_cvtpd_epi32(n);
  const __m128i ni1 = _mm_srai_epi32(ni, 1);
  const __m128i ni2 = _mm_sub_epi32(ni, ni1);
  const __m256i e1 = _mm256_slli_epi64(
      _mm256_add_epi64(_mm256_cvtepi32_epi64(ni1), _mm256_set1_epi64x(1023)), 52);
  const __m256i e2 = _mm256_slli_epi64(
      _mm256_add_epi64(_mm256_cvtepi32_epi64(ni2), _mm256_set1_epi64x(1023)), 52);
  __m256d y = _mm256_mul_pd(_mm256_mul_pd(p, _mm256_castsi256_pd(e1)), _mm256_castsi256_pd(e2));
  y = _mm256_andnot_pd(_mm256_cmp_pd(x, lo, _CMP_LT_OQ), y);
  y = _mm256_blendv_pd(y, _mm256_set1_pd(std::numeric_limits<double>::infinity()),
                       _mm256_cmp_pd(x, hi, _CMP_GT_OQ));
  return y;
}

// ------------------------------------------------------------------ horizontal
FASTNN_VEC_INLINE float hmax_ps(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

FASTNN_VEC_INLINE float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

FASTNN_VEC_INLINE double hsum_pd(__m256d v) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
  return _mm_cvtsd_f64(s);
}

FASTNN_VEC_INLINE double hmax_pd(__m256d v) {
  __m128d m = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  m = _mm_max_sd(m, _mm_unpackhi_pd(m, m));
  return _mm_cvtsd_f64(m);
}

// Sum of 8 floats, accumulated in double.
FASTNN_VEC_INLINE double hsum_ps_as_double(__m256 v) {
  const __m256d a = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
  const __m256d b = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
  return hsum_pd(_mm256_add_pd(a, b));
}

// ------------------------------------------------------------------ vector traits
// F32x8 / F64x4 wrap one AVX2 register of float / double behind one interface so
// kernels can be written once as templates over the trait (template <class A>).
struct F32x8 {
  using T = float;  // the element type in memory
  using C = float;  // the scalar type computed in
  using V = __m256;
  static constexpr int64_t W = 8;
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V load(const T* p) { return _mm256_loadu_ps(p); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static __m256i mask(int64_t n) { return tail_mask_ps(n); }
  // masked load: lanes outside the mask read as 0 (memory is not touched there)
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V mload(const T* p, __m256i m) { return _mm256_maskload_ps(p, m); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static void mstore(T* p, __m256i m, V v) { _mm256_maskstore_ps(p, m, v); }
  // v where the mask is set, else 0 / else f
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V mkeep(V v, __m256i m) { return _mm256_and_ps(v, _mm256_castsi256_ps(m)); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V mfill(V v, __m256i m, T f) {
    return _mm256_blendv_ps(_mm256_set1_ps(f), v, _mm256_castsi256_ps(m));
  }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V set1(T v) { return _mm256_set1_ps(v); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V zero() { return _mm256_setzero_ps(); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V max(V a, V b) { return _mm256_max_ps(a, b); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V add(V a, V b) { return _mm256_add_ps(a, b); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V band(V a, V b) { return _mm256_and_ps(a, b); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a*b
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }  // a*b + c
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V broadcast(const T* p) { return _mm256_broadcast_ss(p); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V andnot(V a, V b) { return _mm256_andnot_ps(a, b); }  // ~a & b
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V le(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }  // false for NaN
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V exp(V v) { return exp_ps(v); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V exp_nonpos(V v) { return exp_nonpos_ps(v); }
  // v - (lane == k ? s : 0), k in [0, W)
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V sub_at_lane(V v, int64_t k, V s) {
    const __m256i m = _mm256_cmpeq_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                         _mm256_set1_epi32(static_cast<int>(k)));
    return _mm256_sub_ps(v, _mm256_and_ps(s, _mm256_castsi256_ps(m)));
  }
  // gathers p[lane * stride] (stride * 8 must fit in int32)
  using I = __m256i;
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static I lane_offsets(int64_t stride) {
    return _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                              _mm256_set1_epi32(static_cast<int>(stride)));
  }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V gather(const T* p, I off) { return _mm256_i32gather_ps(p, off, 4); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static T hmax(V v) { return hmax_ps(v); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static T hsum(V v) { return hsum_ps(v); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V log(V v) { return log_ps(v); }
};

struct F64x4 {
  using T = double;
  using C = double;
  using V = __m256d;
  static constexpr int64_t W = 4;
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V load(const T* p) { return _mm256_loadu_pd(p); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static __m256i mask(int64_t n) { return tail_mask_pd(n); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V mload(const T* p, __m256i m) { return _mm256_maskload_pd(p, m); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static void mstore(T* p, __m256i m, V v) { _mm256_maskstore_pd(p, m, v); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V mkeep(V v, __m256i m) { return _mm256_and_pd(v, _mm256_castsi256_pd(m)); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V mfill(V v, __m256i m, T f) {
    return _mm256_blendv_pd(_mm256_set1_pd(f), v, _mm256_castsi256_pd(m));
  }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V set1(T v) { return _mm256_set1_pd(v); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V zero() { return _mm256_setzero_pd(); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V max(V a, V b) { return _mm256_max_pd(a, b); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V add(V a, V b) { return _mm256_add_pd(a, b); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V sub(V a, V b) { return _mm256_sub_pd(a, b); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V band(V a, V b) { return _mm256_and_pd(a, b); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_pd(a, b, c); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V fmadd(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V broadcast(const T* p) { return _mm256_broadcast_sd(p); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V andnot(V a, V b) { return _mm256_andnot_pd(a, b); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V le(V a, V b) { return _mm256_cmp_pd(a, b, _CMP_LE_OQ); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V exp(V v) { return exp_pd(v); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V exp_nonpos(V v) { return exp_pd(v); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V sub_at_lane(V v, int64_t k, V s) {
    const __m256i m = _mm256_cmpeq_epi64(_mm256_setr_epi64x(0, 1, 2, 3), _mm256_set1_epi64x(k));
    return _mm256_sub_pd(v, _mm256_and_pd(s, _mm256_castsi256_pd(m)));
  }
  using I = __m128i;
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static I lane_offsets(int64_t stride) {
    return _mm_mullo_epi32(_mm_setr_epi32(0, 1, 2, 3), _mm_set1_epi32(static_cast<int>(stride)));
  }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V gather(const T* p, I off) { return _mm256_i32gather_pd(p, off, 8); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static T hmax(V v) { return hmax_pd(v); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static T hsum(V v) { return hsum_pd(v); }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V log(V v) {
    alignas(32) T t[4];
    _mm256_store_pd(t, v);
    for (auto& e : t) e = std::log(e);
    return _mm256_load_pd(t);
  }
};

// Half16x8<H>: 8 float16 / bfloat16 values in memory, computed as 8 floats: F32x8's
// arithmetic, with loads of H that widen (exactly) and stores to H that round to nearest
// even. Loads and stores of float (kernels' scratch) are F32x8's. Masked loads and stores
// (masks from mask(n): the first n lanes) go through an 8-element buffer, as AVX2 has no
// 16-bit masked moves.
template <typename H>
struct Half16x8 : F32x8 {
  using T = H;
  using C = float;
  using F32x8::load;
  using F32x8::mload;
  using F32x8::mstore;
  using F32x8::store;
  static constexpr bool kBf16 = std::is_same_v<H, c10::BFloat16>;
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V widen(__m128i h) {
    return kBf16 ? bf16_to_ps(h) : f16_to_ps(h);
  }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static __m128i narrow(V v) {
    return kBf16 ? ps_to_bf16(v) : ps_to_f16(v);
  }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V load(const H* p) {
    return widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static void store(H* p, V v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow(v));
  }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static int lanes(__m256i m) {
    return __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(m))));
  }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V mload(const H* p, __m256i m) {
    alignas(16) uint16_t b[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // lanes outside the mask read 0
    std::memcpy(b, p, sizeof(H) * lanes(m));
    return widen(_mm_load_si128(reinterpret_cast<const __m128i*>(b)));
  }
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static void mstore(H* p, __m256i m, V v) {
    alignas(16) uint16_t b[8];
    _mm_store_si128(reinterpret_cast<__m128i*>(b), narrow(v));
    std::memcpy(p, b, sizeof(H) * lanes(m));
  }
  // p[off[lane]], element by element (a 32-bit hardware gather would read past the end)
  FASTNN_TARGET_AVX2 __attribute__((always_inline)) static V gather(const H* p, I off) {
    alignas(32) int32_t o[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(o), off);
    alignas(16) uint16_t b[8];
    for (int k = 0; k < 8; ++k) std::memcpy(&b[k], p + o[k], sizeof(H));
    return widen(_mm_load_si128(reinterpret_cast<const __m128i*>(b)));
  }
};

template <typename T>
struct Avx2Of;
template <>
struct Avx2Of<float> {
  using type = F32x8;
};
template <>
struct Avx2Of<double> {
  using type = F64x4;
};
template <>
struct Avx2Of<c10::Half> {
  using type = Half16x8<c10::Half>;
};
template <>
struct Avx2Of<c10::BFloat16> {
  using type = Half16x8<c10::BFloat16>;
};

// ------------------------------------------------------------------ row reductions
// Max of x[0..n), n >= 1 (NaN lanes may or may not win; see the file comment).
template <class A>
FASTNN_VEC_INLINE typename A::C row_max(const typename A::T* x, int64_t n) {
  using V = typename A::V;
  constexpr int64_t W = A::W;
  const typename A::C ninf = -std::numeric_limits<typename A::C>::infinity();
  V m0 = A::set1(ninf), m1 = m0, m2 = m0, m3 = m0;
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    m0 = A::max(m0, A::load(x + i));
    m1 = A::max(m1, A::load(x + i + W));
    m2 = A::max(m2, A::load(x + i + 2 * W));
    m3 = A::max(m3, A::load(x + i + 3 * W));
  }
  for (; i + W <= n; i += W) m0 = A::max(m0, A::load(x + i));
  if (i < n) {
    const __m256i tm = A::mask(n - i);
    m1 = A::max(m1, A::mfill(A::mload(x + i, tm), tm, ninf));
  }
  return A::hmax(A::max(A::max(m0, m1), A::max(m2, m3)));
}

// sum exp(x[i] - m) over [0, n), accumulated in the input precision (like torch).
template <class A>
FASTNN_VEC_INLINE typename A::C row_sumexp(const typename A::T* x, int64_t n,
                                                   typename A::C m) {
  using V = typename A::V;
  constexpr int64_t W = A::W;
  const V vm = A::set1(m);
  V s0 = A::zero(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    s0 = A::add(s0, A::exp_nonpos(A::sub(A::load(x + i), vm)));
    s1 = A::add(s1, A::exp_nonpos(A::sub(A::load(x + i + W), vm)));
    s2 = A::add(s2, A::exp_nonpos(A::sub(A::load(x + i + 2 * W), vm)));
    s3 = A::add(s3, A::exp_nonpos(A::sub(A::load(x + i + 3 * W), vm)));
  }
  for (; i + W <= n; i += W) s0 = A::add(s0, A::exp_nonpos(A::sub(A::load(x + i), vm)));
  if (i < n) {
    const __m256i tm = A::mask(n - i);
    s1 = A::add(s1, A::mkeep(A::exp_nonpos(A::sub(A::mload(x + i, tm), vm)), tm));
  }
  return A::hsum(A::add(A::add(s0, s1), A::add(s2, s3)));
}

// Columns version: x points at column j of a [rows, stride] block; for the w
// (1..W) columns j..j+w-1: vmax = max over rows, vsum = sum exp(x - vmax).
// Lanes >= w hold finite filler values that callers must ignore.
template <class A>
FASTNN_VEC_INLINE void cols_max_sumexp(const typename A::T* x, int64_t rows,
                                               int64_t stride, int64_t w, typename A::V& vmax,
                                               typename A::V& vsum) {
  using V = typename A::V;
  const V ninf = A::set1(-std::numeric_limits<typename A::C>::infinity());
  if (w == A::W) {
    V m0 = ninf, m1 = ninf;
    int64_t r = 0;
    for (; r + 2 <= rows; r += 2) {
      m0 = A::max(m0, A::load(x + r * stride));
      m1 = A::max(m1, A::load(x + (r + 1) * stride));
    }
    if (r < rows) m0 = A::max(m0, A::load(x + r * stride));
    const V m = A::max(m0, m1);
    V s0 = A::zero(), s1 = s0;
    for (r = 0; r + 2 <= rows; r += 2) {
      s0 = A::add(s0, A::exp_nonpos(A::sub(A::load(x + r * stride), m)));
      s1 = A::add(s1, A::exp_nonpos(A::sub(A::load(x + (r + 1) * stride), m)));
    }
    if (r < rows) s0 = A::add(s0, A::exp_nonpos(A::sub(A::load(x + r * stride), m)));
    vmax = m;
    vsum = A::add(s0, s1);
  } else {
    const __m256i tm = A::mask(w);
    V m = ninf;
    for (int64_t r = 0; r < rows; ++r) m = A::max(m, A::mload(x + r * stride, tm));
    V s = A::zero();
    for (int64_t r = 0; r < rows; ++r) s = A::add(s, A::exp_nonpos(A::sub(A::mload(x + r * stride, tm), m)));
    vmax = m;
    vsum = A::mfill(s, tm, typename A::C(1));
  }
}

// Rows version, for short rows: the W rows x + k * n (k < W) of n <= kMaxGatherRow
// elements are the lanes of the vectors, walked element by element with gathers, so
// nothing needs a horizontal reduction: vmax[k] = max of row k, vsum[k] = sum of
// exp(row k - vmax[k]). `cols` (n vectors of scratch) keeps the gathered elements
// between the two passes. Each lane only sees its own row.
constexpr int64_t kMaxGatherRow = 32;
template <class A>
FASTNN_VEC_INLINE void rows_max_sumexp(const typename A::T* x, int64_t n, typename A::V* cols,
                                       typename A::V& vmax, typename A::V& vsum) {
  using V = typename A::V;
  const typename A::I off = A::lane_offsets(n);
  V m = A::set1(-std::numeric_limits<typename A::C>::infinity());
  for (int64_t c = 0; c < n; ++c) {
    cols[c] = A::gather(x + c, off);
    m = A::max(m, cols[c]);
  }
  V s = A::zero();
  for (int64_t c = 0; c < n; ++c) s = A::add(s, A::exp_nonpos(A::sub(cols[c], m)));
  vmax = m;
  vsum = s;
}

#endif  // FASTNN_HAVE_X86

}  // namespace vec
}  // namespace fastnn
