// bnlab's CPU kernels: batch norm, optionally fused with a residual add and an activation.
//
// Built by bnlab/kernels/cpu/build.py with the system C++ compiler (-O3 -march=native -fopenmp) and called
// through ctypes, so it needs neither PyTorch's headers nor a Python extension toolchain.
//
// Two layouts, both as raw contiguous buffers:
//   NCS: x[(n*C + c)*S + s]  (NCHW contiguous and (N, C, L) contiguous: S = H*W or L)
//   CL : x[r*C + c], r < R = N*S  (channels_last, channels_last_3d, and (N, C), where S = 1)
// Element types: float (code 0), double (1), bfloat16 (2), float16 (3). Statistics, parameters and their
// gradients are float for every input narrower than double, double for double.
//
// Why it is faster than ATen on CPU:
//   - statistics are taken in ONE read of x: each chunk (at most CHUNK values, from L1) gets its own mean and
//     sum of squared deviations, merged into float64 accumulators with Chan's formula (never E[x²] − E[x]²);
//   - NCS works one channel at a time, so the channel's values are still in L2 when the normalizing pass
//     (forward) or the dx pass (backward) reads them again: 1 read + 1 write from memory where ATen makes four
//     passes forward and five backward;
//   - the residual add and the activation ride along in the same passes;
//   - reductions and channels-last loops are written with vector types (GCC/Clang vector extensions), so partial
//     sums and per-channel constants live in SIMD registers without -ffast-math.
// Results are deterministic for a given thread count: work is split statically and partial results are merged
// in thread order.
#include <omp.h>
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <algorithm>
#include <vector>

namespace {

constexpr int64_t CHUNK = 2048;  // values per statistics chunk: 8 KiB of float, L1-resident for a second look

enum Act : int { IDENTITY = 0, RELU = 1, LEAKY_RELU = 2, SILU = 3, ELU = 4 };

// ------------------------------------------------------------------------------------------ element types
struct bf16 { uint16_t bits; };

template <class T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

inline float load(float v) { return v; }
inline double load(double v) { return v; }
inline float load(bf16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline float load(_Float16 v) { return static_cast<float>(v); }

template <class T> inline T store(typename Acc<T>::type v);
template <> inline float store<float>(float v) { return v; }
template <> inline double store<double>(double v) { return v; }
template <> inline bf16 store<bf16>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  // Round to nearest even; a NaN keeps a quiet-NaN pattern instead of rounding into infinity.
  uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return bf16{static_cast<uint16_t>(v != v ? 0x7FC0u : rounded)};
}
template <> inline _Float16 store<_Float16>(float v) { return static_cast<_Float16>(v); }

// ------------------------------------------------------------------------------------------ activations
template <int act, class A> inline A activate(A z, A slope) {
  switch (act) {
    case RELU: return z > A(0) ? z : A(0);
    case LEAKY_RELU: return z > A(0) ? z : z * slope;
    case SILU: return z / (A(1) + std::exp(-z));
    case ELU: return z > A(0) ? z : std::expm1(z);
    default: return z;
  }
}

// d act / d z, from the pre-activation z.
template <int act, class A> inline A act_grad_from_z(A z, A slope) {
  switch (act) {
    case RELU: return z > A(0) ? A(1) : A(0);
    case LEAKY_RELU: return z > A(0) ? A(1) : slope;
    case SILU: {
      A s = A(1) / (A(1) + std::exp(-z));
      return s * (A(1) + z * (A(1) - s));
    }
    case ELU: return z > A(0) ? A(1) : std::exp(z);
    default: return A(1);
  }
}

// For save="output": the pre-activation z and d act / d z recovered from the output y of an invertible
// activation (identity, leaky_relu with slope > 0, elu with α = 1).
template <int act, class A> inline void invert(A y, A inv_slope, A slope, A& z, A& grad) {
  if (act == LEAKY_RELU) {
    bool pos = y > A(0);
    z = pos ? y : y * inv_slope;
    grad = pos ? A(1) : slope;
  } else if (act == ELU) {
    bool pos = y > A(0);
    z = pos ? y : std::log1p(y);
    grad = pos ? A(1) : y + A(1);
  } else {
    z = y;
    grad = A(1);
  }
}

// ------------------------------------------------------------------------------------------ SIMD vectors
// 64-byte vectors of the accumulation type (GCC/Clang vector extensions: one AVX-512 register, or two AVX2
// ones, or whatever the target has). Accumulating in named vector variables keeps partial sums in registers,
// and the channels-last loops keep per-channel constants in registers across rows.
template <class A> struct Vec {
  static constexpr int W = 64 / sizeof(A);
  typedef A V __attribute__((vector_size(64)));
};

// The 16-bit types convert a whole vector at a time, written with whole-vector operations: a loop over the lanes
// calling load/store compiled to one lane at a time and made bfloat16 layers run at half PyTorch's speed.
typedef uint16_t U16x16 __attribute__((vector_size(32)));
typedef uint32_t U32x16 __attribute__((vector_size(64)));
typedef _Float16 F16x16 __attribute__((vector_size(32)));

template <class T, class A> inline typename Vec<A>::V vload(const T* p) {
  typename Vec<A>::V v;
  if constexpr (std::is_same_v<T, A>) {
    std::memcpy(&v, p, sizeof v);
  } else if constexpr (std::is_same_v<T, bf16>) {
    static_assert(Vec<A>::W == 16);
    U16x16 h;
    std::memcpy(&h, p, sizeof h);
    const U32x16 u = __builtin_convertvector(h, U32x16) << 16;  // bfloat16 is the top half of a float
    std::memcpy(&v, &u, sizeof v);
  } else if constexpr (std::is_same_v<T, _Float16>) {
    F16x16 h;
    std::memcpy(&h, p, sizeof h);
    v = __builtin_convertvector(h, typename Vec<A>::V);
  } else {
    for (int l = 0; l < Vec<A>::W; ++l) v[l] = load(p[l]);
  }
  return v;
}

template <class T, class A> inline void vstore(T* p, typename Vec<A>::V v) {
  if constexpr (std::is_same_v<T, A>) {
    std::memcpy(p, &v, sizeof v);
  } else if constexpr (std::is_same_v<T, bf16>) {
#if defined(__AVX512BF16__)
    // One instruction (VCVTNEPS2BF16) where the CPU has it: round to nearest even, as below, in a third of the
    // instructions, which is what a bfloat16 pass is bound by. It differs from the portable code only on NaN
    // payloads (a quiet NaN either way) and on float32 denormals (|v| < 1.2e-38), which it flushes to ±0.
    static_assert(sizeof(v) == sizeof(__m512));
    __m512 f;
    std::memcpy(&f, &v, sizeof f);
    const __m256bh h = _mm512_cvtneps_pbh(f);
    std::memcpy(p, &h, sizeof h);
#else
    // store<bf16>, lane-wise: round to nearest even, a NaN becomes the quiet NaN 0x7FC0.
    U32x16 u;
    std::memcpy(&u, &v, sizeof u);
    U32x16 rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    const U32x16 nan = (U32x16)((u & 0x7FFFFFFFu) > 0x7F800000u);  // all ones where v is a NaN
    rounded = (rounded & ~nan) | (0x7FC0u & nan);
    const U16x16 h = __builtin_convertvector(rounded, U16x16);
    std::memcpy(p, &h, sizeof h);
#endif
  } else if constexpr (std::is_same_v<T, _Float16>) {
    const F16x16 h = __builtin_convertvector(v, F16x16);
    std::memcpy(p, &h, sizeof h);
  } else {
    for (int l = 0; l < Vec<A>::W; ++l) p[l] = store<T>(v[l]);
  }
}

template <class A> inline typename Vec<A>::V vconst(const A* p) {
  typename Vec<A>::V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <class A> inline A vsum(typename Vec<A>::V v) {
  A t = 0;
  for (int l = 0; l < Vec<A>::W; ++l) t += v[l];
  return t;
}

template <int ACT, class V, class A> inline V vactivate(V z, A slope) {
  const V zero = {};
  if constexpr (ACT == IDENTITY) {
    return z;
  } else if constexpr (ACT == RELU) {
    return z > zero ? z : zero;
  } else if constexpr (ACT == LEAKY_RELU) {
    return z > zero ? z : z * slope;
  } else {
    for (int l = 0; l < int(sizeof(V) / sizeof(A)); ++l) z[l] = activate<ACT>(z[l], slope);
    return z;
  }
}

// The vector twin of dz_xhat below (same formulas, lane by lane).
template <int ACT, bool FO, class V, class A>
inline void vdz_xhat(V g, V s, V r, V mean, V invstd, V gamma, V beta, V inv_gamma, A slope, A inv_slope, V& dz,
                     V& xhat) {
  const V zero = {}, one = zero + A(1);
  if constexpr (FO) {
    V z, grad;
    if constexpr (ACT == LEAKY_RELU) {
      z = s > zero ? s : s * inv_slope;
      grad = s > zero ? one : zero + slope;
    } else if constexpr (ACT == ELU) {
      z = s;
      for (int l = 0; l < int(sizeof(V) / sizeof(A)); ++l) z[l] = s[l] > A(0) ? s[l] : std::log1p(s[l]);
      grad = s > zero ? one : s + A(1);
    } else {
      z = s;
      grad = one;
    }
    dz = g * grad;
    xhat = (z - beta - r) * inv_gamma;
  } else {
    xhat = (s - mean) * invstd;
    if constexpr (ACT == IDENTITY) {
      dz = g;
    } else if constexpr (ACT == RELU) {
      V z = xhat * gamma + beta + r;
      dz = z > zero ? g : zero;
    } else if constexpr (ACT == LEAKY_RELU) {
      V z = xhat * gamma + beta + r;
      dz = z > zero ? g : g * slope;
    } else {
      V z = xhat * gamma + beta + r;
      dz = g;
      for (int l = 0; l < int(sizeof(V) / sizeof(A)); ++l) dz[l] = g[l] * act_grad_from_z<ACT>(z[l], slope);
    }
  }
}

// ------------------------------------------------------------------------------------------ statistics
// Running (count, mean, M2) in float64, merged with Chan, Golub and LeVeque's pairwise update.
struct Moments {
  double count = 0, mean = 0, m2 = 0;
  void merge(double n, double m, double s) {
    if (n == 0) return;
    double total = count + n, delta = m - mean;
    mean += delta * (n / total);
    m2 += s + delta * delta * (count * n / total);
    count = total;
  }
};

// Adds a run of values into the accumulators: d = x − m into (v0, t0) and d² into (v1, t1), the tail in the
// scalars. Inside, two independent pairs of vector sums hide the latency of the additions (four pairs, in arrays,
// made the short runs of 8×2048×7×7 1.4-1.7x slower: benchmarks.ab_kernels, one thread).
template <class T, class A>
inline void run_sums(const T* p, int64_t len, A m, typename Vec<A>::V& v0, typename Vec<A>::V& v1, A& t0, A& t1) {
  using V = typename Vec<A>::V;
  constexpr int W = Vec<A>::W;
  int64_t i = 0;
  V a0 = {}, a1 = {}, q0 = {}, q1 = {};
  for (; i + 2 * W <= len; i += 2 * W) {
    const V d0 = vload<T, A>(p + i) - m, d1 = vload<T, A>(p + i + W) - m;
    a0 += d0;
    a1 += d1;
    q0 += d0 * d0;
    q1 += d1 * d1;
  }
  if (i + W <= len) {
    const V d = vload<T, A>(p + i) - m;
    a0 += d;
    q0 += d * d;
    i += W;
  }
  v0 += a0 + a1;
  v1 += q0 + q1;
  for (; i < len; ++i) {
    A d = load(p[i]) - m;
    t0 += d;
    t1 += d * d;
  }
}

// Count, mean and M2 of the values x[(n*C + c)*S + s], n in [n0, n1), s in [s0, s0 + len), in float64: the
// fallback of the float sums below when they overflow. Two looks (mean, then deviations), both from L1.
template <class T>
Moments wide_moments(const T* x, int64_t n0, int64_t n1, int64_t C, int64_t S, int64_t c, int64_t s0, int64_t len) {
  double sum = 0, dev = 0, sq = 0;
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t i = 0; i < len; ++i) sum += double(load(x[(n * C + c) * S + s0 + i]));
  const double count = double(len * (n1 - n0)), m = sum / count;
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t i = 0; i < len; ++i) {
      const double d = double(load(x[(n * C + c) * S + s0 + i])) - m;
      dev += d;
      sq += d * d;
    }
  Moments mo;
  mo.merge(count, m + dev / count, sq - dev * dev / count);
  return mo;
}

