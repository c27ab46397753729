// The kernel source (rewritten for emu_cuda.h by tests/cuda/conftest.py) plus a C entry point for ctypes.
#include "emu_cuda.h"
#include "rtn_kernel_emu.inc"

extern "C" {

// Same contract as rtn::launch; dtype: 0 float32, 1 float16, 2 bfloat16.
int rtn_emu_launch(const void* w, int dtype, int64_t rows, int64_t cols, int64_t group_size, int bits,
                   int symmetric, void* deq, uint8_t* packed, float* scales, float* zeros) {
  rtn::Args a;
  a.w = w;
  a.deq = deq;
  a.packed = packed;
  a.scales = scales;
  a.zeros = zeros;
  a.rows = rows;
  a.cols = cols;
  a.group_size = group_size;
  a.bits = bits;
  a.symmetric = symmetric != 0;
  a.dtype = static_cast<rtn::Dtype>(dtype);
  return rtn::launch(a, nullptr);
}

int rtn_emu_uses_group_path(const void* w, void* deq, int64_t cols, int64_t group_size) {
  rtn::Args a;
  a.w = w;
  a.deq = deq;
  a.cols = cols;
  a.group_size = group_size;
  return rtn::needs_scratch(a) ? 0 : 1;
}

}  // extern "C"
