#include "orchestrator/store.h"

#include <sqlite3.h>

#include <cmath>
#include <cstdlib>
#include <iterator>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "orchestrator/metric_blocks.h"
#include "orchestrator/sql.h"

namespace sweep::orchestrator {
namespace {

// Migration i (1-based) brings the schema from version i - 1 to i. Append, never edit.
const char* const kMigrations[] = {
    // 1: sweeps, trials, metrics, workers, events and the dashboard views.
    R"sql(
CREATE TABLE sweeps (
  id           INTEGER PRIMARY KEY,
  name         TEXT NOT NULL UNIQUE,
  state        TEXT NOT NULL CHECK (state IN ('running', 'paused', 'completed', 'cancelled')),
  method       TEXT NOT NULL CHECK (method IN ('grid', 'random')),
  metric_name  TEXT NOT NULL,
  metric_goal  TEXT NOT NULL CHECK (metric_goal IN ('minimize', 'maximize')),
  max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),
  parallel     INTEGER NOT NULL DEFAULT 0,
  priority     INTEGER NOT NULL DEFAULT 0,
  gpus_per_trial      INTEGER NOT NULL DEFAULT 0,
  cpu_slots_per_trial INTEGER NOT NULL DEFAULT 1,
  trainer_command     TEXT NOT NULL DEFAULT '[]',
  spec_text    TEXT NOT NULL,
  spec_hash    TEXT NOT NULL,
  created_at   REAL NOT NULL,
  updated_at   REAL NOT NULL
);

CREATE TABLE workers (
  id                   INTEGER PRIMARY KEY,
  name                 TEXT NOT NULL UNIQUE,
  host                 TEXT NOT NULL DEFAULT '',
  gpus                 INTEGER NOT NULL DEFAULT 0,
  cpu_slots            INTEGER NOT NULL DEFAULT 0,
  labels               TEXT NOT NULL DEFAULT '{}',
  state                TEXT NOT NULL DEFAULT 'active'
                       CHECK (state IN ('active', 'quarantined', 'gone')),
  consecutive_failures INTEGER NOT NULL DEFAULT 0,
  registered_at        REAL NOT NULL,
  last_seen            REAL NOT NULL
);

CREATE TABLE trials (
  id               INTEGER PRIMARY KEY,
  sweep_id         INTEGER NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
  trial_key        TEXT NOT NULL,
  params           TEXT NOT NULL,
  config           TEXT NOT NULL,
  state            TEXT NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'leased', 'running', 'completed', 'diverged',
                                    'failed', 'stopped', 'cancelled')),
  attempt          INTEGER NOT NULL DEFAULT 0,
  worker_id        INTEGER REFERENCES workers(id),
  lease_expires_at REAL,
  checkpoint       TEXT,
  checkpoint_step  INTEGER,
  stop_requested   INTEGER NOT NULL DEFAULT 0,
  attempt_errors   TEXT NOT NULL DEFAULT '[]',
  last_step        INTEGER,
  final_metric     REAL,
  diverged_step    INTEGER,
  error            TEXT,
  created_at       REAL NOT NULL,
  started_at       REAL,
  finished_at      REAL,
  UNIQUE (sweep_id, trial_key)
);
CREATE INDEX trials_by_state ON trials (sweep_id, state);

CREATE TABLE metrics (
  trial_id  INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
  name      TEXT NOT NULL,
  step      INTEGER NOT NULL,
  value     REAL,
  nonfinite TEXT CHECK (nonfinite IN ('nan', 'inf', '-inf')),
  attempt   INTEGER NOT NULL,
  time      REAL NOT NULL,
  PRIMARY KEY (trial_id, name, step)
) WITHOUT ROWID;

