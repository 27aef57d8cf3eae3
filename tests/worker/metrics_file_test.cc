#include "worker/metrics_file.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "tests/testing/subprocess.h"

namespace sweep::worker {
namespace {

std::map<std::string, double> Values(const MetricsLine& line) {
  std::map<std::string, double> out;
  for (const MetricRow& row : line.rows) out[row.name] = row.value;
  return out;
}

TEST(ParseMetricsLineTest, SweepTrainRow) {
  auto line = ParseMetricsLine(
      R"({"created_at":"2026-11-28T21:15:25+00:00","global_step":7,"acc_step":0,"loss/out":2.5,"grad_norm/layers.0":0.25})");
  ASSERT_TRUE(line);
  EXPECT_EQ(line->step, 7);
  EXPECT_TRUE(line->event.empty());
  EXPECT_EQ(Values(*line), (std::map<std::string, double>{{"loss/out", 2.5}, {"grad_norm/layers.0", 0.25}}));
  for (const MetricRow& row : line->rows) EXPECT_EQ(row.step, 7);
}

TEST(ParseMetricsLineTest, LinguaNestedKeysAreFlattenedWithSlashes) {
  auto line = ParseMetricsLine(
      R"({"global_step": 3, "optim": {"grad_norm": 1.5, "lr": 0.001}, "loss": {"out": 4.0}, "speed": {"wps": 100}, "name": "run"})");
  ASSERT_TRUE(line);
  EXPECT_EQ(Values(*line), (std::map<std::string, double>{
                               {"optim/grad_norm", 1.5}, {"optim/lr", 0.001}, {"loss/out", 4.0}, {"speed/wps", 100}}));
}

TEST(ParseMetricsLineTest, PythonNonFiniteTokensAndNullSurvive) {
  auto line = ParseMetricsLine(
      R"({"global_step": 9, "loss/out": NaN, "optim/grad_norm": Infinity, "x": -Infinity, "y": null, "note": "NaN is fine in a string"})");
  ASSERT_TRUE(line);
  auto v = Values(*line);
  ASSERT_EQ(v.size(), 4u);
  EXPECT_TRUE(std::isnan(v["loss/out"]));
  EXPECT_EQ(v["optim/grad_norm"], INFINITY);
  EXPECT_EQ(v["x"], -INFINITY);
  EXPECT_TRUE(std::isnan(v["y"]));
}

TEST(ParseMetricsLineTest, CheckpointEvent) {
  auto line = ParseMetricsLine(R"({"event":"checkpoint","global_step":20,"checkpoint":"/w/checkpoints/0000000020"})");
  ASSERT_TRUE(line);
  EXPECT_EQ(line->event, "checkpoint");
  EXPECT_EQ(line->checkpoint, "/w/checkpoints/0000000020");
  EXPECT_EQ(line->step, 20);
  EXPECT_TRUE(line->rows.empty());
}

TEST(ParseMetricsLineTest, GarbageIsRejected) {
  EXPECT_FALSE(ParseMetricsLine(R"({"global_step": 1, "loss/o)"));
  EXPECT_FALSE(ParseMetricsLine("[1, 2]"));
  EXPECT_FALSE(ParseMetricsLine("step 1 loss 2.0"));
}

TEST(MetricsFileTest, ReturnsCompleteLinesAndTheTornOneOnlyAtTheEnd) {
  const std::string path = sweep::testing::MakeTempDir("metrics-file") + "/metrics.jsonl";
  MetricsFile file(path);
  EXPECT_TRUE(file.ReadLines(10, false).empty());  // Not created yet.
  std::ofstream out(path);
  out << "{\"a\":1}\n{\"b\":2}\n{\"c\":" << std::flush;
  EXPECT_EQ(file.ReadLines(10, false), (std::vector<std::string>{"{\"a\":1}", "{\"b\":2}"}));
  EXPECT_EQ(file.offset(), 16u);
  EXPECT_TRUE(file.ReadLines(10, false).empty());  // The torn line waits...
  out << "3}\n{\"d\":4}" << std::flush;
  EXPECT_EQ(file.ReadLines(10, false), (std::vector<std::string>{"{\"c\":3}"}));
  EXPECT_EQ(file.ReadLines(10, true), (std::vector<std::string>{"{\"d\":4}"}));  // ...until the end.
}

TEST(MetricsFileTest, MaxLinesLeavesTheRestForLater) {
  const std::string path = sweep::testing::MakeTempDir("metrics-file") + "/metrics.jsonl";
  {
    std::ofstream out(path);
    for (int i = 0; i < 10; ++i) out << "{\"i\":" << i << "}\n";
  }
  MetricsFile file(path);
  EXPECT_EQ(file.ReadLines(4, false).size(), 4u);
  EXPECT_EQ(file.ReadLines(4, false).size(), 4u);
  std::vector<std::string> rest = file.ReadLines(4, true);
  ASSERT_EQ(rest.size(), 2u);
  EXPECT_EQ(rest[1], "{\"i\":9}");
}

}  // namespace
}  // namespace sweep::worker
