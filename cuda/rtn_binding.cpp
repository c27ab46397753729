// Thin torch binding of the RTN kernels: every input check lives here, the arithmetic in rtn_math.cuh,
// the launches in rtn_kernel.cu. Python wrapper: qsens/quantizers/rtn_kernel.py.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <tuple>

#include "rtn_kernel.h"

namespace {

rtn::Dtype check_inputs(const at::Tensor& w, int64_t bits, int64_t group_size) {
  TORCH_CHECK(w.is_cuda(), "rtn kernel: w must be a CUDA tensor, got device ", w.device());
  TORCH_CHECK(w.dim() == 2, "rtn kernel: w must be 2-D [rows, cols], got shape ", w.sizes());
  TORCH_CHECK(w.is_contiguous(), "rtn kernel: w must be contiguous (call .contiguous() first)");
  TORCH_CHECK(bits >= 2 && bits <= 8, "rtn kernel: bits must be in 2..8, got ", bits);
  TORCH_CHECK(group_size == -1 || group_size >= 1,
              "rtn kernel: group_size must be -1 (per row) or >= 1, got ", group_size);
  switch (w.scalar_type()) {
    case at::kFloat:
      return rtn::Dtype::kFloat32;
    case at::kHalf:
      return rtn::Dtype::kFloat16;
    case at::kBFloat16:
      return rtn::Dtype::kBFloat16;
    default:
      TORCH_CHECK(false, "rtn kernel: w must be float32, float16 or bfloat16, got ", w.scalar_type());
  }
  return rtn::Dtype::kFloat32;  // unreachable
}

rtn::Args make_args(const at::Tensor& w, int64_t bits, int64_t group_size, bool symmetric, rtn::Dtype dtype) {
  rtn::Args a;
  a.w = w.data_ptr();
  a.rows = w.size(0);
  a.cols = w.size(1);
  a.group_size = group_size;
  a.bits = static_cast<int>(bits);
  a.symmetric = symmetric;
  a.dtype = dtype;
  return a;
}

void run(const rtn::Args& a) {
  const int err = rtn::launch(a, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "rtn kernel launch failed: ", rtn::error_string(err));
}

// Quantize-dequantize: same shape and dtype as w. Equivalent to rtn_reference.rtn_fake_quantize.
at::Tensor fake_quantize(const at::Tensor& w, int64_t bits, int64_t group_size, bool symmetric) {
  const rtn::Dtype dtype = check_inputs(w, bits, group_size);
  const c10::cuda::CUDAGuard guard(w.device());
  at::Tensor deq = at::empty_like(w);
  rtn::Args a = make_args(w, bits, group_size, symmetric, dtype);
  a.deq = deq.data_ptr();
  if (w.numel() == 0) return deq;
  at::Tensor scratch;
  if (rtn::needs_scratch(a)) {  // row-wise path keeps per-group scale/zero between its two sweeps
    scratch = at::empty({2, a.rows, rtn::n_groups(a.cols, group_size)}, w.options().dtype(at::kFloat));
    a.scales = scratch[0].data_ptr<float>();
    a.zeros = scratch[1].data_ptr<float>();
  }
  run(a);
  return deq;
}

// Codes packed 8 per `bits` bytes (uint8 [rows, ceil(cols/8)*bits]), scales and zeros (float32
// [rows, n_groups]). Equivalent to rtn_reference.rtn_quantize followed by rtn_kernel.pack_codes.
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize(const at::Tensor& w, int64_t bits, int64_t group_size,
                                                       bool symmetric) {
  const rtn::Dtype dtype = check_inputs(w, bits, group_size);
  const c10::cuda::CUDAGuard guard(w.device());
  const int64_t rows = w.size(0), cols = w.size(1);
  const int64_t ng = cols == 0 ? 0 : rtn::n_groups(cols, group_size);
  const int64_t row_bytes = rtn::packed_row_bytes(cols, static_cast<int>(bits));
  at::Tensor packed = at::empty({rows, row_bytes}, w.options().dtype(at::kByte));  // every byte is written
  at::Tensor scales = at::empty({rows, ng}, w.options().dtype(at::kFloat));
  at::Tensor zeros = at::empty({rows, ng}, w.options().dtype(at::kFloat));
  if (w.numel() == 0) return {packed, scales, zeros};
  rtn::Args a = make_args(w, bits, group_size, symmetric, dtype);
  a.packed = packed.data_ptr<uint8_t>();
  a.scales = scales.data_ptr<float>();
  a.zeros = zeros.data_ptr<float>();
  run(a);
  return {packed, scales, zeros};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fake_quantize", &fake_quantize, "RTN quantize-dequantize (w, bits, group_size, symmetric) -> w_hat");
  m.def("quantize", &quantize, "RTN quantize (w, bits, group_size, symmetric) -> (packed, scales, zeros)");
}
