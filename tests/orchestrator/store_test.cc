#include "orchestrator/store.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>

#include "tests/testing/sqlite.h"
#include "tests/testing/status.h"

namespace sweep::orchestrator {
namespace {
namespace fs = std::filesystem;

std::string TempDb() {
  std::string dir = fs::temp_directory_path() / "sweep-store-XXXXXX";
  return std::string(mkdtemp(dir.data())) + "/sweep.db";
}

constexpr char kSpec[] = R"(name: lr
method: grid
base: {model: {dim: 32, n_layers: 1, n_heads: 2}, data: {sources: {kjv: 1}}}
parameters:
  optim.lr: {values: [1e-3, 3e-3, 1e-2]}
  optim.scheduler: {values: [cosine, wsd]}
)";

using sweep::testing::QueryScalar;

struct Submitted {
  std::unique_ptr<Store> store;
  SweepSpec spec;
  SubmitResult result;
};

Submitted Submit(const std::string& path) {
  Submitted s;
  s.store = *Store::Open(path);
  s.spec = *ParseSweepSpec(kSpec, "lr.yaml");
  s.result = *s.store->SubmitSweep(s.spec, *ExpandSweep(s.spec), 100.0);
  return s;
}

TEST(StoreTest, CreatesAndMigratesTheSchema) {
  const std::string path = TempDb();
  {
    absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
    ASSERT_OK(store);
    EXPECT_EQ(*(*store)->SchemaVersion(), kSchemaVersion);
    EXPECT_EQ(QueryScalar((*store)->db(), "PRAGMA journal_mode"), "wal");
    EXPECT_EQ(QueryScalar((*store)->db(), "PRAGMA foreign_keys"), "1");
  }
  ASSERT_OK(Store::Open(path));  // Re-opening migrates nothing and loses nothing.
  {
    sqlite3* db = nullptr;
    sqlite3_open(path.c_str(), &db);
    sqlite3_exec(db, "PRAGMA user_version=99", nullptr, nullptr, nullptr);
    sqlite3_close(db);
  }
  absl::StatusOr<std::unique_ptr<Store>> newer = Store::Open(path);
  ASSERT_FALSE(newer.ok());
  EXPECT_EQ(newer.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(newer.status().message().find("newer than this sweepd"), std::string::npos);
}

// What migrations 3 to 6 add, undone: a file as schema 2 left it.
constexpr char kUndoMigrations3To6[] = R"sql(
  ALTER TABLE sweeps DROP COLUMN ranks_per_trial;
  DROP TABLE metric_blocks;
  DROP TABLE analyses;
  DROP VIEW trial_summary;
  DROP TABLE spikes;
  DROP TABLE rungs;
  ALTER TABLE sweeps DROP COLUMN early_terminate;
  ALTER TABLE sweeps DROP COLUMN detection;
  ALTER TABLE trials DROP COLUMN divergence_step;
  ALTER TABLE trials DROP COLUMN divergence_reason;
  ALTER TABLE trials DROP COLUMN stop_reason;
  ALTER TABLE trials DROP COLUMN asha_exempt;
  CREATE VIEW trial_summary AS
  SELECT t.id AS trial_id, s.name AS sweep, t.trial_key, t.params, t.state, t.attempt,
         t.last_step, t.final_metric, t.best_metric, s.metric_name, s.metric_goal,
         t.diverged_step, t.checkpoint_step, t.error, t.started_at, t.finished_at
  FROM trials t JOIN sweeps s ON s.id = t.sweep_id;
  PRAGMA user_version = 2;
)sql";

TEST(StoreTest, MigratesAVersion1FileToBestMetric) {
  const std::string path = TempDb();
  {
    Submitted s = Submit(path);
    ASSERT_EQ(sqlite3_exec(s.store->db(), kUndoMigrations3To6, nullptr, nullptr, nullptr), SQLITE_OK)
        << sqlite3_errmsg(s.store->db());
    // Turn the file back into what schema 1 left: no best_metric, the old trial_summary.
    ASSERT_EQ(sqlite3_exec(s.store->db(), R"sql(
      DROP VIEW trial_summary;
      ALTER TABLE trials DROP COLUMN best_metric;
      CREATE VIEW trial_summary AS
      SELECT t.id AS trial_id, s.name AS sweep, t.trial_key, t.params, t.state, t.attempt,
             t.last_step, t.final_metric, s.metric_name, s.metric_goal, t.diverged_step,
             t.checkpoint_step, t.error, t.started_at, t.finished_at
      FROM trials t JOIN sweeps s ON s.id = t.sweep_id;
      UPDATE trials SET state = 'completed', final_metric = 2.5 WHERE id = 1;
      PRAGMA user_version = 1;)sql",
                           nullptr, nullptr, nullptr),
              SQLITE_OK)
        << sqlite3_errmsg(s.store->db());
  }
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  ASSERT_OK(store);
  sqlite3* db = (*store)->db();
  EXPECT_EQ(*(*store)->SchemaVersion(), kSchemaVersion);
  // Nothing lost; the new column is there, empty, and in trial_summary after final_metric.
  EXPECT_EQ(QueryScalar(db, "SELECT COUNT(*) FROM trials"), "6");
  EXPECT_EQ(QueryScalar(db, "SELECT final_metric FROM trial_summary WHERE trial_id = 1"), "2.5");
  EXPECT_EQ(QueryScalar(db, "SELECT COUNT(*) FROM trials WHERE best_metric IS NOT NULL"), "0");
  EXPECT_EQ(QueryScalar(db, "SELECT group_concat(name) FROM pragma_table_info('trial_summary') "
                            "WHERE name LIKE '%_metric'"),
            "final_metric,best_metric");
  ASSERT_EQ(sqlite3_exec(db, "UPDATE trials SET best_metric = 2.25 WHERE id = 1", nullptr, nullptr, nullptr),
            SQLITE_OK);
  EXPECT_EQ(QueryScalar(db, "SELECT best_metric FROM trial_summary WHERE trial_id = 1"), "2.25");
  absl::StatusOr<TrialRow> trial = (*store)->GetTrial(1);
  ASSERT_OK(trial);
  EXPECT_EQ(trial->best_metric.value_or(0), 2.25);
  EXPECT_EQ(trial->attempt_errors_json, "[]");
  EXPECT_EQ(QueryScalar(db, "PRAGMA integrity_check"), "ok");
}

