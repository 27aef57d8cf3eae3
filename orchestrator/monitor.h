// The monitor: examines the metrics sweepd stores as they arrive, and early termination.
//
// Contract
//   * Ingest() stores rows as Store::InsertMetrics does (keyed by trial, name and step;
//     fenced by attempt) and examines the rows that were new, in the same transaction:
//       - spikes and divergence of `loss/out` and `optim/grad_norm` (detector.h, with the
//         sweep's `detection` settings): each spike is a row of `spikes` and a `spike` event;
//         the first divergence sets trials.divergence_step and divergence_reason and is a
//         `divergence_detected` event;
//       - early termination (the sweep's `early_terminate`): with `divergence`, a detected
//         divergence asks the trial's worker to stop it at once (stop_requested = 3); the
//         trial then ends `diverged` with the reason (Scheduler::Complete). With `asha` or
//         `hyperband`, a trial that reaches a rung is kept only while it is in the top 1/eta
//         of the trials of its bracket that reached that rung so far, else it is stopped
//         (stop_requested = 4) and ends `stopped` with the reason. Each decision is a row of
//         `rungs` and a `rung` event; each stop request an `early_stop` event.
//     A re-sent row is not new, so it is never examined twice: no second spike, no shift of
//     any window, no second rung decision.
//   * State: per trial, rebuilt from the store whenever a trial's rows arrive for an attempt
//     it does not hold (after a sweepd restart, a requeue or a retry): the latest 2 × window
//     stored values of each watched metric are replayed, the initial loss is read back, and
//     recorded divergences and rung decisions are honoured.
//
// ASHA's rule (Li et al. 2020, asynchronous successive halving, in its stopping form):
//   * Rungs at round(min_steps · eta^k), k = 0, 1, ..., below max_steps (the rule's, else the
//     trial's `steps`); a trial that reaches the end needs no decision.
//   * Hyperband runs brackets of ASHA with min_steps · eta^b, b = 0 .. floor(log_eta(max_steps
//     / min_steps)); a trial is in bracket (trial id mod brackets), ranked within it.
//   * A trial reaches rung k when a value of the sweep's metric arrives for a step at or after
//     the rung's step. Its rung value is its latest value at or before the rung's step (the
//     metric may be `loss/val`, logged every eval.every steps), or, when it has none, its
//     first value after it.
//   * Among the n trials of the bracket that reached the rung so far (itself included), it
//     continues when its rank is at most ceil(n / eta) (rank: 1 + the trials strictly better
//     by the metric and its goal). The first trial at a rung always continues.
//   * A non-finite value is never compared as a number: it ranks below every finite one, and
//     a trial whose own rung value is not finite is stopped. Trials that diverged, were
//     stopped, or are being stopped early rank last too, whatever their value; so such a
//     trial can only raise n, never push a healthy trial out of the top.
//   * Decisions are made once, when the trial reaches the rung, and never revisited. A trial
//     retried after an ASHA stop (trials.asha_exempt) is not stopped by rungs again.
//
// Thread-safety: none; sweepd calls it from its one writer thread (the service's mutex).
#ifndef SWEEP_ORCHESTRATOR_MONITOR_H_
#define SWEEP_ORCHESTRATOR_MONITOR_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "orchestrator/detector.h"
#include "orchestrator/scheduler.h"
#include "orchestrator/spec.h"
#include "orchestrator/store.h"

namespace sweep::orchestrator {

// --- ASHA's arithmetic, pure (monitor_test.cc checks it directly). ---

// round(min_steps · eta^k) for k = 0, 1, ... while below `limit` (0: no limit; at most 64
// rungs), strictly increasing.
std::vector<int64_t> RungSteps(int64_t min_steps, double eta, int64_t limit);

// Hyperband's bracket count: 1 + floor(log_eta(limit / min_steps)), at least 1 (1 when the
// limit is unknown).
int HyperbandBrackets(int64_t min_steps, double eta, int64_t limit);

// A trial's standing at a rung: its value (nullopt: not a finite number) and whether it
// diverged or was stopped (then it ranks last whatever its value).
struct RungEntry {
  std::optional<double> value;
  bool ranks_last = false;
};

struct RungDecision {
  bool keep = true;
  int rank = 1;     // 1 = best.
  int n = 1;        // Trials at the rung, the candidate included.
  int allowed = 1;  // ceil(n / eta): the ranks that continue.
};

// ASHA's rule for `candidate` against the `others` that reached the rung before it.
RungDecision DecideRung(const RungEntry& candidate, const std::vector<RungEntry>& others,
                        bool minimize, double eta);

// --- The monitor. ---

class Monitor {
 public:
  Monitor(Store* store, Clock* clock);
  ~Monitor();
  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;

  // Stores the rows and examines the new ones (see above). Returns how many rows were new.
  // Errors are Store::InsertMetrics' (nothing is stored then).
  absl::StatusOr<int64_t> Ingest(const std::vector<MetricRow>& rows);

  // Lets go of a trial's state (its attempt ended); the next rows rebuild it.
  void Forget(int64_t trial_id);

 private:
  struct SweepSettings;
  struct TrialState;

  absl::StatusOr<const SweepSettings*> Sweep(int64_t sweep_id);
  // The trial's state for `attempt`, rebuilt from the store when needed; nullptr when the
  // attempt holds no lease (InsertMetrics will refuse its rows).
  absl::StatusOr<TrialState*> State(int64_t trial_id, int attempt);
  absl::Status Examine(const std::vector<MetricRow>& added);
  absl::Status RecordSpike(TrialState& trial, const Spike& spike);
  absl::Status RecordDivergence(TrialState& trial, const Divergence& divergence);
  absl::Status CheckRungs(TrialState& trial, const MetricRow& row);
  // Asks the trial's worker to stop it; returns whether this request took effect.
  absl::StatusOr<bool> RequestStop(TrialState& trial, int code, const std::string& reason);
  absl::Status Event(const TrialState& trial, const std::string& kind, const std::string& detail);

  Store* const store_;
  Clock* const clock_;
  std::map<int64_t, std::unique_ptr<SweepSettings>> sweeps_;
  std::map<int64_t, std::unique_ptr<TrialState>> trials_;
};

}  // namespace sweep::orchestrator

#endif  // SWEEP_ORCHESTRATOR_MONITOR_H_
