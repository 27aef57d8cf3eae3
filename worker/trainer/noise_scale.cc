#include "worker/trainer/noise_scale.h"

#include <cmath>
#include <limits>

namespace sweep::trainer {

GradientNoiseEstimate EstimateGradientNoise(double small_sq_norm, double big_sq_norm,
                                            double small_batch, double big_batch) {
  GradientNoiseEstimate e;
  e.grad_sq = (big_batch * big_sq_norm - small_batch * small_sq_norm) / (big_batch - small_batch);
  e.trace = (small_sq_norm - big_sq_norm) / (1.0 / small_batch - 1.0 / big_batch);
  return e;
}

void GradientNoiseScale::Add(const GradientNoiseEstimate& estimate) {
  if (!std::isfinite(estimate.grad_sq) || !std::isfinite(estimate.trace)) return;
  state_.grad_sq = decay_ * state_.grad_sq + (1 - decay_) * estimate.grad_sq;
  state_.trace = decay_ * state_.trace + (1 - decay_) * estimate.trace;
  ++state_.count;
}

double GradientNoiseScale::Correction() const {
  if (state_.count == 0) return std::numeric_limits<double>::quiet_NaN();
  return 1.0 - std::pow(decay_, static_cast<double>(state_.count));
}

double GradientNoiseScale::grad_sq() const { return state_.grad_sq / Correction(); }

double GradientNoiseScale::trace() const { return state_.trace / Correction(); }

double GradientNoiseScale::noise_scale() const {
  if (state_.count == 0) return std::numeric_limits<double>::quiet_NaN();
  return state_.trace / state_.grad_sq;  // The corrections cancel.
}

}  // namespace sweep::trainer
