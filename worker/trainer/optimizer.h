// AdamW over the model's flat parameter buffer, as torch.optim.AdamW computes it
// (decoupled weight decay scaled by the learning rate, bias-corrected moments):
//   p   <- p · (1 − decay)                 decay = lr·wd, or f(step)·wd (independent_wd)
//   m   <- β1·m + (1 − β1)·g
//   v   <- β2·v + (1 − β2)·g²
//   p   <- p − lr/(1 − β1^t) · m / (√v / √(1 − β2^t) + ε)
// Because the parameters are one contiguous buffer, each line is one tensor operation; on CUDA
// with LibTorch 2.x the whole update is one fused kernel (at::_fused_adamw_).
#ifndef SWEEP_WORKER_TRAINER_OPTIMIZER_H_
#define SWEEP_WORKER_TRAINER_OPTIMIZER_H_

#include <torch/torch.h>

#include <cstdint>

#include "worker/trainer/config.h"

namespace sweep::trainer {

class AdamW {
 public:
  // `params` and `grads` are the model's flat buffers; both must outlive the optimizer.
  AdamW(torch::Tensor params, torch::Tensor grads, const OptimArgs& args);
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;

  // One update with learning rate `lr`; `decay` is the fraction the weights shrink by.
  void Step(double lr, double decay);

  int64_t step() const { return step_; }
  torch::Tensor& exp_avg() { return exp_avg_; }
  torch::Tensor& exp_avg_sq() { return exp_avg_sq_; }
  void set_step(int64_t step) { step_ = step; }

 private:
  const OptimArgs args_;
  torch::Tensor params_;
  torch::Tensor grads_;
  torch::Tensor exp_avg_;
  torch::Tensor exp_avg_sq_;
  torch::Tensor denom_;       // Scratch, reused every step.
  torch::Tensor state_step_;  // CUDA's fused kernel: the step count as a device scalar.
  int64_t step_ = 0;
};

}  // namespace sweep::trainer

#endif  // SWEEP_WORKER_TRAINER_OPTIMIZER_H_