// A channel's runs in NCS are S values long, C·S apart: a run of a few cache lines ends before the hardware
// prefetcher has picked it up, so each line is a miss. The statistics pass asks for the next run's lines while
// it sums this one.
constexpr int64_t SHORT_RUN_BYTES = 2048;
template <class T> inline bool runs_are_short(int64_t S) { return S * int64_t(sizeof(T)) <= SHORT_RUN_BYTES; }
template <class T> inline void prefetch_run(const T* p, int64_t len) {
  const char* b = reinterpret_cast<const char*>(p);
  for (int64_t off = 0; off < len * int64_t(sizeof(T)); off += 64) __builtin_prefetch(b + off);
}

// Moments of channel c of an NCS tensor. Its N runs of S values are taken in groups of about CHUNK values. Each
// group is looked at once, summing d = x − K and d² with the shift K = the previous group's mean (0 for the
// first): the group's mean is K + Σd/n and its M2 = Σd² − (Σd)²/n. That difference cancels as the shift moves
// away from the mean (relative error about ε·(1 + δ²/σ²), δ = mean − K), so a group whose shift is off by more
// than σ/√3 ((Σd)² > n·Σd²/4, i.e. δ² > σ²/3; always the first group of a channel whose mean is not near 0) is
// looked at a second time, from L1, with deviations from K + Σd/n, as every group was before. Accepted groups
// lose at most a third more than that; and as K is a mean of the same channel, δ² is bounded by a few times the
// channel's own variance, so even a jump in the mean between samples costs the channel's M2 only ~ε relative.
// One look instead of two: training forward 1.20-1.35x (bfloat16), 1.0-1.25x (float32), one thread,
// benchmarks.ab_kernels: the second look, from L1, cost as much as the first from memory.
template <class T> Moments channel_moments_ncs(const T* x, int64_t N, int64_t C, int64_t S, int64_t c) {
  using A = typename Acc<T>::type;
  using V = typename Vec<A>::V;
  Moments mo;
  A shift = 0;
  const int64_t runs_per_group = S >= CHUNK ? 1 : CHUNK / S;
  const bool short_runs = runs_are_short<T>(S);
  for (int64_t n0 = 0; n0 < N; n0 += runs_per_group) {
    const int64_t n1 = n0 + runs_per_group < N ? n0 + runs_per_group : N;
    for (int64_t s0 = 0; s0 < S; s0 += CHUNK) {
      const int64_t len = S - s0 < CHUNK ? S - s0 : CHUNK;
      const double count = double(len * (n1 - n0));
      V v0 = {}, v1 = {};
      A t0 = 0, t1 = 0;
      for (int64_t n = n0; n < n1; ++n) {
        const T* run = x + (n * C + c) * S + s0;
        if (short_runs && n + 1 < N) prefetch_run(run + C * S, len);
        run_sums(run, len, shift, v0, v1, t0, t1);
      }
      double dsum = double(vsum<A>(v0) + t0), dsq = double(vsum<A>(v1) + t1);
      A m = shift;
      if (std::isfinite(dsq) && std::isfinite(dsum) && 4 * dsum * dsum > count * dsq) {
        // The shift is more than σ/√3 from the group's mean: deviations from the mean just found instead. Their
        // sum corrects that mean to well below the input type's resolution (which matters when the mean dwarfs
        // the spread), their squares give M2.
        m = A(double(shift) + dsum / count);
        v0 = v1 = V{};
        t0 = t1 = 0;
        for (int64_t n = n0; n < n1; ++n) run_sums(x + (n * C + c) * S + s0, len, m, v0, v1, t0, t1);
        dsum = double(vsum<A>(v0) + t0);
        dsq = double(vsum<A>(v1) + t1);
      }
      if (std::isfinite(dsq) && std::isfinite(dsum)) {
        const double mean = double(m) + dsum / count;
        mo.merge(count, mean, dsq - dsum * dsum / count);
        shift = A(mean);
      } else {
        // The float sums overflowed (|x| around 1e19 and up: d² passes float's 3.4e38) or x holds inf/NaN:
        // this group again in float64, which holds the square of any finite float. One test per group keeps the
        // normal path as it was; non-finite input gives non-finite moments either way, as it should.
        const Moments g = wide_moments(x, n0, n1, C, S, c, s0, len);
        mo.merge(g.count, g.mean, g.m2);
      }
    }
  }
  return mo;
}

