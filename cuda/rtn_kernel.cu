// Round-to-nearest (RTN) per-group quantization of a 2-D weight, one pass, no host round trips.
// Plain CUDA (no torch headers) so CI compiles it with nvcc alone; the arithmetic is rtn_math.cuh's, the
// same code the host harness checks bit-for-bit against qsens/quantizers/rtn_reference.py.
// Must be built without fast-math (-fmad=false -prec-div=true -ftz=false); see README.md.
//
// Two paths, chosen per call by `launch`:
//  * group path (the fast one): groups are contiguous in memory (cols % gs == 0), gs is 8 * tpg * CPT with
//    tpg a power of two <= 32 (gs = 32, 64, 128, 256, 512, 1024, or a whole row of such a length). Each
//    thread loads CPT "octets" (8 consecutive elements, 16 B of fp16/bf16, 32 B of fp32) into registers, the
//    tpg threads of a group merge min/max with warp shuffles, and each thread writes its octets. The
//    weight is read exactly once.
//  * row-wise path (everything else: ragged or odd group sizes, long per-row groups, unaligned data): one
//    warp per row; sweep 1 computes every group's scale/zero into scales/zeros, sweep 2 quantizes octet by
//    octet. The second sweep re-reads the row, mostly from cache; it is correct for any shape, fast only
//    when rows are many.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "rtn_kernel.h"
#include "rtn_math.cuh"

namespace rtn {
namespace {

constexpr int kBlock = 256;
constexpr unsigned kFullMask = 0xffffffffu;

// ---- loads/stores of one octet (8 elements) or one element, converting to/from float32 ----------
// Conversions to the output dtype round to nearest even (__float2half_rn, __float2bfloat16_rn), as
// torch's `.to(dtype)` in the reference.
template <typename T>
struct Io;

template <>
struct Io<float> {
  static __device__ __forceinline__ void load8(const float* p, float v[8]) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p));
    const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
  }
  static __device__ __forceinline__ void store8(float* p, const float v[8]) {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
  static __device__ __forceinline__ float load1(const float* p) { return __ldg(p); }
  static __device__ __forceinline__ void store1(float* p, float v) { *p = v; }
};

template <>
struct Io<__half> {
  static __device__ __forceinline__ void load8(const __half* p, float v[8]) {
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      __half2 h;
      memcpy(&h, &w[i], 4);
      const float2 f = __half22float2(h);
      v[2 * i] = f.x;
      v[2 * i + 1] = f.y;
    }
  }
  static __device__ __forceinline__ void store8(__half* p, const float v[8]) {
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const __half2 h = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
      memcpy(&w[i], &h, 4);
    }
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  }
  static __device__ __forceinline__ float load1(const __half* p) { return __half2float(p[0]); }
  static __device__ __forceinline__ void store1(__half* p, float v) { p[0] = __float2half_rn(v); }
};

template <>
struct Io<__nv_bfloat16> {
  static __device__ __forceinline__ void load8(const __nv_bfloat16* p, float v[8]) {
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      __nv_bfloat162 h;
      memcpy(&h, &w[i], 4);
      const float2 f = __bfloat1622float2(h);
      v[2 * i] = f.x;
      v[2 * i + 1] = f.y;
    }
  }
  static __device__ __forceinline__ void store8(__nv_bfloat16* p, const float v[8]) {
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
      memcpy(&w[i], &h, 4);
    }
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  }
  static __device__ __forceinline__ float load1(const __nv_bfloat16* p) { return __bfloat162float(p[0]); }
  static __device__ __forceinline__ void store1(__nv_bfloat16* p, float v) { p[0] = __float2bfloat16_rn(v); }
};

// Write one packed octet (`bits` bytes) at byte offset octet_index * bits. For 2, 4 and 8 bits that
// offset is a multiple of the store width, so one aligned store suffices.
__device__ __forceinline__ void store_octet(uint8_t* packed, int64_t octet_index, uint64_t word, int bits) {
  uint8_t* dst = packed + octet_index * bits;
  if (bits == 8) {
    *reinterpret_cast<uint64_t*>(dst) = word;
  } else if (bits == 4) {
    *reinterpret_cast<uint32_t*>(dst) = (uint32_t)word;
  } else if (bits == 2) {
    *reinterpret_cast<uint16_t*>(dst) = (uint16_t)word;
  } else {
    for (int i = 0; i < bits; ++i) dst[i] = (uint8_t)(word >> (8 * i));
  }
}

// Merge GroupStats across aligned segments of `width` lanes (a power of two <= 32). Every lane of the
// warp must call this (full mask), active or not.
__device__ __forceinline__ void warp_merge(GroupStats& s, int width) {
  for (int m = 1; m < width; m <<= 1) {
    GroupStats o;
    o.lo = __shfl_xor_sync(kFullMask, s.lo, m);
    o.hi = __shfl_xor_sync(kFullMask, s.hi, m);
    o.finite = __shfl_xor_sync(kFullMask, s.finite, m);
    stats_merge(s, o);
  }
}

