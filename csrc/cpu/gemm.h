// fastnn's own CPU GEMM (no MKL / ATen matmul), used by the Linear kernels.
//
//   C[M, N] = A[M, K] * B[K, N]  (+ bias[n] broadcast over rows)  (+ beta * C)
//
// A and B are read through arbitrary (row stride, column stride) pairs, so
// transposed operands (x * W^T, dy * W, dy^T * x) need no materialised copy.
// C is written densely by rows: element (m, n) at C[m * ldc + n].
//
// Goto/BLIS structure: B is packed into KC x NR micro-panels, A into MC x KC
// blocks of MR x KC micro-panels, and an MR x NR register-tiled micro-kernel
// (AVX2/FMA when the CPU has it, portable scalar code otherwise) runs over them.
// The K blocking depends only on K, and every C element is produced by exactly
// one thread with a fixed K order, so the result is bitwise deterministic and
// independent of the number of threads.
#pragma once

#include <cstdint>

namespace fastnn {

// C = A * B (+ bias) (+ beta * C). `bias` may be null (no bias); beta == 0
// means C is write-only (it may hold garbage / NaN on entry).
// M, N, K may be 0; with K == 0, C = bias (or 0) (+ beta * C).
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K,
          const T* A, int64_t a_rs, int64_t a_cs,
          const T* B, int64_t b_rs, int64_t b_cs,
          T* C, int64_t ldc, const T* bias, T beta);

// Column sums: out[n] = sum_m X[m * ldx + n] (unit column stride), summed in a
// fixed order (blocks of rows, then the block sums in order): deterministic
// and independent of the number of threads.
template <typename T>
void col_sum(int64_t M, int64_t N, const T* X, int64_t ldx, T* out);

extern template void gemm<float>(int64_t, int64_t, int64_t, const float*, int64_t, int64_t,
                                 const float*, int64_t, int64_t, float*, int64_t, const float*,
                                 float);
extern template void gemm<double>(int64_t, int64_t, int64_t, const double*, int64_t, int64_t,
                                  const double*, int64_t, int64_t, double*, int64_t,
                                  const double*, double);
extern template void col_sum<float>(int64_t, int64_t, const float*, int64_t, float*);
extern template void col_sum<double>(int64_t, int64_t, const double*, int64_t, double*);

}  // namespace fastnn
