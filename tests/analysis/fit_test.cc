// The numerics: least squares, the quadratic's vertex and Fieller interval, power laws with
// bootstrap intervals, the spike rule, and Lingua's parameter count.
#include "analysis/fit.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "analysis/shape.h"
#include "tests/testing/status.h"

namespace sweep::analysis {
namespace {

TEST(FitLinearModel, RecoversAnExactLine) {
  Eigen::MatrixXd x(4, 2);
  Eigen::VectorXd y(4);
  for (int i = 0; i < 4; ++i) {
    x(i, 0) = 1;
    x(i, 1) = i;
    y(i) = 2.0 - 0.5 * i;
  }
  absl::StatusOr<LinearModelFit> fit = FitLinearModel(x, y);
  ASSERT_OK(fit);
  EXPECT_NEAR(fit->beta(0), 2.0, 1e-12);
  EXPECT_NEAR(fit->beta(1), -0.5, 1e-12);
  EXPECT_EQ(fit->dof, 2);
  EXPECT_NEAR(fit->r2, 1.0, 1e-12);
  EXPECT_NEAR(fit->sigma, 0.0, 1e-12);
}

TEST(FitLinearModel, RefusesDegenerateInput) {
  Eigen::MatrixXd same_x(3, 2);
  same_x << 1, 2, 1, 2, 1, 2;
  Eigen::VectorXd y(3);
  y << 1, 2, 3;
  EXPECT_EQ(FitLinearModel(same_x, y).status().code(), absl::StatusCode::kFailedPrecondition);

  Eigen::MatrixXd x(1, 2);
  x << 1, 2;
  Eigen::VectorXd one(1);
  one << 1;
  EXPECT_EQ(FitLinearModel(x, one).status().code(), absl::StatusCode::kFailedPrecondition);

  Eigen::MatrixXd ok(3, 2);
  ok << 1, 0, 1, 1, 1, 2;
  Eigen::VectorXd nan(3);
  nan << 1, std::nan(""), 3;
  EXPECT_EQ(FitLinearModel(ok, nan).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(FitQuadratic, FindsTheVertexAndItsInterval) {
  // y = 2 + 0.3 (x + 2.2)^2 with small alternating noise, three replicates per x.
  std::vector<double> x, y;
  const double noise[] = {0.002, -0.001, -0.001};
  for (double xi : {-2.75, -2.5, -2.25, -2.0, -1.75}) {
    for (double e : noise) {
      x.push_back(xi);
      y.push_back(2 + 0.3 * (xi + 2.2) * (xi + 2.2) + e);
    }
  }
  absl::StatusOr<QuadraticFit> fit = FitQuadratic(x, y);
  ASSERT_OK(fit);
  ASSERT_TRUE(fit->convex());
  EXPECT_NEAR(fit->Vertex(), -2.2, 1e-9);  // the noise is the same at every x
  EXPECT_NEAR(fit->ValueAt(-2.2), 2.0, 1e-3);
  absl::StatusOr<Interval> ci = fit->VertexInterval(0.9);
  ASSERT_OK(ci);
  EXPECT_TRUE(ci->bounded());
  EXPECT_TRUE(ci->Contains(fit->Vertex()));
  // With a well-determined curvature Fieller's interval is close to vertex +/- t * se.
  const double t = StudentTQuantile(0.9, fit->model.dof);
  EXPECT_NEAR(ci->hi - ci->lo, 2 * t * fit->VertexSe(), 0.1 * (ci->hi - ci->lo));
}

TEST(FitQuadratic, DegenerateCases) {
  EXPECT_EQ(FitQuadratic({1, 2}, {1, 2}).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(FitQuadratic({1, 1, 2, 2}, {1, 2, 3, 4}).status().code(),
            absl::StatusCode::kFailedPrecondition);  // two distinct x for three coefficients
  absl::StatusOr<QuadraticFit> concave = FitQuadratic({0, 1, 2, 3}, {0, 1, 1, 0});
  ASSERT_OK(concave);
  EXPECT_FALSE(concave->convex());
  // Three points: an exact fit, no residual to estimate noise from.
  absl::StatusOr<QuadraticFit> exact = FitQuadratic({0, 1, 2}, {1, 0, 1});
  ASSERT_OK(exact);
  EXPECT_NEAR(exact->Vertex(), 1.0, 1e-12);
  EXPECT_EQ(exact->VertexInterval(0.9).status().code(), absl::StatusCode::kFailedPrecondition);
  // Nearly flat with noise: the curvature is not significant, the interval unbounded.
  absl::StatusOr<QuadraticFit> flat =
      FitQuadratic({0, 0, 1, 1, 2, 2}, {1.0, 1.3, 0.9, 1.2, 1.01, 1.29});
  ASSERT_OK(flat);
  absl::StatusOr<Interval> wide = flat->VertexInterval(0.9);
  ASSERT_OK(wide);
  EXPECT_FALSE(wide->bounded());
}

TEST(PowerLawFit, ExactLawHasAZeroWidthInterval) {
  std::vector<double> x = {1e5, 3e5, 1e6, 3e6}, y;
  for (double xi : x) y.push_back(0.5 * std::pow(xi, -0.3));
  absl::StatusOr<PowerLawFit> fit = PowerLawFit::Fit(x, y, BootstrapOptions{});
  ASSERT_OK(fit);
  EXPECT_NEAR(fit->exponent(), -0.3, 1e-12);
  EXPECT_NEAR(fit->prefactor(), 0.5, 1e-9);
  EXPECT_NEAR(fit->r2(), 1.0, 1e-12);
  EXPECT_NEAR(fit->exponent_ci().lo, -0.3, 1e-9);
  EXPECT_NEAR(fit->exponent_ci().hi, -0.3, 1e-9);
  EXPECT_NEAR(fit->Predict(1e9), 0.5 * std::pow(1e9, -0.3), 1e-12);
}

TEST(PowerLawFit, DegenerateCases) {
  EXPECT_EQ(PowerLawFit::Fit({1e5}, {1e-3}, {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(PowerLawFit::Fit({1e5, 1e5, 1e5}, {1e-3, 2e-3, 3e-3}, {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(PowerLawFit::Fit({1e5, 1e6}, {1e-3, -1e-3}, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PowerLawFit::Fit({1e5, 1e6}, {1e-3, std::nan("")}, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Two points: a line, but nothing to resample: the interval is unbounded, not made up.
  absl::StatusOr<PowerLawFit> two = PowerLawFit::Fit({1e5, 1e6}, {1e-2, 5e-3}, {});
  ASSERT_OK(two);
  EXPECT_NEAR(two->exponent(), std::log10(0.5), 1e-12);
  EXPECT_FALSE(two->exponent_ci().bounded());
}

TEST(PowerLawFit, BootstrapIsSeededAndCoversTheSlope) {
  // Many noisy points: the studentized bootstrap should cover the true slope about 90 % of
  // the time; and the same seed gives the same interval.
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal(0, 0.05);
  int covered = 0;
  const int reps = 100;
  for (int r = 0; r < reps; ++r) {
    std::vector<double> x, y;
    for (int i = 0; i < 8; ++i) {
      x.push_back(std::pow(10.0, 5 + 0.25 * i));
      y.push_back(std::pow(10.0, -1 - 0.3 * (5 + 0.25 * i) + normal(rng)));
    }
    absl::StatusOr<PowerLawFit> fit = PowerLawFit::Fit(x, y, BootstrapOptions{500, 0.9, 11});
    ASSERT_OK(fit);
    if (fit->exponent_ci().Contains(-0.3)) ++covered;
    if (r == 0) {
      absl::StatusOr<PowerLawFit> again = PowerLawFit::Fit(x, y, BootstrapOptions{500, 0.9, 11});
      ASSERT_OK(again);
      EXPECT_EQ(fit->exponent_ci().lo, again->exponent_ci().lo);
      EXPECT_EQ(fit->exponent_ci().hi, again->exponent_ci().hi);
    }
  }
  std::printf("power law, 8 points: 90 %% interval covered the slope in %d of %d\n", covered, reps);
  EXPECT_GE(covered, 80);
}

TEST(SortedQuantile, InterpolatesAndKeepsInfinities) {
  EXPECT_DOUBLE_EQ(SortedQuantile({1, 2, 3, 4}, 0.5), 2.5);
  EXPECT_DOUBLE_EQ(SortedQuantile({1, 2, 3, 4}, 0.0), 1);
  EXPECT_DOUBLE_EQ(SortedQuantile({1, 2, 3, 4}, 1.0), 4);
  EXPECT_EQ(SortedQuantile({-kInf, 0, 1, kInf}, 0.1), -kInf);
  EXPECT_EQ(SortedQuantile({-kInf, 0, 1, kInf}, 0.9), kInf);
  EXPECT_DOUBLE_EQ(SortedQuantile({-kInf, 0, 1, kInf}, 0.5), 0.5);
}

TEST(DetectSpikes, FollowsTheRollingZRule) {
  std::vector<double> v(200, 1.0);
  std::vector<bool> finite(200, true);
  for (size_t i = 0; i < v.size(); ++i)
    v[i] += 0.01 * (static_cast<int>((i * 7919) % 13) - 6) / 6.0;
  EXPECT_TRUE(DetectSpikes(v, finite, SpikeRule{}).empty());  // smooth: no spike

  v[150] = 3.0;
  std::vector<DetectedSpike> spikes = DetectSpikes(v, finite, SpikeRule{});
  ASSERT_EQ(spikes.size(), 1u);
  EXPECT_EQ(spikes[0].index, 150u);
  EXPECT_GT(spikes[0].z, 6);
  EXPECT_NEAR(spikes[0].mean, 1.0, 0.01);

  v[10] = 3.0;  // too early: fewer than 20 values before it
  EXPECT_EQ(DetectSpikes(v, finite, SpikeRule{}).size(), 1u);

  finite[150] = false;  // a non-finite value is not a spike (divergence is judged elsewhere)
  EXPECT_TRUE(DetectSpikes(v, finite, SpikeRule{}).empty());

  std::vector<double> flat(100, 2.0);
  std::vector<bool> all(100, true);
  flat[60] = 2.0000001;  // a flat window has no spread: never scored
  EXPECT_TRUE(DetectSpikes(flat, all, SpikeRule{}).empty());
}

TEST(Shape, LinguaNonEmbeddingCount) {
  // Counted by hand from the shapes (Lingua: all parameters but the token embedding).
  const std::vector<TargetModel> targets = LinguaTargets();
  ASSERT_EQ(targets.size(), 2u);
  // 1B: 25 x (4*2048^2 + 3*2048*5632 + 2*2048) + 2048 + 128256*2048
  EXPECT_EQ(targets[0].shape.ffn_hidden, 5632);
  EXPECT_EQ(targets[0].shape.NonEmbeddingParams(), 1547278336);
  // 7B: 32 x (4*4096^2 + 3*4096*11008 + 2*4096) + 4096 + 128256*4096
  EXPECT_EQ(targets[1].shape.ffn_hidden, 11008);
  EXPECT_EQ(targets[1].shape.NonEmbeddingParams(), 7001608192);
  // Lingua's 1B sees 60,000 steps of 64 x 4 x 4096 tokens.
  EXPECT_DOUBLE_EQ(targets[0].shape.Tokens(), 60000.0 * 64 * 4 * 4096);

  // The bundled depth_lr shape, from its YAML: dim 64, 2 layers, 4 heads, byte vocabulary.
  absl::StatusOr<RunShape> small = ShapeFromConfigText(
      "steps: 150\nmodel: {dim: 64, n_layers: 2, n_heads: 4}\n"
      "optim: {lr: 0.01, weight_decay: 0.1, warmup: 30}\n"
      "data: {sources: {kjv: 1.0}, batch_size: 16, seq_len: 64}\n");
  ASSERT_OK(small);
  EXPECT_EQ(small->ffn_hidden, 256);
  EXPECT_EQ(small->vocab_size, 258);
  EXPECT_EQ(small->NonEmbeddingParams(), 2 * (4 * 64 * 64 + 3 * 64 * 256 + 2 * 64) + 64 + 258 * 64);
  EXPECT_DOUBLE_EQ(small->Tokens(), 150.0 * 16 * 64);
  EXPECT_EQ(small->warmup, 30);
  EXPECT_DOUBLE_EQ(small->lr, 0.01);

  // Grouped-query attention and qk-norm change the attention count.
  absl::StatusOr<RunShape> gqa = ShapeFromConfigText(
      "model: {dim: 128, n_layers: 1, n_heads: 8, n_kv_heads: 2, qk_norm: true}\n"
      "data: {sources: {kjv: 1.0}}\n");
  ASSERT_OK(gqa);
  const int64_t attention = 128 + 128 * 128 + 2 * (2 * 16) * 128 + 128 * 128 + 2 * 16;
  const int64_t ffn = 128 + 3 * 512 * 128;
  EXPECT_EQ(gqa->NonEmbeddingParams(), attention + ffn + 128 + 258 * 128);

  EXPECT_FALSE(ShapeFromConfigText("model: {dim: sixty}\n").ok());
}

TEST(Shape, DeepSeekFormula) {
  EXPECT_NEAR(DeepSeekLr(1e20), 0.3118 * std::pow(1e20, -0.125), 1e-15);
  EXPECT_NEAR(DeepSeekLr(1e20), 9.86e-4, 1e-6);
}

}  // namespace
}  // namespace sweep::analysis