CREATE TABLE events (
  id        INTEGER PRIMARY KEY,
  time      REAL NOT NULL,
  sweep_id  INTEGER REFERENCES sweeps(id) ON DELETE CASCADE,
  trial_id  INTEGER REFERENCES trials(id) ON DELETE CASCADE,
  worker_id INTEGER REFERENCES workers(id),
  kind      TEXT NOT NULL,
  detail    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_by_sweep ON events (sweep_id, id);
CREATE INDEX events_by_trial ON events (trial_id, id);

-- One row per trial with its sweep, progress and outcome.
CREATE VIEW trial_summary AS
SELECT t.id AS trial_id, s.name AS sweep, t.trial_key, t.params, t.state, t.attempt,
       t.last_step, t.final_metric, s.metric_name, s.metric_goal, t.diverged_step,
       t.checkpoint_step, t.error, t.started_at, t.finished_at
FROM trials t JOIN sweeps s ON s.id = t.sweep_id;

-- The best finished trial of each sweep by its metric (goal respected; NULLs never win).
CREATE VIEW sweep_best AS
SELECT sweep_id, sweep, metric_name, metric_goal, trial_id, trial_key, params, final_metric
FROM (
  SELECT s.id AS sweep_id, s.name AS sweep, s.metric_name, s.metric_goal, t.id AS trial_id,
         t.trial_key, t.params, t.final_metric,
         ROW_NUMBER() OVER (PARTITION BY s.id ORDER BY
           CASE s.metric_goal WHEN 'minimize' THEN t.final_metric ELSE -t.final_metric END,
           t.id) AS rank
  FROM sweeps s JOIN trials t ON t.sweep_id = s.id
  WHERE t.state = 'completed' AND t.final_metric IS NOT NULL
)
WHERE rank = 1;

-- Gradient-norm spikes: a step whose grad norm is more than 6 standard deviations above the
-- mean of the previous 128 steps (after 20 steps), as OLMo-core flags them.
CREATE VIEW grad_norm_spikes AS
SELECT trial_id, step, value, mean, (value - mean) / std AS z
FROM (
  SELECT trial_id, step, value,
         AVG(value) OVER w AS mean,
         SQRT(MAX(AVG(value * value) OVER w - AVG(value) OVER w * AVG(value) OVER w, 0)) AS std,
         COUNT(value) OVER w AS n
  FROM metrics WHERE name = 'optim/grad_norm'
  WINDOW w AS (PARTITION BY trial_id ORDER BY step ROWS BETWEEN 128 PRECEDING AND 1 PRECEDING)
)
WHERE n >= 20 AND std > 0 AND (value - mean) / std > 6;

-- Metrics with non-finite values spelled out, for SQL users.
CREATE VIEW metric_values AS
SELECT trial_id, name, step, COALESCE(CAST(value AS TEXT), nonfinite) AS value_text, value,
       nonfinite, attempt, time
FROM metrics;
)sql",
    // 2: the best value of the metric an attempt reached (CompleteTrial's best_metric), also
    // in trial_summary. A view cannot be altered, so it is dropped and created again.
    R"sql(
ALTER TABLE trials ADD COLUMN best_metric REAL;

DROP VIEW trial_summary;
CREATE VIEW trial_summary AS
SELECT t.id AS trial_id, s.name AS sweep, t.trial_key, t.params, t.state, t.attempt,
       t.last_step, t.final_metric, t.best_metric, s.metric_name, s.metric_goal,
       t.diverged_step, t.checkpoint_step, t.error, t.started_at, t.finished_at
FROM trials t JOIN sweeps s ON s.id = t.sweep_id;
)sql",
    // 3: detection on ingest and early termination (orchestrator/monitor.h): spikes, ASHA's
    // rung decisions, each sweep's early_terminate rules and detection settings, and per
    // trial the divergence sweepd detected and why it asked the trial to stop.
    R"sql(
CREATE TABLE spikes (
  trial_id  INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
  name      TEXT NOT NULL,
  step      INTEGER NOT NULL,
  value     REAL NOT NULL,
  z         REAL NOT NULL,
  mean      REAL NOT NULL,
  in_warmup INTEGER NOT NULL,
  attempt   INTEGER NOT NULL,
  PRIMARY KEY (trial_id, name, step)
) WITHOUT ROWID;

