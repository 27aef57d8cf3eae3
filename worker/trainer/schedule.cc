#include "worker/trainer/schedule.h"

#include <algorithm>
#include <cmath>

namespace sweep::trainer {
namespace {

constexpr double kPi = 3.14159265358979323846;

// Fraction of the post-warmup phase done at `step`; 1 when there is no such phase.
double DecayProgress(int64_t step, int64_t warmup, int64_t n_steps) {
  if (n_steps <= warmup) return 1.0;
  return static_cast<double>(step - warmup) / static_cast<double>(n_steps - warmup);
}

double Linear(int64_t step, int64_t n_steps, const OptimArgs& o) {
  if (step > n_steps) return o.lr_min_ratio;
  const double s = DecayProgress(step, o.warmup, n_steps);
  return s * o.lr_min_ratio + (1.0 - s);
}

double InvSqrt(int64_t step, const OptimArgs& o) {
  if (step == 0) return 1.0;  // Only reachable with warmup 0.
  return std::max(std::pow(static_cast<double>(o.warmup), o.exp_factor) /
                      std::pow(static_cast<double>(step), o.exp_factor),
                  o.lr_min_ratio);
}

double Cosine(int64_t step, int64_t n_steps, const OptimArgs& o) {
  const double cycle = static_cast<double>(n_steps) * o.cycle_length;
  const int64_t cycle_index = static_cast<int64_t>(std::floor(static_cast<double>(step) / cycle));
  const double sign = (cycle_index % 2) * -2.0 + 1.0;
  if (step > n_steps) return o.lr_min_ratio;
  const double s = DecayProgress(step, o.warmup, n_steps);
  const double m = o.lr_min_ratio;
  return m + 0.5 * (1.0 - m) *
                 (sign * std::cos(kPi * std::pow(s, o.cosine_theta) / o.cycle_length) + 1.0);
}

double Wsd(int64_t step, int64_t n_steps, const OptimArgs& o) {
  const int64_t cycle_steps =
      std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(n_steps) * o.cycle_length));
  int64_t cycle_num = step / cycle_steps + 1;
  int64_t curr_n_steps = cycle_steps * cycle_num;
  const int64_t decay_length =
      static_cast<int64_t>(static_cast<double>(curr_n_steps) * o.decay_fraction);
  if (step == n_steps) {
    cycle_num -= 1;
    curr_n_steps = n_steps;
  }
  if (step <= curr_n_steps - decay_length) return 1.0;
  if (step <= curr_n_steps) {
    const double p = static_cast<double>(step - (curr_n_steps - decay_length)) /
                     static_cast<double>(curr_n_steps);
    return 1.0 / (p * (1.0 / o.lr_min_ratio) + (1.0 - p));
  }
  return o.lr_min_ratio;
}

}  // namespace

bool IsKnownScheduler(const std::string& name) {
  return name == "constant" || name == "linear" || name == "cosine" || name == "inv_sqrt" ||
         name == "wsd";
}

double LrFactor(const OptimArgs& optim, int64_t step, int64_t n_steps) {
  if (step < optim.warmup) {
    return static_cast<double>(step) / static_cast<double>(optim.warmup);
  }
  if (optim.scheduler == "linear") return Linear(step, n_steps, optim);
  if (optim.scheduler == "inv_sqrt") return InvSqrt(step, optim);
  if (optim.scheduler == "cosine") return Cosine(step, n_steps, optim);
  if (optim.scheduler == "wsd") return Wsd(step, n_steps, optim);
  return 1.0;  // constant (ValidateTrainConfig refuses unknown names).
}

double LearningRateForStep(const OptimArgs& optim, int64_t global_step, int64_t n_steps) {
  return optim.lr * LrFactor(optim, global_step - 1, n_steps);
}

}  // namespace sweep::trainer