TEST(StoreTest, MigratesAVersion5FileToRanksPerTrial) {
  const std::string path = TempDb();
  {
    Submitted s = Submit(path);
    ASSERT_EQ(sqlite3_exec(s.store->db(),
                           "ALTER TABLE sweeps DROP COLUMN ranks_per_trial; PRAGMA user_version = 5;",
                           nullptr, nullptr, nullptr),
              SQLITE_OK)
        << sqlite3_errmsg(s.store->db());
  }
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  ASSERT_OK(store);
  EXPECT_EQ(*(*store)->SchemaVersion(), kSchemaVersion);
  // A sweep from before runs one process per trial, as it did.
  EXPECT_EQ(QueryScalar((*store)->db(), "SELECT group_concat(ranks_per_trial) FROM sweeps"), "1");
  EXPECT_EQ(QueryScalar((*store)->db(), "PRAGMA integrity_check"), "ok");
}

TEST(StoreTest, MigratesAVersion6FileToTheComparisonCheckOnNonfinite) {
  const std::string path = TempDb();
  {
    Submitted s = Submit(path);
    // Put back schema 6's definition of metrics (its CHECK with an IN list) and a row.
    ASSERT_EQ(sqlite3_exec(s.store->db(), R"sql(
      INSERT INTO metrics (trial_id, name, step, value, nonfinite, attempt, time)
      VALUES (1, 'loss/out', 1, NULL, 'nan', 1, 0), (1, 'loss/out', 2, 2.5, NULL, 1, 0);
      PRAGMA writable_schema = ON;
      UPDATE sqlite_schema SET sql = replace(sql,
        'CHECK (nonfinite = ''nan'' OR nonfinite = ''inf'' OR nonfinite = ''-inf'')',
        'CHECK (nonfinite IN (''nan'', ''inf'', ''-inf''))') WHERE name = 'metrics';
      PRAGMA writable_schema = OFF;
      PRAGMA user_version = 6;)sql",
                           nullptr, nullptr, nullptr),
              SQLITE_OK)
        << sqlite3_errmsg(s.store->db());
  }
  sqlite3* before = nullptr;  // A connection that read the old schema before the migration.
  ASSERT_EQ(sqlite3_open(path.c_str(), &before), SQLITE_OK);
  EXPECT_NE(QueryScalar(before, "SELECT sql FROM sqlite_schema WHERE name = 'metrics'").find("IN ("),
            std::string::npos);
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  ASSERT_OK(store);
  sqlite3* db = (*store)->db();
  EXPECT_EQ(*(*store)->SchemaVersion(), kSchemaVersion);
  const std::string sql = QueryScalar(db, "SELECT sql FROM sqlite_schema WHERE name = 'metrics'");
  EXPECT_EQ(sql.find("IN ("), std::string::npos) << sql;
  EXPECT_EQ(QueryScalar(db, "SELECT group_concat(step || ':' || IFNULL(nonfinite, value)) FROM metrics"),
            "1:nan,2:2.5");
  EXPECT_EQ(QueryScalar(db, "PRAGMA integrity_check"), "ok");
  // The same values are refused and accepted as before, through either connection.
  for (sqlite3* c : {db, before}) {
    EXPECT_EQ(sqlite3_exec(c, "INSERT INTO metrics VALUES (1, 'x', 1, NULL, 'NaN', 1, 0)", nullptr,
                           nullptr, nullptr),
              SQLITE_CONSTRAINT)
        << sqlite3_errmsg(c);
    EXPECT_NE(std::string(sqlite3_errmsg(c)).find("nonfinite = 'nan'"), std::string::npos)
        << sqlite3_errmsg(c);
  }
  EXPECT_EQ(sqlite3_exec(before, "INSERT INTO metrics VALUES (1, 'x', 2, NULL, '-inf', 1, 0), "
                                 "(1, 'x', 3, 1.0, NULL, 1, 0)",
                         nullptr, nullptr, nullptr),
            SQLITE_OK)
      << sqlite3_errmsg(before);
  sqlite3_close(before);
}

