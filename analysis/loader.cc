// LoadTrials() and AnalyzeSweep(): the database side, SELECTs only.
#include <sqlite3.h>

#include <cmath>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "analysis/analysis.h"

namespace sweep::analysis {
namespace {

// A prepared statement, finalized on scope exit.
class Query {
 public:
  Query(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  ~Query() { sqlite3_finalize(stmt_); }
  Query(const Query&) = delete;
  Query& operator=(const Query&) = delete;

  absl::Status status() const {
    if (rc_ == SQLITE_OK) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("analysis: sqlite: ", sqlite3_errmsg(db_)));
  }
  void Bind(int i, int64_t v) { sqlite3_bind_int64(stmt_, i, v); }
  // True on a row; false at the end or on an error (then check Done()).
  bool Next() {
    last_ = sqlite3_step(stmt_);
    return last_ == SQLITE_ROW;
  }
  absl::Status Done() const {
    if (last_ == SQLITE_DONE || last_ == SQLITE_ROW) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("analysis: sqlite: ", sqlite3_errmsg(db_)));
  }
  void Reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  bool IsNull(int col) { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  int64_t Int(int col) { return sqlite3_column_int64(stmt_, col); }
  double Double(int col) { return sqlite3_column_double(stmt_, col); }
  std::string Text(int col) {
    const unsigned char* text = sqlite3_column_text(stmt_, col);
    return text == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(text));
  }

 private:
  sqlite3* const db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_ = SQLITE_OK;
  int last_ = SQLITE_DONE;
};

absl::Status Exec(sqlite3* db, const char* sql) {
  char* error = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &error) != SQLITE_OK) {
    absl::Status s = absl::InternalError(
        absl::StrCat("analysis: sqlite: ", error != nullptr ? error : "?", " (", sql, ")"));
    sqlite3_free(error);
    return s;
  }
  return absl::OkStatus();
}

// A savepoint for a consistent snapshot of the reads (works on read-only connections and
// inside a caller's transaction); released on scope exit.
class ReadSnapshot {
 public:
  explicit ReadSnapshot(sqlite3* db) : db_(db) { status_ = Exec(db, "SAVEPOINT sweep_analysis"); }
  ~ReadSnapshot() {
    if (status_.ok()) Exec(db_, "RELEASE sweep_analysis").IgnoreError();
  }
  ReadSnapshot(const ReadSnapshot&) = delete;
  ReadSnapshot& operator=(const ReadSnapshot&) = delete;
  const absl::Status& status() const { return status_; }

 private:
  sqlite3* const db_;
  absl::Status status_;
};

struct SweepInfo {
  std::string name;
  std::string metric_name;
  bool minimize = true;
};

absl::StatusOr<SweepInfo> ReadSweep(sqlite3* db, int64_t sweep_id) {
  Query q(db, "SELECT name, metric_name, metric_goal FROM sweeps WHERE id = ?");
  if (absl::Status s = q.status(); !s.ok()) return s;
  q.Bind(1, sweep_id);
  if (!q.Next()) {
    if (absl::Status s = q.Done(); !s.ok()) return s;
    return absl::NotFoundError(absl::StrCat("no sweep with id ", sweep_id));
  }
  return SweepInfo{q.Text(0), q.Text(1), q.Text(2) != "maximize"};
}

