// Host harness: the kernel's arithmetic (rtn_math.cuh, the very same source) run on the CPU, so that
// tests/cuda/test_host_math.py can compare it bit-for-bit with rtn_reference.py on machines without a GPU.
// Plain C ABI (loaded with ctypes), no torch headers: it builds with g++ in about a second.
// Build flags matter: -O2 -ffp-contract=off, never -ffast-math (see tests/cuda/conftest.py).
//
// It walks a row the way the kernel's row-wise path does: sweep 1 computes every group's parameters
// (stored as scale/zero and rebuilt with group_params_from, as the kernel does), sweep 2 quantizes and
// packs octet by octet, including octets that straddle a group boundary and the zero padding of a row.
#include <stdint.h>

#include "rtn_math.cuh"

extern "C" {

// w: float32 [rows, cols] (fp16/bf16 weights are converted exactly by the caller).
// deq: float32 [rows, cols] or null; packed: uint8 [rows, ceil(cols/8)*bits] or null;
// scales/zeros: float32 [rows, n_groups]. Returns 0, or -1 on bad arguments.
int rtn_host_quantize(const float* w, int64_t rows, int64_t cols, int64_t group_size, int bits, int symmetric,
                      float* deq, uint8_t* packed, float* scales, float* zeros) {
  if (bits < 2 || bits > 8 || (group_size != -1 && group_size < 1) || rows < 0 || cols < 1) return -1;
  const int64_t gs = group_size == -1 ? cols : group_size;
  const int64_t n_groups = (cols + gs - 1) / gs;
  const int64_t n_oct = (cols + 7) / 8;
  for (int64_t r = 0; r < rows; ++r) {
    const float* wr = w + r * cols;
    for (int64_t g = 0; g < n_groups; ++g) {
      rtn::GroupStats s = rtn::stats_init();
      for (int64_t c = g * gs; c < cols && c < (g + 1) * gs; ++c) rtn::stats_add(s, wr[c]);
      const rtn::GroupParams p = rtn::group_params(s, bits, symmetric != 0);
      scales[r * n_groups + g] = p.scale;
      zeros[r * n_groups + g] = p.zero;
    }
    for (int64_t o = 0; o < n_oct; ++o) {
      uint32_t codes[8];
      for (int j = 0; j < 8; ++j) {
        const int64_t c = o * 8 + j;
        codes[j] = 0;  // row padding
        if (c >= cols) continue;
        const int64_t g = c / gs;
        const rtn::GroupParams p =
            rtn::group_params_from(scales[r * n_groups + g], zeros[r * n_groups + g], bits, symmetric != 0);
        codes[j] = rtn::quantize_one(wr[c], p, symmetric != 0);
        if (deq) deq[r * cols + c] = rtn::dequantize_one(codes[j], p);
      }
      if (packed) {
        const uint64_t word = rtn::pack_octet(codes, bits);
        uint8_t* dst = packed + (r * n_oct + o) * bits;
        for (int i = 0; i < bits; ++i) dst[i] = (uint8_t)(word >> (8 * i));
      }
    }
  }
  return 0;
}

}  // extern "C"
