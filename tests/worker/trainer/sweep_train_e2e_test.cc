// sweep-train as a real process: preemption by SIGTERM and resume, a SIGKILL mid-run and
// resume from the last complete checkpoint (both bit-exact against an uninterrupted run),
// divergence, bad checkpoints and configuration errors, and the issue's convergence target.
//
// The corpus is the bundled one at its default location (tools/setup.sh prepares it).
#include <gtest/gtest.h>
#include <signal.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/testing/metrics_records.h"
#include "tests/testing/subprocess.h"
#include "worker/trainer/config.h"
#include "worker/trainer/exit_codes.h"

namespace sweep::trainer {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;
using sweep::testing::Events;
using sweep::testing::ExpectSameTrajectory;
using sweep::testing::LastStep;
using sweep::testing::MakeTempDir;
using sweep::testing::ReadFileOrEmpty;
using sweep::testing::Records;
using sweep::testing::Steps;
using sweep::testing::Subprocess;
using sweep::testing::WaitFor;

// A model small enough that a few hundred steps take seconds.
// What a resumed run must reproduce bit for bit.
const std::vector<std::string> kCompared = {"loss/out", "optim/grad_norm", "optim/lr"};

constexpr char kTinyConfig[] = R"(name: tiny
seed: 11
steps: 300
threads: 2
model: {dim: 32, n_layers: 2, n_heads: 2, multiple_of: 32}
optim: {lr: 3.0e-3, warmup: 10, scheduler: cosine, clip: 1.0}
data: {sources: {kjv: 1.0}, batch_size: 4, seq_len: 32, prefetch_size: 8}
eval: {steps: 2}
logging: {freq: 1}
)";

class SweepTrainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(fs::path(DefaultDataRoot()) / "kjv"))
        << "the bundled corpus is missing at " << DefaultDataRoot()
        << "/kjv; run tools/setup.sh (or sweep-prepare-data kjv)";
    dir_ = MakeTempDir("sweep-train-e2e");
  }

  std::string WriteConfig(const std::string& text) {
    const std::string path = dir_ + "/config.yaml";
    std::ofstream(path) << text;
    return path;
  }

  // Runs sweep-train to completion with extra arguments; stderr goes to <dump_dir>.log.
  int Train(const std::string& config, const std::string& dump_dir,
            std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {SWEEP_TRAIN_BIN, "--config", config, "--dump-dir", dump_dir};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return sweep::testing::Run(argv, "", dump_dir + ".log");
  }

  std::string dir_;
};

TEST_F(SweepTrainTest, SigtermCheckpointsAndResumesBitExactly) {
  const std::string config = WriteConfig(kTinyConfig);
  ASSERT_EQ(Train(config, dir_ + "/reference"), kExitCompleted);
  const std::vector<json> reference = Records(dir_ + "/reference/metrics.jsonl");

  const std::string run = dir_ + "/run";
  const std::string metrics = run + "/metrics.jsonl";
  {
    Subprocess child({SWEEP_TRAIN_BIN, "--config", config, "--dump-dir", run}, "", run + ".log");
    ASSERT_TRUE(WaitFor([&] { return LastStep(metrics) >= 40; }, std::chrono::seconds(120)));
    child.Signal(SIGTERM);
    ASSERT_EQ(child.Wait(), kExitPreempted) << ReadFileOrEmpty(run + ".log");
  }
  std::vector<json> records = Records(metrics);
  const std::vector<json> preempted = Events(records, "preempted");
  ASSERT_EQ(preempted.size(), 1u);
  const int64_t stopped_at = preempted[0]["global_step"].get<int64_t>();
  EXPECT_GE(stopped_at, 40);
  EXPECT_LT(stopped_at, 300);
  EXPECT_TRUE(fs::exists(fs::path(preempted[0]["checkpoint"].get<std::string>()) / "COMPLETE"));

  // Same command again: it picks up <dump_dir>/checkpoints by itself.
  ASSERT_EQ(Train(config, run), kExitCompleted) << ReadFileOrEmpty(run + ".log");
  records = Records(metrics);
  const std::vector<json> resumed = Events(records, "resumed");
  ASSERT_EQ(resumed.size(), 1u);
  EXPECT_EQ(resumed[0]["global_step"].get<int64_t>(), stopped_at);
  ASSERT_EQ(Events(records, "completed").size(), 1u);
  ExpectSameTrajectory(reference, records, 0, kCompared);  // Before and after the stop.
  EXPECT_EQ(Steps(records).size(), 300u);       // Each step exactly once.
}

