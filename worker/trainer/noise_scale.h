// The gradient noise scale of McCandlish et al. 2018 ("An Empirical Model of Large-Batch
// Training", appendix A.1): B_simple = tr(Σ) / |G|², where G is the true gradient and Σ the
// covariance of one example's gradient. B_simple estimates the critical batch size: batches
// much smaller than it waste steps, much larger ones waste examples. LibTorch-free.
//
// A data-parallel step measures the gradient at two batch sizes for free: each rank's own
// gradient G_small (batch B_small) before the all-reduce and the averaged G_big (batch
// B_big = ranks · B_small) after it. Since E|G_B|² = |G|² + tr(Σ)/B,
//   |G|²  ≈ (B_big·|G_big|² − B_small·|G_small|²) / (B_big − B_small)
//   tr(Σ) ≈ (|G_small|² − |G_big|²) / (1/B_small − 1/B_big)
// are unbiased; |G_small|² is the mean over ranks of each rank's squared norm. Each estimate
// is very noisy (|G|²'s often comes out negative), so both are smoothed by exponential moving
// averages and the ratio is taken of the averages, never of one step's estimates.
//
// Units: B counts whatever the caller counts. The trainer passes tokens, so its
// optim/noise_scale is in tokens (divide by data.seq_len for sequences). Gradients with
// grad_acc_steps > 1 need nothing special: a rank's gradient is the mean over all its
// micro-batches, i.e. over its whole per-step batch of B_small tokens.
#ifndef SWEEP_WORKER_TRAINER_NOISE_SCALE_H_
#define SWEEP_WORKER_TRAINER_NOISE_SCALE_H_

#include <cstdint>

namespace sweep::trainer {

// One step's unbiased estimates of |G|² and tr(Σ).
struct GradientNoiseEstimate {
  double grad_sq = 0;  // |G|²
  double trace = 0;    // tr(Σ), per unit of batch (tokens for the trainer)
};

// From the mean squared norm of gradients over batches of `small_batch` and the squared
// norm of their mean over `big_batch` (> small_batch). Non-finite when the inputs are.
GradientNoiseEstimate EstimateGradientNoise(double small_sq_norm, double big_sq_norm,
                                            double small_batch, double big_batch);

// Exponential moving averages of the two estimates, with Adam's bias correction so that the
// first steps are not pulled towards zero. Plain value; the state goes into checkpoints.
class GradientNoiseScale {
 public:
  struct State {
    double grad_sq = 0;  // Uncorrected averages.
    double trace = 0;
    int64_t count = 0;  // Estimates added.
  };

  explicit GradientNoiseScale(double decay) : decay_(decay) {}

  // Adds one step's estimate; a non-finite one is skipped (the trainer's divergence checks
  // deal with non-finite gradients).
  void Add(const GradientNoiseEstimate& estimate);

  bool empty() const { return state_.count == 0; }
  // Bias-corrected averages; NaN while empty.
  double grad_sq() const;
  double trace() const;
  // B_simple = trace() / grad_sq(); NaN while empty. Negative or huge while |G|²'s average
  // is still near zero (early, or when the gradient is almost pure noise).
  double noise_scale() const;

  const State& state() const { return state_; }
  void set_state(const State& state) { state_ = state; }

 private:
  double Correction() const;

  const double decay_;
  State state_;
};

}  // namespace sweep::trainer

#endif  // SWEEP_WORKER_TRAINER_NOISE_SCALE_H_