TEST(StoreTest, MigratesAVersion2FileToDetectionAndEarlyTermination) {
  const std::string path = TempDb();
  {
    Submitted s = Submit(path);
    ASSERT_EQ(sqlite3_exec(s.store->db(), kUndoMigrations3To6, nullptr, nullptr, nullptr), SQLITE_OK)
        << sqlite3_errmsg(s.store->db());
  }
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  ASSERT_OK(store);
  sqlite3* db = (*store)->db();
  EXPECT_EQ(*(*store)->SchemaVersion(), kSchemaVersion);
  // The spikes table as the analysis reads it.
  EXPECT_EQ(QueryScalar(
                db,
                "SELECT group_concat(name || ' ' || type || ' ' || \"notnull\" || ' ' || pk, ', ') "
                "FROM pragma_table_info('spikes')"),
            "trial_id INTEGER 1 1, name TEXT 1 2, step INTEGER 1 3, value REAL 1 0, z REAL 1 0, "
            "mean REAL 1 0, in_warmup INTEGER 1 0, attempt INTEGER 1 0");
  EXPECT_NE(
      QueryScalar(db, "SELECT sql FROM sqlite_master WHERE name = 'spikes'").find("WITHOUT ROWID"),
      std::string::npos);
  // A sweep from before keeps its behaviour: no early termination, default detection.
  EXPECT_EQ(QueryScalar(db, "SELECT early_terminate || ' ' || detection FROM sweeps"), "[] {}");
  EXPECT_EQ(QueryScalar(db,
                        "SELECT COUNT(*) FROM trials WHERE asha_exempt = 0 AND "
                        "divergence_step IS NULL AND stop_reason IS NULL"),
            "6");
  EXPECT_EQ(QueryScalar(db,
                        "SELECT group_concat(name) FROM pragma_table_info('trial_summary') "
                        "WHERE name LIKE 'diverge%'"),
            "diverged_step,divergence_step,divergence_reason");
  EXPECT_EQ(QueryScalar(db, "PRAGMA integrity_check"), "ok");
}

