#include "worker/trainer/optimizer.h"

#include <cmath>

#include "worker/trainer/torch_compat.h"

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
#if SWEEP_TORCH_AT_LEAST(2, 1)
  // On CUDA one fused kernel does the whole update (torch.optim.AdamW(fused=True)). It applies
  // p·(1 − lr·weight_decay), so the decay is passed as decay/lr; the bias corrections use
  // `state_step_`, which the kernel increments (hence step − 1 here: a resumed run's step
  // count carries over). A zero lr with a non-zero decay (independent_wd) takes the plain path.
  if (params_.is_cuda() && lr > 0.0) {
    if (!state_step_.defined()) {
      state_step_ = torch::zeros({}, params_.options().dtype(torch::kFloat32));
    }
    state_step_.fill_(static_cast<double>(step_ - 1));
    at::_fused_adamw_({params_}, {grads_}, {exp_avg_}, {exp_avg_sq_}, /*max_exp_avg_sqs=*/{},
                      {state_step_}, lr, args_.beta1, args_.beta2, decay / lr, args_.epsilon,
                      /*amsgrad=*/false, /*maximize=*/false);
    return;
  }
#endif
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