// Rows [r0, r1) of a channels-last tensor: per-channel count, mean and M2 (into mean/m2, (C,) float64).
// One streaming pass, row after row: sums of x − K and (x − K)² with a per-channel shift K, the mean of the first
// few rows, so K is within a fraction of a standard deviation of the mean and M2 = Σ(x−K)² − (Σ(x−K))²/n does not
// cancel. The sums are kept in float for blocks of at most BLOCK_ROWS rows and carried in float64 across blocks.
constexpr int64_t BLOCK_ROWS = 256, SHIFT_ROWS = 16;

template <class T>
void rows_moments_cl(const T* x, int64_t C, int64_t r0, int64_t r1, double* count, double* mean, double* m2) {
  using A = typename Acc<T>::type;
  using V = typename Vec<A>::V;
  constexpr int W = Vec<A>::W;
  const int64_t Cv = C / W * W, n = r1 - r0;
  *count = double(n);
  if (n == 0) return;
  std::vector<A> shift(C, A(0)), b1(C), b2(C);
  std::vector<double> s1(C, 0.0), s2(C, 0.0);
  const int64_t head = n < SHIFT_ROWS ? n : SHIFT_ROWS;
  for (int64_t r = r0; r < r0 + head; ++r)
    for (int64_t c = 0; c < C; ++c) shift[c] += load(x[r * C + c]);
  for (int64_t c = 0; c < C; ++c) shift[c] /= A(head);
  A* k = shift.data();
  for (int64_t c = 0; c < C; ++c) {
    if (!std::isfinite(shift[c])) {  // the float sum of values near float's largest overflowed: again in float64
      double first = 0;
      for (int64_t r = r0; r < r0 + head; ++r) first += double(load(x[r * C + c]));
      shift[c] = A(first / double(head));
    }
  }
  A *p1 = b1.data(), *p2 = b2.data();
  for (int64_t q0 = r0; q0 < r1; q0 += BLOCK_ROWS) {
    const int64_t q1 = q0 + BLOCK_ROWS < r1 ? q0 + BLOCK_ROWS : r1;
    std::fill(b1.begin(), b1.end(), A(0));
    std::fill(b2.begin(), b2.end(), A(0));
    for (int64_t r = q0; r < q1; ++r) {
      const T* row = x + r * C;
      for (int64_t c = 0; c < Cv; c += W) {
        V d = vload<T, A>(row + c) - vconst(k + c);
        V a1 = vconst(p1 + c) + d, a2 = vconst(p2 + c) + d * d;
        std::memcpy(p1 + c, &a1, sizeof a1);
        std::memcpy(p2 + c, &a2, sizeof a2);
      }
      for (int64_t c = Cv; c < C; ++c) {
        A d = load(row[c]) - k[c];
        p1[c] += d;
        p2[c] += d * d;
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      if (std::isfinite(p2[c]) && std::isfinite(p1[c])) {
        s1[c] += double(p1[c]);
        s2[c] += double(p2[c]);
        continue;
      }
      // The block's float sums overflowed (|x − K| around 1e19 and up) or x holds inf/NaN: this channel's
      // block again in float64, which holds the square of any finite float. The normal path pays one test.
      double w1 = 0, w2 = 0;
      for (int64_t r = q0; r < q1; ++r) {
        const double d = double(load(x[r * C + c])) - double(k[c]);
        w1 += d;
        w2 += d * d;
      }
      s1[c] += w1;
      s2[c] += w2;
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    const double d = s1[c] / double(n);
    mean[c] = double(k[c]) + d;
    m2[c] = s2[c] - s1[c] * d;
    if (m2[c] < 0) m2[c] = 0;  // rounding can leave −0.0…; a variance is never negative
  }
}

// Static split of [0, total) among nt threads: thread t gets [begin, end).
inline void split(int64_t total, int nt, int t, int64_t& begin, int64_t& end) {
  int64_t q = total / nt, r = total % nt;
  begin = t * q + (t < r ? t : r);
  end = begin + q + (t < r ? 1 : 0);
}

// The second pass of a channels-last kernel (normalize, or dx) walks a thread's rows back to front, a block of
// rows at a time (each block front to back, for the prefetcher): the rows the first pass read last are still in
// L2, so its last ~2 MiB per core come from there instead of memory. Elementwise passes give the same values in
// any order. fn(q0, q1) handles rows [q0, q1).
constexpr int64_t REVISIT_BLOCK_BYTES = 32 << 10;

template <class F> inline void rows_back_to_front(int64_t r0, int64_t r1, int64_t row_bytes, F fn) {
  const int64_t block = std::max<int64_t>(1, REVISIT_BLOCK_BYTES / std::max<int64_t>(1, row_bytes));
  for (int64_t q1 = r1; q1 > r0; q1 -= block) fn(std::max(r0, q1 - block), q1);
}

template <class T, class A>
void finish_stats(const Moments& mo, double eps, A* mean_out, A* invstd_out, A* var_out, int64_t c) {
  double var = mo.m2 / mo.count;
  mean_out[c] = A(mo.mean);
  var_out[c] = A(var);
  invstd_out[c] = A(1.0 / std::sqrt(var + eps));
}

// ------------------------------------------------------------------------------------------ elementwise
// y = act(x·scale + shift (+ r)) over a contiguous run sharing one channel. Returns the smallest output for ELU
// (save="output" must know whether an output came near ELU's saturation at −1), +inf for the other activations.
template <class T, int ACT, bool RES, class A>
inline A affine_act_run(const T* x, const T* r, T* y, int64_t len, A scale, A shift, A slope) {
  using V = typename Vec<A>::V;
  constexpr int W = Vec<A>::W;
  A lo = std::numeric_limits<A>::infinity();
  // The 16-bit types: whole vectors with the vector loads and stores, as the lane-by-lane loop below does not
  // vectorize for them (a bfloat16 NCHW forward or inference ran at 0.6-0.8x the explicit loop's speed). float and
  // double are left to the compiler, which vectorizes that loop with a masked tail (faster on short runs).
  const V vscale = V{} + scale, vshift = V{} + shift;
  int64_t i = 0;
  for (; !std::is_same_v<T, A> && i + W <= len; i += W) {
    V z = vload<T, A>(x + i) * vscale + vshift;
    if (RES) z += vload<T, A>(r + i);
    const V out = vactivate<ACT>(z, slope);
    if constexpr (ACT == ELU) {
      for (int l = 0; l < W; ++l) lo = out[l] < lo ? out[l] : lo;
    }
    vstore<T, A>(y + i, out);
  }
  for (; i < len; ++i) {
    A z = load(x[i]) * scale + shift;
    if (RES) z += load(r[i]);
    const A out = activate<ACT>(z, slope);
    if (ACT == ELU) lo = out < lo ? out : lo;
    y[i] = store<T>(out);
  }
  return lo;
}

// Rows [r0, r1) of a channels-last tensor: y = act(x·scale[c] + shift[c] (+ r)), row after row. (Walking down
// the rows W channels at a time would keep scale and shift in registers, but page-aligned x and y then alias
// in the store buffer every 4 KiB, which costs more than reloading the constants from L1.) Returns the smallest
// output for ELU, +inf otherwise, as affine_act_run.
template <class T, int ACT, bool RES, class A>
A affine_act_rows(const T* x, const T* res, T* y, int64_t C, int64_t r0, int64_t r1, const A* scale,
                  const A* shift, A slope) {
  using V = typename Vec<A>::V;
  constexpr int W = Vec<A>::W;
  const int64_t Cv = C / W * W;
  A lo = std::numeric_limits<A>::infinity();
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * C;
    T* yr = y + r * C;
    for (int64_t c = 0; c < Cv; c += W) {
      V z = vload<T, A>(xr + c) * vconst(scale + c) + vconst(shift + c);
      if (RES) z += vload<T, A>(res + r * C + c);
      const V out = vactivate<ACT>(z, slope);
      if constexpr (ACT == ELU) {
        for (int l = 0; l < W; ++l) lo = out[l] < lo ? out[l] : lo;
      }
      vstore<T, A>(yr + c, out);
    }
    for (int64_t c = Cv; c < C; ++c) {
      A z = load(xr[c]) * scale[c] + shift[c];
      if (RES) z += load(res[r * C + c]);
      const A out = activate<ACT>(z, slope);
      if (ACT == ELU) lo = out < lo ? out : lo;
      yr[c] = store<T>(out);
    }
  }
  return lo;
}

template <class A> inline A param(const A* p, int64_t c, A fallback) { return p ? p[c] : fallback; }

// ------------------------------------------------------------------------------------------ forward, train
template <class T, int ACT, bool RES>
void forward_train(const T* x, const T* res, T* y, const typename Acc<T>::type* w, const typename Acc<T>::type* b,
                   int64_t N, int64_t C, int64_t S, int layout, double eps, double slope_d,
                   typename Acc<T>::type* mean_out, typename Acc<T>::type* invstd_out,
                   typename Acc<T>::type* var_out, int nt, double* check_out) {
  using A = typename Acc<T>::type;
  const A slope = A(slope_d);
  double lo = std::numeric_limits<double>::infinity();
  if (check_out) {
    // What save="output" needs to know: channels whose γ is 0 (their output does not depend on x)...
    double zero_gamma = 0;
    for (int64_t c = 0; w && c < C; ++c) zero_gamma += w[c] == A(0) ? 1.0 : 0.0;
    check_out[1] = zero_gamma;
  }
  if (layout == 0) {
    // One channel at a time: statistics, then the normalizing pass while the channel is still in cache.
#pragma omp parallel for num_threads(nt) schedule(static) reduction(min : lo)
    for (int64_t c = 0; c < C; ++c) {
      Moments mo = channel_moments_ncs(x, N, C, S, c);
      finish_stats<T, A>(mo, eps, mean_out, invstd_out, var_out, c);
      A scale = param(w, c, A(1)) * invstd_out[c];
      A shift = param(b, c, A(0)) - mean_out[c] * scale;
      for (int64_t n = 0; n < N; ++n) {
        int64_t off = (n * C + c) * S;
        const double run = affine_act_run<T, ACT, RES, A>(x + off, RES ? res + off : nullptr, y + off, S, scale,
                                                          shift, slope);
        lo = run < lo ? run : lo;
      }
    }
    if (check_out) check_out[0] = lo;  // ... and the smallest ELU output (+inf for the other activations)
    return;
  }
  const int64_t R = N * S;
  std::vector<double> cnt(nt, 0.0), mean(size_t(nt) * C, 0.0), m2(size_t(nt) * C, 0.0);
  std::vector<A> scale(C), shift(C);
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num(), team = omp_get_num_threads();
    int64_t r0, r1;
    split(R, team, t, r0, r1);
    rows_moments_cl(x, C, r0, r1, &cnt[t], &mean[size_t(t) * C], &m2[size_t(t) * C]);
#pragma omp barrier
    // Each thread finishes a share of the channels (a serial loop over C here cost as much as a small layer's
    // whole pass), merging the threads' moments in thread order: the same rounding every run.
    int64_t c0, c1;
    split(C, team, t, c0, c1);
    for (int64_t c = c0; c < c1; ++c) {
      Moments mo;
      for (int u = 0; u < team; ++u) mo.merge(cnt[u], mean[size_t(u) * C + c], m2[size_t(u) * C + c]);
      finish_stats<T, A>(mo, eps, mean_out, invstd_out, var_out, c);
      scale[c] = param(w, c, A(1)) * invstd_out[c];
      shift[c] = param(b, c, A(0)) - mean_out[c] * scale[c];
    }
#pragma omp barrier
    double rows = std::numeric_limits<double>::infinity();
    rows_back_to_front(r0, r1, C * int64_t(sizeof(T)), [&](int64_t q0, int64_t q1) {
      const double block = affine_act_rows<T, ACT, RES, A>(x, res, y, C, q0, q1, scale.data(), shift.data(), slope);
      rows = block < rows ? block : rows;
    });
#pragma omp critical
    lo = rows < lo ? rows : lo;
  }
  if (check_out) check_out[0] = lo;
}

