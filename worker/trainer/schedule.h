// Learning-rate schedules, as Lingua's lingua/optim.py defines them. LibTorch-free.
//
// lr(step) = optim.lr * LrFactor(step). Lingua drives them through torch's LambdaLR, whose
// counter starts at 0 and advances after each optimizer step: optimizer step number k
// (1-based, the logged `global_step`) uses LrFactor(k - 1). LearningRateForStep() does that.
#ifndef SWEEP_WORKER_TRAINER_SCHEDULE_H_
#define SWEEP_WORKER_TRAINER_SCHEDULE_H_

#include <cstdint>
#include <string>

#include "worker/trainer/config.h"

namespace sweep::trainer {

// Lingua's f(step) for optim.scheduler over `n_steps` total optimizer steps.
// Linear warmup f = step / warmup for step < warmup, then:
//   constant  1
//   linear    s·m + (1 − s),                       s = (step − warmup) / (n − warmup)
//   cosine    m + ½(1 − m)(sign·cos(π·s^θ / cycle_length) + 1)
//   inv_sqrt  max((warmup / step)^exp_factor, m)
//   wsd       1, then 1 / (p/m + (1 − p)) over the last decay_fraction of the cycle
// and m (lr_min_ratio) after n steps.
double LrFactor(const OptimArgs& optim, int64_t step, int64_t n_steps);

// The learning rate used by optimizer step `global_step` (1-based).
double LearningRateForStep(const OptimArgs& optim, int64_t global_step, int64_t n_steps);

// True for the names LrFactor understands.
bool IsKnownScheduler(const std::string& name);

}  // namespace sweep::trainer

#endif  // SWEEP_WORKER_TRAINER_SCHEDULE_H_
