// fastnn Linear on CUDA: forward and backward on fastnn's own GEMM kernels
// (no cuBLAS / cuBLASLt / CUTLASS). Device code lives in gemm.cuh.
//
// Shapes: input x (*, in) (any leading shape, also 1-D and empty batch),
// weight W (out, in), bias b (out). With M = prod(leading dims), K = in,
// N = out, all operands made contiguous first:
//   forward   y[M,N]  = x[M,K] . W[N,K]^T + b     GEMM "NT" (A k-contiguous, B k-contiguous)
//   backward  dx[M,K] = dy[M,N] . W[N,K]          GEMM "NN" (M, K, red. N; B n-contiguous)
//             dW[N,K] = dy[M,N]^T . x[M,K]        GEMM "TN" (N, K, red. M; A m-contiguous)
//             db[N]   = sum over rows of dy        column-sum kernel
// Generic GEMM: C[M,N] = sum_k A(m,k) B(k,n) (+ bias[n] in the epilogue).
//
// Kernels (all in gemm.cuh):
//   * float32 (TF32 off) and float64: a shared-memory tiled CUDA-core GEMM
//     accumulating in the type itself.
//       float32 "big"  : block 128x128, BK 8, 256 threads, 8x8 per thread (two
//                        4-wide row groups and column groups: 16-byte LDS), 2 blocks/SM
//       float64 "mid"  : block 64x64, BK 8, 256 threads, 4x4 per thread
//       "small" (both) : block 32x32, BK 16, 64 threads, 4x4 per thread
//     Shared memory holds both operands k-major (As[k][m], Bs[k][n], rows
//     padded by 4 elements). "big" and "mid" (simt_gemm_kernel) double-buffer
//     it: the next K tile is fetched into registers (16-byte loads when the row
//     length is a multiple of 16 bytes and the base is aligned, guarded scalar
//     loads otherwise / at edges) while the current one is multiplied, then
//     stored to the other buffer (k-contiguous operands transposed on the
//     store); one __syncthreads per K tile. "small" (simt_gemm_async_kernel)
//     is for latency-bound problems: a 4-stage ring of cp.async element copies
//     (transposing as they land; any alignment), so three K tiles are in flight
//     while one is multiplied instead of one global round trip per K tile.
//   * float16 / bfloat16 (and float32 when torch.backends.cuda.matmul.allow_tf32,
//     i.e. at::globalContext().allowTF32CuBLAS(), as TF32): wmma_gemm_kernel,
//     WMMA 16x16x16 (TF32: 16x16x8) with float32 accumulators.
//       "big"   : block 128x128, BK 32 (TF32: 16), 8 warps of 64x32 (4x2
//                 fragments), 4-stage cp.async ring (80 KB dynamic smem,
//                 2 blocks/SM); used when the output has >= 16 tiles and both
//                 operands are 16-byte aligned with rows a multiple of 16 bytes
//       "small" : block 64x64, BK 32 (TF32: 16), 4 warps of 32x32 (2x2
//                 fragments), the same 4-stage cp.async ring when the operands
//                 qualify (as for "big"), else a register-staged double buffer
//                 (any alignment, guarded edges); used for everything else
//     Operands stay in their global orientation in shared memory (16-byte row
//     padding, so the WMMA loads are conflict-light); the epilogue stages each
//     16x16 accumulator through shared memory, adds the bias in float32 and
//     rounds once to the output type.
//   Tile choice (float32 SIMT): "big" when it yields >= 16 output tiles, else
//   "small"; float64: "mid" when >= 32 tiles, else "small". Deterministic
//   split-K when the output has fewer tiles than the GPU has SMs: blockIdx.z
//   takes a fixed range of K tiles and writes raw partial sums (float32 for
//   the half types and TF32, T otherwise) to a workspace [S][M][N] (at::empty,
//   caching allocator); splitk_reduce_kernel then sums s = 0..S-1 in order and
//   adds the bias (the epilogue of the split path). No atomics anywhere: bitwise
//   reproducible run to run. The split count depends only on the shape and the
//   GPU's SM count (and FASTNN_GEMM_MAX_SPLITS = 1..32, a cap for tuning the
//   policy: 1 never splits; unset, 32).
//   * float16 / bfloat16 (and TF32) on Hopper (FASTNN_WGMMA=0 turns it off, =all
//     sends it every product it can take): wgmma_gemm_nt_kernel (gemm_sm90.cuh),
//     block 128x256, two warpgroups of wgmma m64n128, 4-stage cp.async ring in the
//     128-byte-swizzled layout wgmma reads. It takes "NT" only, so for it dx's W and
//     dW's dy and x are first copied K-contiguous (W^T, dy^T, x^T; transpose_kernel,
//     32 x 32 tiles through shared memory). Built when the arch list names 9.0a; used
//     on compute-capability 9.0 GPUs when K is whole 16-byte chunks, the in-place
//     operands are 16-byte aligned and (by default) the output fills one wave of tiles.
//     FASTNN_WGMMA=tma (tma-all) puts the same products on wgmma_gemm_tma_kernel
//     instead: the same tiles fed by the tensor-memory accelerator, a producer warp and
//     two consumer warpgroups meeting on mbarriers; for float16 / bfloat16 it reads
//     "NN" and "TN" operands in place (MN-major), so dx and dW need no copies. Its
//     operands are described by tensor maps (cuTensorMapEncodeTiled, per call).
//   * db: colsum_kernel, fixed 1024-row chunks (32 columns x 8 row groups per
//     block, fixed-order combine), a second launch sums the chunk partials.
// All launches use the current stream, no host synchronisation, no cudaMalloc
// (CUDA-graph capturable). The async WMMA kernels raise their dynamic shared
// memory limit once per device with cudaFuncSetAttribute (not a stream operation).
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "fastnn/checks.h"
#include "gemm.cuh"
#include "gemm_sm90.cuh"