// ------------------------------------------------------------------------------------------ elementwise, whole tensor
// y = act(x·scale[c] + shift[c] (+ r)) over the whole tensor: the inference pass and the elemt phase.
template <class T, int ACT, bool RES, class A>
void affine_act(const T* x, const T* res, T* y, const A* scale, const A* shift, int64_t N, int64_t C, int64_t S,
                int layout, A slope, int nt) {
  if (layout == 0) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t nc = 0; nc < N * C; ++nc) {
      int64_t c = nc % C, off = nc * S;
      affine_act_run<T, ACT, RES, A>(x + off, RES ? res + off : nullptr, y + off, S, scale[c], shift[c], slope);
    }
    return;
  }
  const int64_t R = N * S;
#pragma omp parallel num_threads(nt)
  {
    int64_t r0, r1;
    split(R, omp_get_num_threads(), omp_get_thread_num(), r0, r1);
    affine_act_rows<T, ACT, RES, A>(x, res, y, C, r0, r1, scale, shift, slope);
  }
}

// ------------------------------------------------------------------------------------------ forward, eval
template <class T, int ACT, bool RES>
void forward_eval(const T* x, const T* res, T* y, const typename Acc<T>::type* rm, const typename Acc<T>::type* rv,
                  const typename Acc<T>::type* w, const typename Acc<T>::type* b, int64_t N, int64_t C, int64_t S,
                  int layout, double eps, double slope_d, int nt) {
  using A = typename Acc<T>::type;
  std::vector<A> scale(C), shift(C);
  for (int64_t c = 0; c < C; ++c) {
    A invstd = A(1.0 / std::sqrt(double(rv[c]) + eps));
    scale[c] = param(w, c, A(1)) * invstd;
    shift[c] = param(b, c, A(0)) - rm[c] * scale[c];
  }
  affine_act<T, ACT, RES, A>(x, res, y, scale.data(), shift.data(), N, C, S, layout, A(slope_d), nt);
}

