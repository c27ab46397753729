// Just enough of CUDA to run cuda/rtn_kernel.cu's kernels on the CPU in tests, single-threaded and
// deterministic: the 32 lanes of a warp are coroutines (ucontext) that a scheduler resumes round-robin, so a
// shuffle or __syncwarp is a point where every lane yields once. The kernel's indexing, warp reductions,
// vector loads/stores, path selection and packing run as written. The arithmetic takes rtn_math.cuh's host branch (the one test_host_math.py checks), and
// half/bfloat16 conversions round to nearest even like the CUDA intrinsics. Not a GPU: no timing, no
// memory model beyond what the barriers give.
#pragma once

#include <stdint.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <ucontext.h>
#include <memory>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)

struct dim3 {
  unsigned x, y = 1, z = 1;
  dim3(unsigned x_ = 1) : x(x_) {}
};
struct uint3 {
  unsigned x, y, z;
};
struct float2 {
  float x, y;
};
struct float4 {
  float x, y, z, w;
};
struct uint4 {
  unsigned x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
template <typename T>
inline T __ldg(const T* p) { return *p; }
inline int64_t min(int64_t a, int64_t b) { return a < b ? a : b; }

// ---- fp16 / bf16 storage types and round-to-nearest-even conversions -----------------------------------
struct __half { uint16_t x; };
struct __half2 { __half x, y; };
struct __nv_bfloat16 { uint16_t x; };
struct __nv_bfloat162 { __nv_bfloat16 x, y; };

inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.x, 2);
  return (float)f;
}
inline __half __float2half_rn(float v) {
  const _Float16 f = (_Float16)v;  // IEEE conversion, round to nearest even
  __half h;
  std::memcpy(&h.x, &f, 2);
  return h;
}
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half_rn(a), __float2half_rn(b)}; }

inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t u = (uint32_t)b.x << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {(uint16_t)((u >> 16) | 0x40)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return {(uint16_t)(u >> 16)};
}
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return {__bfloat162float(h.x), __bfloat162float(h.y)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)}; }

// ---- runtime ---------------------------------------------------------------------------------------------
typedef void* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "invalid value"; }

// ---- lanes as coroutines ------------------------------------------------------------------------------------
// Blocks never synchronize in these kernels (no __syncthreads), so warps run one after another; within a
// warp every lane reaches each yield point equally often (shuffles and __syncwarp are warp-uniform).
struct EmuLane {
  ucontext_t ctx;
  unsigned tid;
  bool done;
};
inline uint3 threadIdx;
inline uint3 blockIdx;
inline ucontext_t emu_scheduler;
inline EmuLane* emu_current;
inline uint64_t emu_slot[32];
inline const std::function<void()>* emu_body;

inline void emu_yield() { swapcontext(&emu_current->ctx, &emu_scheduler); }
inline void __syncwarp() { emu_yield(); }

template <typename T>
T __shfl_xor_sync(unsigned /*mask: always full here*/, T v, int lane_mask) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  const int lane = (int)(emu_current->tid % 32);
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  emu_slot[lane] = u;
  emu_yield();  // every lane has written its slot
  const uint64_t r = emu_slot[lane ^ lane_mask];
  emu_yield();  // every lane has read before any slot is reused
  T out;
  std::memcpy(&out, &r, sizeof(T));
  return out;
}

inline void emu_lane_main() {
  (*emu_body)();
  emu_current->done = true;  // returning resumes emu_scheduler (uc_link)
}

// kernel<<<grid, block, smem, stream>>>(args) is rewritten by the test into emu_launch(grid, block, smem,
// stream, [&] { kernel(args); }).
template <typename F>
void emu_launch(dim3 grid, int block, int /*smem*/, cudaStream_t /*stream*/, F body) {
  constexpr size_t kStack = 1 << 16;
  static std::vector<std::vector<char>> stacks(32, std::vector<char>(kStack));
  const std::function<void()> fn = body;
  emu_body = &fn;
  EmuLane lanes[32];
  for (unsigned b = 0; b < grid.x; ++b) {
    for (int w = 0; w < block / 32; ++w) {
      for (int l = 0; l < 32; ++l) {
        lanes[l].tid = (unsigned)(w * 32 + l);
        lanes[l].done = false;
        getcontext(&lanes[l].ctx);
        lanes[l].ctx.uc_stack.ss_sp = stacks[l].data();
        lanes[l].ctx.uc_stack.ss_size = kStack;
        lanes[l].ctx.uc_link = &emu_scheduler;
        makecontext(&lanes[l].ctx, emu_lane_main, 0);
      }
      for (bool running = true; running;) {
        running = false;
        for (int l = 0; l < 32; ++l) {
          if (lanes[l].done) continue;
          emu_current = &lanes[l];
          threadIdx = {lanes[l].tid, 0, 0};
          blockIdx = {b, 0, 0};
          swapcontext(&emu_scheduler, &lanes[l].ctx);
          running = true;
        }
      }
    }
  }
}
