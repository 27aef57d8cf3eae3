// AnalyzeSweep() on a real database file: the schema created by Store::Open, rows inserted
// with SQL as sweepd writes them, read back through a read-only connection; spikes detected
// from the grad-norm trace (matching the database's grad_norm_spikes view) or read from the
// spikes table when it exists.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "analysis/analysis.h"
#include "orchestrator/store.h"
#include "tests/testing/status.h"
#include "worker/trainer/config.h"

namespace sweep::analysis {
namespace {
namespace fs = std::filesystem;

std::string TempDb() {
  std::string dir = fs::temp_directory_path() / "sweep-analysis-XXXXXX";
  return std::string(mkdtemp(dir.data())) + "/sweep.db";
}

void Exec(sqlite3* db, const std::string& sql) {
  char* error = nullptr;
  ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error), SQLITE_OK)
      << (error != nullptr ? error : "") << "\n"
      << sql;
}

// The spikes table of schema 3 (orchestrator/store.cc), for databases that predate it.
constexpr char kSpikesTable[] =
    "CREATE TABLE IF NOT EXISTS spikes (trial_id INTEGER NOT NULL, name TEXT NOT NULL, "
    "step INTEGER NOT NULL, value REAL NOT NULL, z REAL NOT NULL, mean REAL NOT NULL, "
    "in_warmup INTEGER NOT NULL, attempt INTEGER NOT NULL, "
    "PRIMARY KEY (trial_id, name, step)) WITHOUT ROWID";