TEST(StoreTest, SweepsKeepTheirEarlyTerminateRulesAndDetectionSettings) {
  std::unique_ptr<Store> store = *Store::Open(TempDb());
  SweepSpec spec = *ParseSweepSpec(
      std::string(kSpec) +
          "early_terminate: [{type: divergence}, {type: asha, min_steps: 20, eta: 2}]\n"
          "detection: {window: 64, z: 5}\n",
      "et.yaml");
  ASSERT_OK(store->SubmitSweep(spec, *ExpandSweep(spec), 1.0));
  const std::string rules = QueryScalar(store->db(), "SELECT early_terminate FROM sweeps");
  absl::StatusOr<std::vector<EarlyTerminateRule>> back = EarlyTerminateFromJson(rules);
  ASSERT_OK(back);
  ASSERT_EQ(back->size(), 2u);
  EXPECT_EQ((*back)[0].type, "divergence");
  EXPECT_EQ((*back)[1].type, "asha");
  EXPECT_EQ((*back)[1].min_steps, 20);
  EXPECT_EQ((*back)[1].eta, 2);
  absl::StatusOr<DetectionOptions> detection =
      DetectionFromJson(QueryScalar(store->db(), "SELECT detection FROM sweeps"));
  ASSERT_OK(detection);
  EXPECT_EQ(detection->window, 64);
  EXPECT_EQ(detection->z, 5);
  EXPECT_EQ(detection->min_values, 20);
  EXPECT_EQ(DetectionFromJson("{}")->window, 128);
  EXPECT_FALSE(DetectionFromJson("[").ok());
}

TEST(StoreTest, SubmittingTwiceAttachesAndNeverDuplicatesTrials) {
  const std::string path = TempDb();
  Submitted s = Submit(path);
  EXPECT_TRUE(s.result.created);
  EXPECT_EQ(s.result.trials, 6);
  absl::StatusOr<SubmitResult> again = s.store->SubmitSweep(s.spec, *ExpandSweep(s.spec), 200.0);
  ASSERT_OK(again);
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->sweep_id, s.result.sweep_id);
  EXPECT_EQ(QueryScalar(s.store->db(), "SELECT COUNT(*) FROM trials"), "6");

  SweepSpec changed = *ParseSweepSpec(std::string(kSpec) + "max_attempts: 5\n", "lr2.yaml");
  absl::StatusOr<SubmitResult> clash = s.store->SubmitSweep(changed, *ExpandSweep(changed), 300.0);
  ASSERT_FALSE(clash.ok());
  EXPECT_EQ(clash.status().code(), absl::StatusCode::kAlreadyExists);

  absl::StatusOr<SweepRow> sweep = s.store->GetSweep("lr");
  ASSERT_OK(sweep);
  EXPECT_EQ(sweep->state, "running");
  EXPECT_EQ(sweep->metric_name, "loss/val");
  EXPECT_EQ(s.store->GetSweep("nope").status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<std::vector<TrialRow>> trials = s.store->ListTrials(sweep->id, "pending");
  ASSERT_OK(trials);
  ASSERT_EQ(trials->size(), 6u);
  EXPECT_EQ((*trials)[0].trial_key, "optim.lr=0.001,optim.scheduler=cosine");
  EXPECT_NE((*trials)[0].config.find("scheduler: cosine"), std::string::npos);
}

TEST(StoreTest, PerSweepViewHasTypedParameterColumns) {
  Submitted s = Submit(TempDb());
  const std::string view = "sweep_" + std::to_string(s.result.sweep_id) + "_trials";
  EXPECT_EQ(QueryScalar(s.store->db(), "SELECT typeof(\"optim.lr\") FROM " + view + " LIMIT 1"), "real");
  EXPECT_EQ(QueryScalar(s.store->db(), "SELECT COUNT(*) FROM " + view +
                                      " WHERE \"optim.lr\" > 0.002 AND \"optim.scheduler\" = 'wsd'"),
            "2");
}