namespace fastnn {
namespace {

enum class Layout { NT, NN, TN };

// cudaDeviceGetAttribute, read once per device (the attributes used here are fixed).
template <cudaDeviceAttr kAttr>
int device_attr(int device) {
  static std::array<std::atomic<int>, 128> cache{};  // value + 1; 0: not read yet
  int v = device >= 0 && device < 128 ? cache[device].load(std::memory_order_relaxed) : 0;
  if (v > 0) return v - 1;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, kAttr, device));
  if (device >= 0 && device < 128) cache[device].store(v + 1, std::memory_order_relaxed);
  return v;
}

int sm_count(int device) {
  return std::max(1, device_attr<cudaDevAttrMultiProcessorCount>(device));
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Split {
  int splits;
  int kt_per_split;
};

// The most K splits a product may take: FASTNN_GEMM_MAX_SPLITS (1 to 32; 1 never
// splits), read once per process, for tuning the split policy on a GPU; unset, 32.
int max_splits() {
  static const int cap = [] {
    const char* v = std::getenv("FASTNN_GEMM_MAX_SPLITS");
    if (v == nullptr || *v == '\0') return 32;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    TORCH_CHECK(*end == '\0' && n >= 1 && n <= 32,
                "FASTNN_GEMM_MAX_SPLITS must be an integer from 1 to 32 (1: never split K), got '", v,
                "'.");
    return static_cast<int>(n);
  }();
  return cap;
}

// Deterministic split-K choice: depends only on the shape and the SM count.
// Split only when the output has fewer tiles than SMs; aim for ~2 blocks per
// SM, at least `min_kt` K tiles per split, at most max_splits() splits.
Split choose_split(int64_t tiles, int64_t k_tiles, int sms, int64_t min_kt, int64_t MN,
                   int64_t acc_bytes) {
  Split s{1, static_cast<int>(std::max<int64_t>(k_tiles, 1))};
  if (tiles >= sms || k_tiles < 2 * min_kt) return s;
  int64_t S = std::min<int64_t>({ceil_div(2 * sms, tiles), k_tiles / min_kt, max_splits()});
  // keep the workspace modest (<= 256 MB)
  while (S > 1 && S * MN * acc_bytes > (int64_t(256) << 20)) --S;
  if (S <= 1) return s;
  const int64_t kps = ceil_div(k_tiles, S);
  s.kt_per_split = static_cast<int>(kps);
  s.splits = static_cast<int>(ceil_div(k_tiles, kps));
  return s;
}

template <typename T>
struct AccScalar { static constexpr at::ScalarType value = at::kFloat; };
template <>
struct AccScalar<double> { static constexpr at::ScalarType value = at::kDouble; };

template <typename T, typename Acc>
void launch_reduce(const Acc* ws, T* C, const T* bias, int64_t M, int64_t N, int splits,
                   cudaStream_t stream) {
  const int64_t MN = M * N;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>(ceil_div(MN, threads), int64_t(1) << 20);
  gemm::splitk_reduce_kernel<T, Acc><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
      ws, C, bias, MN, N, splits);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

struct GemmProblem {
  Layout layout;
  const void* A;
  const void* B;
  void* C;
  const void* bias;
  int64_t M, N, K;
  const at::Tensor* like;  // device / options for the workspace
  int sms;
  cudaStream_t stream;
};

int64_t tiles_of(const GemmProblem& p, int64_t bm, int64_t bn) {
  return ceil_div(p.M, bm) * ceil_div(p.N, bn);
}

// T: CUDA element type; Acc: split-K workspace type. Launches one of the three
// layout instantiations k_nt / k_nn / k_tn with `smem` bytes of dynamic shared memory.
template <typename T, typename Acc, int BM, int BN, int BK, int NT, typename KFn>
void run_tiled(const GemmProblem& p, int64_t min_kt, KFn k_nt, KFn k_nn, KFn k_tn, int smem) {
  const int64_t tiles_m = ceil_div(p.M, BM);
  const int64_t tiles_n = ceil_div(p.N, BN);
  TORCH_CHECK(tiles_m <= INT_MAX && tiles_n <= 65535,
              "fastnn::linear: matrix too large for the CUDA GEMM grid (", p.M, " x ", p.N, ").");
  const int64_t k_tiles = ceil_div(p.K, BK);
  const Split sp = choose_split(tiles_m * tiles_n, k_tiles, p.sms, min_kt, p.M * p.N,
                                static_cast<int64_t>(sizeof(Acc)));
  at::Tensor ws;
  Acc* wsp = nullptr;
  if (sp.splits > 1) {
    ws = at::empty({sp.splits, p.M, p.N}, p.like->options().dtype(AccScalar<T>::value));
    wsp = ws.data_ptr<Acc>();
  }
  const dim3 grid(static_cast<unsigned>(tiles_m), static_cast<unsigned>(tiles_n),
                  static_cast<unsigned>(sp.splits));
  const T* A = static_cast<const T*>(p.A);
  const T* B = static_cast<const T*>(p.B);
  T* C = static_cast<T*>(p.C);
  const T* bias = static_cast<const T*>(p.bias);
  KFn k = p.layout == Layout::NT ? k_nt : (p.layout == Layout::NN ? k_nn : k_tn);
  k<<<grid, NT, smem, p.stream>>>(A, B, C, bias, wsp, p.M, p.N, p.K, sp.kt_per_split);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (sp.splits > 1) launch_reduce<T, Acc>(wsp, C, bias, p.M, p.N, sp.splits, p.stream);
}

template <typename T, int BM, int BN, int BK, int TM, int TN, int MINB>
void run_simt(const GemmProblem& p) {
  constexpr int NT = (BM / TM) * (BN / TN);
  run_tiled<T, T, BM, BN, BK, NT>(p, /*min_kt: >= 128 K per split*/ std::max(1, 128 / BK),
                                  gemm::simt_gemm_kernel<T, BM, BN, BK, TM, TN, true, true, MINB>,
                                  gemm::simt_gemm_kernel<T, BM, BN, BK, TM, TN, true, false, MINB>,
                                  gemm::simt_gemm_kernel<T, BM, BN, BK, TM, TN, false, false, MINB>,
                                  /*smem=*/0);
}

// The small SIMT configurations: a cp.async ring (latency-bound problems, see gemm.cuh).
template <typename T, int BM, int BN, int BK, int TM, int TN, int STAGES>
void run_simt_async(const GemmProblem& p) {
  constexpr int NT = (BM / TM) * (BN / TN);
  constexpr int smem = gemm::SimtAsyncCfg<T, BM, BN, BK, STAGES>::SMEM_BYTES;
  static_assert(smem <= 48 * 1024, "the small SIMT ring must fit the default shared-memory limit");
  run_tiled<T, T, BM, BN, BK, NT>(
      p, /*min_kt: >= 128 K per split*/ std::max(1, 128 / BK),
      gemm::simt_gemm_async_kernel<T, BM, BN, BK, TM, TN, STAGES, true, true>,
      gemm::simt_gemm_async_kernel<T, BM, BN, BK, TM, TN, STAGES, true, false>,
      gemm::simt_gemm_async_kernel<T, BM, BN, BK, TM, TN, STAGES, false, false>, smem);
}

// Raises the dynamic shared-memory limit of `fn` once per device (needed above 48 KB).
template <typename KFn>
void allow_smem(KFn fn, int bytes, int device, std::atomic<uint64_t>& done) {
  if (bytes <= 48 * 1024) return;
  const uint64_t bit = uint64_t(1) << (device & 63);
  if (done.load(std::memory_order_acquire) & bit) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(fn),
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  done.fetch_or(bit, std::memory_order_acq_rel);
}

template <typename T, int BM, int BN, int BK, int WM, int WN, int STAGES, bool ASYNC>
void run_wmma(const GemmProblem& p) {
  constexpr int NT = (BM / WM) * (BN / WN) * 32;
  auto k_nt = gemm::wmma_gemm_kernel<T, BM, BN, BK, WM, WN, STAGES, ASYNC, true, true>;
  auto k_nn = gemm::wmma_gemm_kernel<T, BM, BN, BK, WM, WN, STAGES, ASYNC, true, false>;
  auto k_tn = gemm::wmma_gemm_kernel<T, BM, BN, BK, WM, WN, STAGES, ASYNC, false, false>;
  // the three layouts' footprints differ slightly; use the largest
  constexpr int smem = std::max({gemm::WmmaCfg<T, BM, BN, BK, WM, WN, STAGES, true, true>::SMEM_BYTES,
                                 gemm::WmmaCfg<T, BM, BN, BK, WM, WN, STAGES, true, false>::SMEM_BYTES,
                                 gemm::WmmaCfg<T, BM, BN, BK, WM, WN, STAGES, false, false>::SMEM_BYTES});
  static std::atomic<uint64_t> done_nt{0}, done_nn{0}, done_tn{0};
  const int dev = p.like->device().index();
  switch (p.layout) {
    case Layout::NT: allow_smem(k_nt, smem, dev, done_nt); break;
    case Layout::NN: allow_smem(k_nn, smem, dev, done_nn); break;
    case Layout::TN: allow_smem(k_tn, smem, dev, done_tn); break;
  }
  run_tiled<T, float, BM, BN, BK, NT>(p, /*min_kt: >= 256 K per split*/ std::max(1, 256 / BK),
                                      k_nt, k_nn, k_tn, smem);
}

// Operands qualify for the cp.async pipeline: 16-byte aligned base pointers and
// rows (the contiguous dimension) a multiple of 16 bytes.
bool async_ok(const GemmProblem& p, int64_t elem_bytes) {
  const int64_t vec = 16 / elem_bytes;
  const bool a_kmaj = p.layout != Layout::TN;
  const bool b_kmaj = p.layout == Layout::NT;
  return gemm::aligned16(p.A) && gemm::aligned16(p.B) && (a_kmaj ? p.K : p.M) % vec == 0 && (b_kmaj ? p.K : p.N) % vec == 0;
}

// The Hopper wgmma GEMMs (gemm_sm90.cuh): float16 / bfloat16, and float32 as TF32 when
// allowed. FASTNN_WGMMA picks the kernel and the problems it takes:
//   unset, empty or 1  wgmma_gemm_nt_kernel (cp.async) for problems of at least one full
//                      wave of 128 x 256 tiles, where it beats the WMMA kernel (H100,
//                      4096^3: 0.6x cuBLAS forward against 0.35x); "NN" / "TN" products
//                      through K-contiguous copies of their operands
//   all                the same kernel for every problem it can take (to test its edges)
//   tma / tma-all      wgmma_gemm_tma_kernel (TMA, warp-specialised) for the same two
//                      sets; float16 / bfloat16 "NN" and "TN" read in place (MN-major)
//   0                  neither
// Needs a build whose arch list names 9.0a (FASTNN_SM90A) and a compute-capability 9.0
// device.
#if defined(FASTNN_SM90A)
struct WgmmaMode {
  bool on = true;    // any wgmma kernel
  bool all = false;  // every problem it can take, not only those filling a wave
  bool tma = false;  // the TMA kernel
};

WgmmaMode wgmma_mode() {
  static const WgmmaMode mode = [] {
    const char* v = std::getenv("FASTNN_WGMMA");
    WgmmaMode m;
    if (v == nullptr || *v == '\0' || std::strcmp(v, "1") == 0) return m;
    if (std::strcmp(v, "0") == 0) m.on = false;
    else if (std::strcmp(v, "all") == 0) m.all = true;
    else if (std::strcmp(v, "tma") == 0) m.tma = true;
    else if (std::strcmp(v, "tma-all") == 0) m.tma = m.all = true;
    else TORCH_CHECK(false, "FASTNN_WGMMA must be 0, 1, all, tma or tma-all, got '", v, "'.");
    return m;
  }();
  return mode;
}

bool is_sm90(int device) {
  return device_attr<cudaDevAttrComputeCapabilityMajor>(device) == 9 &&
         device_attr<cudaDevAttrComputeCapabilityMinor>(device) == 0;
}
#endif

// How the wgmma kernels take a problem: `take` at all; `copies`: an "NN" / "TN" problem
// whose operands that are not K-contiguous (B for "NN", A and B for "TN") must first be
// replaced by K-contiguous copies (fresh, so aligned) and the problem run as "NT";
// `tma`: the TMA kernel runs it (else the cp.async one).
struct WgmmaChoice {
  bool take = false, copies = false, tma = false;
};

// The TMA kernel: the tensor maps need 16-byte-aligned operands whose contiguous
// dimension is whole 16-byte chunks and non-empty (K > 0), and its tile coordinates
// are 32-bit. "NN" / "TN" in place for the 16-bit types only (MN-major operands). Needs
// CUDA 12.5 or later (the driver entry-point lookup).
bool tma_takes(bool tf32, const GemmProblem& p) {
#if CUDART_VERSION >= 12050  // cudaGetDriverEntryPointByVersion (for the tensor maps)
  const int64_t q = tf32 ? 4 : 8;
  const int64_t a_contig = p.layout == Layout::TN ? p.M : p.K;
  const int64_t b_contig = p.layout == Layout::NT ? p.K : p.N;
  return (p.layout == Layout::NT || !tf32) && p.K > 0 && a_contig % q == 0 && b_contig % q == 0 &&
         gemm::aligned16(p.A) && gemm::aligned16(p.B) && std::max({p.M, p.N, p.K}) <= INT_MAX - 1024;
#else
  (void)tf32, (void)p;
  return false;
#endif
}

WgmmaChoice wgmma_choice(at::ScalarType dtype, const GemmProblem& p) {
  WgmmaChoice c;
#if defined(FASTNN_SM90A)
  const bool tf32 = dtype == at::kFloat && at::globalContext().allowTF32CuBLAS();
  if (dtype != at::kHalf && dtype != at::kBFloat16 && !tf32) return c;
  const WgmmaMode mode = wgmma_mode();
  if (!mode.on) return c;
  if (ceil_div(p.N, gemm::sm90::BN) > 65535 || ceil_div(p.M, gemm::sm90::BM) > INT_MAX) return c;
  if (!mode.all && tiles_of(p, gemm::sm90::BM, gemm::sm90::BN) < p.sms) return c;
  if (!is_sm90(p.like->device().index())) return c;
  if (mode.tma && tma_takes(tf32, p)) {
    c.take = c.tma = true;
    return c;
  }
  // Through "NT" (in place, or on copies): K whole 16-byte chunks, the operands used in
  // place 16-byte aligned.
  if (p.K % (tf32 ? 4 : 8) != 0 || (p.layout != Layout::TN && !gemm::aligned16(p.A)) ||
      (p.layout == Layout::NT && !gemm::aligned16(p.B)))
    return c;
  c.take = true;
  c.copies = p.layout != Layout::NT;  // the kernel is then chosen for the "NT" problem
#else
  (void)dtype, (void)p;
#endif
  return c;
}

template <typename T>
void run_wgmma(const GemmProblem& p) {
  auto kernel = gemm::sm90::wgmma_gemm_nt_kernel<T>;
  static std::atomic<uint64_t> done{0};
  allow_smem(kernel, gemm::sm90::SMEM_BYTES, p.like->device().index(), done);
  const dim3 grid(static_cast<unsigned>(ceil_div(p.M, gemm::sm90::BM)),
                  static_cast<unsigned>(ceil_div(p.N, gemm::sm90::BN)));
  kernel<<<grid, gemm::sm90::THREADS, gemm::sm90::SMEM_BYTES, p.stream>>>(
      static_cast<const T*>(p.A), static_cast<const T*>(p.B), static_cast<T*>(p.C),
      static_cast<const T*>(p.bias), p.M, p.N, p.K);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#if defined(FASTNN_SM90A) && CUDART_VERSION >= 12050
// cuTensorMapEncodeTiled, a driver function, looked up through the runtime (so the
// extension needs no link against libcuda).
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                   const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                   const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiledFn encode_tiled() {
  static const EncodeTiledFn fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    C10_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000,
                                                    cudaEnableDefault, &found));
    TORCH_CHECK(found == cudaDriverEntryPointSuccess && f != nullptr,
                "fastnn::linear: the CUDA driver lacks cuTensorMapEncodeTiled, which "
                "FASTNN_WGMMA=tma needs; unset FASTNN_WGMMA.");
    return reinterpret_cast<EncodeTiledFn>(f);
  }();
  return fn;
}