CREATE TABLE rungs (
  sweep_id   INTEGER NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
  trial_id   INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
  rule       INTEGER NOT NULL,
  bracket    INTEGER NOT NULL,
  rung       INTEGER NOT NULL,
  step       INTEGER NOT NULL,
  value_step INTEGER NOT NULL,
  value      REAL,
  nonfinite  TEXT CHECK (nonfinite IN ('nan', 'inf', '-inf')),
  rank       INTEGER NOT NULL,
  n          INTEGER NOT NULL,
  decision   TEXT NOT NULL CHECK (decision IN ('continue', 'stop')),
  attempt    INTEGER NOT NULL,
  time       REAL NOT NULL,
  PRIMARY KEY (trial_id, rule, rung)
) WITHOUT ROWID;
CREATE INDEX rungs_by_rung ON rungs (sweep_id, rule, bracket, rung);

ALTER TABLE sweeps ADD COLUMN early_terminate TEXT NOT NULL DEFAULT '[]';
ALTER TABLE sweeps ADD COLUMN detection TEXT NOT NULL DEFAULT '{}';
ALTER TABLE trials ADD COLUMN divergence_step INTEGER;
ALTER TABLE trials ADD COLUMN divergence_reason TEXT;
ALTER TABLE trials ADD COLUMN stop_reason TEXT;
ALTER TABLE trials ADD COLUMN asha_exempt INTEGER NOT NULL DEFAULT 0;

DROP VIEW trial_summary;
CREATE VIEW trial_summary AS
SELECT t.id AS trial_id, s.name AS sweep, t.trial_key, t.params, t.state, t.attempt,
       t.last_step, t.final_metric, t.best_metric, s.metric_name, s.metric_goal,
       t.diverged_step, t.checkpoint_step, t.error, t.started_at, t.finished_at,
       t.divergence_step, t.divergence_reason
FROM trials t JOIN sweeps s ON s.id = t.sweep_id;
)sql",
    // 4: analyses (sweepctl analyze, AnalyzeSweep), kept for the dashboard: the newest per
    // sweep is the current one.
    R"sql(
CREATE TABLE analyses (
  id         INTEGER PRIMARY KEY,
  sweep_id   INTEGER NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
  created_at REAL NOT NULL,
  group_by   TEXT NOT NULL,
  result     TEXT NOT NULL
);
CREATE INDEX analyses_by_sweep ON analyses (sweep_id, id);
)sql",
    // 5: per metric, min/max summaries of blocks of 256 steps (orchestrator/metric_blocks.h,
    // kMetricBlockSteps), kept by InsertMetrics: the dashboard draws long traces from them.
    // Existing rows are summarised here, once.
    R"sql(
CREATE TABLE metric_blocks (
  trial_id       INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
  name           TEXT NOT NULL,
  block          INTEGER NOT NULL,
  rows           INTEGER NOT NULL,
  first_step     INTEGER NOT NULL,
  last_step      INTEGER NOT NULL,
  min_step       INTEGER,
  min_value      REAL,
  max_step       INTEGER,
  max_value      REAL,
  nonfinite_step INTEGER,
  nonfinite      TEXT,
  PRIMARY KEY (trial_id, name, block)
) WITHOUT ROWID;

INSERT INTO metric_blocks (trial_id, name, block, rows, first_step, last_step)
SELECT trial_id, name, step / 256, COUNT(*), MIN(step), MAX(step) FROM metrics
GROUP BY trial_id, name, step / 256;

UPDATE metric_blocks SET (min_step, min_value) = (
  SELECT step, value FROM metrics m WHERE m.trial_id = metric_blocks.trial_id
    AND m.name = metric_blocks.name AND m.step BETWEEN metric_blocks.first_step AND metric_blocks.last_step
    AND m.value IS NOT NULL ORDER BY m.value, m.step LIMIT 1);
