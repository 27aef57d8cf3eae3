// The gradient noise scale's arithmetic (worker/trainer/noise_scale.h), LibTorch-free: the
// estimator recovers known moments exactly; the moving averages are bias-corrected and
// restorable. Against real gradients: noise_scale_e2e_test.cc.
#include "worker/trainer/noise_scale.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace sweep::trainer {
namespace {

TEST(NoiseScaleTest, EstimatorRecoversKnownMomentsExactly) {
  // With E|G_B|² = |G|² + tr(Σ)/B plugged in, the two formulas return |G|² and tr(Σ).
  struct Case {
    double grad_sq, trace, small, big;
  } cases[] = {
      {1.0, 100.0, 4, 8},
      {0.25, 3e4, 128, 256},
      {2.0, 0.0, 10, 40},
      {1e-3, 5.0, 1024, 8192},
  };
  for (const Case& c : cases) {
    const double small_sq = c.grad_sq + c.trace / c.small;
    const double big_sq = c.grad_sq + c.trace / c.big;
    const GradientNoiseEstimate e = EstimateGradientNoise(small_sq, big_sq, c.small, c.big);
    EXPECT_NEAR(e.grad_sq, c.grad_sq, 1e-12 * (c.grad_sq + c.trace));
    EXPECT_NEAR(e.trace, c.trace, 1e-9 * (c.grad_sq * c.big + c.trace));
  }
  // Units: counting tokens instead of sequences of T tokens scales tr(Σ) (and B_simple) by T
  // and leaves |G|² alone.
  const GradientNoiseEstimate seqs = EstimateGradientNoise(3.0, 2.0, 4, 8);
  const GradientNoiseEstimate tokens = EstimateGradientNoise(3.0, 2.0, 4 * 32, 8 * 32);
  EXPECT_DOUBLE_EQ(tokens.grad_sq, seqs.grad_sq);
  EXPECT_DOUBLE_EQ(tokens.trace, 32 * seqs.trace);
}

TEST(NoiseScaleTest, MovingAveragesAreBiasCorrectedAndRestorable) {
  GradientNoiseScale gns(0.9);
  EXPECT_TRUE(gns.empty());
  EXPECT_TRUE(std::isnan(gns.noise_scale()));
  gns.Add({2.0, 300.0});
  EXPECT_DOUBLE_EQ(gns.grad_sq(), 2.0);  // One estimate: the corrected average is that estimate.
  EXPECT_DOUBLE_EQ(gns.trace(), 300.0);
  EXPECT_DOUBLE_EQ(gns.noise_scale(), 150.0);
  gns.Add({std::numeric_limits<double>::quiet_NaN(), 1.0});  // Skipped.
  EXPECT_EQ(gns.state().count, 1);
  gns.Add({4.0, 100.0});
  // (0.9·0.1·2 + 0.1·4) / (1 − 0.81) and likewise for the trace.
  EXPECT_NEAR(gns.grad_sq(), (0.09 * 2 + 0.1 * 4) / 0.19, 1e-12);
  EXPECT_NEAR(gns.trace(), (0.09 * 300 + 0.1 * 100) / 0.19, 1e-9);
  EXPECT_NEAR(gns.noise_scale(), gns.trace() / gns.grad_sq(), 1e-12);
  GradientNoiseScale restored(0.9);
  restored.set_state(gns.state());
  restored.Add({1.0, 50.0});
  gns.Add({1.0, 50.0});
  EXPECT_EQ(restored.noise_scale(), gns.noise_scale());
}

}  // namespace
}  // namespace sweep::trainer