// The elemt phase: y = act(γ·(x − μ)·invstd + β (+ r)) with given per-channel μ and invstd.
template <class T, int ACT, bool RES>
void elemt(const T* x, const T* res, T* y, const typename Acc<T>::type* mean, const typename Acc<T>::type* invstd,
           const typename Acc<T>::type* w, const typename Acc<T>::type* b, int64_t N, int64_t C, int64_t S,
           int layout, double slope_d, int nt) {
  using A = typename Acc<T>::type;
  std::vector<A> scale(C), shift(C);
  for (int64_t c = 0; c < C; ++c) {
    scale[c] = param(w, c, A(1)) * invstd[c];
    shift[c] = param(b, c, A(0)) - mean[c] * scale[c];
  }
  affine_act<T, ACT, RES, A>(x, res, y, scale.data(), shift.data(), N, C, S, layout, A(slope_d), nt);
}

// ------------------------------------------------------------------------------------------ statistics phase
// (count, mean, M2) per channel into (C,) outputs of the accumulation type. mask (may be null): N·S bytes, one per
// (n, s), nonzero where the value counts. Unmasked: the single-read moments of the training forward. Masked: two
// passes in float64 (the sum and count, then the squared deviations), a path for padded batches, not a fast one.
template <class T>
void stats(const T* x, const uint8_t* mask, int64_t N, int64_t C, int64_t S, int layout,
           typename Acc<T>::type* count_out, typename Acc<T>::type* mean_out, typename Acc<T>::type* m2_out, int nt) {
  using A = typename Acc<T>::type;
  auto emit = [&](int64_t c, double n, double mean, double m2) {
    count_out[c] = A(n);
    mean_out[c] = A(n > 0 ? mean : 0.0);
    m2_out[c] = A(n > 0 ? m2 : 0.0);
  };
  if (mask == nullptr && layout == 0) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      const Moments mo = channel_moments_ncs(x, N, C, S, c);
      emit(c, mo.count, mo.mean, mo.m2);
    }
    return;
  }
  if (mask == nullptr) {
    const int64_t R = N * S;
    std::vector<double> cnt(nt, 0.0), mean(size_t(nt) * C, 0.0), m2(size_t(nt) * C, 0.0);
#pragma omp parallel num_threads(nt)
    {
      int t = omp_get_thread_num();
      int64_t r0, r1;
      split(R, omp_get_num_threads(), t, r0, r1);
      rows_moments_cl(x, C, r0, r1, &cnt[t], &mean[size_t(t) * C], &m2[size_t(t) * C]);
    }
    for (int64_t c = 0; c < C; ++c) {
      Moments mo;  // threads merged in thread order: the same rounding every run
      for (int u = 0; u < nt; ++u) mo.merge(cnt[u], mean[size_t(u) * C + c], m2[size_t(u) * C + c]);
      emit(c, mo.count, mo.mean, mo.m2);
    }
    return;
  }
  double n = 0;
  for (int64_t i = 0; i < N * S; ++i) n += mask[i] ? 1.0 : 0.0;
  std::vector<double> sum(C, 0.0), sq(C, 0.0);
  if (layout == 0) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      double s1 = 0, s2 = 0;
      for (int64_t k = 0; k < N * S; ++k)
        if (mask[k]) s1 += double(load(x[((k / S) * C + c) * S + k % S]));
      const double mu = n > 0 ? s1 / n : 0.0;
      s1 = 0;
      for (int64_t k = 0; k < N * S; ++k)
        if (mask[k]) {
          const double d = double(load(x[((k / S) * C + c) * S + k % S])) - mu;
          s1 += d;
          s2 += d * d;
        }
      // The deviations' sum corrects μ's rounding, as in channel_moments_ncs.
      emit(c, n, mu + (n > 0 ? s1 / n : 0.0), s2 - (n > 0 ? s1 * s1 / n : 0.0));
    }
    return;
  }
  for (int64_t r = 0; r < N * S; ++r)
    if (mask[r])
      for (int64_t c = 0; c < C; ++c) sum[c] += double(load(x[r * C + c]));
  for (int64_t c = 0; c < C; ++c) sum[c] = n > 0 ? sum[c] / n : 0.0;  // now μ
  std::vector<double> dev(C, 0.0);
  for (int64_t r = 0; r < N * S; ++r)
    if (mask[r])
      for (int64_t c = 0; c < C; ++c) {
        const double d = double(load(x[r * C + c])) - sum[c];
        dev[c] += d;
        sq[c] += d * d;
      }
  for (int64_t c = 0; c < C; ++c)
    emit(c, n, sum[c] + (n > 0 ? dev[c] / n : 0.0), sq[c] - (n > 0 ? dev[c] * dev[c] / n : 0.0));
}

// ------------------------------------------------------------------------------------------ backward
// dz = ∂ℓ/∂z and x̂ at one element, where z = γx̂ + β (+ r) is the pre-activation. src is x (FO = false: x̂ from
// the saved statistics, z recomputed) or the output y (FO = true: z and act'(z) recovered by inversion).
template <int ACT, bool FO, class A>
inline void dz_xhat(A g, A s, A r, A mean, A invstd, A gamma, A beta, A inv_gamma, A slope, A inv_slope, A& dz,
                    A& xhat) {
  if (FO) {
    A z, grad;
    invert<ACT>(s, inv_slope, slope, z, grad);
    dz = g * grad;
    xhat = (z - beta - r) * inv_gamma;
  } else {
    xhat = (s - mean) * invstd;
    dz = ACT == IDENTITY ? g : g * act_grad_from_z<ACT>(xhat * gamma + beta + r, slope);
  }
}

// Per-channel constants of the backward pass, as arrays so the channels-last loops vectorize over c.
template <class A> struct BwdConstants {
  std::vector<A> mean, invstd, gamma, beta, inv_gamma;
  BwdConstants(const A* m, const A* is, const A* w, const A* b, int64_t C)
      : mean(m, m + C), invstd(is, is + C), gamma(C), beta(C), inv_gamma(C) {
    for (int64_t c = 0; c < C; ++c) {
      gamma[c] = param(w, c, A(1));
      beta[c] = param(b, c, A(0));
      inv_gamma[c] = A(1) / gamma[c];
    }
  }
};

// dz and x̂ at row offset o, channels [c, c + W) (vec) or channel c (one), in the channels-last layout: what both
// passes of the channels-last backward compute from dy, the saved tensor and the residual.
template <class T, int ACT, bool RES, bool FO, class A> struct RowGrad {
  using V = typename Vec<A>::V;
  const T *dy, *src, *res;
  const A *mean, *invstd, *gamma, *beta, *inv_gamma;
  A slope, inv_slope;
  inline void vec(int64_t o, int64_t c, V& dz, V& xh) const {
    vdz_xhat<ACT, FO>(vload<T, A>(dy + o + c), vload<T, A>(src + o + c), RES ? vload<T, A>(res + o + c) : V{},
                      vconst(mean + c), vconst(invstd + c), vconst(gamma + c), vconst(beta + c),
                      vconst(inv_gamma + c), slope, inv_slope, dz, xh);
  }
  inline void one(int64_t o, int64_t c, A& dz, A& xh) const {
    dz_xhat<ACT, FO>(load(dy[o + c]), load(src[o + c]), RES ? load(res[o + c]) : A(0), mean[c], invstd[c], gamma[c],
                     beta[c], inv_gamma[c], slope, inv_slope, dz, xh);
  }
};

