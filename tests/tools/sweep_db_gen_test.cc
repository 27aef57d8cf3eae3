// The dashboard's fixture generator (tools/sweep_db_gen.h): a small sweep written through the
// real store, scheduler and monitor has the trials, rows, spikes and divergences its contract
// promises, passes SQLite's integrity check, and is the same for the same seed.
#include "tools/sweep_db_gen.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "tests/testing/sqlite.h"
#include "tests/testing/status.h"

namespace sweep::tools {
namespace {

namespace fs = std::filesystem;
using sweep::testing::QueryScalar;

std::string FreshPath(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / "sweep_db_gen_test";
  fs::create_directories(dir);
  const fs::path path = dir / (name + ".db");
  for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(path.string() + suffix);
  return path.string();
}

// The default grid (depth 2, 6, 10 x lr 3e-3, 1e-2, 3e-2, 1e-1) with 2 seeds, short trials.
SweepDbOptions Small() {
  SweepDbOptions options;
  options.sweep = "small";
  options.seeds = 2;
  options.steps = 300;
  options.eval_every = 50;
  options.probe_every = 10;
  options.seed = 7;
  return options;
}

class Db {
 public:
  explicit Db(const std::string& path) {
    EXPECT_EQ(sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  }
  ~Db() { sqlite3_close(db_); }
  std::string Scalar(const std::string& sql) { return QueryScalar(db_, sql); }
  int64_t Int(const std::string& sql) { return std::stoll("0" + Scalar(sql)); }
  // Every row of a query as text, one string per row.
  std::vector<std::string> Rows(const std::string& sql) {
    std::vector<std::string> out;
    sqlite3_stmt* st = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr), SQLITE_OK)
        << sqlite3_errmsg(db_);
    while (sqlite3_step(st) == SQLITE_ROW) {
      std::string row;
      for (int i = 0; i < sqlite3_column_count(st); ++i) {
        const unsigned char* text = sqlite3_column_text(st, i);
        row += text == nullptr ? "NULL" : reinterpret_cast<const char*>(text);
        row += '|';
      }
      out.push_back(std::move(row));
    }
    sqlite3_finalize(st);
    return out;
  }
  // A fingerprint of every table's content, in key order.
  std::map<std::string, size_t> Content() {
    std::map<std::string, size_t> out;
    for (const std::string& row :
         Rows("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")) {
      const std::string table = row.substr(0, row.size() - 1);
      size_t hash = 0;
      for (const std::string& r : Rows("SELECT * FROM \"" + table + "\"")) {
        hash = hash * 1000003 ^ std::hash<std::string>()(r);
      }
      out[table] = hash;
    }
    return out;
  }