template <typename T>
constexpr CUtensorMapDataType tma_type() {
  if constexpr (std::is_same_v<T, __half>) return CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  else return CU_TENSOR_MAP_DATA_TYPE_FLOAT32;  // TF32: wgmma ignores the low mantissa bits
}

// A 2-D tensor map over a row-major [rows][cols] matrix of T (cols contiguous): boxes of
// box_cols x box_rows elements, 128-byte swizzle, zeros outside the matrix.
template <typename T>
CUtensorMap tensor_map(const void* base, int64_t rows, int64_t cols, int box_cols, int box_rows) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols) * sizeof(T)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(box_cols), static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r = encode_tiled()(&map, tma_type<T>(), 2, const_cast<void*>(base), dims, strides,
                                    box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                    CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  TORCH_CHECK(r == CUDA_SUCCESS, "fastnn::linear: cuTensorMapEncodeTiled failed (error ", int(r),
              ") for a ", rows, " x ", cols, " operand of the TMA wgmma kernel; unset FASTNN_WGMMA "
              "to use the other kernels.");
  return map;
}

// The TMA kernel on problem p: A [M][K] (K-major) or [K][M] (A_MN), B [N][K] or [K][N] (B_MN).
template <typename T, bool A_MN, bool B_MN>
void run_wgmma_tma(const GemmProblem& p) {
  namespace sm90 = gemm::sm90;
  auto kernel = sm90::wgmma_gemm_tma_kernel<T, A_MN, B_MN>;
  static std::atomic<uint64_t> done{0};
  allow_smem(kernel, sm90::tma::SMEM_BYTES, p.like->device().index(), done);
#if !defined(FASTNN_CUDA_EMULATOR)  // (the emulator has no register file)
  static const int regs = [&] {
    cudaFuncAttributes attr{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(kernel)));
    return attr.numRegs;
  }();
  TORCH_CHECK(regs >= sm90::tma::LAUNCH_REGS, "fastnn::linear: the TMA wgmma kernel was compiled "
              "with ", regs, " registers per thread; its setmaxnreg split needs ",
              sm90::tma::LAUNCH_REGS, " (was the extension built with -maxrregcount?). Unset "
              "FASTNN_WGMMA to use the other kernels.");