TEST_F(SweepTrainTest, SigkillResumesFromLastCompleteCheckpointBitExactly) {
  const std::string config = WriteConfig(std::string(kTinyConfig) + "checkpoint: {every: 25}\n");
  ASSERT_EQ(Train(config, dir_ + "/reference"), kExitCompleted);
  const std::vector<json> reference = Records(dir_ + "/reference/metrics.jsonl");

  const std::string run = dir_ + "/run";
  const std::string metrics = run + "/metrics.jsonl";
  int64_t killed_after = 0;
  {
    Subprocess child({SWEEP_TRAIN_BIN, "--config", config, "--dump-dir", run}, "", run + ".log");
    ASSERT_TRUE(WaitFor([&] { return LastStep(metrics) >= 60; }, std::chrono::seconds(120)));
    child.Signal(SIGKILL);
    EXPECT_EQ(child.Wait(), 128 + SIGKILL);
    killed_after = LastStep(metrics);
  }
  ASSERT_LT(killed_after, 300);
  // A half-written checkpoint folder (as a kill during a save leaves) must be ignored.
  fs::create_directories(run + "/checkpoints/.tmp-0000000299");
  fs::create_directories(run + "/checkpoints/0000000299");  // No COMPLETE marker.

  ASSERT_EQ(Train(config, run), kExitCompleted) << ReadFileOrEmpty(run + ".log");
  const std::vector<json> records = Records(metrics);
  const std::vector<json> resumed = Events(records, "resumed");
  ASSERT_EQ(resumed.size(), 1u);
  const int64_t resumed_at = resumed[0]["global_step"].get<int64_t>();
  EXPECT_EQ(resumed_at % 25, 0);
  EXPECT_GE(resumed_at, 50);
  EXPECT_LE(resumed_at, killed_after);
  // Every periodic checkpoint was announced; the resume point is one of them.
  bool announced = false;
  for (const json& e : Events(records, "checkpoint")) {
    EXPECT_EQ(e["global_step"].get<int64_t>() % 25, 0);
    announced |= e["global_step"].get<int64_t>() == resumed_at;
  }
  EXPECT_TRUE(announced);
  // Steps between the checkpoint and the kill ran twice; both times they match the reference.
  ExpectSameTrajectory(reference, records, 0, kCompared);
  EXPECT_EQ(Steps(records).size(), 300u + static_cast<size_t>(killed_after - resumed_at));
  // keep: 2 (the default) complete checkpoints remain.
  int complete = 0;
  for (const auto& entry : fs::directory_iterator(run + "/checkpoints")) {
    complete += fs::exists(entry.path() / "COMPLETE") ? 1 : 0;
  }
  EXPECT_EQ(complete, 2);
}

TEST_F(SweepTrainTest, HugeLearningRateEndsAsDivergedNotACrash) {
  const std::string config = WriteConfig(kTinyConfig);
  const std::string run = dir_ + "/run";
  const int code = Train(config, run, {"optim.lr=10", "optim.warmup=0"});
  ASSERT_EQ(code, kExitDiverged) << ReadFileOrEmpty(run + ".log");
  const std::vector<json> diverged = Events(Records(run + "/metrics.jsonl"), "diverged");
  ASSERT_EQ(diverged.size(), 1u);
  EXPECT_LT(diverged[0]["global_step"].get<int64_t>(), 300);
  EXPECT_NE(diverged[0]["reason"].get<std::string>().find("loss"), std::string::npos);
  EXPECT_NE(ReadFileOrEmpty(run + ".log").find("diverged at step"), std::string::npos);
}

TEST_F(SweepTrainTest, NonFiniteLossEndsAsDiverged) {
  // With the loss guard off, an absurd lr overflows float32 and the loss becomes NaN/Inf.
  const std::string config = WriteConfig(kTinyConfig);
  const std::string run = dir_ + "/run";
  const int code =
      Train(config, run, {"optim.lr=1e30", "optim.warmup=0", "divergence.loss_factor=0"});
  ASSERT_EQ(code, kExitDiverged) << ReadFileOrEmpty(run + ".log");
  const std::vector<json> diverged = Events(Records(run + "/metrics.jsonl"), "diverged");
  ASSERT_EQ(diverged.size(), 1u);
  EXPECT_TRUE(diverged[0]["value"].is_string()) << diverged[0].dump();  // "nan" or "inf"
  EXPECT_NE(diverged[0]["reason"].get<std::string>().find("non-finite"), std::string::npos);
}

TEST_F(SweepTrainTest, GroupGradNormsSquaredSumToTotal) {
  const std::string config = WriteConfig(kTinyConfig);
  const std::string run = dir_ + "/run";
  ASSERT_EQ(Train(config, run, {"steps=20"}), kExitCompleted);
  const std::vector<json> steps = Steps(Records(run + "/metrics.jsonl"));
  ASSERT_EQ(steps.size(), 20u);
  for (const json& r : steps) {
    double sum_sq = 0;
    int groups = 0;
    for (const auto& [key, value] : r.items()) {
      if (key.rfind("grad_norm/", 0) == 0) {
        sum_sq += value.get<double>() * value.get<double>();
        ++groups;
      }
    }
    EXPECT_EQ(groups, 2 * 2 + 3);  // 2 layers x (attention, feed_forward) + embeddings, norm, output
    const double total = r["optim/grad_norm"].get<double>();
    EXPECT_NEAR(sum_sq, total * total, 1e-9 * total * total);
  }
}

