// Ground truth: synthetic sweeps from known laws are recovered (the exponent within its
// interval, the largest stable lr per depth exactly, spikes at their steps and nowhere
// else), and degenerate sweeps get answers with reasons instead of NaN or a crash.
#include "analysis/analysis.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "tests/analysis/synthetic.h"
#include "tests/testing/status.h"

namespace sweep::analysis {
namespace {

using testing::Generate;
using testing::SyntheticSweep;
using testing::Truth;

const ScalingFit& FindFit(const SweepAnalysis& a, const std::string& label) {
  for (const ScalingFit& s : a.scaling) {
    if (s.Label() == label) return s;
  }
  ADD_FAILURE() << "no fit " << label;
  static const ScalingFit kNone;
  return kNone;
}

SyntheticSweep DefaultSweep() {
  SyntheticSweep s;
  s.log10_a = testing::PrefactorFor(s, -2.0);  // the smallest model's optimum at 1e-2
  return s;
}

// A JSON document has no NaN (nlohmann writes NaN as null; we check none was produced).
bool HasNan(const nlohmann::json& j) {
  if (j.is_number_float()) return std::isnan(j.get<double>());
  if (j.is_structured()) {
    for (const auto& v : j) {
      if (HasNan(v)) return true;
    }
  }
  return false;
}

TEST(Analyze, RecoversTheExponentWithinItsIntervalIn100Sweeps) {
  SyntheticSweep s = DefaultSweep();
  s.traces = false;  // stability is checked below; the law only needs final losses
  AnalysisOptions options;
  options.targets.clear();
  // SWEEP_COVERAGE_REPS=1000 (and SWEEP_COVERAGE_SCATTER) measure the coverage more
  // precisely than the 100 repetitions the suite runs.
  const char* reps_env = std::getenv("SWEEP_COVERAGE_REPS");
  const char* scatter_env = std::getenv("SWEEP_COVERAGE_SCATTER");
  const int reps = reps_env != nullptr ? std::atoi(reps_env) : 100;
  if (scatter_env != nullptr) s.law_scatter = std::atof(scatter_env);
  int covered = 0, vertex_covered = 0, vertices = 0;
  std::vector<double> widths;
  for (int r = 0; r < reps; ++r) {
    Truth truth;
    const std::vector<TrialResult> trials = Generate(s, 1000 + r, &truth);
    options.bootstrap.seed = 77 + r;
    absl::StatusOr<SweepAnalysis> a = Analyze(trials, options);
    ASSERT_OK(a);
    const ScalingFit& fit = FindFit(*a, "optimal lr ~ N");
    ASSERT_TRUE(fit.status.ok()) << fit.status.message();
    ASSERT_EQ(fit.n, static_cast<int>(s.shapes.size()));
    if (fit.exponent_ci.Contains(s.b)) ++covered;
    widths.push_back(fit.exponent_ci.hi - fit.exponent_ci.lo);
    for (size_t g = 0; g < a->groups.size(); ++g) {
      const LrOptimum& o = a->groups[g].optimum;
      ASSERT_EQ(o.kind, LrOptimum::Kind::kVertex) << a->groups[g].verdict;
      ASSERT_TRUE(o.ci.has_value());
      ++vertices;
      const double true_lr = std::pow(10.0, truth.log10_opt_lr[g]);
      if (o.ci->lo <= true_lr && true_lr <= o.ci->hi) ++vertex_covered;
    }
  }
  std::sort(widths.begin(), widths.end());
  const double coverage = static_cast<double>(covered) / reps;
  std::printf(
      "optimal lr ~ N: true exponent %.2f inside the 90 %% bootstrap-t interval in %d of %d "
      "sweeps (%.0f %%); median interval width %.3f\n",
      s.b, covered, reps, 100 * coverage, widths[widths.size() / 2]);
  std::printf(
      "per-group optimum: true lr inside the 90 %% Fieller interval in %d of %d groups (%.0f %%)\n",
      vertex_covered, vertices, 100.0 * vertex_covered / vertices);
  EXPECT_GE(coverage, 0.85);
  EXPECT_LT(widths[widths.size() / 2], 0.5);  // informative, not vacuous
  EXPECT_GE(static_cast<double>(vertex_covered) / vertices, 0.80);
}

TEST(Analyze, FindsTheMaximumStableLrPerDepthAndTheSpikesBehindIt) {
  const SyntheticSweep s = DefaultSweep();
  Truth truth;
  const std::vector<TrialResult> trials = Generate(s, 42, &truth);
  absl::StatusOr<SweepAnalysis> a = Analyze(trials, AnalysisOptions{});
  ASSERT_OK(a);
  ASSERT_EQ(a->groups.size(), s.shapes.size());
  EXPECT_NE(a->spike_source.find("detected from optim/grad_norm"), std::string::npos);
  int spikes_expected = 0, spikes_found = 0, false_positives = 0, warmup_spikes = 0;
  for (size_t g = 0; g < a->groups.size(); ++g) {
    const GroupResult& group = a->groups[g];
    const int depth = s.shapes[g].n_layers;
    const int limit = s.max_stable_index.at(depth);
    SCOPED_TRACE(group.verdict);
    ASSERT_EQ(group.max_stable.kind, MaxStableLr::Kind::kFound);
    EXPECT_EQ(*group.max_stable.lr, truth.max_stable_lr[g]);  // exactly: a grid value
    EXPECT_EQ(*group.max_stable.first_unstable_lr, s.Lr(limit + 1));
    EXPECT_EQ(group.max_stable.first_unstable_why, "spikes after warmup in 1 of 3");
    EXPECT_NE(group.verdict.find("spikes above lr " + FormatLr(s.Lr(limit))), std::string::npos);
    for (const TrialSummary& t : group.trials) {
      const int k =
          static_cast<int>(std::lround((std::log10(t.lr) - s.log10_lr_min) / s.log10_lr_step));
      const bool injected = k > limit && k < limit + s.diverge_steps &&
                            t.trial_key.find("\"seed\":0") != std::string::npos;
      if (injected) {
        ++spikes_expected;
        if (t.spikes_after_warmup == 1 &&
            t.first_spike_after_warmup == SyntheticSweep::SpikeStep(k)) {
          ++spikes_found;
        }
      } else {
        false_positives += t.spikes_after_warmup;
      }
      warmup_spikes += t.spikes_in_warmup;
      if (t.outcome == TrialOutcome::kDiverged) {
        EXPECT_TRUE(t.nonfinite_grad_norm);
        EXPECT_FALSE(t.final_metric.has_value());  // the bogus 0.0 is not a metric
      } else {
        ASSERT_TRUE(t.peak_grad_norm_after_warmup.has_value());
        EXPECT_GT(*t.peak_grad_norm_after_warmup, 0.5);
      }
    }
    // The optimum is interior and below the stability limit.
    EXPECT_EQ(group.optimum.kind, LrOptimum::Kind::kVertex);
    EXPECT_LT(*group.optimum.lr, *group.max_stable.lr);
  }
  std::printf(
      "spikes: %d of %d injected post-warmup spikes found at their step, %d false "
      "positives, %d warmup spikes seen (%zu injected)\n",
      spikes_found, spikes_expected, false_positives, warmup_spikes, s.shapes.size());
  EXPECT_EQ(spikes_found, spikes_expected);
  EXPECT_EQ(false_positives, 0);
  EXPECT_EQ(warmup_spikes,
            static_cast<int>(s.shapes.size()));  // seen, and not held against stability

  // Deeper is less stable here by construction: the max stable lr ~ depth exponent is negative.
  const ScalingFit& depth = FindFit(*a, "max stable lr ~ depth");
  ASSERT_TRUE(depth.status.ok()) << depth.status.message();
  EXPECT_LT(depth.exponent, 0);

  // The report holds the verdicts and the side-by-side table; the JSON has no NaN.
  const std::string text = RenderText(*a);
  EXPECT_NE(text.find("Verdicts"), std::string::npos);
  EXPECT_NE(text.find("Lingua (published)"), std::string::npos);
  EXPECT_NE(text.find("DeepSeek 0.3118·C^-0.125"), std::string::npos);
  EXPECT_NE(text.find("decades beyond the swept range"), std::string::npos);  // 1B is far away
  const nlohmann::json j = ToJson(*a);
  EXPECT_FALSE(HasNan(j));
  EXPECT_EQ(j["groups"].size(), s.shapes.size());
  EXPECT_EQ(j["extrapolations"].size(), 2u);
  // Each fit carries the band a plot shades around its line: from the smallest x fitted out to
  // the farthest target, holding the fitted line, and as wide at a target as its prediction.
  for (const nlohmann::json& fit : j["scaling"]) {
    if (!fit["ok"].get<bool>()) continue;
    const nlohmann::json& band = fit["band"];
    ASSERT_EQ(band.size(), 40u) << fit["quantity"];
    EXPECT_DOUBLE_EQ(band[0]["x"].get<double>(), fit["x_range"][0].get<double>());
    for (const nlohmann::json& point : band) {
      const double x = point["x"], line = fit["prefactor"].get<double>() * std::pow(x, fit["exponent"].get<double>());
      if (point["lo"].is_number()) EXPECT_LE(point["lo"].get<double>(), line * (1 + 1e-9));
      if (point["hi"].is_number()) EXPECT_GE(point["hi"].get<double>(), line * (1 - 1e-9));
    }
    for (const nlohmann::json& e : j["extrapolations"]) {
      for (const nlohmann::json& p : e["predictions"]) {
        if (p["fit"] == fit["quantity"].get<std::string>() + " ~ " + fit["variable"].get<std::string>() &&
            p["ok"].get<bool>()) {
          EXPECT_LE(p["x"].get<double>(), band.back()["x"].get<double>() * (1 + 1e-9));
        }
      }
    }
  }
  std::printf("%s", text.c_str());
}

TEST(Analyze, SpikeWithoutDetectionRunsUsesTheTableWhenGiven) {
  SyntheticSweep s = DefaultSweep();
  s.shapes = {{2, 64}, {4, 64}};
  std::vector<TrialResult> trials = Generate(s, 3, nullptr);
  // sweepd's table says one smooth trial at a small lr spiked after warmup at step 123.
  for (TrialResult& t : trials) {
    t.spikes = std::vector<SpikeRecord>{};
    if (t.trial_id == 2) t.spikes->push_back(SpikeRecord{123, 9.0, 7.5, 1.0, false});
  }
  absl::StatusOr<SweepAnalysis> a = Analyze(trials, AnalysisOptions{});
  ASSERT_OK(a);
  EXPECT_EQ(a->spike_source, "sweepd's spikes table (optim/grad_norm)");
  const GroupResult& g = a->groups[0];
  EXPECT_EQ(g.trials[1].trial_id, 2);
  EXPECT_EQ(g.trials[1].spikes_after_warmup, 1);
  EXPECT_EQ(g.trials[1].first_spike_after_warmup, 123);
  // The smallest lr is now unstable: nothing is stable from the bottom of the grid.
  EXPECT_EQ(g.max_stable.kind, MaxStableLr::Kind::kBelowGrid);
  EXPECT_NE(g.max_stable.note.find("stable again"), std::string::npos);
  // And with the table switched off, the trace decides again.
  AnalysisOptions trace_only;
  trace_only.use_spikes_table = false;
  absl::StatusOr<SweepAnalysis> b = Analyze(trials, trace_only);
  ASSERT_OK(b);
  EXPECT_EQ(b->groups[0].max_stable.kind, MaxStableLr::Kind::kFound);
}

// ----- Degenerate sweeps ------------------------------------------------------------------

TrialResult Trial(int64_t id, double lr, std::optional<double> metric, int seed = 0,
                  int n_layers = 2) {
  TrialResult t;
  t.trial_id = id;
  t.params = {{"model.n_layers", n_layers}, {"optim.lr", lr}, {"seed", seed}};
  t.trial_key = t.params.dump();
  RunShape shape;
  shape.n_layers = n_layers;
  shape.dim = 64;
  shape.n_heads = 4;
  shape.n_kv_heads = 4;
  shape.head_dim = 16;
  shape.ffn_hidden = 256;
  shape.vocab_size = 258;
  shape.steps = 100;
  shape.batch_size = 8;
  shape.seq_len = 64;
  shape.warmup = 10;
  shape.lr = lr;
  shape.weight_decay = 0.1;
  t.shape = shape;
  if (metric) {
    t.state = "completed";
    t.outcome = TrialOutcome::kCompleted;
    t.final_metric = metric;
  } else {
    t.state = "diverged";
    t.outcome = TrialOutcome::kDiverged;
    t.diverged_step = 12;
  }
  return t;
}

TEST(Analyze, NoTrialsIsAnError) {
  EXPECT_EQ(Analyze({}, AnalysisOptions{}).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(Analyze, OneGroupOneLr) {
  absl::StatusOr<SweepAnalysis> a = Analyze({Trial(1, 1e-2, 2.0)}, AnalysisOptions{});
  ASSERT_OK(a);
  ASSERT_EQ(a->groups.size(), 1u);
  const GroupResult& g = a->groups[0];
  EXPECT_EQ(g.label, "n_layers=2");
  EXPECT_EQ(g.optimum.kind, LrOptimum::Kind::kGridOnly);
  EXPECT_EQ(*g.optimum.lr, 1e-2);
  EXPECT_FALSE(g.optimum.ci.has_value());
  EXPECT_EQ(g.max_stable.kind, MaxStableLr::Kind::kAboveGrid);
  EXPECT_FALSE(g.lr_sensitivity.has_value());
  for (const ScalingFit& s : a->scaling) EXPECT_FALSE(s.status.ok()) << s.Label();
  EXPECT_FALSE(a->batch.status.ok());
  EXPECT_FALSE(HasNan(ToJson(*a)));
  const std::string text = RenderText(*a);
  EXPECT_NE(text.find("n_layers=2: stable up to the largest lr tried (1e-2); best grid lr 1e-2"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("0 point(s) (2 needed)"), std::string::npos) << text;
}

TEST(Analyze, EveryTrialDiverged) {
  std::vector<TrialResult> trials;
  for (int k = 0; k < 3; ++k) trials.push_back(Trial(k + 1, std::pow(10.0, -3 + k), std::nullopt));
  trials[0].final_metric = 0.0;  // a diverged trial's bogus number is never a result
  absl::StatusOr<SweepAnalysis> a = Analyze(trials, AnalysisOptions{});
  ASSERT_OK(a);
  const GroupResult& g = a->groups[0];
  EXPECT_EQ(g.optimum.kind, LrOptimum::Kind::kNone);
  EXPECT_FALSE(g.optimum.lr.has_value());
  EXPECT_EQ(g.max_stable.kind, MaxStableLr::Kind::kBelowGrid);
  EXPECT_EQ(*g.max_stable.first_unstable_lr, 1e-3);
  ASSERT_TRUE(g.lr_sensitivity.has_value());
  EXPECT_EQ(*g.lr_sensitivity, 0.0);  // every lr counts as the initial loss
  EXPECT_EQ(g.loss_init_source, "ln(vocab)");
  EXPECT_DOUBLE_EQ(g.loss_init, std::log(258.0));
  EXPECT_NE(g.verdict.find("diverges even at the smallest lr tried (1e-3)"), std::string::npos)
      << g.verdict;
  EXPECT_NE(g.verdict.find("no lr finished without diverging"), std::string::npos) << g.verdict;
  EXPECT_FALSE(HasNan(ToJson(*a)));
}

TEST(Analyze, MinimumAtTheEdgeOfTheGridIsNotExtrapolated) {
  // Loss keeps falling toward the smallest lr.
  std::vector<TrialResult> low = {Trial(1, 1e-3, 2.0), Trial(2, 3e-3, 2.1), Trial(3, 1e-2, 2.3)};
  absl::StatusOr<SweepAnalysis> a = Analyze(low, AnalysisOptions{});
  ASSERT_OK(a);
  const LrOptimum& o = a->groups[0].optimum;
  EXPECT_EQ(o.kind, LrOptimum::Kind::kAtLowEdge);
  EXPECT_EQ(*o.lr, 1e-3);
  EXPECT_FALSE(o.ci.has_value());
  EXPECT_NE(a->groups[0].verdict.find("best lr 1e-3 at the edge of the grid"), std::string::npos)
      << a->groups[0].verdict;

  // Loss keeps falling toward larger lrs until they diverge: the optimum is the stability edge.
  std::vector<TrialResult> high = {Trial(1, 1e-3, 2.3), Trial(2, 3e-3, 2.1), Trial(3, 1e-2, 2.0),
                                   Trial(4, 3e-2, std::nullopt)};
  absl::StatusOr<SweepAnalysis> b = Analyze(high, AnalysisOptions{});
  ASSERT_OK(b);
  const GroupResult& g = b->groups[0];
  EXPECT_EQ(g.optimum.kind, LrOptimum::Kind::kAtHighEdge);
  EXPECT_EQ(*g.optimum.lr, 1e-2);
  EXPECT_NE(g.optimum.note.find("stability limit"), std::string::npos);
  EXPECT_EQ(*g.max_stable.lr, 1e-2);
  EXPECT_NE(g.verdict.find("diverges above lr 1e-2"), std::string::npos) << g.verdict;
}

TEST(Analyze, NearOptimalBandAndSensitivityByHand) {
  // Losses 2.10, 2.004, 2.000, 2.003, 2.2 and a divergence at the top; initial loss 5.
  const double lrs[] = {1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2};
  const std::optional<double> losses[] = {2.10, 2.004, 2.000, 2.003, 2.2, std::nullopt};
  std::vector<TrialResult> trials;
  for (int k = 0; k < 6; ++k) trials.push_back(Trial(k + 1, lrs[k], losses[k]));
  AnalysisOptions options;
  options.initial_loss = 5.0;
  absl::StatusOr<SweepAnalysis> a = Analyze(trials, options);
  ASSERT_OK(a);
  const GroupResult& g = a->groups[0];
  // Band: within 0.25 % of 2.000, i.e. <= 2.005: lrs 2e-3 .. 8e-3.
  ASSERT_TRUE(g.near_optimal_band.has_value());
  EXPECT_EQ(g.near_optimal_band->lo, 2e-3);
  EXPECT_EQ(g.near_optimal_band->hi, 8e-3);
  // The fit window is the band and one neighbour each side: 1e-3 .. 1.6e-2.
  EXPECT_EQ(g.optimum.fit_lrs.size(), 5u);
  EXPECT_EQ(g.optimum.kind, LrOptimum::Kind::kVertex);
  // Sensitivity: mean of (2.10, 2.004, 2.000, 2.003, 2.2, 5) minus 2.000.
  const double expected = (2.10 + 2.004 + 2.000 + 2.003 + 2.2 + 5.0) / 6 - 2.000;
  ASSERT_TRUE(g.lr_sensitivity.has_value());
  EXPECT_NEAR(*g.lr_sensitivity, expected, 1e-12);
  EXPECT_EQ(g.loss_init_source, "option");
  // AdamW timescale at the best lr.
  ASSERT_TRUE(g.tau_steps.has_value());
  EXPECT_NEAR(*g.tau_steps, 1.0 / (*g.optimum.lr * 0.1), 1e-9);
  EXPECT_NEAR(*g.tau_fraction, *g.tau_steps / 100, 1e-9);
}

TEST(Analyze, NanMetricsNeverCompareAndMaximizeIsRespected) {
  std::vector<TrialResult> trials = {Trial(1, 1e-3, 2.0), Trial(2, 3e-3, 1.9), Trial(3, 1e-2, 2.2)};
  TrialResult nan = Trial(4, 3e-3, std::nan(""), 1);
  trials.push_back(nan);
  absl::StatusOr<SweepAnalysis> a = Analyze(trials, AnalysisOptions{});
  ASSERT_OK(a);
  const GroupResult& g = a->groups[0];
  EXPECT_EQ(*g.optimum.grid_lr, 3e-3);
  EXPECT_EQ(*g.optimum.grid_metric, 1.9);  // the NaN seed is not averaged in
  EXPECT_EQ(g.cells[1].incomplete, 1);
  EXPECT_TRUE(std::any_of(a->notes.begin(), a->notes.end(), [](const std::string& n) {
    return n.find("1 completed trial without a finite loss/val") != std::string::npos;
  }));

  AnalysisOptions maximize;
  maximize.minimize = false;
  maximize.metric_name = "accuracy";
  absl::StatusOr<SweepAnalysis> b = Analyze(trials, maximize);
  ASSERT_OK(b);
  EXPECT_EQ(*b->groups[0].optimum.grid_lr, 1e-2);
  EXPECT_EQ(b->groups[0].optimum.kind, LrOptimum::Kind::kAtHighEdge);
  EXPECT_FALSE(b->groups[0].lr_sensitivity.has_value());
}

TEST(Analyze, TwoGroupsGiveALawWithoutAnInterval) {
  std::vector<TrialResult> trials;
  int64_t id = 1;
  for (int depth : {2, 8}) {
    const double best = depth == 2 ? -2.0 : -2.4;
    for (int k = 0; k < 7; ++k) {
      const double x = -3.0 + 0.25 * k;
      trials.push_back(
          Trial(id++, std::pow(10.0, x), 2.0 + 0.2 * (x - best) * (x - best), 0, depth));
    }
  }
  absl::StatusOr<SweepAnalysis> a = Analyze(trials, AnalysisOptions{});
  ASSERT_OK(a);
  ASSERT_EQ(a->groups.size(), 2u);
  // Three points and one seed: an exact vertex with no interval, said so.
  EXPECT_EQ(a->groups[0].optimum.kind, LrOptimum::Kind::kVertex);
  EXPECT_NEAR(std::log10(*a->groups[0].optimum.lr), -2.0, 1e-9);
  EXPECT_FALSE(a->groups[0].optimum.ci.has_value());
  EXPECT_NE(a->groups[0].optimum.ci_method.find("no residual"), std::string::npos);
  const ScalingFit& depth = FindFit(*a, "optimal lr ~ depth");
  ASSERT_TRUE(depth.status.ok());
  EXPECT_NEAR(depth.exponent, -0.4 / std::log10(4.0), 1e-9);
  EXPECT_FALSE(depth.exponent_ci.bounded());
  EXPECT_NE(RenderText(*a).find("interval unbounded"), std::string::npos);
  EXPECT_FALSE(HasNan(ToJson(*a)));
}

TEST(Analyze, BatchSizeExponentAndWeightDecayFamilies) {
  // Optimal lr = 1e-2 * (B / 16)^0.5 at two depths; three batch sizes; two weight decays at
  // which the loss is lower for wd 0.1.
  std::vector<TrialResult> trials;
  int64_t id = 1;
  for (int depth : {2, 4}) {
    for (int batch : {8, 16, 32, 64}) {
      for (double wd : {0.0, 0.1}) {
        const double best = std::log10(1e-2 * std::pow(batch / 16.0, 0.5)) - 0.1 * (depth == 4);
        for (int k = 0; k < 9; ++k) {
          const double x = -3.0 + 0.25 * k;
          for (int seed = 0; seed < 2; ++seed) {
            const double noise = seed == 0 ? 0.001 : -0.001;
            TrialResult t = Trial(id++, std::pow(10.0, x),
                                  2.0 + 0.2 * (x - best) * (x - best) + noise + (wd > 0 ? 0 : 0.01),
                                  seed, depth);
            t.params["data.batch_size"] = batch;
            t.params["optim.weight_decay"] = wd;
            t.shape->batch_size = batch;
            t.shape->weight_decay = wd;
            trials.push_back(t);
          }
        }
      }
    }
  }
  absl::StatusOr<SweepAnalysis> a = Analyze(trials, AnalysisOptions{});
  ASSERT_OK(a);
  ASSERT_TRUE(a->batch.status.ok()) << a->batch.status.message();
  EXPECT_EQ(a->batch.families, 4);  // depth x weight decay
  EXPECT_NEAR(a->batch.exponent, 0.5, 1e-6);
  ASSERT_EQ(a->weight_decay_families.size(), 8u);  // depth x batch
  for (const WeightDecayFamily& f : a->weight_decay_families) {
    EXPECT_EQ(f.weight_decay, 0.1) << f.label;
    EXPECT_EQ(f.weight_decays, 2);
    EXPECT_NEAR(f.tau_steps, 1 / (f.lr * 0.1), 1e-9);
  }
  // wd = 0: no timescale rather than a division by zero.
  for (const GroupResult& g : a->groups) {
    if (g.key["optim.weight_decay"] == 0.0) {
      EXPECT_FALSE(g.tau_steps.has_value());
    }
  }
  EXPECT_NE(RenderText(*a).find("Adam's square-root rule: 0.5"), std::string::npos);
}

TEST(Analyze, CriticalBatchFromTheNoiseScaleOfCompletedTrials) {
  // Two batch sizes; the trials of batch 16 logged B_simple (seeds 3e4 and 5e4 tokens, a
  // diverged one 1e9 that must not count), those of batch 32 none.
  std::vector<TrialResult> trials;
  int64_t id = 1;
  for (int batch : {16, 32}) {
    for (int k = 0; k < 5; ++k) {
      const double x = -3.0 + 0.25 * k;
      for (int seed = 0; seed < 2; ++seed) {
        TrialResult t = Trial(id++, std::pow(10.0, x), 2.0 + 0.2 * (x + 2.5) * (x + 2.5), seed, 2);
        t.params["data.batch_size"] = batch;
        t.shape->batch_size = batch;
        if (batch == 16) t.noise_scale = seed == 0 ? 3e4 : 5e4;
        trials.push_back(t);
      }
    }
  }
  TrialResult diverged = Trial(id++, 1.0, 0, 0, 2);
  diverged.params["data.batch_size"] = 16;
  diverged.shape->batch_size = 16;
  diverged.outcome = TrialOutcome::kDiverged;
  diverged.noise_scale = 1e9;
  trials.push_back(diverged);

  absl::StatusOr<SweepAnalysis> a = Analyze(trials, AnalysisOptions{});
  ASSERT_OK(a);
  ASSERT_TRUE(a->critical_batch.status.ok()) << a->critical_batch.status.message();
  ASSERT_EQ(a->critical_batch.rows.size(), 1u);
  const CriticalBatch::Row& row = a->critical_batch.rows[0];
  EXPECT_DOUBLE_EQ(row.noise_scale, 4e4);  // the median of 5 x 3e4 and 5 x 5e4
  EXPECT_EQ(row.trials, 10);
  EXPECT_DOUBLE_EQ(row.tokens_per_step, 16.0 * trials[0].shape->seq_len);
  const std::string text = RenderText(*a);
  EXPECT_NE(text.find("Critical batch"), std::string::npos) << text;
  const nlohmann::json j = ToJson(*a);
  EXPECT_EQ(j["critical_batch"]["groups"][0]["noise_scale"], 4e4);

  // Without any estimate: a reason, no table.
  for (TrialResult& t : trials) t.noise_scale.reset();
  a = Analyze(trials, AnalysisOptions{});
  ASSERT_OK(a);
  EXPECT_FALSE(a->critical_batch.status.ok());
  EXPECT_EQ(RenderText(*a).find("Critical batch"), std::string::npos);
}

TEST(LateMean, AveragesTheLastQuarterOfFiniteValues) {
  EXPECT_FALSE(LateMean({}).has_value());
  EXPECT_DOUBLE_EQ(*LateMean({5}), 5);
  EXPECT_DOUBLE_EQ(*LateMean({1, 2, 3, 4, 5, 6, 7, 8}), 7.5);  // the last 2 of 8
  EXPECT_DOUBLE_EQ(*LateMean({1, 2, 3, 4, 5, 6, 7, 8, 9}), 8);  // the last ceil(9/4) = 3
  EXPECT_DOUBLE_EQ(*LateMean({100, -1, 9, 7, 8, 6, std::nan(""), 10}), 10);  // NaN skipped
  EXPECT_FALSE(LateMean({1, 2, 3, std::nan("")}).has_value());  // nothing finite at the end
  EXPECT_FALSE(LateMean({1, 2, 3, -4}).has_value());            // not positive: no estimate
}

TEST(Analyze, GroupByAndFoldedKeys) {
  std::vector<TrialResult> trials;
  int64_t id = 1;
  for (int depth : {2, 4}) {
    for (double lr : {1e-3, 1e-2}) trials.push_back(Trial(id++, lr, 2.0 + lr, 0, depth));
  }
  AnalysisOptions options;
  options.group_by = {};  // every key but lr and seed: n_layers
  absl::StatusOr<SweepAnalysis> a = Analyze(trials, options);
  ASSERT_OK(a);
  EXPECT_EQ(a->groups.size(), 2u);
  options.group_by = {"seed"};  // n_layers is then folded into the cells, like seeds
  absl::StatusOr<SweepAnalysis> b = Analyze(trials, options);
  ASSERT_OK(b);
  ASSERT_EQ(b->groups.size(), 1u);
  EXPECT_EQ(b->groups[0].cells[0].trials, 2);
  EXPECT_NE(b->notes[0].find("averaged within cells like seeds: model.n_layers"),
            std::string::npos);
  EXPECT_FALSE(b->groups[0].n_params.has_value());  // the model size differs inside the group
}

TEST(FormatLr, TwoSignificantDigits) {
  EXPECT_EQ(FormatLr(0.013), "1.3e-2");
  EXPECT_EQ(FormatLr(0.01), "1e-2");
  EXPECT_EQ(FormatLr(3e-4), "3e-4");
  EXPECT_EQ(FormatLr(0.25), "2.5e-1");
  EXPECT_EQ(FormatLr(1.5e9), "1.5e9");
}

}  // namespace
}  // namespace sweep::analysis