// Σdz and Σdz·x̂ of a run of one channel: vector accumulators for the body, scalars for the tail.
template <class T, int ACT, bool RES, bool FO, class A>
inline void grad_run_sums(const T* g, const T* s, const T* r, int64_t len, A mean, A invstd, A gamma, A beta, A ig,
                          A slope, A inv_slope, typename Vec<A>::V& v1, typename Vec<A>::V& v2, A& t1, A& t2) {
  using V = typename Vec<A>::V;
  constexpr int W = Vec<A>::W;
  const V zero = {}, vm = zero + mean, vi = zero + invstd, vg = zero + gamma, vb = zero + beta, vig = zero + ig;
  int64_t i = 0;
  for (; i + W <= len; i += W) {
    V dz, xh;
    vdz_xhat<ACT, FO>(vload<T, A>(g + i), vload<T, A>(s + i), RES ? vload<T, A>(r + i) : zero, vm, vi, vg, vb, vig,
                      slope, inv_slope, dz, xh);
    v1 += dz;
    v2 += dz * xh;
  }
  for (; i < len; ++i) {
    A dz, xh;
    dz_xhat<ACT, FO>(load(g[i]), load(s[i]), RES ? load(r[i]) : A(0), mean, invstd, gamma, beta, ig, slope, inv_slope,
                     dz, xh);
    t1 += dz;
    t2 += dz * xh;
  }
}

// The backward pass, or one of its two phases. phases: REDUCE writes Σdz into db and Σdz·x̂ into dw; ELEMT writes
// dx (and dres) from the sums found in db and dw, divided by count (the values they were summed over, which may be
// more than this tensor's N·S: synchronized batch norm); both together are the one-pass backward, which keeps each
// NCS channel in cache between the two.
constexpr int REDUCE = 1, ELEMT = 2;

template <class T, int ACT, bool RES, bool FO>
void backward(const T* dy, const T* src, const T* res, const typename Acc<T>::type* w,
              const typename Acc<T>::type* b, const typename Acc<T>::type* mean, const typename Acc<T>::type* invstd,
              int64_t N, int64_t C, int64_t S, int layout, double slope_d, T* dx, T* dres,
              typename Acc<T>::type* dw, typename Acc<T>::type* db, int nt, int phases, double count) {
  using A = typename Acc<T>::type;
  using V = typename Vec<A>::V;
  constexpr int W = Vec<A>::W;
  const A slope = A(slope_d), inv_slope = slope_d != 0 ? A(1.0 / slope_d) : A(0);
  const BwdConstants<A> k(mean, invstd, w, b, C);
  const A *km = k.mean.data(), *ki = k.invstd.data(), *kg = k.gamma.data(), *kb = k.beta.data(),
          *kig = k.inv_gamma.data();
  const double m = count;
  if (layout == 0) {
    const int64_t runs_per_group = S >= CHUNK ? 1 : CHUNK / S;
    const bool short_runs = runs_are_short<T>(S);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      double sdz = 0, sdzx = 0;
      if (!(phases & REDUCE)) {
        sdz = double(db[c]);
        sdzx = double(dw[c]);
      }
      for (int64_t n0 = 0; (phases & REDUCE) && n0 < N; n0 += runs_per_group) {
        const int64_t n1 = n0 + runs_per_group < N ? n0 + runs_per_group : N;
        for (int64_t s0 = 0; s0 < S; s0 += CHUNK) {
          const int64_t len = S - s0 < CHUNK ? S - s0 : CHUNK;
          V v1 = {}, v2 = {};
          A t1 = 0, t2 = 0;
          for (int64_t n = n0; n < n1; ++n) {
            const int64_t off = (n * C + c) * S + s0;
            if (short_runs && n + 1 < N) {
              prefetch_run(dy + off + C * S, len);
              prefetch_run(src + off + C * S, len);
              if (RES) prefetch_run(res + off + C * S, len);
            }
            grad_run_sums<T, ACT, RES, FO>(dy + off, src + off, RES ? res + off : nullptr, len, km[c], ki[c], kg[c],
                                           kb[c], kig[c], slope, inv_slope, v1, v2, t1, t2);
          }
          sdz += double(vsum<A>(v1) + t1);
          sdzx += double(vsum<A>(v2) + t2);
        }
      }
      if (phases & REDUCE) {
        db[c] = A(sdz);
        dw[c] = A(sdzx);
      }
      if (!(phases & ELEMT)) continue;
      // The dx pass reads the channel again, from L2 when it fits there.
      const A scale = kg[c] * ki[c], a1 = A(sdz / m), a2 = A(sdzx / m);
      for (int64_t n = 0; n < N; ++n) {
        const int64_t off = (n * C + c) * S;
        const T *g = dy + off, *s = src + off, *r = RES ? res + off : nullptr;
        T* o = dx + off;
        T* o2 = dres ? dres + off : nullptr;
        const V zero = {};
        int64_t i = 0;
        for (; i + W <= S; i += W) {
          V dz, xh;
          vdz_xhat<ACT, FO>(vload<T, A>(g + i), vload<T, A>(s + i), RES ? vload<T, A>(r + i) : zero, zero + km[c],
                            zero + ki[c], zero + kg[c], zero + kb[c], zero + kig[c], slope, inv_slope, dz, xh);
          vstore<T, A>(o + i, scale * (dz - a1 - xh * a2));
          if (o2) vstore<T, A>(o2 + i, dz);
        }
        for (; i < S; ++i) {
          A dz, xh;
          dz_xhat<ACT, FO>(load(g[i]), load(s[i]), RES ? load(r[i]) : A(0), km[c], ki[c], kg[c], kb[c], kig[c], slope,
                           inv_slope, dz, xh);
          o[i] = store<T>(scale * (dz - a1 - xh * a2));
          if (o2) o2[i] = store<T>(dz);
        }
      }
    }
    return;
  }
  // Channels-last: each thread reduces its rows (float sums per block of rows, float64 across blocks), the
  // partial sums are merged in thread order, then each thread writes its rows' dx.
  const int64_t R = N * S, Cv = C / W * W;
  std::vector<double> part1(size_t(nt) * C, 0.0), part2(size_t(nt) * C, 0.0);
  std::vector<A> a1(C), a2(C), scale(C);
  const RowGrad<T, ACT, RES, FO, A> grad{dy, src, res, km, ki, kg, kb, kig, slope, inv_slope};
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num(), team = omp_get_num_threads();
    int64_t r0, r1;
    split(R, team, t, r0, r1);
    double *p1 = &part1[size_t(t) * C], *p2 = &part2[size_t(t) * C];
    std::vector<A> b1(C), b2(C);
    A *s1 = b1.data(), *s2 = b2.data();
    for (int64_t q0 = r0; (phases & REDUCE) && q0 < r1; q0 += BLOCK_ROWS) {
      const int64_t q1 = q0 + BLOCK_ROWS < r1 ? q0 + BLOCK_ROWS : r1;
      std::fill(b1.begin(), b1.end(), A(0));
      std::fill(b2.begin(), b2.end(), A(0));
      for (int64_t r = q0; r < q1; ++r) {
        const int64_t o = r * C;
        for (int64_t c = 0; c < Cv; c += W) {
          V dz, xh;
          grad.vec(o, c, dz, xh);
          V a1 = vconst(s1 + c) + dz, a2 = vconst(s2 + c) + dz * xh;
          std::memcpy(s1 + c, &a1, sizeof a1);
          std::memcpy(s2 + c, &a2, sizeof a2);
        }
        for (int64_t c = Cv; c < C; ++c) {
          A dz, xh;
          grad.one(o, c, dz, xh);
          s1[c] += dz;
          s2[c] += dz * xh;
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        p1[c] += double(s1[c]);
        p2[c] += double(s2[c]);
      }
    }
#pragma omp barrier
    {
      // Thread partial sums merged in thread order (the same rounding every run), each thread a share of the
      // channels.
      int64_t c0, c1;
      split(C, team, t, c0, c1);
      for (int64_t c = c0; c < c1; ++c) {
        double t1 = 0, t2 = 0;
        if (phases & REDUCE) {
          for (int u = 0; u < team; ++u) {
            t1 += part1[size_t(u) * C + c];
            t2 += part2[size_t(u) * C + c];
          }
          db[c] = A(t1);
          dw[c] = A(t2);
        } else {
          t1 = double(db[c]);
          t2 = double(dw[c]);
        }
        a1[c] = A(t1 / m);
        a2[c] = A(t2 / m);
        scale[c] = kg[c] * ki[c];
      }
    }
#pragma omp barrier
    const A *pa1 = a1.data(), *pa2 = a2.data(), *psc = scale.data();
    auto dx_rows = [&](int64_t q0, int64_t q1) {
      for (int64_t r = q0; r < q1; ++r) {
        const int64_t o = r * C;
        for (int64_t c = 0; c < Cv; c += W) {
          V dz, xh;
          grad.vec(o, c, dz, xh);
          vstore<T, A>(dx + o + c, vconst(psc + c) * (dz - vconst(pa1 + c) - xh * vconst(pa2 + c)));
          if (dres) vstore<T, A>(dres + o + c, dz);
        }
        for (int64_t c = Cv; c < C; ++c) {
          A dz, xh;
          grad.one(o, c, dz, xh);
          dx[o + c] = store<T>(psc[c] * (dz - pa1[c] - xh * pa2[c]));
          if (dres) dres[o + c] = store<T>(dz);
        }
      }
    };
    // Only after a reduce pass over the same rows is back to front the cheaper order.
    if ((phases & ELEMT) && (phases & REDUCE)) rows_back_to_front(r0, r1, C * int64_t(sizeof(T)), dx_rows);
    else if (phases & ELEMT) dx_rows(r0, r1);
  }
}

