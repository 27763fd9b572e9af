// AVX2/FMA vector helpers shared by fastnn's CPU kernels.
//
// Every function here is compiled for AVX2+FMA via FASTNN_TARGET_AVX2 and must
// only be called after cpu_has_avx2_fma() returned true (see cpu_features.h);
// kernels keep a portable scalar fallback next to each AVX2 path.
//
// Contents (namespace fastnn::vec):
//   exp_ps(x)            8 x expf, Cephes polynomial (~1-2 ulp), exp(-inf) = 0,
//                        exp(+inf) = inf, NaN in -> NaN out, underflow (< -87.3) -> 0.
//   exp_pd(x)            4 x exp in double precision (~1 ulp), same special cases.
//   hmax_ps / hsum_ps / hsum_pd, hsum_ps_as_double   horizontal reductions.
//   tail_mask_ps(n)      lane mask for the first n (0..8) lanes, for maskload/maskstore.
//   row_max_sumexp(x, n, &m, &s)   m = max(x[0..n)), s = sum exp(x - m) (float, contiguous).
//   cols_max_sumexp(...) the same for 8 adjacent columns of a [rows, stride] block.
//
// NaN handling: max ignores NaN lanes the way _mm256_max_ps does, but exp(NaN)
// is NaN, so a NaN anywhere in a row makes its sum-of-exp (and so the whole
// log-softmax row / log-sum-exp) NaN, matching torch.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "fastnn/cpu_features.h"

#if FASTNN_HAVE_X86
#include <immintrin.h>
#endif

namespace fastnn {
namespace vec {

#if FASTNN_HAVE_X86

// ------------------------------------------------------------------ masks
alignas(32) static const int32_t kTailMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                       0,  0,  0,  0,  0,  0,  0,  0};

// Mask with the first n lanes (0 <= n <= 8) set.
FASTNN_TARGET_AVX2 inline __m256i tail_mask_ps(int64_t n) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTailMaskTable + 8 - n));
}

// Mask with the first n lanes (0 <= n <= 4) of a 4 x double vector set.
FASTNN_TARGET_AVX2 inline __m256i tail_mask_pd(int64_t n) {
  alignas(32) static const int64_t t[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + 4 - n));
}

// Loads the first n lanes from p; the other lanes are `fill`.
FASTNN_TARGET_AVX2 inline __m256 load_tail_ps(const float* p, int64_t n, float fill) {
  const __m256i m = tail_mask_ps(n);
  const __m256 v = _mm256_maskload_ps(p, m);
  return _mm256_blendv_ps(_mm256_set1_ps(fill), v, _mm256_castsi256_ps(m));
}

FASTNN_TARGET_AVX2 inline void store_tail_ps(float* p, int64_t n, __m256 v) {
  _mm256_maskstore_ps(p, tail_mask_ps(n), v);
}

// ------------------------------------------------------------------ exp
// expf for 8 lanes. Range reduction x = n ln2 + r (|r| <= ln2/2, Cody-Waite in two
// parts), e^r by the Cephes degree-6 polynomial, result scaled by 2^n via the
// exponent bits. Inputs below -87.33654 (where 2^n would be denormal) give 0.
FASTNN_TARGET_AVX2 inline __m256 exp_ps(__m256 x) {
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

// exp for 4 doubles: n = round(x / ln2), r = x - n ln2 (two-part ln2), e^r by a
// degree-13 Taylor/Horner polynomial (|r| <= 0.347, truncation error < 1e-17
// relative), scaled by 2^n in two halves. x < -708.39 -> 0, x > 709.78 -> inf.
FASTNN_TARGET_AVX2 inline __m256d exp_pd(__m256d x) {
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
FASTNN_TARGET_AVX2 inline float hmax_ps(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

FASTNN_TARGET_AVX2 inline float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

FASTNN_TARGET_AVX2 inline double hsum_pd(__m256d v) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
  return _mm_cvtsd_f64(s);
}

FASTNN_TARGET_AVX2 inline double hmax_pd(__m256d v) {
  __m128d m = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  m = _mm_max_sd(m, _mm_unpackhi_pd(m, m));
  return _mm_cvtsd_f64(m);
}

// Sum of 8 floats, accumulated in double.
FASTNN_TARGET_AVX2 inline double hsum_ps_as_double(__m256 v) {
  const __m256d a = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
  const __m256d b = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
  return hsum_pd(_mm256_add_pd(a, b));
}

// ------------------------------------------------------------------ row reductions
// Max of x[0..n), n >= 1 (NaN lanes may or may not win; see the file comment).
FASTNN_TARGET_AVX2 inline float row_max_ps(const float* x, int64_t n) {
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
    m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + i + 8));
    m2 = _mm256_max_ps(m2, _mm256_loadu_ps(x + i + 16));
    m3 = _mm256_max_ps(m3, _mm256_loadu_ps(x + i + 24));
  }
  for (; i + 8 <= n; i += 8) m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
  if (i < n) m1 = _mm256_max_ps(m1, load_tail_ps(x + i, n - i, -INFINITY));
  return hmax_ps(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
}

