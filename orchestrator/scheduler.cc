#include "orchestrator/scheduler.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "orchestrator/sql.h"

namespace sweep::orchestrator {
namespace {

const char* OutcomeState(Outcome outcome) {
  switch (outcome) {
    case Outcome::kCompleted:
      return "completed";
    case Outcome::kDiverged:
      return "diverged";
    case Outcome::kFailed:
      return "failed";
    case Outcome::kStopped:
      return "stopped";
    case Outcome::kReleased:
      return "pending";
  }
  return "failed";
}

// attempt_errors as a JSON array; a damaged value starts a fresh one rather than failing the
// transition that appends to it.
nlohmann::json AttemptErrors(const std::string& text) {
  nlohmann::json errors = nlohmann::json::parse(text, nullptr, false);
  return errors.is_array() ? errors : nlohmann::json::array();
}

// The sweep columns a lease needs, in the order ReadLeaseSweep reads them (alias `s`).
constexpr char kLeaseSweepColumns[] =
    "s.id, s.name, s.trainer_command, s.gpus_per_trial, s.cpu_slots_per_trial, s.metric_name, "
    "s.metric_goal, s.ranks_per_trial";
constexpr int kLeaseSweepColumnCount = 8;
// The trial columns a lease needs, in the order MakeLease reads them (alias `t`).
constexpr char kLeaseTrialColumns[] =
    "t.id, t.attempt, t.trial_key, t.config, t.checkpoint, t.params";
constexpr int kLeaseTrialColumnCount = 6;

// What a lease takes from its sweep.
struct LeaseSweep {
  int64_t id = 0;
  std::string name;
  std::vector<std::string> command;
  int gpus = 0;
  int cpu_slots = 0;  // Of the whole trial: every rank's.
  int ranks = 1;
  std::string metric_name;
  bool minimize = true;
};

LeaseSweep ReadLeaseSweep(Statement& st, int first) {
  LeaseSweep sweep;
  sweep.id = st.Int(first);
  sweep.name = st.Text(first + 1);
  sweep.command = nlohmann::json::parse(st.Text(first + 2)).get<std::vector<std::string>>();
  sweep.gpus = static_cast<int>(st.Int(first + 3));
  sweep.ranks = std::max(1, static_cast<int>(st.Int(first + 7)));
  // A trial takes GPUs, or else CPU slots: cpu_slots_per_trial for each of its ranks
  // (docs/schema.md). The spec keeps the product within an int.
  sweep.cpu_slots = sweep.gpus > 0 ? 0 : static_cast<int>(st.Int(first + 4)) * sweep.ranks;
  sweep.metric_name = st.Text(first + 5);
  sweep.minimize = st.Text(first + 6) == "minimize";
  return sweep;
}

// A lease for the trial row at `first` (kLeaseTrialColumns) of `sweep`, at the trial's stored
// attempt: LeaseTrials moves it on, HeldTrials keeps it. Both fill leases here, so a restarted
// worker sees exactly what the original lease said.
Lease MakeLease(const LeaseSweep& sweep, Statement& st, int first, double expires_at) {
  Lease lease;
  lease.trial_id = st.Int(first);
  lease.attempt = static_cast<int>(st.Int(first + 1));
  lease.sweep_id = sweep.id;
  lease.sweep_name = sweep.name;
  lease.trial_key = st.Text(first + 2);
  lease.config = st.Text(first + 3);
  lease.command = sweep.command;
  if (!st.IsNull(first + 4)) lease.checkpoint = st.Text(first + 4);
  lease.gpus = sweep.gpus;
  lease.cpu_slots = sweep.cpu_slots;
  lease.ranks = sweep.ranks;
  lease.expires_at = expires_at;
  lease.metric_name = sweep.metric_name;
  lease.minimize = sweep.minimize;
  lease.params_json = st.Text(first + 5);
  return lease;
}

// The most trials of `gpus` GPUs each that free GPU shares hold (each trial takes one share of
// `gpus` distinct GPUs), at most `cap`: k fit exactly when sum_i min(share_i, k) >= k * gpus,
// and TakeGpuShares' most-free-first placement reaches that k.
int GpuTrialsThatFit(const std::vector<int>& shares, int gpus, int cap) {
  auto fits = [&](int64_t k) {
    int64_t total = 0;
    for (int share : shares) total += std::min<int64_t>(std::max(share, 0), k);
    return total >= k * gpus;
  };
  int lo = 0, hi = std::max(cap, 0);
  while (lo < hi) {
    const int mid = lo + (hi - lo + 1) / 2;
    if (fits(mid)) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Takes one share from each of the `gpus` GPUs with the most free shares (the first listed on
// ties): the rule sweep-worker places its leases by (worker/resources.h PickGpus), so the
// trials sweepd hands out in one reply always fit. False, changing nothing, if they do not.
bool TakeGpuShares(std::vector<int>* shares, int gpus) {
  std::vector<size_t> order(shares->size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return (*shares)[a] > (*shares)[b]; });
  if (gpus > static_cast<int>(order.size()) || (*shares)[order[gpus - 1]] <= 0) return false;
  for (int i = 0; i < gpus; ++i) --(*shares)[order[i]];
  return true;
}

// Runs `body` inside BEGIN IMMEDIATE ... COMMIT, rolling back when it fails.
template <typename F>
absl::Status InTransaction(StatementCache* cache, F body) {
  if (absl::Status s = ExecCached(cache, "BEGIN IMMEDIATE"); !s.ok()) return s;
  absl::Status s = body();
  if (!s.ok()) {
    (void)ExecCached(cache, "ROLLBACK");
    return s;
  }
  if (absl::Status c = ExecCached(cache, "COMMIT"); !c.ok()) {
    (void)ExecCached(cache, "ROLLBACK");
    return c;
  }
  return absl::OkStatus();
}

}  // namespace

double SystemClock::Now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

Scheduler::Scheduler(Store* store, Clock* clock, SchedulerOptions options)
    : store_(store), clock_(clock), options_(options) {}

absl::Status Scheduler::Exec(const std::string& sql) { return ExecSql(store_->db(), sql); }

absl::Status Scheduler::Event(int64_t sweep_id, int64_t trial_id, int64_t worker_id,
                              const std::string& kind, const std::string& detail) {
  return store_->RecordEvent(clock_->Now(), sweep_id, trial_id, worker_id, kind, detail);
}

absl::StatusOr<int64_t> Scheduler::RegisterWorker(const WorkerInfo& info) {
  if (info.name.empty()) return absl::InvalidArgumentError("worker name must not be empty");
  if (info.gpus < 0 || info.cpu_slots < 0 || info.gpus + info.cpu_slots == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker ", info.name, ": needs at least one GPU or CPU slot"));
  }
  int64_t id = 0;
  int held = 0;
  absl::Status s = InTransaction(store_->statements(), [&]() -> absl::Status {
    const double now = clock_->Now();
    Statement upsert(store_->statements(),
                     "INSERT INTO workers (name, host, gpus, cpu_slots, labels, registered_at, "
                     "last_seen) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT(name) DO UPDATE "
                     "SET host = ?2, gpus = ?3, cpu_slots = ?4, labels = ?5, last_seen = ?6, "
                     "state = CASE state WHEN 'gone' THEN 'active' ELSE state END RETURNING id");
    if (!upsert.status().ok()) return upsert.status();
    upsert.Bind(1, info.name);
    upsert.Bind(2, info.host);
    upsert.Bind(3, info.gpus);
    upsert.Bind(4, info.cpu_slots);
    upsert.Bind(5, info.labels_json);
    upsert.Bind(6, now);
    if (upsert.Step() != SQLITE_ROW) return upsert.Error("registering the worker");
    id = upsert.Int(0);
    upsert.Reset();  // Finish the RETURNING statement before the next write.
    // A restarted worker re-attaches by name while sweepd still leases trials to it: give it
    // a full lease to reconcile each one (HeldTrials) before ExpireLeases requeues them.
    Statement renew(store_->statements(),
                    "UPDATE trials SET lease_expires_at = ? WHERE worker_id = ? "
                    "AND state IN ('leased', 'running')");
    renew.Bind(1, now + options_.lease_ttl);
    renew.Bind(2, id);
    if (renew.Step() != SQLITE_DONE) return renew.Error("renewing the worker's leases");
    held = sqlite3_changes(store_->db());
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  if (absl::Status e = Event(0, 0, id, "worker_registered",
                             held == 0 ? info.name
                                       : absl::StrCat(info.name, " (re-attached, holds ", held,
                                                      " trials)"));
      !e.ok()) {
    return e;
  }
  return id;
}

absl::StatusOr<std::vector<Lease>> Scheduler::HeldTrials(int64_t worker_id) {
  Statement st(store_->statements(),
               absl::StrCat("SELECT ", kLeaseTrialColumns, ", t.lease_expires_at, ",
                            kLeaseSweepColumns,
                            " FROM trials t JOIN sweeps s ON s.id = t.sweep_id "
                            "WHERE t.worker_id = ? AND t.state IN ('leased', 'running') "
                            "ORDER BY t.id"));
  if (!st.status().ok()) return st.status();
  st.Bind(1, worker_id);
  std::vector<Lease> leases;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) {
    const LeaseSweep sweep = ReadLeaseSweep(st, kLeaseTrialColumnCount + 1);
    leases.push_back(MakeLease(sweep, st, 0, st.Double(kLeaseTrialColumnCount)));
  }
  if (rc != SQLITE_DONE) return st.Error("reading the worker's trials");
  return leases;
}

absl::StatusOr<std::vector<Lease>> Scheduler::LeaseTrials(int64_t worker_id, int free_gpus,
                                                          int free_cpu_slots, int max_trials) {
  FreeResources free;
  free.gpu_shares.assign(std::max(free_gpus, 0), 1);
  free.cpu_slots = free_cpu_slots;
  return LeaseTrials(worker_id, free, max_trials);
}

absl::StatusOr<std::vector<Lease>> Scheduler::LeaseTrials(int64_t worker_id,
                                                          const FreeResources& free,
                                                          int max_trials) {
  std::vector<int> gpu_shares = free.gpu_shares;
  int free_cpu_slots = free.cpu_slots;
  std::vector<Lease> leases;
  absl::Status s = InTransaction(store_->statements(), [&]() -> absl::Status {
    const double now = clock_->Now();
    Statement worker(store_->statements(), "SELECT state, name FROM workers WHERE id = ?");
    worker.Bind(1, worker_id);
    if (worker.Step() != SQLITE_ROW) {
      return absl::NotFoundError(absl::StrCat("no worker ", worker_id, "; register first"));
    }
    if (worker.Text(0) == "quarantined") {
      return absl::FailedPreconditionError(
          absl::StrCat("worker ", worker.Text(1), " is quarantined after repeated failures; "
                       "sweepctl workers shows why"));
    }
    // Running sweeps in priority order, then each one's oldest pending trials (index
    // trials_by_state), so a lease costs the same with 10 or 100,000 trials waiting.
    Statement sweeps(store_->statements(),
                     absl::StrCat("SELECT ", kLeaseSweepColumns, ", s.parallel FROM sweeps s "
                                  "WHERE s.state = 'running' ORDER BY s.priority DESC, s.id"));
    if (!sweeps.status().ok()) return sweeps.status();
    Statement live(store_->statements(),
                   "SELECT COUNT(*) FROM trials WHERE sweep_id = ? AND state IN ('leased', 'running')");
    Statement pending(store_->statements(),
                      absl::StrCat("SELECT ", kLeaseTrialColumns, " FROM trials t "
                                   "WHERE t.sweep_id = ? AND t.state = 'pending' "
                                   "ORDER BY t.id LIMIT ?"));
    Statement take(store_->statements(),
                   "UPDATE trials SET state = 'leased', attempt = attempt + 1, worker_id = ?, "
                   "lease_expires_at = ?, stop_requested = 0, stop_reason = NULL, "
                   "started_at = COALESCE(started_at, ?) WHERE id = ? AND state = 'pending'");
    while (static_cast<int>(leases.size()) < max_trials && sweeps.Step() == SQLITE_ROW) {
      const LeaseSweep sweep = ReadLeaseSweep(sweeps, 0);
      const int64_t sweep_id = sweep.id;
      const int gpus = sweep.gpus;
      const int cpu_slots = sweep.cpu_slots;
      const int parallel = static_cast<int>(sweeps.Int(kLeaseSweepColumnCount));
      // How many of this sweep's trials fit: resources, parallel and the caller's max.
      int room = max_trials - static_cast<int>(leases.size());
      if (gpus > 0) room = GpuTrialsThatFit(gpu_shares, gpus, room);
      if (cpu_slots > 0) room = std::min(room, free_cpu_slots / cpu_slots);
      if (parallel > 0) {
        live.Reset();
        live.Bind(1, sweep_id);
        if (live.Step() != SQLITE_ROW) return live.Error("counting live trials");
        room = std::min(room, parallel - static_cast<int>(live.Int(0)));
      }
      if (room <= 0) continue;
      // Read the candidates first: updating rows of the index a SELECT is walking is unsafe.
      std::vector<Lease> batch;
      pending.Reset();
      pending.Bind(1, sweep_id);
      pending.Bind(2, room);
      while (pending.Step() == SQLITE_ROW) {
        Lease lease = MakeLease(sweep, pending, 0, now + options_.lease_ttl);
        ++lease.attempt;  // Each lease is a new attempt (the `take` below stores it).
        batch.push_back(std::move(lease));
      }
      pending.Reset();
      for (Lease& lease : batch) {
        take.Reset();
        take.Bind(1, worker_id);
        take.Bind(2, lease.expires_at);
        take.Bind(3, now);
        take.Bind(4, lease.trial_id);
        if (take.Step() != SQLITE_DONE) return take.Error("leasing a trial");
        if (gpus > 0) TakeGpuShares(&gpu_shares, gpus);  // Fits: GpuTrialsThatFit counted it.
        free_cpu_slots -= cpu_slots;
        if (absl::Status e = Event(sweep_id, lease.trial_id, worker_id, "leased",
                                   absl::StrCat("attempt ", lease.attempt,
                                                lease.checkpoint ? ", resumes from " + *lease.checkpoint
                                                                 : std::string()));
            !e.ok()) {
          return e;
        }
        leases.push_back(std::move(lease));
      }
    }
    Statement seen(store_->statements(), "UPDATE workers SET last_seen = ? WHERE id = ?");
    seen.Bind(1, now);
    seen.Bind(2, worker_id);
    if (seen.Step() != SQLITE_DONE) return seen.Error("updating the worker");
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return leases;
}

absl::Status Scheduler::CheckFence(int64_t trial_id, int attempt, int64_t* sweep_id,
                                   int64_t* worker_id) {
  Statement st(store_->statements(), "SELECT attempt, state, sweep_id, worker_id FROM trials WHERE id = ?");
  st.Bind(1, trial_id);
  if (st.Step() != SQLITE_ROW) return absl::NotFoundError(absl::StrCat("no trial ", trial_id));
  const std::string state = st.Text(1);
  if (st.Int(0) != attempt || (state != "leased" && state != "running")) {
    return absl::FailedPreconditionError(
        absl::StrCat("trial ", trial_id, " attempt ", attempt, " holds no lease (trial is ",
                     state, " at attempt ", st.Int(0), ")"));
  }
  *sweep_id = st.Int(2);
  *worker_id = st.IsNull(3) ? 0 : st.Int(3);
  return absl::OkStatus();
}

absl::Status Scheduler::MarkRunning(int64_t trial_id, int attempt) {
  return InTransaction(store_->statements(), [&]() -> absl::Status {
    int64_t sweep_id, worker_id;
    if (absl::Status s = CheckFence(trial_id, attempt, &sweep_id, &worker_id); !s.ok()) return s;
    Statement st(store_->statements(), "UPDATE trials SET state = 'running' WHERE id = ?");
    st.Bind(1, trial_id);
    if (st.Step() != SQLITE_DONE) return st.Error("marking a trial running");
    return Event(sweep_id, trial_id, worker_id, "running", absl::StrCat("attempt ", attempt));
  });
}

absl::StatusOr<std::vector<StopRequest>> Scheduler::Heartbeat(
    int64_t worker_id, const std::vector<TrialProgress>& trials) {
  std::vector<StopRequest> stops;
  absl::Status s = InTransaction(store_->statements(), [&]() -> absl::Status {
    const double now = clock_->Now();
    Statement seen(store_->statements(), "UPDATE workers SET last_seen = ? WHERE id = ?");
    seen.Bind(1, now);
    seen.Bind(2, worker_id);
    if (seen.Step() != SQLITE_DONE || sqlite3_changes(store_->db()) == 0) {
      return absl::NotFoundError(absl::StrCat("no worker ", worker_id, "; register first"));
    }
    Statement get(store_->statements(),
                  "SELECT t.attempt, t.state, t.worker_id, t.stop_requested, s.state, "
                  "COALESCE(t.stop_reason, '') FROM trials t JOIN sweeps s ON s.id = t.sweep_id "
                  "WHERE t.id = ?");
    Statement renew(store_->statements(),
                    "UPDATE trials SET lease_expires_at = ?, last_step = MAX(COALESCE(last_step, 0), ?) "
                    "WHERE id = ?");
    for (const TrialProgress& p : trials) {
      get.Reset();
      get.Bind(1, p.trial_id);
      if (get.Step() != SQLITE_ROW) {
        stops.push_back({p.trial_id, p.attempt, "unknown trial"});
        continue;
      }
      const std::string state = get.Text(1);
      const bool holds = get.Int(0) == p.attempt && (state == "leased" || state == "running") &&
                         !get.IsNull(2) && get.Int(2) == worker_id;
      if (!holds) {
        stops.push_back({p.trial_id, p.attempt, "lease lost (requeued or reassigned)"});
        continue;
      }
      renew.Reset();
      renew.Bind(1, now + options_.lease_ttl);
      renew.Bind(2, p.step);
      renew.Bind(3, p.trial_id);
      if (renew.Step() != SQLITE_DONE) return renew.Error("renewing a lease");
      const std::string sweep_state = get.Text(4);
      const int64_t code = get.Int(3);
      if (code != kStopNone || sweep_state == "cancelled") {
        std::string reason = "stop requested";
        if (sweep_state == "cancelled") {
          reason = "sweep cancelled";
        } else if (code == kStopCancel) {
          reason = "trial cancelled";
        } else if (code == kStopDiverged || code == kStopEarly) {
          reason = absl::StrCat("early termination: ", get.Text(5));
        }
        stops.push_back({p.trial_id, p.attempt, reason});
      }
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return stops;
}

absl::Status Scheduler::ReportCheckpoint(int64_t trial_id, int attempt, const std::string& path,
                                         int64_t step) {
  return InTransaction(store_->statements(), [&]() -> absl::Status {
    int64_t sweep_id, worker_id;
    if (absl::Status s = CheckFence(trial_id, attempt, &sweep_id, &worker_id); !s.ok()) return s;
    Statement st(store_->statements(), "UPDATE trials SET checkpoint = ?, checkpoint_step = ? WHERE id = ?");
    st.Bind(1, path);
    st.Bind(2, step);
    st.Bind(3, trial_id);
    if (st.Step() != SQLITE_DONE) return st.Error("recording a checkpoint");
    return absl::OkStatus();
  });
}

absl::Status Scheduler::Complete(int64_t trial_id, int attempt, const Completion& c) {
  return InTransaction(store_->statements(), [&]() -> absl::Status {
    int64_t sweep_id, worker_id;
    if (absl::Status s = CheckFence(trial_id, attempt, &sweep_id, &worker_id); !s.ok()) return s;
    const double now = clock_->Now();
    Statement info(store_->statements(),
                   "SELECT t.stop_requested, s.state, s.max_attempts, t.attempt_errors, "
                   "COALESCE(t.stop_reason, ''), t.divergence_step, "
                   "COALESCE(t.divergence_reason, '') "
                   "FROM trials t JOIN sweeps s ON s.id = t.sweep_id WHERE t.id = ?");
    info.Bind(1, trial_id);
    if (info.Step() != SQLITE_ROW) return info.Error("reading the trial");
    const std::string sweep_state = info.Text(1);
    // Nothing that was cancelled goes back to pending: it would wait there for ever.
    const bool cancelled = sweep_state == "cancelled" || info.Int(0) == kStopCancel;
    const int max_attempts = static_cast<int>(info.Int(2));
    nlohmann::json errors = AttemptErrors(info.Text(3));
    // Early termination (monitor.h) decides how the trial ends, whatever the attempt reports
    // as it stops: a divergence stop ends it diverged in every case; an ASHA stop ends it
    // stopped unless it completed or diverged on its own first.
    const int64_t stop_code = info.Int(0);
    const std::string stop_reason = info.Text(4);
    const std::optional<int64_t> divergence_step =
        info.IsNull(5) ? std::nullopt : std::optional<int64_t>(info.Int(5));
    const std::string divergence_reason = info.Text(6);

    // How the attempt ended, for the audit log: "attempt 2, exit 1: CUDA error".
    std::string detail = absl::StrCat("attempt ", attempt);
    if (c.exit_code != 0) absl::StrAppend(&detail, ", exit ", c.exit_code);
    if (!c.error.empty()) absl::StrAppend(&detail, ": ", c.error);

    std::string state = OutcomeState(c.outcome);
    std::string kind;  // The event; empty: the new state.
    // `error` is the outcome of a trial that ended; one that waits as pending has none yet.
    std::optional<std::string> error;
    if (!c.error.empty()) error = c.error;
    switch (c.outcome) {
      case Outcome::kStopped:
        // Stopped for a pause: wait as pending and resume from the checkpoint later.
        if (sweep_state == "paused") state = "pending";
        if (cancelled) state = "cancelled";
        break;
      case Outcome::kReleased:
        // Not the trial's fault nor the worker's: no attempt error, no quarantine count.
        state = cancelled ? "cancelled" : "pending";
        kind = "released";
        if (cancelled) absl::StrAppend(&detail, "; trial cancelled");
        error.reset();
        break;
      case Outcome::kFailed: {
        errors.push_back(absl::StrCat("attempt ", attempt, ": ",
                                      c.error.empty() ? "no reason given" : c.error));
        // max_attempts counts failed attempts, not leases: released and paused attempts
        // do not use it up.
        const int failures = static_cast<int>(errors.size());
        if (failures >= max_attempts) {
          error = absl::StrCat("failed after ", failures, " attempts: ",
                               c.error.empty() ? "no reason given" : c.error);
        } else if (cancelled) {
          state = "cancelled";
        } else {
          state = "pending";
          kind = "requeued";
          absl::StrAppend(&detail, " (failed attempt ", failures, " of ", max_attempts, ")");
        }
        break;
      }
      case Outcome::kCompleted:
      case Outcome::kDiverged:
        break;
    }
    const bool ran_out = c.outcome == Outcome::kCompleted || c.outcome == Outcome::kDiverged;
    if (!cancelled && (stop_code == kStopDiverged || (stop_code == kStopEarly && !ran_out))) {
      state = stop_code == kStopDiverged ? "diverged" : "stopped";
      kind.clear();
      error = stop_reason;
      // The worker usually echoes the heartbeat's reason as its error already.
      if (c.error.find(stop_reason) == std::string::npos) {
        absl::StrAppend(&detail, "; early termination: ", stop_reason);
      }
    }
    // A divergence sweepd detected says why, when the trainer said nothing.
    if (state == "diverged" && (!error || error->empty()) && !divergence_reason.empty()) {
      error = divergence_reason;
    }
    if (state == "pending") error.reset();
    Statement st(store_->statements(),
                 "UPDATE trials SET state = ?1, worker_id = NULL, lease_expires_at = NULL, "
                 "last_step = ?2, final_metric = ?3, best_metric = ?4, diverged_step = ?5, "
                 "error = ?6, attempt_errors = COALESCE(?7, attempt_errors), "
                 // A checkpoint named only here has no known step.
                 "checkpoint_step = CASE WHEN ?8 IS NULL OR ?8 IS checkpoint "
                 "THEN checkpoint_step ELSE NULL END, checkpoint = COALESCE(?8, checkpoint), "
                 "finished_at = CASE WHEN ?1 = 'pending' THEN NULL ELSE ?9 END WHERE id = ?10");
    st.Bind(1, state);
    st.Bind(2, c.last_step);
    if (c.final_metric) {
      st.Bind(3, *c.final_metric);
    } else {
      st.BindNull(3);
    }
    if (c.best_metric) {
      st.Bind(4, *c.best_metric);
    } else {
      st.BindNull(4);
    }
    if (state == "diverged") {
      // The trainer's step when it reported one, else the step sweepd detected.
      if (c.outcome == Outcome::kDiverged && c.diverged_step > 0) {
        st.Bind(5, c.diverged_step);
      } else if (divergence_step) {
        st.Bind(5, *divergence_step);
      } else {
        st.Bind(5, c.outcome == Outcome::kDiverged ? c.diverged_step : c.last_step);
      }
    } else {
      st.BindNull(5);
    }
    if (error) {
      st.Bind(6, *error);
    } else {
      st.BindNull(6);
    }
    // Only a failed attempt adds to attempt_errors; every other outcome leaves it as it is.
    if (c.outcome == Outcome::kFailed) {
      st.Bind(7, errors.dump());
    } else {
      st.BindNull(7);
    }
    if (c.checkpoint.empty()) {
      st.BindNull(8);
    } else {
      st.Bind(8, c.checkpoint);
    }
    st.Bind(9, now);
    st.Bind(10, trial_id);
    if (st.Step() != SQLITE_DONE) return st.Error("completing a trial");
    // Quarantine bookkeeping: a worker whose trials keep failing gets no more of them. A
    // trial handed back says nothing about the worker either way.
    if (worker_id != 0 && c.outcome != Outcome::kReleased) {
      const bool failed = c.outcome == Outcome::kFailed;
      Statement count(store_->statements(),
                      "UPDATE workers SET consecutive_failures = "
                      "CASE WHEN ? THEN consecutive_failures + 1 ELSE 0 END WHERE id = ?");
      count.Bind(1, failed ? 1 : 0);
      count.Bind(2, worker_id);
      if (count.Step() != SQLITE_DONE) return count.Error("counting the worker's failures");
      if (failed) {
        Statement q(store_->statements(),
                    "UPDATE workers SET state = 'quarantined' WHERE id = ? AND state = 'active' "
                    "AND consecutive_failures >= ?");
        q.Bind(1, worker_id);
        q.Bind(2, options_.quarantine_after);
        if (q.Step() != SQLITE_DONE) return q.Error("quarantining a worker");
        if (sqlite3_changes(store_->db()) > 0) {
          if (absl::Status e = Event(0, 0, worker_id, "worker_quarantined",
                                     absl::StrCat(options_.quarantine_after,
                                                  " failed trials in a row"));
              !e.ok()) {
            return e;
          }
        }
      }
    }
    if (absl::Status e = Event(sweep_id, trial_id, worker_id, kind.empty() ? state : kind, detail);
        !e.ok()) {
      return e;
    }
    return CompleteSweepIfDone(sweep_id, now);
  });
}

absl::Status Scheduler::CompleteSweepIfDone(int64_t sweep_id, double now) {
  // A sweep with no trial left to run is completed.
  Statement st(store_->statements(),
               "UPDATE sweeps SET state = 'completed', updated_at = ?1 WHERE id = ?2 "
               "AND state = 'running' AND NOT EXISTS (SELECT 1 FROM trials WHERE sweep_id = ?2 "
               "AND state IN ('pending', 'leased', 'running'))");
  st.Bind(1, now);
  st.Bind(2, sweep_id);
  if (st.Step() != SQLITE_DONE) return st.Error("completing the sweep");
  return absl::OkStatus();
}

absl::StatusOr<int> Scheduler::ExpireLeases() {
  int expired = 0;
  absl::Status s = InTransaction(store_->statements(), [&]() -> absl::Status {
    const double now = clock_->Now();
    Statement find(store_->statements(),
                   "SELECT t.id, t.attempt, t.sweep_id, t.worker_id, s.max_attempts, "
                   "t.attempt_errors, t.stop_requested, s.state, COALESCE(t.stop_reason, ''), "
                   "COALESCE(t.divergence_step, t.last_step) FROM trials t "
                   "JOIN sweeps s ON s.id = t.sweep_id "
                   "WHERE t.state IN ('leased', 'running') AND t.lease_expires_at < ?");
    find.Bind(1, now);
    Statement update(store_->statements(),
                     "UPDATE trials SET state = ?, worker_id = NULL, lease_expires_at = NULL, "
                     "attempt_errors = ?, error = ?, finished_at = ?, "
                     "diverged_step = CASE WHEN ?1 = 'diverged' THEN ? ELSE diverged_step END "
                     "WHERE id = ?");
    std::vector<std::tuple<int64_t, int64_t, int64_t, std::string>> events;
    while (find.Step() == SQLITE_ROW) {
      const int64_t trial_id = find.Int(0);
      const int attempt = static_cast<int>(find.Int(1));
      nlohmann::json errors = AttemptErrors(find.Text(5));
      errors.push_back(absl::StrCat("attempt ", attempt, ": lease expired (worker lost)"));
      // Failed attempts, not the attempt number: released and paused attempts are free.
      const int failures = static_cast<int>(errors.size());
      const bool give_up = failures >= find.Int(4);
      const int64_t code = find.Int(6);
      const bool cancelled = find.Text(7) == "cancelled" || code == kStopCancel;
      // A trial early termination was stopping ends as it decided, not requeued to run again.
      const bool early = !cancelled && (code == kStopDiverged || code == kStopEarly);
      const std::string state = early       ? (code == kStopDiverged ? "diverged" : "stopped")
                                : give_up   ? "failed"
                                : cancelled ? "cancelled"
                                            : "pending";
      update.Reset();
      update.Bind(1, state);
      update.Bind(2, errors.dump());
      if (early) {
        update.Bind(3, find.Text(8));
      } else if (give_up) {
        update.Bind(3, absl::StrCat("failed after ", failures, " attempts: ", errors.dump()));
      } else {
        update.BindNull(3);
      }
      if (state == "pending") {
        update.BindNull(4);
      } else {
        update.Bind(4, now);
      }
      update.Bind(5, find.Int(9));
      update.Bind(6, trial_id);
      if (update.Step() != SQLITE_DONE) return update.Error("expiring a lease");
      events.emplace_back(find.Int(2), trial_id, find.IsNull(3) ? 0 : find.Int(3),
                          state == "pending" ? "requeued" : state);
      ++expired;
    }
    std::set<int64_t> sweeps;
    for (const auto& [sweep_id, trial_id, worker_id, kind] : events) {
      if (absl::Status e = Event(sweep_id, trial_id, worker_id, kind, "lease expired"); !e.ok()) {
        return e;
      }
      sweeps.insert(sweep_id);
    }
    // A trial that gave up may have been the sweep's last one.
    for (int64_t sweep_id : sweeps) {
      if (absl::Status s = CompleteSweepIfDone(sweep_id, now); !s.ok()) return s;
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return expired;
}

namespace {

absl::StatusOr<int64_t> SweepId(Store* store, const std::string& sweep) {
  absl::StatusOr<SweepRow> row = store->GetSweep(sweep);
  if (!row.ok()) return row.status();
  return row->id;
}

}  // namespace

absl::Status Scheduler::PauseSweep(const std::string& sweep, bool stop_running) {
  absl::StatusOr<int64_t> id = SweepId(store_, sweep);
  if (!id.ok()) return id.status();
  return InTransaction(store_->statements(), [&]() -> absl::Status {
    if (absl::Status s = Exec(absl::StrCat("UPDATE sweeps SET state = 'paused', updated_at = ",
                                           clock_->Now(), " WHERE id = ", *id,
                                           " AND state = 'running'"));
        !s.ok()) {
      return s;
    }
    if (stop_running) {
      // A trial already being stopped (cancel, early termination) keeps its reason.
      if (absl::Status s =
              Exec(absl::StrCat("UPDATE trials SET stop_requested = 1 WHERE sweep_id = ", *id,
                                " AND state IN ('leased', 'running') "
                                "AND stop_requested = 0"));
          !s.ok()) {
        return s;
      }
    }
    return Event(*id, 0, 0, "paused", stop_running ? "running trials stop with a checkpoint" : "");
  });
}

absl::Status Scheduler::ResumeSweep(const std::string& sweep) {
  absl::StatusOr<int64_t> id = SweepId(store_, sweep);
  if (!id.ok()) return id.status();
  return InTransaction(store_->statements(), [&]() -> absl::Status {
    if (absl::Status s = Exec(absl::StrCat("UPDATE sweeps SET state = 'running', updated_at = ",
                                           clock_->Now(), " WHERE id = ", *id,
                                           " AND state = 'paused'"));
        !s.ok()) {
      return s;
    }
    return Event(*id, 0, 0, "resumed", "");
  });
}

absl::Status Scheduler::CancelSweep(const std::string& sweep) {
  absl::StatusOr<int64_t> id = SweepId(store_, sweep);
  if (!id.ok()) return id.status();
  return InTransaction(store_->statements(), [&]() -> absl::Status {
    const double now = clock_->Now();
    for (const std::string& sql : {
             absl::StrCat("UPDATE sweeps SET state = 'cancelled', updated_at = ", now,
                          " WHERE id = ", *id),
             absl::StrCat("UPDATE trials SET state = 'cancelled', finished_at = ", now,
                          " WHERE sweep_id = ", *id, " AND state = 'pending'"),
             absl::StrCat("UPDATE trials SET stop_requested = 1 WHERE sweep_id = ", *id,
                          " AND state IN ('leased', 'running')")}) {
      if (absl::Status s = Exec(sql); !s.ok()) return s;
    }
    return Event(*id, 0, 0, "cancelled", "");
  });
}

absl::Status Scheduler::CancelTrial(int64_t trial_id) {
  return InTransaction(store_->statements(), [&]() -> absl::Status {
    Statement st(store_->statements(),
                 "UPDATE trials SET state = CASE state WHEN 'pending' THEN 'cancelled' ELSE state END, "
                 "finished_at = CASE state WHEN 'pending' THEN ?2 ELSE finished_at END, "
                 "stop_requested = CASE WHEN state IN ('leased', 'running') THEN 2 ELSE stop_requested END "
                 "WHERE id = ?1 AND state IN ('pending', 'leased', 'running') RETURNING sweep_id");
    st.Bind(1, trial_id);
    st.Bind(2, clock_->Now());
    if (st.Step() != SQLITE_ROW) {
      return absl::FailedPreconditionError(
          absl::StrCat("trial ", trial_id, " cannot be cancelled: it does not exist or has ended"));
    }
    return Event(st.Int(0), trial_id, 0, "cancel_requested", "");
  });
}

absl::Status Scheduler::RetryTrial(int64_t trial_id) {
  return InTransaction(store_->statements(), [&]() -> absl::Status {
    Statement st(store_->statements(),
                 "UPDATE trials SET state = 'pending', error = NULL, finished_at = NULL, "
                 "attempt_errors = '[]', divergence_step = NULL, divergence_reason = NULL, "
                 "stop_reason = NULL, asha_exempt = asha_exempt OR state = 'stopped' "
                 "WHERE id = ? AND state IN ('failed', 'diverged', 'stopped', 'cancelled') "
                 "RETURNING sweep_id");
    st.Bind(1, trial_id);
    if (st.Step() != SQLITE_ROW) {
      return absl::FailedPreconditionError(absl::StrCat(
          "trial ", trial_id, " cannot be retried: it does not exist or has not ended"));
    }
    const int64_t sweep_id = st.Int(0);
    if (absl::Status s = Exec(absl::StrCat("UPDATE sweeps SET state = 'running' WHERE id = ",
                                           sweep_id, " AND state IN ('completed', 'cancelled')"));
        !s.ok()) {
      return s;
    }
    return Event(sweep_id, trial_id, 0, "retry", "");
  });
}

absl::Status Scheduler::ReleaseWorker(const std::string& name) {
  Statement st(store_->statements(),
               "UPDATE workers SET state = 'active', consecutive_failures = 0 WHERE name = ? "
               "RETURNING id");
  st.Bind(1, name);
  if (st.Step() != SQLITE_ROW) return absl::NotFoundError(absl::StrCat("no worker named ", name));
  return Event(0, 0, st.Int(0), "worker_released", name);
}

}  // namespace sweep::orchestrator
