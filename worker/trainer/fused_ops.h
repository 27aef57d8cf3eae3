// Fused CPU kernels for the two element-wise blocks of the model that ATen runs as many
// separate passes: RMSNorm (6 kernels forward, ~10 backward) and SwiGLU's silu(a)·b.
// Each is one pass forward and one pass backward over the data, written with
// at::parallel_for. On other devices (CUDA) they fall back to the composite ATen ops.
//
// The results equal the composite ops up to float32 rounding (sums are accumulated in
// double here); tests/worker/trainer/fused_ops_test.cc holds them together.
#ifndef SWEEP_WORKER_TRAINER_FUSED_OPS_H_
#define SWEEP_WORKER_TRAINER_FUSED_OPS_H_

#include <torch/torch.h>

namespace sweep::trainer {

// x · rsqrt(mean(x², last dim) + eps) · weight. x: (..., n) float32; weight: (n).
torch::Tensor FusedRmsNorm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// silu(a) · b, element-wise; a and b of the same shape, float32.
torch::Tensor FusedSwiGlu(const torch::Tensor& a, const torch::Tensor& b);

}  // namespace sweep::trainer

#endif  // SWEEP_WORKER_TRAINER_FUSED_OPS_H_
