#include "orchestrator/detector.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <vector>

namespace sweep::orchestrator {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Smooth, noisy training traces: a loss decaying from ~5.5 towards 1.5, and a grad norm that
// rises through warmup and then decays slowly, each with Gaussian noise.
struct Traces {
  std::vector<double> loss, grad_norm;  // Index 0 is step 1.
};

Traces SmoothTraces(int steps, unsigned seed, double loss_noise = 0.05, double grad_noise = 0.03) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  Traces t;
  for (int step = 1; step <= steps; ++step) {
    t.loss.push_back(1.5 + 4.0 * std::exp(-step / 400.0) + loss_noise * normal(rng));
    const double shape = std::min(1.0, step / 100.0) * (0.3 + 0.7 * std::exp(-step / 2000.0));
    t.grad_norm.push_back(0.1 + shape + grad_noise * normal(rng));
  }
  return t;
}

struct Found {
  std::vector<Spike> spikes;
  std::vector<Divergence> divergences;
};

Found Feed(TrialDetector& d, const Traces& t, int from = 1) {
  Found found;
  for (int step = from; step <= static_cast<int>(t.loss.size()); ++step) {
    for (const auto& [name, trace] :
         {std::pair{kLossMetric, &t.loss}, {kGradNormMetric, &t.grad_norm}}) {
      TrialDetector::Findings f = d.Observe(name, step, (*trace)[step - 1]);
      found.spikes.insert(found.spikes.end(), f.spikes.begin(), f.spikes.end());
      if (f.divergence) found.divergences.push_back(*f.divergence);
    }
  }
  return found;
}

TEST(DetectorTest, NoFalsePositivesOnSmoothNoisyTraces) {
  for (unsigned seed = 1; seed <= 20; ++seed) {
    const Traces t = SmoothTraces(5000, seed);
    TrialDetector d(DetectionOptions{}, /*warmup=*/100);
    const Found found = Feed(d, t);
    EXPECT_TRUE(found.spikes.empty()) << "seed " << seed << ": " << found.spikes.size()
                                      << " spikes, first at step " << found.spikes[0].step;
    EXPECT_TRUE(found.divergences.empty())
        << "seed " << seed << ": " << found.divergences[0].Describe();
  }
}

TEST(DetectorTest, NoDivergenceForARunThatBarelyLearns) {
  // lr too small: the loss stays at its initial level, noisy, for the whole run.
  std::mt19937 rng(7);
  std::normal_distribution<double> normal(0.0, 0.1);
  TrialDetector d(DetectionOptions{}, /*warmup=*/5);
  for (int step = 1; step <= 3000; ++step) {
    TrialDetector::Findings f = d.Observe(kLossMetric, step, 5.55 - step * 1e-5 + normal(rng));
    ASSERT_FALSE(f.divergence) << f.divergence->Describe();
  }
}

TEST(DetectorTest, InjectedSpikesAreFoundAtTheirExactSteps) {
  for (unsigned seed = 1; seed <= 10; ++seed) {
    Traces t = SmoothTraces(5000, 100 + seed);
    // Grad-norm spikes, two of them within one window; one in warmup (after 20 values).
    const std::set<int64_t> grad_spikes = {60, 700, 760, 2500, 4999};
    for (int64_t step : grad_spikes) t.grad_norm[step - 1] += 1.5;
    const std::set<int64_t> loss_spikes = {1200, 3333};
    for (int64_t step : loss_spikes) t.loss[step - 1] += 1.0;
    TrialDetector d(DetectionOptions{}, /*warmup=*/100);
    const Found found = Feed(d, t);
    std::set<int64_t> grad_found, loss_found;
    for (const Spike& s : found.spikes) {
      (s.name == kGradNormMetric ? grad_found : loss_found).insert(s.step);
      EXPECT_GT(s.z, 6);
      EXPECT_EQ(s.in_warmup, s.step <= 100) << s.step;
      EXPECT_LT(s.mean, s.value);
    }
    EXPECT_EQ(grad_found, grad_spikes) << "seed " << seed;
    EXPECT_EQ(loss_found, loss_spikes) << "seed " << seed;
    EXPECT_TRUE(found.divergences.empty()) << found.divergences[0].Describe();
  }
}