// ------------------------------------------------------------------------------------------ dispatch
// Runtime (dtype, activation, residual, from-output) to template instantiations. The from-output path exists
// only for the invertible activations.
template <template <class, int, bool> class F, class... Args>
int dispatch3(int dtype, int act, bool res, Args... args) {
#define BNLAB_RES(T, ACT) (res ? F<T, ACT, true>::run(args...) : F<T, ACT, false>::run(args...))
#define BNLAB_ACT(T)                                          \
  switch (act) {                                              \
    case IDENTITY: BNLAB_RES(T, IDENTITY); return 0;          \
    case RELU: BNLAB_RES(T, RELU); return 0;                  \
    case LEAKY_RELU: BNLAB_RES(T, LEAKY_RELU); return 0;      \
    case SILU: BNLAB_RES(T, SILU); return 0;                  \
    case ELU: BNLAB_RES(T, ELU); return 0;                    \
    default: return 2;                                        \
  }
  switch (dtype) {
    case 0: BNLAB_ACT(float)
    case 1: BNLAB_ACT(double)
    case 2: BNLAB_ACT(bf16)
    case 3: BNLAB_ACT(_Float16)
    default: return 1;
  }
#undef BNLAB_ACT
#undef BNLAB_RES
}

template <class T, int ACT, bool RES> struct TrainCall {
  using A = typename Acc<T>::type;
  static void run(const void* x, const void* res, void* y, const void* w, const void* b, int64_t N, int64_t C,
                  int64_t S, int layout, double eps, double slope, void* mean, void* invstd, void* var, int nt,
                  double* check) {
    forward_train<T, ACT, RES>(static_cast<const T*>(x), static_cast<const T*>(res), static_cast<T*>(y),
                               static_cast<const A*>(w), static_cast<const A*>(b), N, C, S, layout, eps, slope,
                               static_cast<A*>(mean), static_cast<A*>(invstd), static_cast<A*>(var), nt, check);
  }
};

template <class T, int ACT, bool RES> struct EvalCall {
  using A = typename Acc<T>::type;
  static void run(const void* x, const void* res, void* y, const void* rm, const void* rv, const void* w,
                  const void* b, int64_t N, int64_t C, int64_t S, int layout, double eps, double slope, int nt) {
    forward_eval<T, ACT, RES>(static_cast<const T*>(x), static_cast<const T*>(res), static_cast<T*>(y),
                              static_cast<const A*>(rm), static_cast<const A*>(rv), static_cast<const A*>(w),
                              static_cast<const A*>(b), N, C, S, layout, eps, slope, nt);
  }
};

template <class T, int ACT, bool RES> struct BackwardCall {
  using A = typename Acc<T>::type;
  static void run(const void* dy, const void* src, const void* res, const void* w, const void* b, const void* mean,
                  const void* invstd, int64_t N, int64_t C, int64_t S, int layout, double slope, int from_output,
                  void* dx, void* dres, void* dw, void* db, int nt, int phases, double count) {
    auto go = [&](auto fo) {
      backward<T, ACT, RES, decltype(fo)::value>(
          static_cast<const T*>(dy), static_cast<const T*>(src), static_cast<const T*>(res),
          static_cast<const A*>(w), static_cast<const A*>(b), static_cast<const A*>(mean),
          static_cast<const A*>(invstd), N, C, S, layout, slope, static_cast<T*>(dx), static_cast<T*>(dres),
          static_cast<A*>(dw), static_cast<A*>(db), nt, phases, count);
    };
    constexpr bool invertible = ACT == IDENTITY || ACT == LEAKY_RELU || ACT == ELU;
    if constexpr (invertible) {
      if (from_output) {
        go(std::true_type{});
        return;
      }
    }
    go(std::false_type{});
  }
};

template <class T, int ACT, bool RES> struct ElemtCall {
  using A = typename Acc<T>::type;
  static void run(const void* x, const void* res, void* y, const void* mean, const void* invstd, const void* w,
                  const void* b, int64_t N, int64_t C, int64_t S, int layout, double slope, int nt) {
    elemt<T, ACT, RES>(static_cast<const T*>(x), static_cast<const T*>(res), static_cast<T*>(y),
                       static_cast<const A*>(mean), static_cast<const A*>(invstd), static_cast<const A*>(w),
                       static_cast<const A*>(b), N, C, S, layout, slope, nt);
  }
};

template <class T> int stats_call(const void* x, const void* mask, int64_t N, int64_t C, int64_t S, int layout,
                                  void* count, void* mean, void* m2, int nt) {
  using A = typename Acc<T>::type;
  stats<T>(static_cast<const T*>(x), static_cast<const uint8_t*>(mask), N, C, S, layout, static_cast<A*>(count),
           static_cast<A*>(mean), static_cast<A*>(m2), nt);
  return 0;
}

}  // namespace

// ------------------------------------------------------------------------------------------ C entry points
// dtype: 0 float32, 1 float64, 2 bfloat16, 3 float16. act: 0 identity, 1 relu, 2 leaky_relu, 3 silu, 4 elu.
// layout: 0 NCS, 1 CL. x, res, y, dy, src, dx, dres are element buffers of that layout (res, dres may be null);
// w and b may be null (γ = 1, β = 0); every other pointer is a (C,) vector in the accumulation type.
// Each returns 0, or 1 for an unknown dtype, 2 for an unknown activation, 3 for from_output with a
// non-invertible activation.
// The running-statistics update of one training call, per channel c:
//   running_mean[c] ← (1 − f)·running_mean[c] + f·mean[c],  running_var[c] ← (1 − f)·running_var[c] + f·scale·var[c]
// rounded as bnlab._stats does it with two torch ops on a buffer of type R (mul_ by (1 − f), then add_ with
// alpha, which ATen computes as one fused multiply-add), so that this backend's buffers are bit for bit those
// of every other backend that goes through bnlab._stats (and of the same model under torch.compile). R: the
// buffers' type, S: the statistics' (converted to R first, as _stats does). One tiny loop instead of four small
// torch ops after every training forward.
template <class R, class S>
void update_running(R* rm, R* rv, const S* mean, const S* var, int64_t C, double f, double scale) {
  const R keep = R(1.0 - f), alpha_mean = R(f), alpha_var = R(f * scale);
  for (int64_t c = 0; c < C; ++c) {
    if (rm) rm[c] = std::fma(R(mean[c]), alpha_mean, R(rm[c] * keep));
    if (rv) rv[c] = std::fma(R(var[c]), alpha_var, R(rv[c] * keep));
  }
}

