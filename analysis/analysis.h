// Sweep analysis: from finished trials to answers. Per group of trials (every swept parameter
// but the learning rate and the seed), the best learning rate with its uncertainty, the
// near-optimal band, the largest stable learning rate, spikes and peak grad norms, and LR
// sensitivity; across groups, power laws of the optimal and the largest stable lr in model
// size N, depth and compute C, extrapolated to Lingua's 1B and 7B beside published settings;
// the AdamW timescale; the batch-size exponent; and a verdict per group. docs/analysis.md
// explains every number, its formula and its source.
//
// Contract
//   * Analyze() is pure: it works on TrialResults (what the database holds, or synthetic
//     data in tests) and needs no I/O. It fails only when there is nothing to analyse (no
//     trials); every degenerate case below that is an answer with a status or a note,
//     never NaN and never a crash: one group, one lr, every trial diverged, the minimum at
//     the edge of the grid, a flat or concave loss curve, too few groups for a law.
//   * A trial's metric counts only when the trial completed and the value is finite. A
//     diverged trial is never a number to compare: it is "diverged" (and, for LR
//     sensitivity, the initial loss). Failed, stopped, cancelled and unfinished trials give
//     no metric, but their spikes still count against stability.
//   * AnalyzeSweep() reads the sweep with read-only SELECTs inside one savepoint (a
//     consistent snapshot while sweepd writes); `db` may be opened read-only. The sweep's
//     metric name and goal come from the database and override the options'. NotFound when
//     there is no such sweep.
//   * Bootstraps are seeded (options.bootstrap.seed): the same input gives the same output.
//
// Thread-safety: pure functions; AnalyzeSweep uses `db` from the calling thread only.
#ifndef SWEEP_ANALYSIS_ANALYSIS_H_
#define SWEEP_ANALYSIS_ANALYSIS_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "analysis/fit.h"
#include "analysis/shape.h"

struct sqlite3;

namespace sweep::analysis {

// ---------------------------------------------------------------------------------------
// Input

struct TracePoint {
  int64_t step = 0;
  double value = 0;    // meaningful only when finite
  bool finite = true;  // false: the trainer logged NaN or +/-inf (a NULL in `metrics`)
};

// A spike as the detection in sweepd stores it (table `spikes`).
struct SpikeRecord {
  int64_t step = 0;
  double value = 0;
  double z = 0;
  double mean = 0;
  bool in_warmup = false;
};

enum class TrialOutcome {
  kCompleted,   // ran to the end: its metric counts
  kDiverged,    // the trainer or sweepd declared divergence
  kIncomplete,  // failed, stopped, cancelled, pending or running: no metric
};

// Completed / diverged / incomplete from trials.state and trials.diverged_step.
TrialOutcome OutcomeFromState(const std::string& state, std::optional<int64_t> diverged_step);

struct TrialResult {
  int64_t trial_id = 0;
  std::string trial_key;
  nlohmann::json params = nlohmann::json::object();  // swept keys -> values
  std::string state;
  TrialOutcome outcome = TrialOutcome::kIncomplete;
  std::optional<double> final_metric;  // the sweep's metric at the end
  std::optional<int64_t> diverged_step;
  std::optional<RunShape> shape;  // nullopt: the config could not be read
  std::string shape_error;
  std::optional<double> initial_loss;  // the first logged loss/out (the loss at init)
  std::vector<TracePoint> grad_norm;   // optim/grad_norm in step order
  // From the spikes table when sweepd recorded them; nullopt: detect from grad_norm.
  std::optional<std::vector<SpikeRecord>> spikes;
  // The gradient noise scale B_simple in tokens (optim/noise_scale, logged by data-parallel
  // trials: worker/trainer/noise_scale.h), averaged over the last quarter of its logged
  // steps; nullopt when the trial logged none or the average is not positive.
  std::optional<double> noise_scale;
};

// ---------------------------------------------------------------------------------------
// Options

struct AnalysisOptions {
  // Keys whose values make a group. Empty: every swept key except lr_key and seed_keys.
  // Swept keys in neither list are folded into the (group, lr) cell, like seeds.
  std::vector<std::string> group_by;
  std::string lr_key = "optim.lr";
  std::vector<std::string> seed_keys = {"seed", "model.seed", "data.seed"};
  std::string batch_key = "data.batch_size";
  std::string weight_decay_key = "optim.weight_decay";

  std::string metric_name = "loss/val";  // for reports (AnalyzeSweep: the sweep's)
  bool minimize = true;                  // AnalyzeSweep: the sweep's goal

  // DeepSeek's near-optimal band: cells within this fraction of the best metric.
  double near_optimal_fraction = 0.0025;
  // Confidence of every interval (the vertex's Fieller interval, the bootstraps).
  BootstrapOptions bootstrap;  // 1000 resamples, 90 %, fixed seed

  // Post-warmup spikes (this rule when sweepd's spikes table is absent or not used).
  SpikeRule spike_rule;
  bool use_spikes_table = true;  // false: always detect from the grad-norm trace

  // The loss "at initialisation" for LR sensitivity; unset: the median first logged
  // loss/out of the group's trials, else ln(vocab size).
  std::optional<double> initial_loss;