// A depth x lr sweep as sweepd stores it: depth 4 spikes after warmup at lr 1e-2 (step 70)
// and diverges at 3e-2 (NaN grad norm at step 40); depth 2 is smooth throughout.
class LoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = TempDb();
    absl::StatusOr<std::unique_ptr<orchestrator::Store>> store = orchestrator::Store::Open(path_);
    ASSERT_OK(store);
    store_ = *std::move(store);
    sqlite3* db = store_->db();
    Exec(db,
         "INSERT INTO sweeps (id, name, state, method, metric_name, metric_goal, max_attempts, "
         "spec_text, spec_hash, created_at, updated_at) VALUES (1, 'depth_lr', 'completed', "
         "'grid', 'loss/val', 'minimize', 3, '', '', 0, 0)");
    Exec(db,
         "INSERT INTO sweeps (id, name, state, method, metric_name, metric_goal, max_attempts, "
         "spec_text, spec_hash, created_at, updated_at) VALUES (2, 'empty', 'running', "
         "'grid', 'loss/val', 'minimize', 3, '', '', 0, 0)");
    const std::string base =
        "steps: 100\nmodel: {dim: 64, n_layers: 2, n_heads: 4}\n"
        "optim: {lr: 3.0e-3, weight_decay: 0.1, warmup: 30}\n"
        "data: {sources: {kjv: 1.0}, batch_size: 16, seq_len: 64}\n";
    sqlite3_stmt* trial = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db,
                                 "INSERT INTO trials (id, sweep_id, trial_key, params, config, "
                                 "state, final_metric, diverged_step, created_at) "
                                 "VALUES (?, 1, ?, ?, ?, ?, ?, ?, 0)",
                                 -1, &trial, nullptr),
              SQLITE_OK);
    sqlite3_stmt* metric = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db,
                                 "INSERT INTO metrics (trial_id, name, step, value, nonfinite, "
                                 "attempt, time) VALUES (?, ?, ?, ?, ?, 1, 0)",
                                 -1, &metric, nullptr),
              SQLITE_OK);
    Exec(db, "BEGIN");
    int64_t id = 1;
    for (int depth : {2, 4}) {
      for (const char* lr_text : {"0.001", "0.003", "0.01", "0.03"}) {
        const double lr = std::atof(lr_text);
        absl::StatusOr<trainer::TrainConfig> config = trainer::ParseTrainConfig(
            base, "base",
            {absl::StrCat("model.n_layers=", depth), absl::StrCat("optim.lr=", lr_text)});
        ASSERT_OK(config);
        const nlohmann::json params = {{"model.n_layers", depth}, {"optim.lr", lr}};
        const bool diverges = depth == 4 && lr > 0.02;
        const bool spikes = depth == 4 && lr > 0.005 && !diverges;
        const double x = std::log10(lr) + 2.5;
        const double loss = 1.6 + 0.3 * x * x;
        sqlite3_reset(trial);
        sqlite3_bind_int64(trial, 1, id);
        const std::string key = absl::StrCat("model.n_layers=", depth, ",optim.lr=", lr_text);
        const std::string params_text = params.dump();
        const std::string config_text = trainer::TrainConfigToYaml(*config);
        sqlite3_bind_text(trial, 2, key.c_str(), -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(trial, 3, params_text.c_str(), -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(trial, 4, config_text.c_str(), -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(trial, 5, diverges ? "diverged" : "completed", -1, SQLITE_STATIC);
        sqlite3_bind_double(trial, 6, diverges ? 0.0 : loss);  // a diverged trial's bogus 0
        if (diverges) {
          sqlite3_bind_int64(trial, 7, 40);
        } else {
          sqlite3_bind_null(trial, 7);
        }
        ASSERT_EQ(sqlite3_step(trial), SQLITE_DONE) << sqlite3_errmsg(db);
        const int last = diverges ? 40 : 100;
        for (int step = 1; step <= last; ++step) {
          auto insert = [&](const char* name, std::optional<double> value) {
            sqlite3_reset(metric);
            sqlite3_bind_int64(metric, 1, id);
            sqlite3_bind_text(metric, 2, name, -1, SQLITE_STATIC);
            sqlite3_bind_int64(metric, 3, step);
            if (value) {
              sqlite3_bind_double(metric, 4, *value);
              sqlite3_bind_null(metric, 5);
            } else {
              sqlite3_bind_null(metric, 4);
              sqlite3_bind_text(metric, 5, "nan", -1, SQLITE_STATIC);
            }
            ASSERT_EQ(sqlite3_step(metric), SQLITE_DONE) << sqlite3_errmsg(db);
          };
          const double wiggle = 0.01 * (((step * 7919 + id * 31) % 13) - 6) / 6.0;
          std::optional<double> norm = 0.5 + 1.0 * std::exp(-step / 25.0) + wiggle;
          if (spikes && step == 70) norm = 6.0;
          if (diverges && step == last) norm = std::nullopt;
          insert("optim/grad_norm", norm);
          insert("loss/out", 5.5 - 3.0 * step / 100.0);
          // Depth 2 ran data-parallel: B_simple every 10 steps, growing.
          if (depth == 2 && step % 10 == 0) insert("optim/noise_scale", 1000.0 * step);
        }
        ++id;
      }
    }
    Exec(db, "COMMIT");
    sqlite3_finalize(trial);
    sqlite3_finalize(metric);
  }

  void TearDown() override {
    if (reader_ != nullptr) sqlite3_close(reader_);
  }

  // A read-only connection: the analysis must not need to write.
  sqlite3* Reader() {
    if (reader_ == nullptr) {
      EXPECT_EQ(sqlite3_open_v2(path_.c_str(), &reader_, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
    }
    return reader_;
  }

  const GroupResult& Group(const SweepAnalysis& a, int depth) {
    for (const GroupResult& g : a.groups) {
      if (g.key["model.n_layers"] == depth) return g;
    }
    ADD_FAILURE() << "no group for depth " << depth;
    return a.groups.front();
  }

  std::string path_;
  std::unique_ptr<orchestrator::Store> store_;
  sqlite3* reader_ = nullptr;
};

TEST_F(LoaderTest, AnalyzesTheStoredSweepFromTheTraces) {
  Exec(store_->db(), "DROP TABLE IF EXISTS spikes");  // a schema-2 database
  absl::StatusOr<SweepAnalysis> a = AnalyzeSweep(Reader(), 1, AnalysisOptions{});
  ASSERT_OK(a);
  EXPECT_EQ(a->sweep_id, 1);
  EXPECT_EQ(a->sweep_name, "depth_lr");
  EXPECT_EQ(a->metric_name, "loss/val");
  EXPECT_EQ(a->trials, 8);
  EXPECT_EQ(a->group_by, std::vector<std::string>{"model.n_layers"});
  EXPECT_NE(a->spike_source.find("detected from optim/grad_norm"), std::string::npos);
  ASSERT_EQ(a->groups.size(), 2u);

  const GroupResult& shallow = Group(*a, 2);
  EXPECT_EQ(shallow.max_stable.kind, MaxStableLr::Kind::kAboveGrid);
  ASSERT_TRUE(shallow.shape.has_value());
  EXPECT_EQ(shallow.shape->warmup, 30);
  EXPECT_EQ(*shallow.n_params, 2 * (4 * 64 * 64 + 3 * 64 * 256 + 2 * 64) + 64 + 258 * 64);
  EXPECT_DOUBLE_EQ(shallow.loss_init, 5.5 - 0.03);  // the first logged loss/out
  EXPECT_EQ(shallow.optimum.kind, LrOptimum::Kind::kVertex);
  EXPECT_NEAR(*shallow.optimum.lr, std::pow(10.0, -2.5), 1e-9);
  // The last quarter (ceil(10 / 4) = 3 values: steps 80, 90, 100) of every trial.
  EXPECT_EQ(shallow.noise_scale, 90000.0);
  EXPECT_EQ(shallow.noise_scale_trials, 4);
  EXPECT_FALSE(Group(*a, 4).noise_scale.has_value());
  ASSERT_TRUE(a->critical_batch.status.ok());
  EXPECT_EQ(a->critical_batch.rows[0].tokens_per_step, 16 * 64);

  const GroupResult& deep = Group(*a, 4);
  EXPECT_EQ(deep.max_stable.kind, MaxStableLr::Kind::kFound);
  EXPECT_EQ(*deep.max_stable.lr, 0.003);
  EXPECT_EQ(*deep.max_stable.first_unstable_lr, 0.01);
  EXPECT_EQ(deep.max_stable.first_unstable_why, "spikes after warmup in 1 of 1");
  ASSERT_EQ(deep.trials.size(), 4u);
  EXPECT_EQ(deep.trials[2].spikes_after_warmup, 1);
  EXPECT_EQ(deep.trials[2].first_spike_after_warmup, 70);
  EXPECT_EQ(deep.trials[2].peak_grad_norm_after_warmup, 6.0);
  EXPECT_EQ(deep.trials[3].outcome, TrialOutcome::kDiverged);
  EXPECT_EQ(deep.trials[3].diverged_step, 40);
  EXPECT_TRUE(deep.trials[3].nonfinite_grad_norm);
  EXPECT_FALSE(deep.trials[3].final_metric.has_value());
  // Depth 4 is less stable than depth 2, and the verdict says where.
  EXPECT_NE(deep.verdict.find("n_layers=4: spikes above lr 3e-3"), std::string::npos)
      << deep.verdict;
  std::printf("%s", RenderText(*a).c_str());
}

TEST_F(LoaderTest, DataParallelSweepsCountEveryRanksTokens) {
  Exec(store_->db(), "UPDATE sweeps SET ranks_per_trial = 2 WHERE id = 1");
  absl::StatusOr<SweepAnalysis> a = AnalyzeSweep(Reader(), 1, AnalysisOptions{});
  ASSERT_OK(a);
  ASSERT_TRUE(a->critical_batch.status.ok());
  EXPECT_EQ(a->critical_batch.rows[0].tokens_per_step, 2 * 16 * 64);
  EXPECT_EQ(Group(*a, 2).shape->processes, 2);
}

TEST_F(LoaderTest, TheFallbackDetectorMatchesTheGradNormSpikesView) {
  // Add a few spikes of different heights and a NaN, so the comparison is not empty.
  Exec(store_->db(),
       "UPDATE metrics SET value = 3.0 WHERE name = 'optim/grad_norm' AND trial_id = 1 AND step = "
       "50;"
       "UPDATE metrics SET value = 0.9 WHERE name = 'optim/grad_norm' AND trial_id = 2 AND step = "
       "60;"
       "UPDATE metrics SET value = NULL, nonfinite = 'inf' "
       "  WHERE name = 'optim/grad_norm' AND trial_id = 2 AND step = 30;"
       "UPDATE metrics SET value = 3.0 WHERE name = 'optim/grad_norm' AND trial_id = 3 AND step = "
       "21;");
  AnalysisOptions options;
  options.use_spikes_table = false;
  absl::StatusOr<std::vector<TrialResult>> trials = LoadTrials(Reader(), 1, options);
  ASSERT_OK(trials);
  std::set<std::pair<int64_t, int64_t>> ours, view;
  for (const TrialResult& t : *trials) {
    std::vector<double> values;
    std::vector<bool> finite;
    for (const TracePoint& p : t.grad_norm) {
      values.push_back(p.value);
      finite.push_back(p.finite);
    }
    for (const DetectedSpike& s : DetectSpikes(values, finite, SpikeRule{})) {
      ours.insert({t.trial_id, t.grad_norm[s.index].step});
    }
  }
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(
      sqlite3_prepare_v2(Reader(), "SELECT trial_id, step FROM grad_norm_spikes", -1, &st, nullptr),
      SQLITE_OK);
  while (sqlite3_step(st) == SQLITE_ROW)
    view.insert({sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1)});
  sqlite3_finalize(st);
  EXPECT_EQ(ours, view);
  EXPECT_GE(ours.size(), 3u);  // trial 1 step 50, trial 3 step 21, trial 7 step 70 at least
  EXPECT_EQ(ours.count({7, 70}), 1u);
}

TEST_F(LoaderTest, ReadsTheSpikesTableWhenItExists) {
  Exec(store_->db(), kSpikesTable);
  Exec(store_->db(), "DELETE FROM spikes");
  // sweepd saw a post-warmup spike at depth 2, lr 3e-3 (trial 2), and one in warmup at
  // depth 4, lr 1e-3 (trial 5); it did not flag trial 7's step 70 (say, a wider window).
  Exec(store_->db(),
       "INSERT INTO spikes VALUES (2, 'optim/grad_norm', 80, 4.0, 9.5, 0.6, 0, 1);"
       "INSERT INTO spikes VALUES (5, 'optim/grad_norm', 12, 4.0, 9.5, 0.6, 1, 1);"
       "INSERT INTO spikes VALUES (6, 'loss/out', 90, 4.0, 9.5, 0.6, 0, 1);");
  absl::StatusOr<SweepAnalysis> a = AnalyzeSweep(Reader(), 1, AnalysisOptions{});
  ASSERT_OK(a);
  EXPECT_EQ(a->spike_source, "sweepd's spikes table (optim/grad_norm)");
  const GroupResult& shallow = Group(*a, 2);
  EXPECT_EQ(*shallow.max_stable.lr, 0.001);
  EXPECT_EQ(*shallow.max_stable.first_unstable_lr, 0.003);
  const GroupResult& deep = Group(*a, 4);
  EXPECT_EQ(deep.trials[0].spikes_in_warmup, 1);
  EXPECT_EQ(deep.trials[0].spikes_after_warmup, 0);
  EXPECT_EQ(deep.trials[1].spikes_after_warmup, 0);  // a loss spike is not a grad-norm spike
  EXPECT_EQ(*deep.max_stable.lr, 0.01);              // the table decides: 1e-2 is clean
  EXPECT_EQ(deep.max_stable.first_unstable_why, "diverged in 1 of 1");

  // Told not to use the table, the trace decides again.
  AnalysisOptions options;
  options.use_spikes_table = false;
  absl::StatusOr<SweepAnalysis> b = AnalyzeSweep(Reader(), 1, options);
  ASSERT_OK(b);
  EXPECT_EQ(*Group(*b, 4).max_stable.lr, 0.003);
}

TEST_F(LoaderTest, UnknownAndEmptySweeps) {
  EXPECT_EQ(AnalyzeSweep(Reader(), 99, AnalysisOptions{}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(LoadTrials(Reader(), 99, AnalysisOptions{}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(AnalyzeSweep(Reader(), 2, AnalysisOptions{}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // The savepoint was released: the connection is usable afterwards.
  ASSERT_OK(AnalyzeSweep(Reader(), 1, AnalysisOptions{}));
}

}  // namespace
}  // namespace sweep::analysis
