// What sweepctl shows about a sweep: its progress (status, watch, run), and the summary that
// ends `run` (final metric and peak grad norm per parameter cell, grad-norm spikes).
// Everything is read through sweepd (GetSweep, WatchSweep and the read-only Query RPC).
#ifndef SWEEP_TOOLS_SWEEPCTL_SWEEP_VIEW_H_
#define SWEEP_TOOLS_SWEEPCTL_SWEEP_VIEW_H_

#include <atomic>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tools/sweepctl/client.h"

namespace sweep::ctl {

struct RunningTrial {
  int64_t id = 0;
  int64_t step = 0;
  int64_t steps = 0;  // 0: unknown
};

struct Progress {
  v1::Sweep sweep;
  int64_t total = 0;
  int64_t finished = 0;  // completed + diverged + failed + stopped + cancelled
  std::vector<RunningTrial> running;
  std::optional<int64_t> best_trial;
  std::string best_key;
  double best_metric = 0;
  double elapsed = 0;               // since the first trial started
  std::optional<double> eta;        // seconds; unknown before a trial finished
  int64_t Count(const std::string& state) const;
};

absl::StatusOr<v1::Sweep> GetSweep(Client& client, const std::string& sweep);
absl::StatusOr<Progress> GetProgress(Client& client, const std::string& sweep);

// One line: bar, done/total, running steps, diverged/failed, best, elapsed, ETA.
std::string ProgressLine(const Progress& p, bool terminal);

// Follows a sweep until it ends or `interrupts` (Ctrl-C's counted by main) is above zero: a progress line redrawn in place on a
// terminal (printed every 10 s otherwise) and one line per notable event from the watch
// stream (a trial finished, diverged, failed, was requeued or released). Returns the sweep's
// state when it returned.
absl::StatusOr<std::string> FollowSweep(Client& client, const std::string& sweep,
                                        const std::atomic<int>& interrupts);

// The end-of-run summary: counts, then (when the sweep has a learning-rate parameter) the mean
// final metric and the peak grad norm after warmup per cell of the other parameters x lr, with
// seeds folded into each cell, then the largest grad-norm spikes.
absl::Status PrintSummary(Client& client, const std::string& sweep, Format format);

}  // namespace sweep::ctl

#endif  // SWEEP_TOOLS_SWEEPCTL_SWEEP_VIEW_H_
