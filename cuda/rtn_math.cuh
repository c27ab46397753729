// Per-group RTN arithmetic shared by the CUDA kernel (rtn_kernel.cu) and the host test harness
// (rtn_host.cpp, compiled by g++ and checked against qsens/quantizers/rtn_reference.py).
//
// Every function here is the reference's float32 arithmetic, one operation at a time and in the
// reference's order, so host and device produce the same bits as torch on CPU:
//   - divisions are IEEE round-to-nearest (`__fdiv_rn` on device; `/` on the host),
//   - rounding to an integer is round-half-to-even (`rintf`, as `torch.round`),
//   - no fused multiply-add: device code uses the `__f*_rn` intrinsics, which nvcc never contracts, and
//     the host harness is compiled with -ffp-contract=off. Nothing may be built with fast-math.
// Plain C++ (no torch, no CUDA headers) when compiled by g++: the qualifiers are a macro.
#pragma once

#include <stdint.h>

#include <cmath>

#ifdef __CUDACC__
#define RTN_HD __host__ __device__ __forceinline__
#else
#define RTN_HD inline
#endif

namespace rtn {

// ---- float32 operations, correctly rounded, never contracted into an FMA -------------------------
RTN_HD float fdiv(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
RTN_HD float fmul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
RTN_HD float fadd(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
RTN_HD float fsub(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
// Round half to even (the default rounding mode; torch.round does the same).
RTN_HD float round_even(float x) {
#ifdef __CUDA_ARCH__
  return rintf(x);
#else
  return std::rint(x);
#endif
}
RTN_HD bool is_finite(float x) {
#ifdef __CUDA_ARCH__
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}
RTN_HD float clampf(float x, float lo, float hi) { return fminf(fmaxf(x, lo), hi); }

// ---- group statistics -----------------------------------------------------------------------------
// Running min/max of a group's finite values and whether every value was finite. The reference takes
// min/max over `g_safe` (non-finite values replaced by 0); a non-finite group's scale/zero/codes are
// overwritten anyway, so skipping the non-finite values is equivalent. min/max are order-independent,
// so a warp may merge partial stats in any order (only the sign of a zero min can differ, which never
// changes a code or a dequantized value).
struct GroupStats {
  float lo;    // min of finite values (+inf when none seen)
  float hi;    // max of finite values (-inf when none seen)
  int finite;  // 1 while every value seen is finite
};

RTN_HD GroupStats stats_init() { return GroupStats{INFINITY, -INFINITY, 1}; }

RTN_HD void stats_add(GroupStats& s, float x) {
  if (is_finite(x)) {
    s.lo = fminf(s.lo, x);
    s.hi = fmaxf(s.hi, x);
  } else {
    s.finite = 0;
  }
}

RTN_HD void stats_merge(GroupStats& s, const GroupStats& o) {
  s.lo = fminf(s.lo, o.lo);
  s.hi = fmaxf(s.hi, o.hi);
  s.finite = s.finite & o.finite;
}

// ---- per-group parameters ---------------------------------------------------------------------------
struct GroupParams {
  float scale;  // NaN for a non-finite group
  float zero;   // integer-valued; 0 for a non-finite group
  float qmin;   // code clamp range, already shifted for the symmetric case (see quantize_one)
  float qmax;
  int finite;
};

// Asymmetric: lo = min(min,0), hi = max(max,0); all-zero -> [-1, 1]; scale = (hi-lo)/maxq;
// zero = round(-lo/scale). Symmetric: amax = max|g| (0 -> qmax); scale = amax/qmax; zero = 2^(bits-1).
RTN_HD GroupParams group_params(const GroupStats& s, int bits, bool symmetric) {
  GroupParams p;
  p.finite = s.finite;
  if (symmetric) {
    const float qmax = (float)((1 << (bits - 1)) - 1);
    float amax = fmaxf(fabsf(s.lo), fabsf(s.hi));
    if (!(amax > 0.0f)) amax = qmax;  // all zeros: scale 1, codes all `zero`
    p.scale = fdiv(amax, qmax);
    p.zero = (float)(1 << (bits - 1));
    p.qmin = -qmax;
    p.qmax = qmax;
  } else {
    const float maxq = (float)((1 << bits) - 1);
    float lo = fminf(s.lo, 0.0f);
    float hi = fmaxf(s.hi, 0.0f);
    if (lo == hi) {
      lo = -1.0f;
      hi = 1.0f;
    }
    p.scale = fdiv(fsub(hi, lo), maxq);
    p.zero = round_even(fdiv(-lo, p.scale));
    p.qmin = 0.0f;
    p.qmax = maxq;
  }
  if (!s.finite) {
    p.scale = NAN;
    p.zero = 0.0f;
  }
  return p;
}

// Rebuild a group's parameters from its stored (scale, zero), as the row-wise kernel path does between
// its two sweeps. A group is non-finite exactly when its scale is NaN (a finite group's scale is finite
// or, if hi - lo overflows, +inf; never NaN).
RTN_HD GroupParams group_params_from(float scale, float zero, int bits, bool symmetric) {
  GroupParams p;
  p.scale = scale;
  p.zero = zero;
  p.finite = !(scale != scale);
  if (symmetric) {
    p.qmax = (float)((1 << (bits - 1)) - 1);
    p.qmin = -p.qmax;
  } else {
    p.qmin = 0.0f;
    p.qmax = (float)((1 << bits) - 1);
  }
  return p;
}

// ---- per-element math ---------------------------------------------------------------------------------
// The unsigned code in [0, 2^bits - 1], exactly the reference's (a non-finite group gives 0):
//   asymmetric: clamp(round(x/scale) + zero, 0, maxq)
//   symmetric:  clamp(round(x/scale), -qmax, qmax) + zero
RTN_HD uint32_t quantize_one(float x, const GroupParams& p, bool symmetric) {
  if (!p.finite) return 0u;
  const float r = round_even(fdiv(x, p.scale));
  const float q = symmetric ? fadd(clampf(r, p.qmin, p.qmax), p.zero) : clampf(fadd(r, p.zero), p.qmin, p.qmax);
  return (uint32_t)q;
}

// scale * (code - zero): one float32 subtraction of exact integers and one multiply, as the reference.
// A non-finite group gives NaN * 0 = NaN.
RTN_HD float dequantize_one(uint32_t code, const GroupParams& p) {
  return fmul(p.scale, fsub((float)code, p.zero));
}

// ---- packing ------------------------------------------------------------------------------------------
// Eight consecutive codes of a row ("an octet") occupy exactly `bits` bytes: code j sits in bits
// [j*bits, (j+1)*bits) of the little-endian integer formed by those bytes. For 4 bits this is the usual
// "low nibble first" layout; for 8 bits it is one code per byte.
RTN_HD uint64_t pack_octet(const uint32_t codes[8], int bits) {
  uint64_t word = 0;
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
  for (int j = 0; j < 8; ++j) word |= (uint64_t)codes[j] << (j * bits);
  return word;
}

}  // namespace rtn
