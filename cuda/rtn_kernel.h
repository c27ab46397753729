// Host-side API of the RTN kernels (rtn_kernel.cu), in plain C++ types so that the torch binding
// (rtn_binding.cpp) needs no CUDA header from here and the .cu needs no torch header.
#pragma once

#include <stdint.h>

namespace rtn {

enum class Dtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// One launch over a row-major contiguous weight w [rows, cols].
//   fake-quant mode (packed == nullptr): writes deq [rows, cols] in w's dtype.
//   quantize mode   (packed != nullptr): writes packed uint8 [rows, packed_row_bytes(cols, bits)],
//                                        scales/zeros float32 [rows, n_groups]; deq is unused.
// scales/zeros are also needed in fake-quant mode when `needs_scratch` says so (the row-wise path keeps
// each group's parameters there between its two sweeps of the row).
struct Args {
  const void* w = nullptr;
  void* deq = nullptr;
  uint8_t* packed = nullptr;
  float* scales = nullptr;
  float* zeros = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t group_size = -1;  // -1: one group per row
  int bits = 4;
  bool symmetric = false;
  Dtype dtype = Dtype::kFloat32;
};

inline int64_t effective_group_size(int64_t cols, int64_t group_size) { return group_size == -1 ? cols : group_size; }
inline int64_t n_groups(int64_t cols, int64_t group_size) {
  const int64_t gs = effective_group_size(cols, group_size);
  return (cols + gs - 1) / gs;
}
// Eight codes take exactly `bits` bytes; a row is padded to whole octets (padding codes are 0).
inline int64_t packed_row_bytes(int64_t cols, int bits) { return (cols + 7) / 8 * bits; }

// True when `launch` takes the row-wise path, which needs scales/zeros even in fake-quant mode.
bool needs_scratch(const Args& a);
// Returns 0 on success, else a cudaError_t value; `stream` is a cudaStream_t.
int launch(const Args& a, void* stream);
const char* error_string(int err);

}  // namespace rtn