#endif
  constexpr int BK = sm90::BK_BYTES / static_cast<int>(sizeof(T));  // one 128-byte row of K
  const CUtensorMap map_a = A_MN ? tensor_map<T>(p.A, p.K, p.M, 64, 64)
                                 : tensor_map<T>(p.A, p.M, p.K, BK, sm90::BM);
  const CUtensorMap map_b = B_MN ? tensor_map<T>(p.B, p.K, p.N, 64, 64)
                                 : tensor_map<T>(p.B, p.N, p.K, BK, sm90::BN);
  const dim3 grid(static_cast<unsigned>(ceil_div(p.M, sm90::BM)),
                  static_cast<unsigned>(ceil_div(p.N, sm90::BN)));
  kernel<<<grid, sm90::tma::THREADS, sm90::tma::SMEM_BYTES, p.stream>>>(
      map_a, map_b, static_cast<T*>(p.C), static_cast<const T*>(p.bias), p.M, p.N, p.K);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
#endif

// p on a wgmma kernel as `c` says (c.take, not c.copies).
template <typename T>
void run_wgmma(const GemmProblem& p, const WgmmaChoice& c) {
#if defined(FASTNN_SM90A) && CUDART_VERSION >= 12050
  if (c.tma) {
    if constexpr (sizeof(T) == 2) {
      if (p.layout == Layout::NN) return run_wgmma_tma<T, false, true>(p);
      if (p.layout == Layout::TN) return run_wgmma_tma<T, true, true>(p);
    }
    return run_wgmma_tma<T, false, false>(p);
  }
#else
  (void)c;
#endif
  run_wgmma<T>(p);
}

