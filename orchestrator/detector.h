// Spike and divergence detection on one trial's metrics, as they arrive. Pure logic: no
// SQLite, no clock; orchestrator/monitor.h feeds it the rows sweepd stores and records what
// it finds.
//
// Watched metrics: `loss/out` and `optim/grad_norm` (Lingua's names). Others are ignored.
//
// Spikes (per watched metric; OLMo-core's rule): a finite value more than `z` standard
// deviations above the mean of the previous `window` finite values of the same metric, once
// that window holds at least `min_values` values. The score is one-sided (only upward jumps
// are spikes) and uses the population standard deviation; a window with zero spread judges
// nothing. "Previous" is by step, not by arrival: a row that arrives late is judged against
// the values before its own step and then takes its place in later windows.
//
// Divergence (the first one per trial is reported; later ones are not):
//   * non-finite: `loss/out` or `optim/grad_norm` is NaN or ±Inf;
//   * loss above the initial loss: after warmup (step > optim.warmup), `loss/out` is above
//     initial · (1 + loss_margin) for `consecutive` steps in a row, where `initial` is the
//     mean of the trial's first `initial_steps` values of `loss/out`;
//   * grad norm above its running median: `optim/grad_norm` is above `grad_norm_factor` ×
//     the median of its previous `window` values (once `min_values` exist) for
//     `consecutive` steps in a row.
// Runs of consecutive steps count rows that extend the trace (a step above every step seen
// for that metric); a late row is judged for spikes only.
//
// Memory: each metric keeps its latest 2 × window values. A late row whose own window is no
// longer kept (more than `window` newer rows arrived before it) is neither judged nor kept.
//
// Thread-safety: none; one TrialDetector per trial, used from one thread.
#ifndef SWEEP_ORCHESTRATOR_DETECTOR_H_
#define SWEEP_ORCHESTRATOR_DETECTOR_H_

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

namespace sweep::orchestrator {

inline constexpr char kLossMetric[] = "loss/out";
inline constexpr char kGradNormMetric[] = "optim/grad_norm";

// The spec's `detection:` section; the defaults are documented in docs/schema.md.
struct DetectionOptions {
  int window = 128;           // Previous values a spike is scored against (OLMo-core: 128).
  double z = 6;               // Spike threshold in standard deviations (OLMo-core: 6).
  int min_values = 20;        // Values the window needs before anything is judged (OLMo-core: 20).
  int initial_steps = 5;      // First loss/out values whose mean is the initial loss.
  double loss_margin = 0.05;  // Divergence: loss/out > initial · (1 + loss_margin) after warmup...
  double grad_norm_factor = 10;  // ...or optim/grad_norm > factor × its running median...
  int consecutive = 5;           // ...for this many steps in a row.
};

struct Spike {
  std::string name;
  int64_t step = 0;
  double value = 0;
  double z = 0;
  double mean = 0;  // Of the window it was scored against.
  bool in_warmup = false;
};

struct Divergence {
  std::string name;  // The metric that showed it.
  int64_t step = 0;
  double value = 0;    // May be NaN or ±Inf.
  std::string reason;  // Why, e.g. "not a finite number".

  // "loss/out = nan at step 57: not a finite number".
  std::string Describe() const;
};

// The finite values of one metric by step, the latest 2 × window of them.
class TraceWindow {
 public:
  explicit TraceWindow(int window);

  struct Stats {
    int n = 0;  // Values in the window (at most `window`).
    double mean = 0;
    double std = 0;  // Population standard deviation.
    double median = 0;
  };
  // The window before `step`: its latest `window` values with a smaller step. The median
  // (a partial sort of a copy) only when asked for; 0 otherwise.
  Stats Before(int64_t step, bool with_median = true) const;
  // Whether the window before `step` is fully known (not older than what is kept).
  bool Knows(int64_t step) const;
  // Keeps a finite value (a step already kept is left as it is).
  void Add(int64_t step, double value);
  // The largest step ever added (0 when none).
  int64_t last_step() const { return last_step_; }

 private:
  // The first kept value with a step >= `step` (an index into values_).
  size_t LowerBound(int64_t step) const;

  const size_t window_;
  // By step, ascending. A deque, not a map: steps nearly always arrive in order (one
  // push_back), and the window is then a contiguous run found by binary search (a map walk
  // of the window per stored value was a tenth of sweepd's ingest time).
  std::deque<std::pair<int64_t, double>> values_;
  bool dropped_ = false;  // Older values were let go.
  int64_t last_step_ = 0;
};

class TrialDetector {
 public:
  // `warmup`: the trial's optim.warmup (steps <= warmup are in warmup).
  TrialDetector(const DetectionOptions& options, int64_t warmup);

  struct Findings {
    std::vector<Spike> spikes;
    std::optional<Divergence> divergence;
  };

  // Judges one newly stored value and adds it to the state. Unwatched names find nothing.
  Findings Observe(const std::string& name, int64_t step, double value);

  // Rebuilding after a restart: adds a stored value to the state without judging it. Feed
  // the stored values in step order.
  void Replay(const std::string& name, int64_t step, double value);

  // The initial loss, when the store already holds the first `initial_steps` values.
  void SetInitialLoss(double mean);
  std::optional<double> initial_loss() const { return initial_loss_; }

  // A divergence was already recorded for this trial: report no other.
  void MarkDiverged() { diverged_ = true; }
  bool diverged() const { return diverged_; }

 private:
  struct Trace {
    explicit Trace(int window) : values(window) {}
    TraceWindow values;
    int run = 0;            // Consecutive steps over the divergence threshold...
    int64_t run_start = 0;  // ...since this step.
  };

  Findings Process(const std::string& name, int64_t step, double value, bool judge);

  const DetectionOptions options_;
  const int64_t warmup_;
  Trace loss_;
  Trace grad_norm_;
  std::vector<double> first_losses_;  // Until the initial loss is known.
  std::optional<double> initial_loss_;
  bool diverged_ = false;
};

}  // namespace sweep::orchestrator

#endif  // SWEEP_ORCHESTRATOR_DETECTOR_H_
