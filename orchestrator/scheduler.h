// The scheduler: hands trials to workers under leases, and moves trials through
//   pending -> leased -> running -> completed | diverged | failed | stopped | cancelled,
// and back to pending when an attempt is handed back, lost or failed with attempts left.
// Every transition is one SQLite transaction on the Store, recorded in `events`.
//
// Contract
//   * Leases: LeaseTrials() gives a worker pending trials of running sweeps (highest priority
//     first, then oldest) that fit its free GPUs / CPU slots and each sweep's `parallel`.
//     Each lease starts a new attempt (attempt + 1): the attempt number is the fencing token
//     every later call must carry. A call with another attempt, or for a trial that no longer
//     holds a lease, is FailedPrecondition and changes nothing.
//   * Heartbeat() renews the worker's leases for lease_ttl seconds and answers with the
//     trials to stop (sweep paused with stop, cancelled, trial cancelled, or a lease the
//     worker no longer holds).
//   * Failed attempts: a lease that ran out (ExpireLeases) or a FAILED completion sends the
//     trial back to pending (the next attempt resumes from the last checkpoint) until it has
//     failed the sweep's max_attempts times; then it is failed. The reason of each failed
//     attempt is kept in attempt_errors, whose length is what max_attempts counts: attempts
//     handed back (kReleased) or stopped for a pause are not failures and use up nothing.
//   * A worker that restarts re-registers under its name: RegisterWorker() renews the leases
//     it still holds, and HeldTrials() lists them so it can reconcile each one.
//   * A worker whose trials fail `quarantine_after` times in a row is quarantined: it gets no
//     more trials until an operator releases it.
//   * Pause stops handing out a sweep's trials (running ones go on, or are stopped with a
//     checkpoint when asked, and then wait as pending); Resume undoes it; Cancel stops all.
//   * Early termination (monitor.h sets stop_requested to kStopDiverged or kStopEarly with a
//     stop_reason): Heartbeat asks the worker to stop the trial ("early termination: ...");
//     the attempt then ends `diverged` (divergence: whatever it reports, unless cancelled) or
//     `stopped` (ASHA: unless it completed or diverged on its own first), with stop_reason
//     as the trial's error; a lease that expires meanwhile ends the same way. RetryTrial
//     clears a detected divergence, and a trial retried from `stopped` is exempt from rungs.
//   * Time comes from the Clock given at construction, so tests need no sleeping.
//
// Thread-safety: none; sweepd calls it from its one writer thread.
#ifndef SWEEP_ORCHESTRATOR_SCHEDULER_H_
#define SWEEP_ORCHESTRATOR_SCHEDULER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "orchestrator/store.h"

namespace sweep::orchestrator {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual double Now() = 0;  // Unix seconds.
};

class SystemClock : public Clock {
 public:
  double Now() override;
};

struct SchedulerOptions {
  double lease_ttl = 60;     // Seconds a lease lives without a heartbeat.
  int quarantine_after = 5;  // Consecutive failed trials that quarantine a worker.
};

struct WorkerInfo {
  std::string name;
  std::string host;
  int gpus = 0;
  int cpu_slots = 0;
  std::string labels_json = "{}";
};

struct Lease {
  int64_t trial_id = 0;
  int attempt = 0;
  int64_t sweep_id = 0;
  std::string sweep_name;
  std::string trial_key;
  std::string config;                     // Trainer config (YAML).
  std::vector<std::string> command;       // Empty: the builtin trainer.
  std::optional<std::string> checkpoint;  // Resume from here.
  int gpus = 0;
  int cpu_slots = 0;  // The whole trial's: ranks x the sweep's cpu_slots_per_trial (CPU trials).
  int ranks = 1;      // Processes of a data-parallel trial (one per GPU on GPUs).
  double expires_at = 0;
  std::string metric_name;  // The sweep's metric and goal: the worker reports its value.
  bool minimize = true;
  std::string params_json;  // The trial's parameters, {"optim.lr": 0.003, ...} (typed).
};

// What a worker has free, for LeaseTrials.
struct FreeResources {
  // Free trial shares of each of the worker's GPUs, in its order (0: the GPU is full; a worker
  // running up to K trials per GPU offers K minus the trials on it). A trial with g GPUs takes
  // one share from each of g distinct GPUs: those with the most free shares, the first listed
  // on ties, the rule the worker places its leases by.
  std::vector<int> gpu_shares;
  // Free CPU slots. A CPU trial takes cpu_slots_per_trial for each of its ranks.
  int cpu_slots = 0;
};