// sum exp(x[i] - m) over [0, n), accumulated in float lanes (like torch).
FASTNN_TARGET_AVX2 inline float row_sumexp_ps(const float* x, int64_t n, float m) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_add_ps(s0, exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm)));
    s1 = _mm256_add_ps(s1, exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm)));
    s2 = _mm256_add_ps(s2, exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i + 16), vm)));
    s3 = _mm256_add_ps(s3, exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i + 24), vm)));
  }
  for (; i + 8 <= n; i += 8)
    s0 = _mm256_add_ps(s0, exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm)));
  if (i < n) {
    // masked lanes load -inf: exp(-inf - m) = 0 (or NaN when m is -inf/NaN, which
    // only happens when the whole row is -inf/NaN and the result is NaN anyway)
    const __m256i mask = tail_mask_ps(n - i);
    const __m256 e = exp_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, mask), vm));
    s1 = _mm256_add_ps(s1, _mm256_and_ps(e, _mm256_castsi256_ps(mask)));
  }
  return hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

// m = max(x[0..n)), s = sum exp(x - m); n >= 1.
FASTNN_TARGET_AVX2 inline void row_max_sumexp(const float* x, int64_t n, float& m, float& s) {
  m = row_max_ps(x, n);
  s = row_sumexp_ps(x, n, m);
}

// Columns version: x points at column j of a [rows, stride] block; for the
// `w` (1..8) columns j..j+w-1, m[k] = max over rows, s[k] = sum exp(x - m[k]).
// Returned as vectors; lanes >= w hold finite filler values callers must ignore.
FASTNN_TARGET_AVX2 inline void cols_max_sumexp(const float* x, int64_t rows, int64_t stride,
                                               int64_t w, __m256& vmax, __m256& vsum) {
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  if (w == 8) {
    __m256 m0 = ninf, m1 = ninf;
    int64_t r = 0;
    for (; r + 2 <= rows; r += 2) {
      m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + r * stride));
      m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + (r + 1) * stride));
    }
    if (r < rows) m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + r * stride));
    const __m256 m = _mm256_max_ps(m0, m1);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (r = 0; r + 2 <= rows; r += 2) {
      s0 = _mm256_add_ps(s0, exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + r * stride), m)));
      s1 = _mm256_add_ps(s1, exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + (r + 1) * stride), m)));
    }
    if (r < rows) s0 = _mm256_add_ps(s0, exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + r * stride), m)));
    vmax = m;
    vsum = _mm256_add_ps(s0, s1);
  } else {
    const __m256i mask = tail_mask_ps(w);
    __m256 m = ninf;
    for (int64_t r = 0; r < rows; ++r) m = _mm256_max_ps(m, _mm256_maskload_ps(x + r * stride, mask));
    __m256 s = _mm256_setzero_ps();
    for (int64_t r = 0; r < rows; ++r)
      s = _mm256_add_ps(s, exp_ps(_mm256_sub_ps(_mm256_maskload_ps(x + r * stride, mask), m)));
    vmax = m;
    vsum = s;
  }
}

// ------------------------------------------------------------------ log for 8 lanes (scalar)
// log of each lane via std::log (called once per row block; not hot).
FASTNN_TARGET_AVX2 inline __m256 log_ps_scalar(__m256 v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  for (int k = 0; k < 8; ++k) t[k] = std::log(t[k]);
  return _mm256_load_ps(t);
}

#endif  // FASTNN_HAVE_X86

}  // namespace vec
}  // namespace fastnn