TEST(DetectorTest, NothingIsJudgedBeforeMinValuesAndTheThresholdIsConfigurable) {
  DetectionOptions options;
  options.window = 16;
  options.min_values = 10;
  options.z = 3;
  TrialDetector d(options, 0);
  const double trace[] = {1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.1, 0.9};  // 9 values
  int step = 0;
  for (double v : trace) EXPECT_TRUE(d.Observe(kGradNormMetric, ++step, v).spikes.empty());
  EXPECT_TRUE(d.Observe(kGradNormMetric, ++step, 50.0).spikes.empty());  // 9 in the window
  for (double v : trace) d.Observe(kGradNormMetric, ++step, v);
  // The 50 is still in the 16-value window (mean 4.06, std 11.86): 45 is 3.45 sigma above.
  std::vector<Spike> spikes = d.Observe(kGradNormMetric, ++step, 45.0).spikes;
  ASSERT_EQ(spikes.size(), 1u);
  EXPECT_EQ(spikes[0].step, 20);
  EXPECT_NEAR(spikes[0].mean, 4.0625, 1e-9);
  EXPECT_NEAR(spikes[0].z, 3.45, 0.01);
  // Other metrics are not watched.
  EXPECT_TRUE(d.Observe("grad_norm/layers.0.attention", ++step, 1e9).spikes.empty());
}

TEST(DetectorTest, ALateRowIsJudgedAgainstTheStepsBeforeItAndTakesItsPlace) {
  DetectionOptions options;
  options.window = 8;
  options.min_values = 4;
  TraceWindow w(options.window);
  for (int step = 1; step <= 12; ++step) {
    if (step != 6) w.Add(step, step);
  }
  w.Add(6, 6.0);                        // Late.
  TraceWindow::Stats s = w.Before(10);  // Steps 2..9.
  EXPECT_EQ(s.n, 8);
  EXPECT_DOUBLE_EQ(s.mean, 5.5);
  EXPECT_DOUBLE_EQ(s.median, 5.5);
  w.Add(6, 100.0);  // A second value for a step already kept changes nothing.
  EXPECT_DOUBLE_EQ(w.Before(10).mean, 5.5);

  // A detector: steps 1..36 on time except 30, a spike, which arrives after 36.
  TrialDetector d(options, 0);
  for (int step = 1; step <= 36; ++step) {
    if (step != 30)
      EXPECT_TRUE(d.Observe(kGradNormMetric, step, 1.0 + 0.01 * (step % 3)).spikes.empty());
  }
  std::vector<Spike> late = d.Observe(kGradNormMetric, 30, 9.0).spikes;
  ASSERT_EQ(late.size(), 1u);
  EXPECT_EQ(late[0].step, 30);
  EXPECT_NEAR(late[0].mean, 1.01, 0.01);  // Steps 22..29: the spike's own window.
  // ...and takes its place: step 37's window (29..36) holds it, so 37 is no spike.
  EXPECT_TRUE(d.Observe(kGradNormMetric, 37, 2.0).spikes.empty());
  // A row whose window is no longer kept (more than `window` newer rows came first) is
  // neither judged nor kept.
  for (int step = 38; step <= 100; ++step)
    d.Observe(kGradNormMetric, step, 1.0 + 0.01 * (step % 3));
  EXPECT_TRUE(d.Observe(kGradNormMetric, 80, 1e6).spikes.empty());
  EXPECT_TRUE(d.Observe(kGradNormMetric, 101, 1.01).spikes.empty());
}

TEST(DetectorTest, NonFiniteValuesDivergeOnceAndNeverEnterAWindow) {
  TrialDetector d(DetectionOptions{}, 10);
  for (int step = 1; step <= 30; ++step) d.Observe(kGradNormMetric, step, 1.0 + 0.01 * (step % 5));
  TrialDetector::Findings f =
      d.Observe(kGradNormMetric, 31, std::numeric_limits<double>::infinity());
  ASSERT_TRUE(f.divergence);
  EXPECT_EQ(f.divergence->step, 31);
  EXPECT_EQ(f.divergence->name, kGradNormMetric);
  EXPECT_EQ(f.divergence->Describe(), "optim/grad_norm = inf at step 31: not a finite number");
  EXPECT_TRUE(f.spikes.empty());
  EXPECT_TRUE(d.diverged());
  EXPECT_FALSE(d.Observe(kLossMetric, 32, kNaN).divergence);  // Only the first is reported.
  // The window is untouched: a normal value is no spike.
  EXPECT_TRUE(d.Observe(kGradNormMetric, 32, 1.02).spikes.empty());
}