struct TrialProgress {
  int64_t trial_id = 0;
  int attempt = 0;
  int64_t step = 0;
};

struct StopRequest {
  int64_t trial_id = 0;
  int attempt = 0;
  std::string reason;
};

enum class Outcome {
  kCompleted,
  kDiverged,
  kFailed,    // Pending again while failed attempts < max_attempts, else failed.
  kStopped,   // Stopped on request: pending when the sweep is paused, cancelled if cancelled.
  kReleased,  // Handed back by the worker (shutdown, restart): pending at once (cancelled if
              // the sweep or trial was cancelled); not a failure, for the trial or the worker.
};

struct Completion {
  Outcome outcome = Outcome::kCompleted;
  int64_t last_step = 0;
  std::optional<double> final_metric;
  int64_t diverged_step = 0;
  std::string error;  // kFailed: why; kReleased: the reason it was handed back.
  std::optional<double> best_metric;
  std::string checkpoint;  // Non-empty: the attempt's last complete checkpoint.
  int exit_code = 0;       // The trainer's; named in the event detail when not 0.
};

class Scheduler {
 public:
  Scheduler(Store* store, Clock* clock, SchedulerOptions options = {});
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Registers a worker or re-attaches one by name; returns its id. A re-attaching worker's
  // leased and running trials get their leases renewed (now + lease_ttl), so a restarted
  // worker has a full lease to reconcile them (see HeldTrials).
  absl::StatusOr<int64_t> RegisterWorker(const WorkerInfo& info);

  // The trials leased to the worker (state leased or running), in id order, as the leases
  // LeaseTrials handed out: same attempt, expires_at the current lease expiry.
  absl::StatusOr<std::vector<Lease>> HeldTrials(int64_t worker_id);

  // Up to `max_trials` leases that fit the free resources, all of them together (the worker
  // can start every one). Empty when nothing fits.
  absl::StatusOr<std::vector<Lease>> LeaseTrials(int64_t worker_id, const FreeResources& free,
                                                 int max_trials);
  // The same with `free_gpus` GPUs of one free share each.
  absl::StatusOr<std::vector<Lease>> LeaseTrials(int64_t worker_id, int free_gpus,
                                                 int free_cpu_slots, int max_trials);

  // The trainer process started.
  absl::Status MarkRunning(int64_t trial_id, int attempt);

  // Renews the worker's leases; returns the trials it must stop.
  absl::StatusOr<std::vector<StopRequest>> Heartbeat(int64_t worker_id,
                                                     const std::vector<TrialProgress>& trials);

  // A complete checkpoint exists: a later attempt resumes from it.
  absl::Status ReportCheckpoint(int64_t trial_id, int attempt, const std::string& path,
                                int64_t step);

  // Ends the attempt: see Outcome for where each outcome takes the trial. A non-empty
  // completion.checkpoint becomes the trial's resume point.
  absl::Status Complete(int64_t trial_id, int attempt, const Completion& completion);

  // Requeues or fails trials whose lease expired (a failed attempt each); returns how many.
  absl::StatusOr<int> ExpireLeases();

  absl::Status PauseSweep(const std::string& sweep, bool stop_running);
  absl::Status ResumeSweep(const std::string& sweep);
  absl::Status CancelSweep(const std::string& sweep);
  // Pending: cancelled at once. Leased or running: its worker is told to stop it (heartbeat),
  // and the trial ends as cancelled.
  absl::Status CancelTrial(int64_t trial_id);
  // A failed, diverged, stopped or cancelled trial goes back to pending with fresh attempts.
  absl::Status RetryTrial(int64_t trial_id);
  absl::Status ReleaseWorker(const std::string& name);

  // Seconds a lease lives without a heartbeat (RegisterWorker's reply tells the worker).
  double lease_ttl() const { return options_.lease_ttl; }

 private:
  absl::Status Exec(const std::string& sql);
  absl::Status Event(int64_t sweep_id, int64_t trial_id, int64_t worker_id,
                     const std::string& kind, const std::string& detail);
  // Checks that (trial, attempt) holds a lease; fills the trial's sweep and worker.
  absl::Status CheckFence(int64_t trial_id, int attempt, int64_t* sweep_id, int64_t* worker_id);
  // Marks a running sweep completed once none of its trials is pending, leased or running.
  absl::Status CompleteSweepIfDone(int64_t sweep_id, double now);

  Store* const store_;
  Clock* const clock_;
  const SchedulerOptions options_;
};

}  // namespace sweep::orchestrator

#endif  // SWEEP_ORCHESTRATOR_SCHEDULER_H_