 private:
  sqlite3* db_ = nullptr;
};

TEST(SweepDbGenTest, FinishedSweepHasEveryTrialRowSpikeAndDivergence) {
  const std::string path = FreshPath("finished");
  const SweepDbOptions options = Small();
  absl::StatusOr<SweepDbStats> stats = GenerateSweepDb(path, options);
  ASSERT_OK(stats);
  EXPECT_EQ(stats->trials, 24);
  EXPECT_EQ(stats->diverged, 2);  // Depth 10 at lr 1e-1, both seeds.
  EXPECT_EQ(stats->completed, 22);
  EXPECT_EQ(stats->running, 0);

  Db db(path);
  EXPECT_EQ(db.Scalar("PRAGMA integrity_check"), "ok");
  EXPECT_EQ(db.Scalar("SELECT state FROM sweeps WHERE name = 'small'"), "completed");
  EXPECT_EQ(db.Int("SELECT COUNT(*) FROM trials WHERE state = 'completed'"), 22);
  EXPECT_EQ(db.Int("SELECT COUNT(*) FROM trials WHERE state = 'diverged'"), 2);
  EXPECT_EQ(db.Int("SELECT COUNT(*) FROM metrics"), stats->rows);
  EXPECT_EQ(db.Int("SELECT COUNT(*) FROM spikes"), stats->spikes);

  // Every completed trial stored exactly the rows its depth implies, and reported its metric.
  for (int depth : options.depths) {
    const std::string in_depth =
        "FROM trials WHERE state = 'completed' AND json_extract(params, '$.\"model.n_layers\"') "
        "= " +
        std::to_string(depth);
    const int64_t trials = db.Int("SELECT COUNT(*) " + in_depth);
    ASSERT_GT(trials, 0) << depth;
    EXPECT_EQ(db.Int("SELECT COUNT(*) FROM metrics WHERE trial_id IN (SELECT id " + in_depth + ")"),
              trials * RowsPerCompletedTrial(options, depth))
        << "depth " << depth;
    EXPECT_EQ(db.Int("SELECT COUNT(*) " + in_depth +
                     " AND last_step = 300 AND final_metric IS NOT NULL AND best_metric <= "
                     "final_metric AND checkpoint LIKE '%/0000000300'"),
              trials);
  }
  EXPECT_EQ(db.Int("SELECT COUNT(DISTINCT name) FROM metrics WHERE trial_id = 1"),
            7 + (2 * 2 + 3) + (2 + 1) + 1);  // The first trial: depth 2, lr 3e-3, seed 0.

  // Spikes: none where the grid injects none (lr in the lower half, or depth 2); some in the
  // spiky cells (lr 3e-2 and 1e-1 at depth 6 and 10).
  auto spikes_in = [&](const std::string& cell) {
    return db.Int("SELECT COUNT(*) FROM spikes s JOIN trials t ON t.id = s.trial_id WHERE " + cell);
  };
  const std::string depth = "json_extract(t.params, '$.\"model.n_layers\"')";
  const std::string lr = "json_extract(t.params, '$.\"optim.lr\"')";
  EXPECT_EQ(spikes_in(depth + " = 2"), 0);
  EXPECT_EQ(spikes_in(lr + " <= 0.01"), 0);
  EXPECT_GT(spikes_in(depth + " = 6 AND " + lr + " = 0.1"), 0);
  EXPECT_GT(spikes_in(depth + " = 10 AND " + lr + " = 0.03"), 0);
  EXPECT_GT(db.Int("SELECT COUNT(*) FROM spikes WHERE name = 'optim/grad_norm' AND NOT in_warmup"),
            0);
  EXPECT_EQ(db.Int("SELECT COUNT(*) FROM events WHERE kind = 'spike'"), stats->spikes);

  // The diverged trials: NaN logged at the step they ended, found by the monitor, and the
  // trial ended through the diverged outcome with the monitor's reason.
  for (const std::string& row :
       db.Rows("SELECT id, diverged_step, divergence_step, last_step FROM trials "
               "WHERE state = 'diverged'")) {
    SCOPED_TRACE(row);
    const std::string id = row.substr(0, row.find('|'));
    EXPECT_EQ(db.Scalar("SELECT diverged_step = divergence_step AND diverged_step = last_step "
                        "FROM trials WHERE id = " +
                        id),
              "1");
    EXPECT_EQ(db.Scalar("SELECT error FROM trials WHERE id = " + id).rfind("divergence: ", 0), 0u);
    EXPECT_EQ(db.Int("SELECT COUNT(*) FROM metrics WHERE trial_id = " + id +
                     " AND name = 'loss/out' AND nonfinite = 'nan' AND step = "
                     "(SELECT diverged_step FROM trials WHERE id = " +
                     id + ")"),
              1);
    EXPECT_EQ(db.Int("SELECT MAX(step) FROM metrics WHERE trial_id = " + id),
              db.Int("SELECT diverged_step FROM trials WHERE id = " + id));
    EXPECT_EQ(db.Int("SELECT COUNT(*) FROM events WHERE kind = 'divergence_detected' AND "
                     "trial_id = " +
                     id),
              1);
  }
  EXPECT_EQ(db.Int("SELECT COUNT(*) FROM trials WHERE divergence_step IS NOT NULL"), 2);

  // The grid's shape: at depth 2 the best lr is above depth 10's.
  auto best_lr = [&](int d) {
    return db.Scalar("SELECT " + lr + " FROM trials t WHERE state = 'completed' AND " + depth +
                     " = " + std::to_string(d) + " GROUP BY " + lr +
                     " ORDER BY AVG(final_metric) LIMIT 1");
  };
  EXPECT_GT(std::stod(best_lr(2)), std::stod(best_lr(10)));
}

TEST(SweepDbGenTest, SameSeedSameContent) {
  const std::string a = FreshPath("seed_a"), b = FreshPath("seed_b"), c = FreshPath("seed_c");
  SweepDbOptions options = Small();
  options.steps = 120;
  options.depths = {2, 6};
  options.running = 2;
  ASSERT_OK(GenerateSweepDb(a, options));
  ASSERT_OK(GenerateSweepDb(b, options));
  options.seed = 8;
  ASSERT_OK(GenerateSweepDb(c, options));
  Db da(a), db(b), dc(c);
  EXPECT_EQ(da.Content(), db.Content());
  EXPECT_NE(da.Content()["metrics"], dc.Content()["metrics"]);
}

TEST(SweepDbGenTest, RunningTrialsStayRunningWithLiveLeases) {
  const std::string path = FreshPath("running");
  SweepDbOptions options = Small();
  options.steps = 100;
  options.running = 3;
  absl::StatusOr<SweepDbStats> stats = GenerateSweepDb(path, options);
  ASSERT_OK(stats);
  EXPECT_EQ(stats->running, 3);
  EXPECT_EQ(stats->completed + stats->diverged, 21);
  Db db(path);
  EXPECT_EQ(db.Scalar("PRAGMA integrity_check"), "ok");
  EXPECT_EQ(db.Scalar("SELECT state FROM sweeps"), "running");
  // Part-way, with a lease that outlives the simulated end, and the last trials leased.
  EXPECT_EQ(db.Int("SELECT COUNT(*) FROM trials WHERE state = 'running' AND last_step > 0 AND "
                   "last_step < 100 AND finished_at IS NULL AND lease_expires_at > "
                   "(SELECT MAX(time) FROM events)"),
            3);
  EXPECT_EQ(db.Int("SELECT MIN(id) FROM trials WHERE state = 'running'"), 22);
  EXPECT_EQ(db.Int("SELECT COUNT(*) FROM metrics WHERE trial_id IN (SELECT id FROM trials WHERE "
                   "state = 'running') AND step > (SELECT last_step FROM trials t WHERE "
                   "t.id = trial_id)"),
            0);
}

TEST(SweepDbGenTest, OnlyMetricsAndAnExistingSweep) {
  const std::string path = FreshPath("only");
  SweepDbOptions options;
  options.sweep = "trace";
  options.depths = {2};
  options.lrs = {0.01};
  options.seeds = 1;
  options.steps = 2000;
  options.only_metrics = {"optim/grad_norm"};
  absl::StatusOr<SweepDbStats> stats = GenerateSweepDb(path, options);
  ASSERT_OK(stats);
  EXPECT_EQ(stats->rows, 2000);
  EXPECT_EQ(RowsPerCompletedTrial(options, 2), 2000);
  EXPECT_EQ(stats->completed, 1);
  // A second sweep goes into the same file; the same name again is refused.
  options.sweep = "trace_short";
  options.steps = 100;
  ASSERT_OK(GenerateSweepDb(path, options));
  EXPECT_EQ(GenerateSweepDb(path, options).status().code(), absl::StatusCode::kAlreadyExists);
  Db db(path);
  EXPECT_EQ(db.Int("SELECT COUNT(*) FROM sweeps"), 2);
  EXPECT_EQ(db.Int("SELECT COUNT(*) FROM metrics"), 2100);
}

TEST(SweepDbGenTest, BadOptionsNameTheOption) {
  struct {
    std::function<void(SweepDbOptions&)> change;
    std::string expected;
  } cases[] = {
      {[](SweepDbOptions& o) { o.depths.clear(); }, "--depths"},
      {[](SweepDbOptions& o) {
         o.lrs = {0.01, -1};
       },
       "--lrs"},
      {[](SweepDbOptions& o) { o.seeds = 0; }, "--seeds"},
      {[](SweepDbOptions& o) { o.steps = 0; }, "--steps"},
      {[](SweepDbOptions& o) { o.running = 13 * 4; }, "--running"},
      {[](SweepDbOptions& o) { o.eval_every = -1; }, "--eval-every"},
  };
  for (const auto& c : cases) {
    SweepDbOptions options;
    c.change(options);
    const absl::Status s = ValidateSweepDbOptions(options);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.expected;
    EXPECT_NE(s.message().find(c.expected), std::string::npos) << s.message();
  }
  // Duplicate values reach the spec parser, whose error is passed along.
  SweepDbOptions options;
  options.lrs = {0.01, 0.01};
  EXPECT_FALSE(GenerateSweepDb(FreshPath("bad"), options).ok());
}

}  // namespace
}  // namespace sweep::tools
