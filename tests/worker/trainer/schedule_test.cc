#include "worker/trainer/schedule.h"

#include <gtest/gtest.h>

#include <cmath>

namespace sweep::trainer {
namespace {

constexpr double kPi = 3.14159265358979323846;

OptimArgs Args(const std::string& scheduler) {
  OptimArgs o;
  o.scheduler = scheduler;
  o.warmup = 10;
  o.lr_min_ratio = 0.1;
  return o;
}

TEST(ScheduleTest, FormulasAtChosenSteps) {
  // n_steps = 110 everywhere, so the post-warmup phase is 100 steps long.
  struct Case {
    const char* scheduler;
    int64_t step;
    double expected;
  } cases[] = {
      {"cosine", 0, 0.0},
      {"cosine", 5, 0.5},                                   // warmup: step / warmup
      {"cosine", 10, 1.0},                                  // s = 0
      {"cosine", 60, 0.1 + 0.45 * (std::cos(kPi * 0.5) + 1)},  // s = 0.5 -> 0.55
      {"cosine", 109, 0.1 + 0.45 * (std::cos(kPi * 0.99) + 1)},
      // Lingua's cycle sign flips at step == n_steps, so f(n) = 1; LambdaLR never uses it
      // (step n runs at f(n − 1)). Kept as Lingua computes it.
      {"cosine", 110, 1.0},
      {"cosine", 500, 0.1},                                 // past the end
      {"linear", 60, 0.5 * 0.1 + 0.5},                      // s·m + (1 − s)
      {"linear", 110, 0.1},
      {"inv_sqrt", 40, std::sqrt(10.0 / 40.0)},             // (warmup/step)^0.5
      {"inv_sqrt", 4000, 0.1},                              // floored at m
      {"constant", 3, 0.3},
      {"constant", 99, 1.0},
      // wsd: decay over the last 10% (11 steps): 1 until 99, then 1/(p/m + 1 − p).
      {"wsd", 99, 1.0},
      {"wsd", 105, 1.0 / ((6.0 / 110) / 0.1 + (1 - 6.0 / 110))},
      // At step == n_steps Lingua re-bases the cycle but keeps the decay length of the next
      // cycle (22 steps): the last step lands at p = 22/110. Kept as Lingua computes it.
      {"wsd", 110, 1.0 / ((22.0 / 110) / 0.1 + (1 - 22.0 / 110))},
  };
  for (const Case& c : cases) {
    EXPECT_NEAR(LrFactor(Args(c.scheduler), c.step, 110), c.expected, 1e-12)
        << c.scheduler << " at step " << c.step;
  }
}

TEST(ScheduleTest, CosineThetaAndCycleLength) {
  OptimArgs o = Args("cosine");
  o.cosine_theta = 2.0;
  // s = 0.5 -> s^θ = 0.25.
  EXPECT_NEAR(LrFactor(o, 60, 110), 0.1 + 0.45 * (std::cos(kPi * 0.25) + 1), 1e-12);
  o.cosine_theta = 1.0;
  o.cycle_length = 0.5;
  EXPECT_NEAR(LrFactor(o, 60, 110), 0.1 + 0.45 * (-std::cos(kPi * 0.5 / 0.5) + 1), 1e-12);
}

TEST(ScheduleTest, StepUsesThePreviousFactorLikeLambdaLR) {
  OptimArgs o = Args("cosine");
  o.lr = 3e-3;
  EXPECT_EQ(LearningRateForStep(o, 1, 110), 0.0);  // Lingua's first step runs at lr 0.
  EXPECT_NEAR(LearningRateForStep(o, 6, 110), 3e-3 * 0.5, 1e-15);
  EXPECT_NEAR(LearningRateForStep(o, 11, 110), 3e-3, 1e-15);
}

TEST(ScheduleTest, NoWarmupStartsAtFullRate) {
  OptimArgs o = Args("constant");
  o.warmup = 0;
  EXPECT_EQ(LrFactor(o, 0, 100), 1.0);
  o.scheduler = "cosine";
  EXPECT_EQ(LrFactor(o, 0, 100), 1.0);
}

TEST(ScheduleTest, KnownNames) {
  for (const char* name : {"constant", "linear", "cosine", "inv_sqrt", "wsd"}) {
    EXPECT_TRUE(IsKnownScheduler(name)) << name;
  }
  EXPECT_FALSE(IsKnownScheduler("cosine_annealing"));
}

}  // namespace
}  // namespace sweep::trainer