UPDATE metric_blocks SET (max_step, max_value) = (
  SELECT step, value FROM metrics m WHERE m.trial_id = metric_blocks.trial_id
    AND m.name = metric_blocks.name AND m.step BETWEEN metric_blocks.first_step AND metric_blocks.last_step
    AND m.value IS NOT NULL ORDER BY m.value DESC, m.step LIMIT 1);
UPDATE metric_blocks SET (nonfinite_step, nonfinite) = (
  SELECT step, nonfinite FROM metrics m WHERE m.trial_id = metric_blocks.trial_id
    AND m.name = metric_blocks.name AND m.step BETWEEN metric_blocks.first_step AND metric_blocks.last_step
    AND m.value IS NULL ORDER BY m.step LIMIT 1);
)sql",
    // 6: data-parallel trials: the processes (ranks) one trial runs, from the spec's
    // `resources` (gpus_per_trial when > 0, else ranks_per_trial). Older sweeps run one.
    R"sql(
ALTER TABLE sweeps ADD COLUMN ranks_per_trial INTEGER NOT NULL DEFAULT 1;
)sql",
    // 7: metrics.nonfinite's CHECK as comparisons instead of IN (...): SQLite builds an
    // ephemeral index for an IN list each time a row is inserted, which halved the insert
    // rate of the busiest table (tools/bench_orchestrator). The two accept the same values
    // (NULL included), so the stored definition is edited in place, as SQLite's ALTER TABLE
    // documentation describes for constraint changes that leave the file's format alone;
    // Migrate() moves the schema cookie on so other connections reload it.
    R"sql(
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
SET sql = replace(sql, 'CHECK (nonfinite IN (''nan'', ''inf'', ''-inf''))',
                  'CHECK (nonfinite = ''nan'' OR nonfinite = ''inf'' OR nonfinite = ''-inf'')')
WHERE type = 'table' AND name = 'metrics';
PRAGMA writable_schema = OFF;
)sql",
};
static_assert(std::size(kMigrations) == kSchemaVersion, "one migration per schema version");

std::string Fnv1aHex(const std::string& text) {
  uint64_t hash = 1469598103934665603ull;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  return absl::StrFormat("%016x", hash);
}

// {"optim.lr": 0.003, "model.n_layers": 4, "optim.scheduler": "wsd"}: typed, so SQL's
// json_extract returns numbers for numbers.
std::string ParamsJson(const std::vector<std::pair<std::string, std::string>>& params) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [key, value] : params) {
    char* end = nullptr;
    const long long i = std::strtoll(value.c_str(), &end, 10);
    if (!value.empty() && *end == '\0') {
      out[key] = i;
      continue;
    }
    const double d = std::strtod(value.c_str(), &end);
    if (!value.empty() && *end == '\0' && std::isfinite(d)) {
      out[key] = d;
    } else if (value == "true" || value == "false") {
      out[key] = value == "true";
    } else {
      out[key] = value;
    }
  }
  return out.dump();
}

// "a"."b" quoting for identifiers built from user text.
std::string QuoteIdentifier(const std::string& name) {
  std::string out = "\"";
  for (char c : name) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

}  // namespace

Store::Store(sqlite3* db) : db_(db), statements_(std::make_unique<StatementCache>(db)) {}

Store::~Store() {
  statements_->Clear();  // Before the close: a connection with statements does not close.
  sqlite3_close(db_);
}

absl::Status Store::Exec(const std::string& sql) { return ExecSql(db_, sql); }