// Octet `k` of this thread quantized: codes, and in fake-quant mode the dequantized values written.
template <typename T, bool PACK>
__device__ __forceinline__ void emit_octet(const float v[8], const GroupParams& p, bool symmetric, int bits,
                                           T* deq, uint8_t* packed, int64_t elem, int64_t octet) {
  uint32_t codes[8];
  float d[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    codes[j] = quantize_one(v[j], p, symmetric);
    d[j] = dequantize_one(codes[j], p);
  }
  if (PACK) {
    store_octet(packed, octet, pack_octet(codes, bits), bits);
  } else {
    Io<T>::store8(deq + elem, d);
  }
}

// Group path. Thread t works on group t / tpg; its octets are lane, lane + tpg, ... (CPT of them), so a
// warp's loads are contiguous. Octet indices are global because groups (and rows) are back to back.
template <typename T, int CPT, bool PACK>
__global__ void __launch_bounds__(kBlock) group_kernel(const T* __restrict__ w, T* __restrict__ deq,
                                                        uint8_t* __restrict__ packed, float* __restrict__ scales,
                                                        float* __restrict__ zeros, int64_t n_groups_total,
                                                        int tpg_log2, int bits, bool symmetric) {
  const int64_t t = (int64_t)blockIdx.x * kBlock + threadIdx.x;
  const int tpg = 1 << tpg_log2;
  const int64_t g = t >> tpg_log2;
  const int lane = (int)(t & (tpg - 1));
  const bool active = g < n_groups_total;
  const int64_t first_octet = g * tpg * CPT;

  float v[CPT][8];
  GroupStats s = stats_init();
  if (active) {
#pragma unroll
    for (int k = 0; k < CPT; ++k) {
      Io<T>::load8(w + (first_octet + lane + k * tpg) * 8, v[k]);
#pragma unroll
      for (int j = 0; j < 8; ++j) stats_add(s, v[k][j]);
    }
  }
  warp_merge(s, tpg);
  if (!active) return;

  const GroupParams p = group_params(s, bits, symmetric);
#pragma unroll
  for (int k = 0; k < CPT; ++k) {
    const int64_t octet = first_octet + lane + k * tpg;
    emit_octet<T, PACK>(v[k], p, symmetric, bits, deq, packed, octet * 8, octet);
  }
  if (PACK && lane == 0) {
    scales[g] = p.scale;
    zeros[g] = p.zero;
  }
}

// Row-wise path: one warp per row, any group size. VEC: cols % 8 == 0, gs % 8 == 0 and 16-byte aligned
// pointers, so octets can be loaded/stored as vectors.
template <typename T, bool VEC, bool PACK>
__global__ void __launch_bounds__(kBlock) row_kernel(const T* __restrict__ w, T* __restrict__ deq,
                                                      uint8_t* __restrict__ packed, float* scales, float* zeros,
                                                      int64_t rows, int64_t cols, int64_t gs, int64_t n_groups,
                                                      int bits, bool symmetric) {
  const int lane = threadIdx.x & 31;
  const int64_t row = ((int64_t)blockIdx.x * kBlock + threadIdx.x) >> 5;
  if (row >= rows) return;  // uniform across the warp
  const T* wr = w + row * cols;
  float* sr = scales + row * n_groups;
  float* zr = zeros + row * n_groups;

  // Sweep 1: each group's parameters, kept in scales/zeros (the output in quantize mode, scratch otherwise).
  for (int64_t gi = 0; gi < n_groups; ++gi) {
    const int64_t c0 = gi * gs;
    const int64_t c1 = min(c0 + gs, cols);
    GroupStats s = stats_init();
    if (VEC) {
      for (int64_t c = c0 + lane * 8; c < c1; c += 32 * 8) {
        float v[8];
        Io<T>::load8(wr + c, v);
#pragma unroll
        for (int j = 0; j < 8; ++j) stats_add(s, v[j]);
      }
    } else {
      for (int64_t c = c0 + lane; c < c1; c += 32) stats_add(s, Io<T>::load1(wr + c));
    }
    warp_merge(s, 32);
    const GroupParams p = group_params(s, bits, symmetric);
    if (lane == 0) {
      sr[gi] = p.scale;
      zr[gi] = p.zero;
    }
  }
  __syncwarp();  // makes lane 0's scales/zeros visible to the whole warp

  // Sweep 2: octet by octet; an octet may straddle two groups when gs % 8 != 0.
  const int64_t n_oct = (cols + 7) / 8;
  int64_t cached_g = -1;
  GroupParams p{};
  for (int64_t o = lane; o < n_oct; o += 32) {
    const int64_t c = o * 8;
    float v[8];
    if (VEC) {
      Io<T>::load8(wr + c, v);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = c + j < cols ? Io<T>::load1(wr + c + j) : 0.0f;
    }
    uint32_t codes[8];
    float d[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t gi = min(c + j, cols - 1) / gs;
      if (gi != cached_g) {
        p = group_params_from(sr[gi], zr[gi], bits, symmetric);
        cached_g = gi;
      }
      codes[j] = c + j < cols ? quantize_one(v[j], p, symmetric) : 0u;  // row padding codes are 0
      d[j] = dequantize_one(codes[j], p);
    }
    if (PACK) {
      store_octet(packed, row * n_oct + o, pack_octet(codes, bits), bits);
    } else if (VEC) {
      Io<T>::store8(deq + row * cols + c, d);
    } else {
      for (int j = 0; j < 8 && c + j < cols; ++j) Io<T>::store1(deq + row * cols + c + j, d[j]);
    }
  }
}

