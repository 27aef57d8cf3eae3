// Synthetic sweep results generated from known laws, for the ground-truth tests:
//   * each group's optimal lr is a * N^b (N: Lingua's non-embedding count of the group's
//     shape) times a log-normal scatter, and its final loss is
//     L(N) + curvature * (log10 lr - log10 lr*)^2 plus per-seed noise;
//   * each depth has a known largest stable lr on the grid: above it, seed 0 of every cell
//     gets one grad-norm spike after warmup at a known step, and from `diverge_steps` grid
//     points above it every seed diverges (NaN grad norm, a bogus final metric of 0);
//   * optionally one seed of the cell at the stability limit gets a spike during warmup,
//     which must not count against stability;
//   * grad-norm traces are otherwise smooth: a decaying curve with 2 % multiplicative noise.
#ifndef SWEEP_TESTS_ANALYSIS_SYNTHETIC_H_
#define SWEEP_TESTS_ANALYSIS_SYNTHETIC_H_

#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "analysis/analysis.h"

namespace sweep::analysis::testing {

struct SyntheticShape {
  int n_layers;
  int dim;
};

struct SyntheticSweep {
  // The law.
  double log10_a = 0;
  double b = -0.35;
  double law_scatter = 0.05;  // sd of log10 lr* around the law
  double curvature = 0.15;    // loss per (decade of lr)^2
  double seed_noise = 0.004;  // sd of the final loss between seeds
  // The grid: lr_k = 10^(log10_lr_min + k * step), k = 0..n_lr-1.
  double log10_lr_min = -3.5;
  double log10_lr_step = 0.25;
  int n_lr = 11;
  int seeds = 3;
  std::vector<SyntheticShape> shapes = {{2, 64}, {4, 64}, {4, 128}, {6, 128}, {8, 256}, {10, 256}};
  // Depth -> index into the grid of the largest stable lr.
  std::map<int, int> max_stable_index = {{2, 8}, {4, 7}, {6, 6}, {8, 6}, {10, 5}};
  int diverge_steps = 3;  // cells this many grid points above the limit diverge
  // Traces.
  bool traces = true;
  int steps = 200;
  int warmup = 50;
  bool warmup_spikes = true;

  double Lr(int k) const { return std::pow(10.0, log10_lr_min + k * log10_lr_step); }
  static int SpikeStep(int k) { return 80 + 5 * k; }  // known post-warmup spike step
  static constexpr int kWarmupSpikeStep = 35;
};

inline RunShape MakeShape(const SyntheticSweep& s, const SyntheticShape& shape, double lr) {
  RunShape r;
  r.n_layers = shape.n_layers;
  r.dim = shape.dim;
  r.n_heads = 4;
  r.n_kv_heads = 4;
  r.head_dim = shape.dim / 4;
  r.ffn_hidden = LinguaFfnHidden(shape.dim);
  r.vocab_size = 258;
  r.steps = s.steps;
  r.batch_size = 16;
  r.seq_len = 64;
  r.warmup = s.warmup;
  r.lr = lr;
  r.weight_decay = 0.1;
  return r;
}

// What the generator knows and the analysis must find.
struct Truth {
  std::vector<double> log10_opt_lr;   // per shape, after scatter
  std::vector<double> max_stable_lr;  // per shape
};

inline std::vector<TrialResult> Generate(const SyntheticSweep& s, uint64_t seed, Truth* truth) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<TrialResult> trials;
  int64_t id = 1;
  for (const SyntheticShape& shape : s.shapes) {
    const RunShape base = MakeShape(s, shape, 0.0);
    const double log10_n = std::log10(static_cast<double>(base.NonEmbeddingParams()));
    const double log10_opt = s.log10_a + s.b * log10_n + s.law_scatter * normal(rng);
    const double floor_loss = 3.0 - 0.2 * log10_n;
    const int limit = s.max_stable_index.at(shape.n_layers);
    if (truth != nullptr) {
      truth->log10_opt_lr.push_back(log10_opt);
      truth->max_stable_lr.push_back(s.Lr(limit));
    }
    for (int k = 0; k < s.n_lr; ++k) {
      const double lr = s.Lr(k);
      for (int seed_index = 0; seed_index < s.seeds; ++seed_index) {
        TrialResult t;
        t.trial_id = id++;
        t.params = {{"model.n_layers", shape.n_layers},
                    {"model.dim", shape.dim},
                    {"optim.lr", lr},
                    {"seed", seed_index}};
        t.trial_key = t.params.dump();
        t.shape = MakeShape(s, shape, lr);
        t.initial_loss = std::log(258.0) + 0.01 * normal(rng);
        const double dx = std::log10(lr) - log10_opt;
        const double loss = floor_loss + s.curvature * dx * dx + s.seed_noise * normal(rng);
        const bool diverges = k >= limit + s.diverge_steps;
        const bool spikes = k > limit && seed_index == 0 && !diverges;
        const bool warmup_spike = s.warmup_spikes && k == limit && seed_index == 1;
        if (diverges) {
          t.state = "diverged";
          t.outcome = TrialOutcome::kDiverged;
          t.diverged_step = s.warmup + 10;
          t.final_metric = 0.0;  // a bogus number a diverged trial may report: never a winner
        } else {
          t.state = "completed";
          t.outcome = TrialOutcome::kCompleted;
          t.final_metric = loss;
        }
        if (s.traces) {
          const int last = diverges ? s.warmup + 10 : s.steps;
          for (int step = 1; step <= last; ++step) {
            TracePoint p;
            p.step = step;
            const double smooth = 0.5 + 1.5 * std::exp(-step / 40.0);
            p.value = smooth * (1.0 + 0.02 * normal(rng));
            if (spikes && step == SyntheticSweep::SpikeStep(k)) p.value = 10 * smooth;
            if (warmup_spike && step == SyntheticSweep::kWarmupSpikeStep) p.value = 10 * smooth;
            if (diverges && step == last) {
              p.finite = false;
              p.value = 0;
            }
            t.grad_norm.push_back(p);
          }
        }
        trials.push_back(std::move(t));
      }
    }
  }
  return trials;
}

// log10 a such that the smallest shape's optimum sits at 10^log10_lr_at_smallest.
inline double PrefactorFor(const SyntheticSweep& s, double log10_lr_at_smallest) {
  const RunShape smallest = MakeShape(s, s.shapes.front(), 0.0);
  return log10_lr_at_smallest -
         s.b * std::log10(static_cast<double>(smallest.NonEmbeddingParams()));
}

}  // namespace sweep::analysis::testing

#endif  // SWEEP_TESTS_ANALYSIS_SYNTHETIC_H_
