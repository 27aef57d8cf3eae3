// The sweep database: one SQLite file (WAL, synchronous=NORMAL, foreign keys on) holding
// sweeps, trials, metrics, workers and an audit log of events. Schema: docs/schema.md.
//
// Contract
//   * Open() creates the file or migrates it to kSchemaVersion, in one transaction per
//     migration; a file written by a newer sweepd is refused (FailedPrecondition).
//   * Only sweepd writes (DESIGN.md: one writer). OpenReadOnly() is for dashboards, the query
//     RPC and tests; it never changes the file.
//   * SubmitSweep() is idempotent: the same name with the same spec attaches to the existing
//     sweep; the same name with another spec is AlreadyExists. Trials are rows with
//     UNIQUE(sweep_id, trial_key), so no configuration is ever stored twice.
//   * InsertMetrics() keys rows by (trial, name, step): re-sending a batch changes nothing.
//     Rows from an attempt other than the trial's current, leased one are refused
//     (FailedPrecondition), so a requeued trial never mixes metrics of two attempts.
//     Non-finite values are stored as NULL with `nonfinite` = 'nan' | 'inf' | '-inf'.
//     With `on_new`, the rows that were new are handed to it inside the same transaction,
//     before COMMIT: what it writes commits with them, and its error rolls the batch back.
//   * Times are Unix seconds (REAL) passed in by the caller, so tests control the clock.
//
// Thread-safety: a Store is used from one thread at a time (sweepd's writer thread).
#ifndef SWEEP_ORCHESTRATOR_STORE_H_
#define SWEEP_ORCHESTRATOR_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "orchestrator/spec.h"

struct sqlite3;

namespace sweep::orchestrator {

class StatementCache;

inline constexpr int kSchemaVersion = 7;

// trials.stop_requested: why the trial's worker is told to stop it (heartbeat replies).
enum StopCode : int {
  kStopNone = 0,
  kStopPause = 1,     // A pause with stop (or a cancelled sweep): pending again, or cancelled.
  kStopCancel = 2,    // The trial was cancelled: it ends cancelled.
  kStopDiverged = 3,  // Early termination, divergence: it ends diverged (trials.stop_reason).
  kStopEarly = 4,     // Early termination, ASHA/hyperband: it ends stopped (trials.stop_reason).
};

struct SweepRow {
  int64_t id = 0;
  std::string name;
  std::string state;  // running | paused | completed | cancelled
  std::string method;
  std::string metric_name;
  bool minimize = true;
  int max_attempts = 3;
  int parallel = 0;
  std::string spec_text;
  double created_at = 0;
};

struct TrialRow {
  int64_t id = 0;
  int64_t sweep_id = 0;
  std::string trial_key;
  std::string params_json;  // {"optim.lr": "0.003", ...} canonical values as strings
  std::string config;       // resolved trainer config (YAML)
  std::string state;        // pending | leased | running | completed | diverged | failed | stopped | cancelled
  int attempt = 0;
  std::optional<std::string> checkpoint;
  std::string error;
  int64_t last_step = 0;
  std::optional<double> final_metric;
  std::optional<double> best_metric;
  std::string attempt_errors_json = "[]";  // why each failed attempt failed
};

struct MetricRow {
  int64_t trial_id = 0;
  int attempt = 0;
  std::string name;
  int64_t step = 0;
  double value = 0;  // May be NaN or ±Inf.
  double time = 0;
};

struct SubmitResult {
  int64_t sweep_id = 0;
  bool created = false;     // false: attached to an existing identical sweep
  int64_t trials = 0;       // trials of the sweep
};

class Store {
 public:
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& path);
  static absl::StatusOr<std::unique_ptr<Store>> OpenReadOnly(const std::string& path);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  absl::StatusOr<int> SchemaVersion();

  absl::StatusOr<SubmitResult> SubmitSweep(const SweepSpec& spec,
                                           const std::vector<TrialSpec>& trials, double now);
  absl::StatusOr<SweepRow> GetSweep(const std::string& name_or_id);
  absl::StatusOr<std::vector<SweepRow>> ListSweeps();
  // Trials of a sweep in id order; `state` empty for all.
  absl::StatusOr<std::vector<TrialRow>> ListTrials(int64_t sweep_id, const std::string& state = "");
  absl::StatusOr<TrialRow> GetTrial(int64_t trial_id);

  // Stores rows in one transaction. Returns how many rows were new.
  using NewMetricsHook = std::function<absl::Status(const std::vector<MetricRow>& added)>;
  absl::StatusOr<int64_t> InsertMetrics(const std::vector<MetricRow>& rows,
                                        const NewMetricsHook& on_new = nullptr);

  // Stores a sweep analysis (JSON); returns its id.
  absl::StatusOr<int64_t> RecordAnalysis(double time, int64_t sweep_id, const std::string& group_by_json,
                                         const std::string& result_json);

  // Appends to the audit log. Ids of 0 are stored as NULL.
  absl::Status RecordEvent(double time, int64_t sweep_id, int64_t trial_id, int64_t worker_id,
                           const std::string& kind, const std::string& detail);

  sqlite3* db() { return db_; }  // For tests and the read-only query RPC.
  // Prepared statements kept for reuse on db() (sql.h), for the statements sweepd runs per
  // request; finalized before the connection closes.
  StatementCache* statements() { return statements_.get(); }

 private:
  explicit Store(sqlite3* db);
  absl::Status Exec(const std::string& sql);
  absl::Status Migrate();
  absl::Status BumpSchemaCookie();

  sqlite3* const db_;
  const std::unique_ptr<StatementCache> statements_;
};

}  // namespace sweep::orchestrator

#endif  // SWEEP_ORCHESTRATOR_STORE_H_