  // Extrapolation targets and the span (decades of N or C beyond the data) past which an
  // extrapolation carries a warning.
  std::vector<TargetModel> targets = LinguaTargets();
  double warn_decades = 2.0;
};

// ---------------------------------------------------------------------------------------
// Output

// One trial's stability summary.
struct TrialSummary {
  int64_t trial_id = 0;
  std::string trial_key;
  double lr = 0;
  std::string state;
  TrialOutcome outcome = TrialOutcome::kIncomplete;
  std::optional<double> final_metric;  // only when it counts (completed, finite)
  std::optional<int64_t> diverged_step;
  int spikes_after_warmup = 0;
  int spikes_in_warmup = 0;
  std::optional<int64_t> first_spike_after_warmup;    // step
  std::optional<double> peak_grad_norm_after_warmup;  // largest finite value
  bool nonfinite_grad_norm = false;                   // a NaN/inf grad norm was logged
  std::string spike_source;                           // "table", "trace" or "none" (no trace)
  bool unstable() const { return outcome == TrialOutcome::kDiverged || spikes_after_warmup > 0; }
};

// All trials of one group at one learning rate (seeds and folded keys together).
struct Cell {
  double lr = 0;
  int trials = 0;
  int completed = 0;
  int diverged = 0;
  int incomplete = 0;
  int spiking = 0;                    // trials with a post-warmup spike
  int unstable = 0;                   // trials that diverged or spiked after warmup
  std::optional<double> mean_metric;  // over completed trials, when no trial diverged
  double metric_sd = 0;               // sample sd over those trials (0 with one)
  bool in_near_optimal_band = false;
  // Stable: every trial ended without divergence or a post-warmup spike. Unknown: no trial
  // finished and none spiked (nothing to judge by).
  enum class Stability { kStable, kUnstable, kUnknown } stability = Stability::kUnknown;
};

struct LrOptimum {
  enum class Kind {
    kVertex,      // interior: the vertex of the quadratic fit
    kAtLowEdge,   // the best cell is the smallest lr with a metric: the grid should go lower
    kAtHighEdge,  // the best cell is the largest lr with a metric
    kGridOnly,    // interior, but the fit failed (flat or concave): the grid's best cell
    kNone,        // no cell has a metric
  } kind = Kind::kNone;
  std::string note;               // why, in words, for anything but kVertex
  std::optional<double> lr;       // the vertex, or the grid's best cell otherwise
  std::optional<double> metric;   // at lr (fitted for the vertex)
  std::optional<double> grid_lr;  // the best cell of the grid
  std::optional<double> grid_metric;
  // The interval of lr at options.bootstrap.confidence; unset when none could be had.
  std::optional<Interval> ci;   // in lr units; ends may be 0 / inf (unbounded)
  double log10_se = 0;          // delta-method SE of log10 lr (0: unknown)
  std::string ci_method;        // how ci was obtained, or why there is none
  std::vector<double> fit_lrs;  // the cells the quadratic was fitted on
  int fit_points = 0;           // trials (seeds) behind the fit
};

struct MaxStableLr {
  enum class Kind {
    kFound,      // a stable lr below the first unstable one
    kAboveGrid,  // every judged lr is stable: at least the largest one
    kBelowGrid,  // even the smallest judged lr is unstable
    kUnknown,    // no cell could be judged
  } kind = Kind::kUnknown;
  std::optional<double> lr;  // largest lr of the stable run from the bottom
  std::optional<double> first_unstable_lr;
  std::string first_unstable_why;  // "diverged", "spikes after warmup", both
  std::string note;                // e.g. a larger lr that was stable again
};

struct GroupResult {
  std::string label;                              // "n_layers=10" (shortest unambiguous key names)
  nlohmann::json key = nlohmann::json::object();  // the group's parameter values
  std::optional<RunShape> shape;                  // from the group's first readable config
  std::optional<int64_t> n_params;                // non-embedding N (unset if configs disagree)
  double tokens = 0;                              // D per trial
  double compute = 0;                             // C = 6 N D
  std::vector<Cell> cells;                        // by increasing lr
  std::vector<TrialSummary> trials;               // by lr, then trial id
  LrOptimum optimum;
  std::optional<Interval> near_optimal_band;  // [lr_lo, lr_hi]
  MaxStableLr max_stable;
  std::optional<double> lr_sensitivity;
  double loss_init = 0;
  std::string loss_init_source;  // "option", "first loss/out", "ln(vocab)"
  // AdamW timescale at the best lr: lr*wd, tau = 1/(lr*wd) steps, tau / steps.
  std::optional<double> lr_wd;
  std::optional<double> tau_steps;
  std::optional<double> tau_fraction;
  // Median B_simple (tokens) over the group's completed trials that logged it, beside the
  // tokens one optimizer step takes (the critical batch size of McCandlish et al. 2018).
  std::optional<double> noise_scale;
  int noise_scale_trials = 0;
  std::vector<std::string> notes;
  std::string verdict;
};

// A power law y = a * x^b across groups.
struct ScalingFit {
  std::string quantity;  // "optimal lr" or "max stable lr"
  std::string variable;  // "N", "depth" or "C"
  absl::Status status;   // not OK: no fit (why in the message); the numbers below unset
  int n = 0;
  double exponent = 0;
  double exponent_se = 0;
  Interval exponent_ci;  // may be unbounded (2 points, too few to resample)
  double prefactor = 0;
  Interval log10_prefactor_ci;
  double r2 = 0;
  double x_min = 0, x_max = 0;
  std::vector<std::string> groups_used;
  std::vector<std::string> left_out;  // "label: why"
  // What the fit cannot tell apart, e.g. a C law when every group trains on the same D (C
  // then moves only with N), or a depth law over groups of different widths.
  std::string caveat;
  std::optional<PowerLawFit> fit;  // for predictions; not serialised
  std::string Label() const { return quantity + " ~ " + variable; }
};

// One fitted rule evaluated at one target.
struct Prediction {
  std::string fit;      // ScalingFit::Label()
  absl::Status status;  // not OK: the fit is missing
  double lr = 0;
  Interval log10_ci;
  double x = 0;               // the target's N, depth or C
  double decades_beyond = 0;  // log10 distance outside the fitted span (0 inside)
  bool warning = false;       // decades_beyond > options.warn_decades (N and C fits)
};

struct Extrapolation {
  std::string target;
  int64_t n_params = 0;
  int n_layers = 0;
  double compute = 0;
  std::vector<Prediction> predictions;
  double deepseek_lr = 0;  // DeepSeek's eta_opt at the target's C
  std::vector<PublishedLr> published;
  std::vector<std::string> warnings;
};

// Optimal lr against tokens per step, within families of groups that differ only in the
// batch key (one intercept per family, a shared exponent), beside Adam's square-root rule.
struct BatchSizeFit {
  absl::Status status;
  int n = 0;
  int families = 0;
  double exponent = 0;
  double exponent_se = 0;
  Interval exponent_ci;
  double sqrt_rule = 0.5;
};

// The critical batch size: per group with a measured gradient noise scale, B_simple against
// the batch the group trained with. Below B_simple a larger batch trains almost as many
// times faster; above it the returns diminish (McCandlish et al. 2018, eq. 2.11).
struct CriticalBatch {
  absl::Status status;  // not OK: no trial logged optim/noise_scale (why)
  struct Row {
    std::string group;
    double tokens_per_step = 0;
    double noise_scale = 0;  // B_simple, tokens
    int trials = 0;
  };
  std::vector<Row> rows;
};

// Groups that differ only in weight decay: the best (lr, wd) cell over all of them.
struct WeightDecayFamily {
  std::string label;
  double lr = 0;
  double weight_decay = 0;
  double metric = 0;
  double lr_wd = 0;
  double tau_steps = 0;
  double tau_fraction = 0;
  int weight_decays = 0;  // distinct values tried
};

struct SweepAnalysis {
  int64_t sweep_id = 0;
  std::string sweep_name;
  std::string metric_name;
  bool minimize = true;
  std::vector<std::string> group_by;
  std::string spike_source;  // how spikes were found, in words
  int trials = 0;
  double confidence = 0.9;
  std::vector<GroupResult> groups;
  std::vector<ScalingFit> scaling;
  std::vector<Extrapolation> extrapolations;
  BatchSizeFit batch;
  CriticalBatch critical_batch;
  std::vector<WeightDecayFamily> weight_decay_families;
  std::vector<std::string> notes;
};

// ---------------------------------------------------------------------------------------
// API

// The analysis of `trials` (any order). FailedPrecondition when `trials` is empty.
absl::StatusOr<SweepAnalysis> Analyze(const std::vector<TrialResult>& trials,
                                      const AnalysisOptions& options);

// The trials of a sweep as Analyze() takes them: params, state, final_metric,
// diverged_step and config from `trials`; the first loss/out and the optim/grad_norm trace
// from `metrics`; spikes of optim/grad_norm from `spikes` when that table exists (schema 3)
// and options.use_spikes_table. NotFound for an unknown sweep.
absl::StatusOr<std::vector<TrialResult>> LoadTrials(sqlite3* db, int64_t sweep_id,
                                                    const AnalysisOptions& options);

// The mean of the finite values in the last quarter of `values` (at least one value);
// nullopt when there is none or it is not positive. TrialResult::noise_scale.
std::optional<double> LateMean(const std::vector<double>& values);

// LoadTrials + Analyze, with the sweep's name, metric and goal.
absl::StatusOr<SweepAnalysis> AnalyzeSweep(sqlite3* db, int64_t sweep_id,
                                           const AnalysisOptions& options);

// Everything above as JSON (unbounded interval ends and absent values are null).
nlohmann::json ToJson(const SweepAnalysis& analysis);

// Aligned tables and the verdicts, for a terminal.
std::string RenderText(const SweepAnalysis& analysis);

// 0.013 -> "1.3e-2", 0.01 -> "1e-2", 0.25 -> "2.5e-1": two significant digits.
std::string FormatLr(double lr);

}  // namespace sweep::analysis

#endif  // SWEEP_ANALYSIS_ANALYSIS_H_