extern "C" {

int bnlab_abi_version() { return 1; }

// The instruction-set paths compiled in: 1 AVX-512F (64-byte vectors in one register), 2 AVX-512 BF16
// (VCVTNEPS2BF16 for the bfloat16 stores). 0 for the portable build ($BNLAB_CPU_ARCH=generic on x86-64).
int bnlab_build_features() {
  int bits = 0;
#if defined(__AVX512F__)
  bits |= 1;
#endif
#if defined(__AVX512BF16__)
  bits |= 2;
#endif
  return bits;
}

int bnlab_forward_train(int dtype, const void* x, const void* res, void* y, const void* w, const void* b, int64_t N,
                        int64_t C, int64_t S, int layout, double eps, int act, double slope, void* mean,
                        void* invstd, void* var, int nt) {
  return dispatch3<TrainCall>(dtype, act, res != nullptr, x, res, y, w, b, N, C, S, layout, eps, slope, mean,
                              invstd, var, nt, static_cast<double*>(nullptr));
}

// bnlab_forward_train, also writing check[0] = the smallest output (ELU only; +inf for the other activations) and
// check[1] = the number of channels with γ = 0: from these save="output" decides whether y determines the input,
// without reading y again.
int bnlab_forward_train_checked(int dtype, const void* x, const void* res, void* y, const void* w, const void* b,
                                int64_t N, int64_t C, int64_t S, int layout, double eps, int act, double slope,
                                void* mean, void* invstd, void* var, int nt, double* check) {
  return dispatch3<TrainCall>(dtype, act, res != nullptr, x, res, y, w, b, N, C, S, layout, eps, slope, mean,
                              invstd, var, nt, check);
}

// running_dtype, stats_dtype: 0 float32, 1 float64 (the caller passes only those); either buffer may be null.
int bnlab_update_running(int running_dtype, void* running_mean, void* running_var, int stats_dtype,
                         const void* mean, const void* var, int64_t C, double factor, double scale) {
  if (running_dtype < 0 || running_dtype > 1 || stats_dtype < 0 || stats_dtype > 1) return 1;
  if (running_dtype == 0 && stats_dtype == 0)
    update_running(static_cast<float*>(running_mean), static_cast<float*>(running_var),
                   static_cast<const float*>(mean), static_cast<const float*>(var), C, factor, scale);
  else if (running_dtype == 0)
    update_running(static_cast<float*>(running_mean), static_cast<float*>(running_var),
                   static_cast<const double*>(mean), static_cast<const double*>(var), C, factor, scale);
  else if (stats_dtype == 0)
    update_running(static_cast<double*>(running_mean), static_cast<double*>(running_var),
                   static_cast<const float*>(mean), static_cast<const float*>(var), C, factor, scale);
  else
    update_running(static_cast<double*>(running_mean), static_cast<double*>(running_var),
                   static_cast<const double*>(mean), static_cast<const double*>(var), C, factor, scale);
  return 0;
}

int bnlab_forward_eval(int dtype, const void* x, const void* res, void* y, const void* rm, const void* rv,
                       const void* w, const void* b, int64_t N, int64_t C, int64_t S, int layout, double eps, int act,
                       double slope, int nt) {
  return dispatch3<EvalCall>(dtype, act, res != nullptr, x, res, y, rm, rv, w, b, N, C, S, layout, eps, slope, nt);
}

int bnlab_backward(int dtype, const void* dy, const void* src, const void* res, const void* w, const void* b,
                   const void* mean, const void* invstd, int64_t N, int64_t C, int64_t S, int layout, int act,
                   double slope, int from_output, void* dx, void* dres, void* dw, void* db, int nt) {
  if (from_output && !(act == IDENTITY || act == LEAKY_RELU || act == ELU)) return 3;
  return dispatch3<BackwardCall>(dtype, act, res != nullptr, dy, src, res, w, b, mean, invstd, N, C, S, layout,
                                 slope, from_output, dx, dres, dw, db, nt, REDUCE | ELEMT, double(N * S));
}

// ----------------------------------------------------------------------------------- the phases, one by one
// mask: null, or N·S bytes (nonzero: the value counts). count, mean, m2: (C,) outputs.
int bnlab_stats(int dtype, const void* x, const void* mask, int64_t N, int64_t C, int64_t S, int layout, void* count,
                void* mean, void* m2, int nt) {
  switch (dtype) {
    case 0: return stats_call<float>(x, mask, N, C, S, layout, count, mean, m2, nt);
    case 1: return stats_call<double>(x, mask, N, C, S, layout, count, mean, m2, nt);
    case 2: return stats_call<bf16>(x, mask, N, C, S, layout, count, mean, m2, nt);
    case 3: return stats_call<_Float16>(x, mask, N, C, S, layout, count, mean, m2, nt);
    default: return 1;
  }
}

int bnlab_elemt(int dtype, const void* x, const void* res, void* y, const void* mean, const void* invstd,
                const void* w, const void* b, int64_t N, int64_t C, int64_t S, int layout, int act, double slope,
                int nt) {
  return dispatch3<ElemtCall>(dtype, act, res != nullptr, x, res, y, mean, invstd, w, b, N, C, S, layout, slope, nt);
}

// sum_dz, sum_dz_xhat: (C,) outputs.
int bnlab_backward_reduce(int dtype, const void* dy, const void* src, const void* res, const void* w, const void* b,
                          const void* mean, const void* invstd, int64_t N, int64_t C, int64_t S, int layout, int act,
                          double slope, int from_output, void* sum_dz, void* sum_dz_xhat, int nt) {
  if (from_output && !(act == IDENTITY || act == LEAKY_RELU || act == ELU)) return 3;
  return dispatch3<BackwardCall>(dtype, act, res != nullptr, dy, src, res, w, b, mean, invstd, N, C, S, layout,
                                 slope, from_output, static_cast<void*>(nullptr), static_cast<void*>(nullptr),
                                 sum_dz_xhat, sum_dz, nt, REDUCE, double(N * S));
}

// sum_dz, sum_dz_xhat: (C,) inputs, sums over count values per channel.
int bnlab_backward_elemt(int dtype, const void* dy, const void* src, const void* res, const void* w, const void* b,
                         const void* mean, const void* invstd, const void* sum_dz, const void* sum_dz_xhat,
                         double count, int64_t N, int64_t C, int64_t S, int layout, int act, double slope,
                         int from_output, void* dx, void* dres, int nt) {
  if (from_output && !(act == IDENTITY || act == LEAKY_RELU || act == ELU)) return 3;
  // The sums are only read in the ELEMT phase; the casts give them the signature the one-pass backward shares.
  return dispatch3<BackwardCall>(dtype, act, res != nullptr, dy, src, res, w, b, mean, invstd, N, C, S, layout,
                                 slope, from_output, dx, dres, const_cast<void*>(sum_dz_xhat),
                                 const_cast<void*>(sum_dz), nt, ELEMT, count);
}

}  // extern "C"