namespace {

// sqlite3_open_v2 with a busy timeout; the error names the file.
absl::StatusOr<sqlite3*> OpenConnection(const std::string& path, int flags) {
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &db, flags | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    const std::string message = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close(db);
    return absl::UnavailableError(absl::StrCat(path, ": cannot open database: ", message));
  }
  sqlite3_busy_timeout(db, 5000);
  return db;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& path) {
  absl::StatusOr<sqlite3*> db = OpenConnection(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  if (!db.ok()) return db.status();
  std::unique_ptr<Store> store(new Store(*db));
  // A 64 MiB page cache (the default is 2 MiB): sweepd appends to every running trial's
  // metric ranges at once, and each of those leaf pages is read again at the next batch.
  for (const char* pragma : {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL",
                             "PRAGMA foreign_keys=ON", "PRAGMA cache_size=-65536"}) {
    if (absl::Status s = store->Exec(pragma); !s.ok()) {
      return absl::UnavailableError(absl::StrCat(path, ": ", s.message()));
    }
  }
  if (absl::Status s = store->Migrate(); !s.ok()) return s;
  return store;
}

absl::StatusOr<std::unique_ptr<Store>> Store::OpenReadOnly(const std::string& path) {
  absl::StatusOr<sqlite3*> db = OpenConnection(path, SQLITE_OPEN_READONLY);
  if (!db.ok()) return db.status();
  return std::unique_ptr<Store>(new Store(*db));
}

absl::StatusOr<int> Store::SchemaVersion() {
  Statement st(db_, "PRAGMA user_version");
  if (!st.status().ok()) return st.status();
  if (st.Step() != SQLITE_ROW) return st.Error("reading the schema version");
  return static_cast<int>(st.Int(0));
}

// Every DDL statement moves the schema cookie on; an edit of sqlite_schema (migration 7) does
// not, and connections that already read the schema would keep the old one. One more step
// after any migration is harmless.
absl::Status Store::BumpSchemaCookie() {
  int64_t cookie = 0;
  {
    Statement st(db_, "PRAGMA schema_version");
    if (!st.status().ok()) return st.status();
    if (st.Step() != SQLITE_ROW) return st.Error("reading the schema cookie");
    cookie = st.Int(0);
  }
  return Exec(absl::StrCat("PRAGMA schema_version=", cookie + 1));
}

absl::Status Store::Migrate() {
  absl::StatusOr<int> version = SchemaVersion();
  if (!version.ok()) return version.status();
  if (*version > kSchemaVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("database schema version ", *version, " is newer than this sweepd (",
                     kSchemaVersion, "); upgrade sweepd"));
  }
  for (int next = *version + 1; next <= kSchemaVersion; ++next) {
    if (absl::Status s = Exec("BEGIN IMMEDIATE"); !s.ok()) return s;
    absl::Status s = Exec(kMigrations[next - 1]);
    if (s.ok()) s = BumpSchemaCookie();
    if (s.ok()) s = Exec(absl::StrCat("PRAGMA user_version=", next));
    if (!s.ok()) {
      (void)Exec("ROLLBACK");
      return absl::InternalError(absl::StrCat("migration to schema ", next, " failed: ", s.message()));
    }
    if (absl::Status c = Exec("COMMIT"); !c.ok()) return c;
  }
  return absl::OkStatus();
}

