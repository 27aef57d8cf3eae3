// metric_blocks against a recomputation from the metrics table: after batches in any order,
// re-sent rows, non-finite values, and after the schema-5 migration summarises old rows.
#include "orchestrator/metric_blocks.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <random>

#include "orchestrator/scheduler.h"
#include "orchestrator/sql.h"
#include "orchestrator/store.h"
#include "tests/orchestrator/fake_clock.h"
#include "tests/testing/status.h"

namespace sweep::orchestrator {
namespace {

namespace fs = std::filesystem;

// Every block as text, from metric_blocks or recomputed from metrics: equal when the blocks
// summarise exactly the stored rows.
std::string Dump(sqlite3* db, bool recompute) {
  const std::string sql = recompute ? R"sql(
    SELECT b.trial_id, b.name, b.block, b.rows, b.first_step, b.last_step,
      (SELECT step FROM metrics m WHERE m.trial_id = b.trial_id AND m.name = b.name AND m.step / 256 = b.block
         AND value IS NOT NULL ORDER BY value, step LIMIT 1),
      (SELECT value FROM metrics m WHERE m.trial_id = b.trial_id AND m.name = b.name AND m.step / 256 = b.block
         AND value IS NOT NULL ORDER BY value, step LIMIT 1),
      (SELECT step FROM metrics m WHERE m.trial_id = b.trial_id AND m.name = b.name AND m.step / 256 = b.block
         AND value IS NOT NULL ORDER BY value DESC, step LIMIT 1),
      (SELECT value FROM metrics m WHERE m.trial_id = b.trial_id AND m.name = b.name AND m.step / 256 = b.block
         AND value IS NOT NULL ORDER BY value DESC, step LIMIT 1),
      (SELECT step FROM metrics m WHERE m.trial_id = b.trial_id AND m.name = b.name AND m.step / 256 = b.block
         AND value IS NULL ORDER BY step LIMIT 1),
      (SELECT nonfinite FROM metrics m WHERE m.trial_id = b.trial_id AND m.name = b.name AND m.step / 256 = b.block
         AND value IS NULL ORDER BY step LIMIT 1)
    FROM (SELECT trial_id, name, step / 256 AS block, COUNT(*) AS rows, MIN(step) AS first_step,
                 MAX(step) AS last_step FROM metrics GROUP BY 1, 2, 3) b ORDER BY 1, 2, 3)sql"
                                    : "SELECT trial_id, name, block, rows, first_step, last_step, min_step, min_value, "
                                      "max_step, max_value, nonfinite_step, nonfinite FROM metric_blocks ORDER BY 1, 2, 3";
  Statement st(db, sql);
  EXPECT_TRUE(st.status().ok()) << st.status().message();
  std::string out;
  while (st.Step() == SQLITE_ROW) {
    for (int c = 0; c < 12; ++c) out += (st.IsNull(c) ? "NULL" : st.Text(c)) + (c == 11 ? "\n" : " ");
  }
  return out;
}

TEST(MetricBlocksTest, BlocksSummariseExactlyTheStoredRows) {
  std::string dir = fs::temp_directory_path() / "sweep-blocks-XXXXXX";
  const std::string path = std::string(mkdtemp(dir.data())) + "/sweep.db";
  FakeClock clock;
  {
    std::unique_ptr<Store> store = *Store::Open(path);
    Scheduler scheduler(store.get(), &clock);
    SweepSpec spec = *ParseSweepSpec(
        "name: b\nmethod: grid\nbase: {steps: 5000, data: {sources: {kjv: 1}}}\n"
        "parameters: {optim.lr: {values: [1e-3, 2e-3]}}\n",
        "b.yaml");
    ASSERT_OK(store->SubmitSweep(spec, *ExpandSweep(spec), clock.Now()));
    const int64_t worker = *scheduler.RegisterWorker({"w", "h", 0, 2, "{}"});
    std::vector<Lease> leases = *scheduler.LeaseTrials(worker, 0, 2, 2);
    ASSERT_EQ(leases.size(), 2u);
    std::mt19937 rng(7);
    std::normal_distribution<double> noise;
    // Batches out of step order, overlapping (re-sent rows), with NaN, ±Inf and ties.
    for (int batch = 0; batch < 60; ++batch) {
      std::vector<MetricRow> rows;
      const int64_t start = std::uniform_int_distribution<int64_t>(0, 4000)(rng);
      for (const Lease& l : leases) {
        for (int64_t step = start; step < start + 300; ++step) {
          double value = std::round(noise(rng) * 4) / 4;  // many ties
          if (step % 977 == 0) value = std::numeric_limits<double>::quiet_NaN();
          if (step % 1553 == 0) value = -std::numeric_limits<double>::infinity();
          rows.push_back({l.trial_id, l.attempt, step % 2 ? "loss/out" : "optim/grad_norm", step, value, 0});
        }
      }
      std::shuffle(rows.begin(), rows.end(), rng);
      ASSERT_OK(store->InsertMetrics(rows).status());
    }
    const std::string blocks = Dump(store->db(), false);
    EXPECT_GT(std::count(blocks.begin(), blocks.end(), '\n'), 50);
    EXPECT_EQ(blocks, Dump(store->db(), true));
    EXPECT_NE(blocks.find(" nan\n"), std::string::npos);
    EXPECT_NE(blocks.find(" -inf\n"), std::string::npos);

    // The migration to schema 5 summarises rows stored before it.
    // (Schema 6's column goes too, so that its migration can run again after this one.)
    ASSERT_OK(ExecSql(store->db(), "DROP TABLE metric_blocks; ALTER TABLE sweeps DROP COLUMN "
                                   "ranks_per_trial; PRAGMA user_version = 4;"));
  }
  std::unique_ptr<Store> reopened = *Store::Open(path);
  EXPECT_EQ(*reopened->SchemaVersion(), kSchemaVersion);
  EXPECT_EQ(Dump(reopened->db(), false), Dump(reopened->db(), true));
  fs::remove_all(fs::path(path).parent_path());
}

TEST(MetricBlocksTest, MergeKeepsTheEarliestOfTiesAndIgnoresNonFinite) {
  MetricBlock b;
  b.Add(10, 1.0);
  b.Add(5, std::numeric_limits<double>::quiet_NaN());
  b.Add(7, 1.0);
  b.Add(3, 2.0);
  b.Add(4, std::numeric_limits<double>::infinity());
  EXPECT_EQ(b.rows, 5);
  EXPECT_EQ(b.first_step, 3);
  EXPECT_EQ(b.last_step, 10);
  EXPECT_EQ(*b.min_step, 7);
  EXPECT_EQ(b.min_value, 1.0);
  EXPECT_EQ(*b.max_step, 3);
  EXPECT_EQ(*b.nonfinite_step, 4);
  EXPECT_EQ(b.nonfinite, "inf");
  MetricBlock only_nan;
  only_nan.Add(1, std::numeric_limits<double>::quiet_NaN());
  EXPECT_FALSE(only_nan.min_step.has_value());
  EXPECT_EQ(only_nan.nonfinite, "nan");
}

}  // namespace
}  // namespace sweep::orchestrator