TEST(StoreTest, MetricsAreIdempotentFencedAndKeepNonFiniteValues) {
  Submitted s = Submit(TempDb());
  const int64_t trial = (*s.store->ListTrials(s.result.sweep_id))[0].id;
  // As the scheduler leaves a leased trial (tests/orchestrator/scheduler_test.cc leases for real).
  ASSERT_EQ(sqlite3_exec(s.store->db(),
                         ("UPDATE trials SET state = 'running', attempt = 1 WHERE id = " +
                          std::to_string(trial)).c_str(),
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  std::vector<MetricRow> batch;
  for (int step = 1; step <= 50; ++step) {
    batch.push_back({trial, 1, "loss/out", step, 5.0 - step * 0.01, 1000.0 + step});
    batch.push_back({trial, 1, "optim/grad_norm", step, 0.5, 1000.0 + step});
  }
  batch.push_back({trial, 1, "loss/out", 51, std::numeric_limits<double>::quiet_NaN(), 1051});
  batch.push_back({trial, 1, "optim/grad_norm", 51, std::numeric_limits<double>::infinity(), 1051});
  EXPECT_EQ(*s.store->InsertMetrics(batch), 102);
  EXPECT_EQ(*s.store->InsertMetrics(batch), 0);  // A re-sent batch changes nothing.
  sqlite3* db = s.store->db();
  EXPECT_EQ(QueryScalar(db, "SELECT COUNT(*) FROM metrics"), "102");
  EXPECT_EQ(QueryScalar(db, "SELECT nonfinite FROM metrics WHERE step = 51 AND name = 'loss/out'"), "nan");
  EXPECT_EQ(QueryScalar(db, "SELECT value FROM metrics WHERE step = 51 AND name = 'loss/out'"), "");
  EXPECT_EQ(QueryScalar(db, "SELECT value_text FROM metric_values WHERE step = 51 AND name = 'optim/grad_norm'"), "inf");

  // A batch from a stale attempt is refused whole.
  std::vector<MetricRow> stale = {{trial, 1, "loss/out", 60, 1.0, 1060}};
  ASSERT_EQ(sqlite3_exec(db, ("UPDATE trials SET attempt = 2 WHERE id = " + std::to_string(trial)).c_str(),
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  absl::StatusOr<int64_t> refused = s.store->InsertMetrics(stale);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(QueryScalar(db, "SELECT COUNT(*) FROM metrics WHERE step = 60"), "0");
  EXPECT_EQ(s.store->InsertMetrics({{999, 0, "loss/out", 1, 1.0, 0}}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(QueryScalar(db, "PRAGMA integrity_check"), "ok");
}

TEST(StoreTest, ReadOnlyConnectionsCannotWrite) {
  const std::string path = TempDb();
  Submitted s = Submit(path);
  absl::StatusOr<std::unique_ptr<Store>> reader = Store::OpenReadOnly(path);
  ASSERT_OK(reader);
  EXPECT_EQ(QueryScalar((*reader)->db(), "SELECT COUNT(*) FROM trials"), "6");
  EXPECT_NE(sqlite3_exec((*reader)->db(), "DELETE FROM trials", nullptr, nullptr, nullptr), SQLITE_OK);
  EXPECT_EQ(QueryScalar(s.store->db(), "SELECT COUNT(*) FROM trials"), "6");
  EXPECT_EQ(Store::OpenReadOnly(path + ".missing").status().code(), absl::StatusCode::kUnavailable);
}

TEST(StoreTest, BestTrialAndGradNormSpikeViews) {
  Submitted s = Submit(TempDb());
  sqlite3* db = s.store->db();
  ASSERT_EQ(sqlite3_exec(db,
                         "UPDATE trials SET state = 'completed', final_metric = 2.0 + id * 0.1;"
                         "UPDATE trials SET final_metric = 1.5 WHERE id = 4;"
                         "UPDATE trials SET state = 'running', attempt = 1 WHERE id = 1;",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  EXPECT_EQ(QueryScalar(db, "SELECT trial_id FROM sweep_best"), "4");
  // A grad-norm trace with one spike at step 60.
  std::vector<MetricRow> rows;
  for (int step = 1; step <= 80; ++step) {
    const double noise = (step % 7) * 0.01;
    rows.push_back({1, 1, "optim/grad_norm", step, step == 60 ? 9.0 : 0.5 + noise, 0});
  }
  ASSERT_OK(s.store->InsertMetrics(rows));
  EXPECT_EQ(QueryScalar(db, "SELECT group_concat(step) FROM grad_norm_spikes"), "60");
}

TEST(StoreTest, EventsFormAnAuditLog) {
  Submitted s = Submit(TempDb());
  ASSERT_TRUE(s.store->RecordEvent(150.0, s.result.sweep_id, 0, 0, "paused", "by user").ok());
  EXPECT_EQ(QueryScalar(s.store->db(), "SELECT group_concat(kind, ',') FROM (SELECT kind FROM events ORDER BY id)"),
            "submitted,paused");
  EXPECT_EQ(QueryScalar(s.store->db(), "SELECT detail FROM events WHERE kind = 'submitted'"),
            "6 trials from lr.yaml");
}

}  // namespace
}  // namespace sweep::orchestrator