TEST_F(SweepTrainTest, CorruptCheckpointIsRefusedWithAClearError) {
  const std::string config = WriteConfig(kTinyConfig);
  const std::string run = dir_ + "/run";
  ASSERT_EQ(Train(config, run, {"steps=5"}), kExitCompleted);
  const std::string state = run + "/checkpoints/0000000005/state.bin";
  ASSERT_TRUE(fs::exists(state));
  fs::resize_file(state, fs::file_size(state) / 2);
  EXPECT_EQ(Train(config, run, {"steps=10"}), kExitFailed);
  EXPECT_NE(ReadFileOrEmpty(run + ".log").find("truncated or corrupted"), std::string::npos)
      << ReadFileOrEmpty(run + ".log");
}

TEST_F(SweepTrainTest, ResumeWithAnotherModelIsRefused) {
  const std::string config = WriteConfig(kTinyConfig);
  const std::string run = dir_ + "/run";
  ASSERT_EQ(Train(config, run, {"steps=5"}), kExitCompleted);
  EXPECT_EQ(Train(config, run, {"steps=10", "model.n_layers=3"}), kExitFailed);
  EXPECT_NE(ReadFileOrEmpty(run + ".log").find("different model"), std::string::npos);
}

TEST_F(SweepTrainTest, ConfigErrorsNameFileLineAndKey) {
  struct Case {
    std::string yaml;
    std::vector<std::string> extra;
    std::string expected;
  } cases[] = {
      {"steps: 10\nmodel:\n  dimm: 32\n", {}, "config.yaml:3:3: model.dimm: unknown key"},
      {"steps: ten\n", {}, "config.yaml:1:8: steps: expected an integer, got 'ten'"},
      {"optim: {lr: -1}\ndata: {sources: {kjv: 1.0}}\n", {}, "config.yaml:1:9: optim.lr: must be"},
      {std::string(kTinyConfig), {"model.n_heads=3"}, "model.n_heads: must divide model.dim"},
      {std::string(kTinyConfig), {"optim.nope=1"}, "optim.nope: unknown key"},
      {"steps: [1, 2\n", {}, "config.yaml:2:1: invalid YAML"},
  };
  for (const Case& c : cases) {
    const std::string config = WriteConfig(c.yaml);
    const std::string run = dir_ + "/bad";
    fs::remove(run + ".log");
    EXPECT_EQ(Train(config, run, c.extra), kExitUsage) << c.yaml;
    EXPECT_NE(ReadFileOrEmpty(run + ".log").find(c.expected), std::string::npos)
        << "want: " << c.expected << "\ngot: " << ReadFileOrEmpty(run + ".log");
  }
}

TEST_F(SweepTrainTest, MissingCorpusNamesThePathAndTheFix) {
  const std::string config = WriteConfig(kTinyConfig);
  const std::string run = dir_ + "/run";
  EXPECT_EQ(Train(config, run, {"data.root_dir=" + dir_ + "/nowhere"}), kExitFailed);
  const std::string log = ReadFileOrEmpty(run + ".log");
  EXPECT_NE(log.find(dir_ + "/nowhere/kjv"), std::string::npos) << log;
  EXPECT_NE(log.find("setup.sh"), std::string::npos) << log;
}

// The issue's target: 2 layers, dim 128, seq 128, batch 16, lr 3e-3, warmup 30 on the bundled
// corpus reaches a validation loss below 1.9 nats/byte within 300 steps.
TEST_F(SweepTrainTest, SmallModelLearnsTheBundledCorpus) {
  const std::string run = dir_ + "/kjv";
  ASSERT_EQ(Train(std::string(SWEEP_SOURCE_DIR) + "/worker/trainer/configs/kjv_2x128.yaml", run,
                  {"threads=2"}),
            kExitCompleted)
      << ReadFileOrEmpty(run + ".log");
  double final_val = NAN;
  for (const json& r : Records(run + "/metrics.jsonl")) {
    if (r.contains("loss/val") && r["global_step"].get<int64_t>() == 300) {
      final_val = r["loss/val"].get<double>();
    }
  }
  std::printf("final validation loss after 300 steps: %.4f nats/byte\n", final_val);
  EXPECT_LT(final_val, 1.9);
}

}  // namespace
}  // namespace sweep::trainer