inline bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) % 16) == 0; }

// Group-path geometry for group size gs, or false when the row-wise path must be used.
bool group_geometry(const Args& a, int64_t gs, int* tpg_log2, int* cpt) {
  if (gs % 8 != 0 || a.cols % gs != 0 || !aligned16(a.w) || !aligned16(a.deq)) return false;
  const int64_t octets = gs / 8;
  int64_t tpg = octets <= 32 ? octets : 32;
  const int64_t c = octets / tpg;
  if ((tpg & (tpg - 1)) != 0 || (c != 1 && c != 2 && c != 4) || c * tpg != octets) return false;
  int lg = 0;
  while ((1 << lg) < tpg) ++lg;
  *tpg_log2 = lg;
  *cpt = (int)c;
  return true;
}

template <typename T, bool PACK>
cudaError_t launch_typed(const Args& a, cudaStream_t stream) {
  const T* w = static_cast<const T*>(a.w);
  T* deq = static_cast<T*>(a.deq);
  const int64_t gs = effective_group_size(a.cols, a.group_size);
  const int64_t ng = n_groups(a.cols, a.group_size);
  int tpg_log2 = 0, cpt = 0;
  if (group_geometry(a, gs, &tpg_log2, &cpt)) {
    const int64_t total_groups = a.rows * ng;
    const int64_t threads = total_groups << tpg_log2;
    const dim3 grid((unsigned)((threads + kBlock - 1) / kBlock));
    switch (cpt) {
      case 1:
        group_kernel<T, 1, PACK><<<grid, kBlock, 0, stream>>>(w, deq, a.packed, a.scales, a.zeros, total_groups,
                                                              tpg_log2, a.bits, a.symmetric);
        break;
      case 2:
        group_kernel<T, 2, PACK><<<grid, kBlock, 0, stream>>>(w, deq, a.packed, a.scales, a.zeros, total_groups,
                                                              tpg_log2, a.bits, a.symmetric);
        break;
      default:
        group_kernel<T, 4, PACK><<<grid, kBlock, 0, stream>>>(w, deq, a.packed, a.scales, a.zeros, total_groups,
                                                              tpg_log2, a.bits, a.symmetric);
    }
  } else {
    const bool vec = a.cols % 8 == 0 && gs % 8 == 0 && aligned16(a.w) && aligned16(a.deq);
    const dim3 grid((unsigned)((a.rows * 32 + kBlock - 1) / kBlock));
    if (vec) {
      row_kernel<T, true, PACK><<<grid, kBlock, 0, stream>>>(w, deq, a.packed, a.scales, a.zeros, a.rows, a.cols,
                                                             gs, ng, a.bits, a.symmetric);
    } else {
      row_kernel<T, false, PACK><<<grid, kBlock, 0, stream>>>(w, deq, a.packed, a.scales, a.zeros, a.rows, a.cols,
                                                              gs, ng, a.bits, a.symmetric);
    }
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_mode(const Args& a, cudaStream_t stream) {
  return a.packed != nullptr ? launch_typed<T, true>(a, stream) : launch_typed<T, false>(a, stream);
}

}  // namespace

bool needs_scratch(const Args& a) {
  int tpg_log2 = 0, cpt = 0;
  return !group_geometry(a, effective_group_size(a.cols, a.group_size), &tpg_log2, &cpt);
}

int launch(const Args& a, void* stream) {
  if (a.rows == 0 || a.cols == 0) return 0;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (a.dtype) {
    case Dtype::kFloat32:
      return (int)launch_mode<float>(a, s);
    case Dtype::kFloat16:
      return (int)launch_mode<__half>(a, s);
    case Dtype::kBFloat16:
      return (int)launch_mode<__nv_bfloat16>(a, s);
  }
  return (int)cudaErrorInvalidValue;
}

const char* error_string(int err) { return cudaGetErrorString(static_cast<cudaError_t>(err)); }

}  // namespace rtn