absl::StatusOr<SubmitResult> Store::SubmitSweep(const SweepSpec& spec,
                                                const std::vector<TrialSpec>& trials, double now) {
  const std::string hash = Fnv1aHex(spec.source_text);
  {
    Statement find(db_, "SELECT id, spec_hash, (SELECT COUNT(*) FROM trials WHERE sweep_id = sweeps.id) "
                        "FROM sweeps WHERE name = ?");
    if (!find.status().ok()) return find.status();
    find.Bind(1, spec.name);
    if (find.Step() == SQLITE_ROW) {
      if (find.Text(1) != hash) {
        return absl::AlreadyExistsError(absl::StrCat(
            spec.origin, ": name: a different sweep named '", spec.name,
            "' exists; rename this one or resume that one"));
      }
      return SubmitResult{find.Int(0), false, find.Int(2)};
    }
  }
  if (absl::Status s = Exec("BEGIN IMMEDIATE"); !s.ok()) return s;
  auto fail = [&](absl::Status s) {
    (void)Exec("ROLLBACK");
    return s;
  };
  Statement insert_sweep(
      db_,
      "INSERT INTO sweeps (name, state, method, metric_name, metric_goal, max_attempts, parallel, "
      "spec_text, spec_hash, created_at, updated_at, gpus_per_trial, cpu_slots_per_trial, "
      "trainer_command, early_terminate, detection, ranks_per_trial) "
      "VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  if (!insert_sweep.status().ok()) return fail(insert_sweep.status());
  insert_sweep.Bind(1, spec.name);
  insert_sweep.Bind(2, std::string(spec.method == SearchMethod::kGrid ? "grid" : "random"));
  insert_sweep.Bind(3, spec.metric_name);
  insert_sweep.Bind(4, std::string(spec.minimize ? "minimize" : "maximize"));
  insert_sweep.Bind(5, spec.max_attempts);
  insert_sweep.Bind(6, spec.parallel);
  insert_sweep.Bind(7, spec.source_text);
  insert_sweep.Bind(8, hash);
  insert_sweep.Bind(9, now);
  insert_sweep.Bind(10, now);
  insert_sweep.Bind(11, spec.gpus_per_trial);
  insert_sweep.Bind(12, spec.cpu_slots_per_trial);
  insert_sweep.Bind(13, nlohmann::json(spec.command).dump());
  insert_sweep.Bind(14, EarlyTerminateToJson(spec.early_terminate));
  insert_sweep.Bind(15, DetectionToJson(spec.detection));
  insert_sweep.Bind(16, spec.ranks_per_trial);
  if (insert_sweep.Step() != SQLITE_DONE) return fail(insert_sweep.Error("inserting the sweep"));
  const int64_t sweep_id = sqlite3_last_insert_rowid(db_);

  Statement insert_trial(db_,
                         "INSERT INTO trials (sweep_id, trial_key, params, config, created_at) "
                         "VALUES (?, ?, ?, ?, ?)");
  if (!insert_trial.status().ok()) return fail(insert_trial.status());
  for (const TrialSpec& trial : trials) {
    insert_trial.Reset();
    insert_trial.Bind(1, sweep_id);
    insert_trial.Bind(2, trial.trial_key);
    insert_trial.Bind(3, ParamsJson(trial.params));
    insert_trial.Bind(4, trial.config_yaml);
    insert_trial.Bind(5, now);
    if (insert_trial.Step() != SQLITE_DONE) {
      return fail(insert_trial.Error(("inserting trial " + trial.trial_key).c_str()));
    }
  }
  // A per-sweep view with each parameter as a column, for dashboards and notebooks. Keys go
  // into the SQL as they are: the spec parser admits only dotted keys of letters, digits, '_'
  // and '-' (tests/hostile/specs/param_key_sql_injection.yaml).
  std::string columns;
  for (const ParameterSpec& p : spec.parameters) {
    absl::StrAppend(&columns, ", json_extract(params, '$.\"", p.key, "\"') AS ",
                    QuoteIdentifier(p.key));
  }
  if (absl::Status s = Exec(absl::StrCat(
          "CREATE VIEW ", QuoteIdentifier(absl::StrCat("sweep_", sweep_id, "_trials")),
          " AS SELECT id AS trial_id, trial_key, state, attempt, last_step, final_metric, "
          "diverged_step", columns, " FROM trials WHERE sweep_id = ", sweep_id));
      !s.ok()) {
    return fail(s);
  }
  {
    Statement event(db_, "INSERT INTO events (time, sweep_id, kind, detail) VALUES (?, ?, 'submitted', ?)");
    event.Bind(1, now);
    event.Bind(2, sweep_id);
    event.Bind(3, absl::StrCat(trials.size(), " trials from ", spec.origin));
    if (event.Step() != SQLITE_DONE) return fail(event.Error("recording the event"));
  }
  if (absl::Status s = Exec("COMMIT"); !s.ok()) return fail(s);
  return SubmitResult{sweep_id, true, static_cast<int64_t>(trials.size())};
}

namespace {

SweepRow ReadSweep(Statement& st) {
  SweepRow row;
  row.id = st.Int(0);
  row.name = st.Text(1);
  row.state = st.Text(2);
  row.method = st.Text(3);
  row.metric_name = st.Text(4);
  row.minimize = st.Text(5) == "minimize";
  row.max_attempts = static_cast<int>(st.Int(6));
  row.parallel = static_cast<int>(st.Int(7));
  row.spec_text = st.Text(8);
  row.created_at = st.Double(9);
  return row;
}

constexpr char kSweepColumns[] =
    "SELECT id, name, state, method, metric_name, metric_goal, max_attempts, parallel, spec_text, "
    "created_at FROM sweeps";

}  // namespace

absl::StatusOr<SweepRow> Store::GetSweep(const std::string& name_or_id) {
  Statement st(db_, absl::StrCat(kSweepColumns, " WHERE name = ?1 OR CAST(id AS TEXT) = ?1").c_str());
  if (!st.status().ok()) return st.status();
  st.Bind(1, name_or_id);
  if (st.Step() != SQLITE_ROW) {
    return absl::NotFoundError(absl::StrCat("no sweep named or numbered '", name_or_id, "'"));
  }
  return ReadSweep(st);
}

absl::StatusOr<std::vector<SweepRow>> Store::ListSweeps() {
  Statement st(db_, absl::StrCat(kSweepColumns, " ORDER BY id").c_str());
  if (!st.status().ok()) return st.status();
  std::vector<SweepRow> rows;
  while (st.Step() == SQLITE_ROW) rows.push_back(ReadSweep(st));
  return rows;
}

namespace {

constexpr char kTrialColumns[] =
    "SELECT id, sweep_id, trial_key, params, config, state, attempt, checkpoint, "
    "COALESCE(error, ''), COALESCE(last_step, 0), final_metric, best_metric, attempt_errors "
    "FROM trials";

TrialRow ReadTrial(Statement& st) {
  TrialRow row;
  row.id = st.Int(0);
  row.sweep_id = st.Int(1);
  row.trial_key = st.Text(2);
  row.params_json = st.Text(3);
  row.config = st.Text(4);
  row.state = st.Text(5);
  row.attempt = static_cast<int>(st.Int(6));
  if (!st.IsNull(7)) row.checkpoint = st.Text(7);
  row.error = st.Text(8);
  row.last_step = st.Int(9);
  if (!st.IsNull(10)) row.final_metric = st.Double(10);
  if (!st.IsNull(11)) row.best_metric = st.Double(11);
  row.attempt_errors_json = st.Text(12);
  return row;
}

}  // namespace

absl::StatusOr<std::vector<TrialRow>> Store::ListTrials(int64_t sweep_id, const std::string& state) {
  Statement st(db_, absl::StrCat(kTrialColumns,
                                 " WHERE sweep_id = ?1 AND (?2 = '' OR state = ?2) ORDER BY id"));
  if (!st.status().ok()) return st.status();
  st.Bind(1, sweep_id);
  st.Bind(2, state);
  std::vector<TrialRow> rows;
  while (st.Step() == SQLITE_ROW) rows.push_back(ReadTrial(st));
  return rows;
}

absl::StatusOr<TrialRow> Store::GetTrial(int64_t trial_id) {
  Statement st(db_, absl::StrCat(kTrialColumns, " WHERE id = ?"));
  if (!st.status().ok()) return st.status();
  st.Bind(1, trial_id);
  if (st.Step() != SQLITE_ROW) return absl::NotFoundError(absl::StrCat("no trial ", trial_id));
  return ReadTrial(st);
}

absl::StatusOr<int64_t> Store::InsertMetrics(const std::vector<MetricRow>& rows,
                                             const NewMetricsHook& on_new) {
  if (rows.empty()) return 0;
  StatementCache* cache = statements_.get();
  if (absl::Status s = ExecCached(cache, "BEGIN IMMEDIATE"); !s.ok()) return s;
  auto fail = [&](absl::Status s) {
    (void)ExecCached(cache, "ROLLBACK");
    return s;
  };
  // Fencing: every row must come from the trial's current attempt, while it holds a lease.
  Statement attempt(cache, "SELECT attempt, state IN ('leased', 'running') FROM trials WHERE id = ?");
  Statement insert(cache,
                   "INSERT OR IGNORE INTO metrics (trial_id, name, step, value, nonfinite, attempt, "
                   "time) VALUES (?, ?, ?, ?, ?, ?, ?)");
  if (!attempt.status().ok()) return fail(attempt.status());
  if (!insert.status().ok()) return fail(insert.status());
  int64_t checked_trial = -1, added = 0;
  std::vector<MetricRow> new_rows;
  for (const MetricRow& row : rows) {
    if (row.trial_id != checked_trial) {
      attempt.Reset();
      attempt.Bind(1, row.trial_id);
      if (attempt.Step() != SQLITE_ROW) {
        return fail(absl::NotFoundError(absl::StrCat("no trial ", row.trial_id)));
      }
      if (attempt.Int(0) != row.attempt || attempt.Int(1) == 0) {
        return fail(absl::FailedPreconditionError(
            absl::StrCat("trial ", row.trial_id, ": metrics from attempt ", row.attempt,
                         ", which holds no lease (current attempt ", attempt.Int(0), ")")));
      }
      checked_trial = row.trial_id;
    }
    if (row.name.empty() || row.step < 0) {
      return fail(absl::InvalidArgumentError(
          absl::StrCat("trial ", row.trial_id, ": metric needs a name and a step >= 0")));
    }
    insert.Reset();
    insert.Bind(1, row.trial_id);
    insert.Bind(2, row.name);
    insert.Bind(3, row.step);
    if (std::isfinite(row.value)) {
      insert.Bind(4, row.value);
      insert.BindNull(5);
    } else {
      insert.BindNull(4);
      insert.Bind(5, std::string(std::isnan(row.value) ? "nan" : row.value > 0 ? "inf" : "-inf"));
    }
    insert.Bind(6, row.attempt);
    insert.Bind(7, row.time);
    if (insert.Step() != SQLITE_DONE) return fail(insert.Error("inserting metrics"));
    if (sqlite3_changes(db_) > 0) {
      ++added;
      new_rows.push_back(row);
    }
  }
  if (absl::Status s = UpdateMetricBlocks(statements_.get(), new_rows); !s.ok()) return fail(s);
  if (on_new && !new_rows.empty()) {
    if (absl::Status s = on_new(new_rows); !s.ok()) return fail(s);
  }
  if (absl::Status s = ExecCached(cache, "COMMIT"); !s.ok()) return fail(s);
  return added;
}

absl::StatusOr<int64_t> Store::RecordAnalysis(double time, int64_t sweep_id,
                                              const std::string& group_by_json,
                                              const std::string& result_json) {
  Statement st(db_,
               "INSERT INTO analyses (sweep_id, created_at, group_by, result) VALUES (?, ?, ?, ?)");
  if (!st.status().ok()) return st.status();
  st.Bind(1, sweep_id);
  st.Bind(2, time);
  st.Bind(3, group_by_json);
  st.Bind(4, result_json);
  if (st.Step() != SQLITE_DONE) return st.Error("storing an analysis");
  return static_cast<int64_t>(sqlite3_last_insert_rowid(db_));
}

absl::Status Store::RecordEvent(double time, int64_t sweep_id, int64_t trial_id,
                                int64_t worker_id, const std::string& kind,
                                const std::string& detail) {
  Statement st(statements_.get(),
               "INSERT INTO events (time, sweep_id, trial_id, worker_id, kind, detail) "
               "VALUES (?, ?, ?, ?, ?, ?)");
  if (!st.status().ok()) return st.status();
  st.Bind(1, time);
  const int64_t ids[] = {sweep_id, trial_id, worker_id};
  for (int i = 0; i < 3; ++i) {
    if (ids[i] == 0) {
      st.BindNull(2 + i);
    } else {
      st.Bind(2 + i, ids[i]);
    }
  }
  st.Bind(5, kind);
  st.Bind(6, detail);
  if (st.Step() != SQLITE_DONE) return st.Error("recording an event");
  return absl::OkStatus();
}

}  // namespace sweep::orchestrator