template <typename T>
void run_tensor_core(const GemmProblem& p) {
  constexpr int BK = sizeof(T) == 2 ? 32 : 16;
  const bool async = async_ok(p, sizeof(T));
  if (tiles_of(p, 128, 128) >= 16 && async)
    run_wmma<T, 128, 128, BK, 64, 32, 4, true>(p);
  else if (async)
    run_wmma<T, 64, 64, BK, 32, 32, 4, true>(p);
  else
    run_wmma<T, 64, 64, BK, 32, 32, 2, false>(p);
}

// C[M,N] = A . B (+ bias) for the tensor dtype `dtype`.
void run_gemm(at::ScalarType dtype, const GemmProblem& p) {
  const WgmmaChoice c = wgmma_choice(dtype, p);
  if (c.take && !c.copies) {
    if (dtype == at::kHalf) run_wgmma<__half>(p, c);
    else if (dtype == at::kBFloat16) run_wgmma<__nv_bfloat16>(p, c);
    else run_wgmma<float>(p, c);  // TF32
    return;
  }
  switch (dtype) {
    case at::kFloat:
      if (at::globalContext().allowTF32CuBLAS()) {
        run_tensor_core<float>(p);  // TF32 tensor cores, like native matmul
      } else {
        if (tiles_of(p, 128, 128) >= 16) run_simt<float, 128, 128, 8, 8, 8, 2>(p);
        else run_simt_async<float, 32, 32, 16, 4, 4, 4>(p);
      }
      break;
    case at::kDouble:
      if (tiles_of(p, 64, 64) >= 32) run_simt<double, 64, 64, 8, 4, 4, 1>(p);
      else run_simt_async<double, 32, 32, 16, 4, 4, 4>(p);
      break;
    case at::kHalf:
      run_tensor_core<__half>(p);
      break;
    case at::kBFloat16:
      run_tensor_core<__nv_bfloat16>(p);
      break;
    default:
      TORCH_CHECK(false, "fastnn::linear: unsupported dtype ", dtype);
  }
}