TEST(DetectorTest, LossAboveTheInitialLossAfterWarmupForConsecutiveSteps) {
  DetectionOptions options;  // initial_steps 5, loss_margin 0.05, consecutive 5
  TrialDetector d(options, /*warmup=*/20);
  const double first[] = {5.6, 5.5, 5.6, 5.5, 5.55};  // initial loss 5.55
  int step = 0;
  for (double v : first) EXPECT_FALSE(d.Observe(kLossMetric, ++step, v).divergence);
  ASSERT_TRUE(d.initial_loss());
  EXPECT_NEAR(*d.initial_loss(), 5.55, 1e-12);
  // In warmup, even far above: nothing.
  while (step < 20) EXPECT_FALSE(d.Observe(kLossMetric, ++step, 9.0).divergence);
  // After warmup: 4 steps above, one below, then 5 above: diverged at the fifth.
  for (int i = 0; i < 4; ++i) EXPECT_FALSE(d.Observe(kLossMetric, ++step, 7.0).divergence);
  EXPECT_FALSE(d.Observe(kLossMetric, ++step, 5.8).divergence);  // 5.8 < 5.55 · 1.05
  for (int i = 0; i < 4; ++i) EXPECT_FALSE(d.Observe(kLossMetric, ++step, 7.0).divergence);
  TrialDetector::Findings f = d.Observe(kLossMetric, ++step, 7.5);
  ASSERT_TRUE(f.divergence);
  EXPECT_EQ(f.divergence->step, 30);
  EXPECT_EQ(f.divergence->Describe(),
            "loss/out = 7.5 at step 30: above the initial loss 5.55 (+5%) after warmup (20 steps) "
            "for 5 steps in a row (26..30)");
}

TEST(DetectorTest, GradNormAboveKTimesItsRunningMedianForMSteps) {
  DetectionOptions options;
  options.grad_norm_factor = 10;
  options.consecutive = 3;
  TrialDetector d(options, 0);
  int step = 0;
  for (int i = 0; i < 50; ++i) d.Observe(kGradNormMetric, ++step, 0.5 + 0.01 * (i % 4));
  // Two steps above 10 x median (~0.515), back down, then three: diverged at the third.
  EXPECT_FALSE(d.Observe(kGradNormMetric, ++step, 8.0).divergence);
  EXPECT_FALSE(d.Observe(kGradNormMetric, ++step, 8.0).divergence);
  EXPECT_FALSE(d.Observe(kGradNormMetric, ++step, 0.5).divergence);
  EXPECT_FALSE(d.Observe(kGradNormMetric, ++step, 6.0).divergence);
  EXPECT_FALSE(d.Observe(kGradNormMetric, ++step, 7.0).divergence);
  TrialDetector::Findings f = d.Observe(kGradNormMetric, ++step, 9.0);
  ASSERT_TRUE(f.divergence);
  EXPECT_EQ(f.divergence->step, 56);
  EXPECT_NE(f.divergence->reason.find("above 10 x its running median"), std::string::npos)
      << f.divergence->reason;
}

TEST(DetectorTest, ReplayingTheStoredTailGivesTheSameDecisionsAsHavingSeenEverything) {
  Traces t = SmoothTraces(1500, 42);
  for (int64_t step : {1100, 1300}) t.grad_norm[step - 1] += 2.0;
  for (int step = 1201; step <= 1500; ++step) t.loss[step - 1] = 6.5;  // diverges after 1205
  const DetectionOptions options;
  TrialDetector full(options, 100);
  const Found expected = Feed(full, t);

  // A sweepd restarted at step 1000: the initial loss and the latest 2 x window + consecutive
  // values come back from the store.
  TrialDetector rebuilt(options, 100);
  double sum = 0;
  for (int i = 0; i < options.initial_steps; ++i) sum += t.loss[i];
  rebuilt.SetInitialLoss(sum / options.initial_steps);
  const int tail = 2 * options.window + options.consecutive;
  for (int step = 1000 - tail + 1; step <= 1000; ++step) {
    rebuilt.Replay(kLossMetric, step, t.loss[step - 1]);
    rebuilt.Replay(kGradNormMetric, step, t.grad_norm[step - 1]);
  }
  const Found after = Feed(rebuilt, t, 1001);
  std::vector<std::pair<std::string, int64_t>> expected_spikes, after_spikes;
  std::vector<int64_t> grad_spikes;
  for (const Spike& s : expected.spikes) {
    expected_spikes.emplace_back(s.name, s.step);
    if (s.name == kGradNormMetric) grad_spikes.push_back(s.step);
  }
  for (const Spike& s : after.spikes) after_spikes.emplace_back(s.name, s.step);
  EXPECT_EQ(after_spikes, expected_spikes);
  EXPECT_EQ(grad_spikes, (std::vector<int64_t>{1100, 1300}));
  ASSERT_EQ(after.divergences.size(), 1u);
  ASSERT_EQ(expected.divergences.size(), 1u);
  EXPECT_EQ(after.divergences[0].Describe(), expected.divergences[0].Describe());
  EXPECT_EQ(after.divergences[0].step, 1205);
}

}  // namespace
}  // namespace sweep::orchestrator