absl::StatusOr<std::vector<TrialResult>> LoadTrialsInSnapshot(sqlite3* db, int64_t sweep_id,
                                                              const AnalysisOptions& options) {
  std::vector<TrialResult> trials;
  // Data-parallel trials (schema 6): a step takes ranks x the config's batch. Older
  // databases have no such column: one process.
  int64_t ranks = 1;
  {
    Query q(db, "SELECT ranks_per_trial FROM sweeps WHERE id = ?");
    if (q.status().ok()) {
      q.Bind(1, sweep_id);
      if (q.Next() && q.Int(0) > 0) ranks = q.Int(0);
    }
  }
  {
    Query q(db,
            "SELECT id, trial_key, params, config, state, final_metric, diverged_step "
            "FROM trials WHERE sweep_id = ? ORDER BY id");
    if (absl::Status s = q.status(); !s.ok()) return s;
    q.Bind(1, sweep_id);
    while (q.Next()) {
      TrialResult t;
      t.trial_id = q.Int(0);
      t.trial_key = q.Text(1);
      t.params = nlohmann::json::parse(q.Text(2), nullptr, /*allow_exceptions=*/false);
      if (!t.params.is_object()) t.params = nlohmann::json::object();
      t.state = q.Text(4);
      if (!q.IsNull(5)) t.final_metric = q.Double(5);
      if (!q.IsNull(6)) t.diverged_step = q.Int(6);
      t.outcome = OutcomeFromState(t.state, t.diverged_step);
      absl::StatusOr<RunShape> shape = ShapeFromConfigText(q.Text(3));
      if (shape.ok()) {
        t.shape = *shape;
        t.shape->processes = ranks;
      } else {
        t.shape_error = std::string(shape.status().message());
      }
      trials.push_back(std::move(t));
    }
    if (absl::Status s = q.Done(); !s.ok()) return s;
  }

  bool spikes_table = false;
  {
    Query q(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'spikes'");
    if (absl::Status s = q.status(); !s.ok()) return s;
    spikes_table = q.Next();
  }
  spikes_table = spikes_table && options.use_spikes_table;

  // The primary key (trial_id, name, step) serves each of these as a range scan.
  Query first_loss(db,
                   "SELECT value FROM metrics WHERE trial_id = ? AND name = 'loss/out' "
                   "AND value IS NOT NULL ORDER BY step LIMIT 1");
  Query grad_norm(db,
                  "SELECT step, value FROM metrics WHERE trial_id = ? AND name = 'optim/grad_norm' "
                  "ORDER BY step");
  Query noise_scale(db,
                    "SELECT value FROM metrics WHERE trial_id = ? AND name = 'optim/noise_scale' "
                    "AND value IS NOT NULL ORDER BY step");
  for (Query* q : {&first_loss, &grad_norm, &noise_scale}) {
    if (absl::Status s = q->status(); !s.ok()) return s;
  }
  std::unique_ptr<Query> spikes;
  if (spikes_table) {
    spikes =
        std::make_unique<Query>(db,
                                "SELECT step, value, z, mean, in_warmup FROM spikes "
                                "WHERE trial_id = ? AND name = 'optim/grad_norm' ORDER BY step");
    if (absl::Status s = spikes->status(); !s.ok()) return s;
  }
  for (TrialResult& t : trials) {
    first_loss.Reset();
    first_loss.Bind(1, t.trial_id);
    if (first_loss.Next()) {
      const double v = first_loss.Double(0);
      if (std::isfinite(v)) t.initial_loss = v;
    }
    if (absl::Status s = first_loss.Done(); !s.ok()) return s;

    grad_norm.Reset();
    grad_norm.Bind(1, t.trial_id);
    while (grad_norm.Next()) {
      TracePoint p;
      p.step = grad_norm.Int(0);
      p.finite = !grad_norm.IsNull(1);  // NULL: the trainer logged nan or inf
      p.value = p.finite ? grad_norm.Double(1) : 0.0;
      if (p.finite && !std::isfinite(p.value)) p.finite = false;
      t.grad_norm.push_back(p);
    }
    if (absl::Status s = grad_norm.Done(); !s.ok()) return s;

    noise_scale.Reset();
    noise_scale.Bind(1, t.trial_id);
    std::vector<double> values;
    while (noise_scale.Next()) values.push_back(noise_scale.Double(0));
    if (absl::Status s = noise_scale.Done(); !s.ok()) return s;
    t.noise_scale = LateMean(values);

    if (spikes) {
      spikes->Reset();
      spikes->Bind(1, t.trial_id);
      std::vector<SpikeRecord> records;
      while (spikes->Next()) {
        records.push_back(SpikeRecord{spikes->Int(0), spikes->Double(1), spikes->Double(2),
                                      spikes->Double(3), spikes->Int(4) != 0});
      }
      if (absl::Status s = spikes->Done(); !s.ok()) return s;
      t.spikes = std::move(records);
    }
  }
  return trials;
}

}  // namespace

std::optional<double> LateMean(const std::vector<double>& values) {
  // B_simple grows as the loss falls; its value late in training is the one that matters
  // for the next run's batch. The EMA behind it is noisy step to step: average a quarter.
  const size_t first = values.size() - values.size() / 4 - (values.size() % 4 != 0);
  double sum = 0;
  int n = 0;
  for (size_t i = first; i < values.size(); ++i) {
    if (std::isfinite(values[i])) {
      sum += values[i];
      ++n;
    }
  }
  if (n == 0 || sum <= 0) return std::nullopt;
  return sum / n;
}

absl::StatusOr<std::vector<TrialResult>> LoadTrials(sqlite3* db, int64_t sweep_id,
                                                    const AnalysisOptions& options) {
  ReadSnapshot snapshot(db);
  if (!snapshot.status().ok()) return snapshot.status();
  absl::StatusOr<SweepInfo> sweep = ReadSweep(db, sweep_id);
  if (!sweep.ok()) return sweep.status();
  return LoadTrialsInSnapshot(db, sweep_id, options);
}

absl::StatusOr<SweepAnalysis> AnalyzeSweep(sqlite3* db, int64_t sweep_id,
                                           const AnalysisOptions& options) {
  absl::StatusOr<SweepInfo> sweep;
  absl::StatusOr<std::vector<TrialResult>> trials;
  {
    ReadSnapshot snapshot(db);
    if (!snapshot.status().ok()) return snapshot.status();
    sweep = ReadSweep(db, sweep_id);
    if (!sweep.ok()) return sweep.status();
    trials = LoadTrialsInSnapshot(db, sweep_id, options);
    if (!trials.ok()) return trials.status();
  }
  if (trials->empty()) {
    return absl::FailedPreconditionError(absl::StrCat("sweep ", sweep->name, " has no trials"));
  }
  AnalysisOptions resolved = options;
  resolved.metric_name = sweep->metric_name;
  resolved.minimize = sweep->minimize;
  absl::StatusOr<SweepAnalysis> analysis = Analyze(*trials, resolved);
  if (!analysis.ok()) return analysis.status();
  analysis->sweep_id = sweep_id;
  analysis->sweep_name = sweep->name;
  return analysis;
}

}  // namespace sweep::analysis
