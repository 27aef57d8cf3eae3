#include "worker/trainer/optimizer.h"

#include <cmath>

namespace sweep::trainer {

AdamW::AdamW(torch::Tensor params, torch::Tensor grads, const OptimArgs& args)
    : args_(args),
      params_(std::move(params)),
      grads_(std::move(grads)),
      exp_avg_(torch::zeros_like(params_)),
      exp_avg_sq_(torch::zeros_like(params_)),
      denom_(torch::empty_like(params_)) {}

void AdamW::Step(double lr, double decay) {
  torch::NoGradGuard no_grad;
  ++step_;
  if (decay != 0.0) params_.mul_(1.0 - decay);
  exp_avg_.mul_(args_.beta1).add_(grads_, 1.0 - args_.beta1);
  exp_avg_sq_.mul_(args_.beta2).addcmul_(grads_, grads_, 1.0 - args_.beta2);
  const double bias_correction1 = 1.0 - std::pow(args_.beta1, static_cast<double>(step_));
  const double bias_correction2 = 1.0 - std::pow(args_.beta2, static_cast<double>(step_));
  const double step_size = lr / bias_correction1;
  torch::sqrt_out(denom_, exp_avg_sq_);
  denom_.div_(std::sqrt(bias_correction2)).add_(args_.epsilon);
  params_.addcdiv_(exp_avg_, denom_, -step_size);
}

}  // namespace sweep::trainer