// grad_bias[n] = sum_m dy[m][n]  (fixed-size row chunks, fixed-order sums).
template <typename T, typename Acc>
void colsum(const T* dy, T* out, int64_t M, int64_t N, const at::Tensor& like,
            cudaStream_t stream) {
  const int64_t rpc = std::max<int64_t>(1024, ceil_div(M, 65535));
  const int64_t chunks = std::max<int64_t>(1, ceil_div(M, rpc));
  const dim3 block(32, 8);
  const int64_t col_blocks = ceil_div(N, 32);
  TORCH_CHECK(col_blocks <= INT_MAX, "fastnn::linear_backward: too many output features.");
  if (chunks == 1) {
    gemm::colsum_kernel<T, T, Acc><<<dim3(static_cast<unsigned>(col_blocks), 1), block, 0, stream>>>(
        dy, out, M, N, std::max<int64_t>(M, 1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  at::Tensor part = at::empty({chunks, N}, like.options().dtype(AccScalar<T>::value));
  Acc* pp = part.data_ptr<Acc>();
  gemm::colsum_kernel<T, Acc, Acc>
      <<<dim3(static_cast<unsigned>(col_blocks), static_cast<unsigned>(chunks)), block, 0, stream>>>(
          dy, pp, M, N, rpc);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  gemm::colsum_kernel<Acc, T, Acc><<<dim3(static_cast<unsigned>(col_blocks), 1), block, 0, stream>>>(
      pp, out, chunks, N, chunks);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_linear_operands(const char* op, const at::Tensor& input, const at::Tensor& weight) {
  check_floating(op, "input", input);
  check_floating(op, "weight", weight);
  check_same_dtype(op, "weight", weight, "input", input);
  check_same_device(op, "weight", weight, "input", input);
  TORCH_CHECK(input.is_cuda(), "fastnn::", op, ": expected CUDA tensors, got `input` on ",
              input.device(), ".");
  TORCH_CHECK(input.dim() >= 1, "fastnn::", op,
              ": `input` must have at least 1 dimension (..., in_features), got a 0-d tensor.");
  check_dim(op, "weight", weight, 2);
  TORCH_CHECK(input.size(-1) == weight.size(1), "fastnn::", op, ": `input` has shape ",
              input.sizes(), " (", input.size(-1), " features in its last dim) but `weight` has shape ",
              weight.sizes(), " (expects ", weight.size(1),
              " input features); the last dim of `input` must equal weight.size(1).");
}

int64_t leading_rows(const at::Tensor& t) {
  int64_t m = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) m *= t.size(d);
  return m;
}

template <typename F>
void dispatch_cuda_type(at::ScalarType dt, F&& f) {
  switch (dt) {
    case at::kFloat: f(float{}, float{}); break;
    case at::kDouble: f(double{}, double{}); break;
    case at::kHalf: f(__half{}, float{}); break;
    case at::kBFloat16: f(__nv_bfloat16{}, float{}); break;
    default: TORCH_CHECK(false, "fastnn::linear: unsupported dtype ", dt);
  }
}

// A new [cols][rows] tensor holding m^T, for a contiguous 2-D m (transpose_kernel:
// a tiled copy that reads and writes whole rows, where ATen's strided copy reads or
// writes one element per row).
at::Tensor transposed(const at::Tensor& m, int sms, cudaStream_t stream) {
  const int64_t rows = m.size(0), cols = m.size(1);
  at::Tensor out = at::empty({cols, rows}, m.options());
  const int64_t tiles = ceil_div(rows, gemm::kTransposeTile) * ceil_div(cols, gemm::kTransposeTile);
  if (tiles == 0) return out;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(tiles, int64_t{sms} * 16));
  dispatch_cuda_type(m.scalar_type(), [&](auto t, auto) {
    using T = decltype(t);
    gemm::transpose_kernel<T><<<grid, gemm::kTransposeThreads, 0, stream>>>(
        static_cast<const T*>(m.data_ptr()), static_cast<T*>(out.data_ptr()), rows, cols);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

at::Tensor linear_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias) {
  const char* op = "linear_forward";
  check_linear_operands(op, input, weight);
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    check_floating(op, "bias", *bias);
    check_same_dtype(op, "bias", *bias, "input", input);
    check_same_device(op, "bias", *bias, "input", input);
    check_dim(op, "bias", *bias, 1);
    TORCH_CHECK(bias->size(0) == weight.size(0), "fastnn::", op, ": `bias` has ", bias->size(0),
                " elements but `weight` has shape ", weight.sizes(), " (", weight.size(0),
                " output features); they must match.");
  }
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();
  at::Tensor b;
  if (has_bias) b = bias->contiguous();
  const int64_t K = w.size(1), N = w.size(0), M = leading_rows(x);
  std::vector<int64_t> out_sizes(x.sizes().begin(), x.sizes().end());
  out_sizes.back() = N;
  at::Tensor out = at::empty(out_sizes, x.options());
  if (M == 0 || N == 0) return out;
  GemmProblem p{Layout::NT, x.data_ptr(), w.data_ptr(), out.data_ptr(),
                has_bias ? b.data_ptr() : nullptr, M, N, K, &x,
                sm_count(x.device().index()), c10::cuda::getCurrentCUDAStream()};
  run_gemm(x.scalar_type(), p);
  return out;
}

std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>>
linear_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                     const at::Tensor& weight, std::array<bool, 3> output_mask) {
  const char* op = "linear_backward";
  check_linear_operands(op, input, weight);
  check_floating(op, "grad_output", grad_output);
  check_same_dtype(op, "grad_output", grad_output, "input", input);
  check_same_device(op, "grad_output", grad_output, "input", input);
  std::vector<int64_t> y_sizes(input.sizes().begin(), input.sizes().end());
  y_sizes.back() = weight.size(0);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(y_sizes), "fastnn::", op,
              ": `grad_output` has shape ", grad_output.sizes(), " but the forward output has shape ",
              at::IntArrayRef(y_sizes), " (input ", input.sizes(), ", weight ", weight.sizes(),
              "); they must match.");
  c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // Each operand is read only by the products that use it (x by dW, W by dx); otherwise
  // just its shape and options are (it may be a stand-in with no data of its own).
  const at::Tensor dy = grad_output.contiguous();
  const at::Tensor x = output_mask[1] ? input.contiguous() : input;
  const at::Tensor w = output_mask[0] ? weight.contiguous() : weight;
  const int64_t K = w.size(1), N = w.size(0), M = leading_rows(x);
  const int sms = sm_count(x.device().index());

  std::optional<at::Tensor> grad_input, grad_weight, grad_bias;
  if (output_mask[0]) {
    at::Tensor gi = at::empty(input.sizes(), x.options());
    if (M > 0 && K > 0) {
      // dx[M,K] = dy[M,N] . W[N,K]
      GemmProblem p{Layout::NN, dy.data_ptr(), w.data_ptr(), gi.data_ptr(), nullptr,
                    M, K, N, &x, sms, stream};
      at::Tensor wt;  // W^T [K][N], K-contiguous for the wgmma kernel ("NT")
      if (wgmma_choice(x.scalar_type(), p).copies) {
        wt = transposed(w, sms, stream);
        p.layout = Layout::NT;
        p.B = wt.data_ptr();
      }
      run_gemm(x.scalar_type(), p);
    }
    grad_input = gi;
  }
  if (output_mask[1]) {
    at::Tensor gw = at::empty({N, K}, x.options());
    if (N > 0 && K > 0) {
      // dW[N,K] = dy[M,N]^T . x[M,K]
      GemmProblem p{Layout::TN, dy.data_ptr(), x.data_ptr(), gw.data_ptr(), nullptr,
                    N, K, M, &x, sms, stream};
      at::Tensor dyt, xt;  // dy^T [N][M], x^T [K][M], M-contiguous for the wgmma kernel
      if (wgmma_choice(x.scalar_type(), p).copies) {
        dyt = transposed(dy.reshape({M, N}), sms, stream);
        xt = transposed(x.reshape({M, K}), sms, stream);
        p.layout = Layout::NT;
        p.A = dyt.data_ptr();
        p.B = xt.data_ptr();
      }
      run_gemm(x.scalar_type(), p);
    }
    grad_weight = gw;
  }
  if (output_mask[2]) {
    at::Tensor gb = at::empty({N}, x.options());
    if (N > 0) {
      dispatch_cuda_type(x.scalar_type(), [&](auto t, auto acc) {
        using T = decltype(t);
        using Acc = decltype(acc);
        colsum<T, Acc>(static_cast<const T*>(dy.data_ptr()), static_cast<T*>(gb.data_ptr()), M, N,
                       x, stream);
      });
    }
    grad_bias = gb;
  }
  return std::make_tuple(grad_input, grad_weight, grad_bias);
}

TORCH_LIBRARY_IMPL(fastnn, CUDA, m) {
  m.impl("linear_forward", &linear_forward_cuda);
  m.impl("linear_backward", &linear_backward_cuda);
}

}  // namespace fastnn
