// Early termination end to end: sweepd + one sweep-worker + sweep-train as real processes on
// loopback, tiny models (dim 32, 1 layer, batch 4, seq 32).
//
//   * `early_terminate: [{type: divergence}]`: a trial at lr 3 (its loss climbs above its
//     initial loss after warmup; the trainer's own divergence check is off) is detected by
//     sweepd on ingest, stopped through the heartbeat long before its last step, and ends
//     `diverged` with the step and the reason.
//   * `[{type: divergence}, {type: asha}]` on loss/val: the first (and best) trial runs to the
//     end; the worse ones are stopped at the first rung with a checkpoint; no healthy trial is
//     taken for diverged; `retry` runs a stopped one to the end.
// The trainer runs 100-500 steps a second here; the worker heartbeats every 0.2 s and flushes
// metrics every 0.5 s, so a stop lands within a few hundred steps of the decision: 1000 steps
// leave room.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "proto/sweep.grpc.pb.h"
#include "tests/testing/sqlite.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/tiny_spec.h"
#include "worker/trainer/config.h"

namespace sweep {
namespace {
namespace fs = std::filesystem;
using std::chrono::seconds;
using sweep::testing::MakeTempDir;
using sweep::testing::QueryScalar;
using sweep::testing::ReadFileOrEmpty;
using sweep::testing::Subprocess;
using sweep::testing::WaitFor;

// The trainer's own divergence check is off, so only sweepd's detection can end a trial early.
// The tiny builtin trial (tests/testing/tiny_spec.h) ranked by loss/val, evaluated every 25
// steps, with the loss-factor divergence rule off; `extra`: top-level lines after the
// parameters.
std::string Spec(const std::string& name, int steps, const std::string& lrs,
                 const std::string& extra) {
  sweep::testing::TinySpec spec;
  spec.name = name;
  spec.steps = steps;
  spec.lrs = lrs;
  spec.checkpoint_every = 50;
  spec.eval_every = 25;
  spec.header = "metric: {name: loss/val, goal: minimize}\n";
  spec.base = "  divergence: {loss_factor: 0}\n";
  spec.tail = extra;
  return sweep::testing::TinyBuiltinSpec(spec);
}

class EarlyTerminationE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(fs::path(trainer::DefaultDataRoot()) / "kjv"))
        << "run tools/setup.sh to prepare the corpus";
    dir_ = MakeTempDir("early-termination-e2e");
    sweepd_ = std::make_unique<Subprocess>(
        std::vector<std::string>{SWEEPD_BIN, "--db", dir_ + "/sweep.db", "--listen", "127.0.0.1:0",
                                 "--port-file", dir_ + "/port", "--lease-ttl", "10"},
        "", dir_ + "/sweepd.log");
    ASSERT_TRUE(WaitFor([&] { return !ReadFileOrEmpty(dir_ + "/port").empty(); }, seconds(30)));
    const std::string target = "127.0.0.1:" + ReadFileOrEmpty(dir_ + "/port");
    stub_ =
        v1::Orchestrator::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
    worker_ = std::make_unique<Subprocess>(
        std::vector<std::string>{WORKER_BIN, "--orchestrator", target, "--name", "w1", "--workdir",
                                 dir_ + "/work", "--sweep-train", SWEEP_TRAIN_BIN, "--heartbeat",
                                 "0.2", "--cpu-slots", "1", "--threads-per-trial", "1", "--gpus",
                                 "none"},
        "", dir_ + "/worker.log");
  }

  void TearDown() override {
    worker_.reset();
    sweepd_.reset();
    if (HasFailure()) {
      std::cerr << "--- sweepd.log\n" << ReadFileOrEmpty(dir_ + "/sweepd.log");
      std::cerr << "--- worker.log\n" << ReadFileOrEmpty(dir_ + "/worker.log");
      std::cerr << "--- events\n"
                << Db("SELECT group_concat(trial_id || ' ' || kind || ': ' || detail, "
                      "char(10)) FROM events");
    }
  }

  void Submit(const std::string& spec) {
    v1::SubmitSweepRequest req;
    req.set_spec_yaml(spec);
    req.set_origin("test.yaml");
    v1::SubmitSweepResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->SubmitSweep(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }

  bool SweepEnds(const std::string& name, seconds timeout) {
    return WaitFor(
        [&] { return Db("SELECT state FROM sweeps WHERE name = '" + name + "'") == "completed"; },
        timeout);
  }

  std::string Db(const std::string& sql) { return sweep::testing::QueryScalarAt(dir_ + "/sweep.db", sql); }

  // A column of the trial with this lr (a number, compared as one).
  std::string Trial(const std::string& lr, const std::string& column) {
    return Db("SELECT " + column +
              " FROM trials WHERE json_extract(params, '$.\"optim.lr\"') = " + lr);
  }

  // How the worker saw the attempt end (attempt.json).
  nlohmann::json AttemptInfo(const std::string& sweep, const std::string& lr, int attempt = 1) {
    const std::string path = dir_ + "/work/" + sweep + "/" + Trial(lr, "id") + "/attempt-" +
                             std::to_string(attempt) + "/attempt.json";
    return nlohmann::json::parse(ReadFileOrEmpty(path), nullptr, false);
  }

  std::string dir_;
  std::unique_ptr<Subprocess> sweepd_, worker_;
  std::unique_ptr<v1::Orchestrator::Stub> stub_;
};

TEST_F(EarlyTerminationE2eTest, DivergenceStopsAHighLrTrialAsDivergedWithTheReason) {
  constexpr int kSteps = 1000;
  Submit(Spec("div", kSteps, "3.0", "early_terminate: [{type: divergence}]\n"));
  ASSERT_TRUE(SweepEnds("div", seconds(120)));

  // lr 3: its loss climbs above the initial loss right after warmup (5 steps); sweepd sees
  // it on ingest, asks for the stop, and the trial ends diverged long before its last step.
  EXPECT_EQ(Trial("3", "state"), "diverged");
  const int diverged_step = std::stoi(Trial("3", "diverged_step"));
  EXPECT_GT(diverged_step, 5);
  EXPECT_LT(diverged_step, 50);
  EXPECT_EQ(Trial("3", "divergence_step"), std::to_string(diverged_step));
  const std::string error = Trial("3", "error");
  EXPECT_EQ(error.rfind("divergence: loss/out = ", 0), 0u) << error;
  EXPECT_NE(error.find("above the initial loss"), std::string::npos) << error;
  EXPECT_LT(std::stoi(Trial("3", "last_step")), kSteps);
  EXPECT_NE(Db("SELECT detail FROM events WHERE kind = 'divergence_detected' AND trial_id = " +
               Trial("3", "id")),
            "");
  // The trainer was stopped by the worker on sweepd's request (SIGTERM, checkpoint, exit 4).
  const nlohmann::json info = AttemptInfo("div", "3");
  EXPECT_EQ(info.value("outcome", ""), "STOPPED") << info.dump();
  EXPECT_EQ(info.value("exit_code", -1), 4) << info.dump();
  EXPECT_NE(Trial("3", "checkpoint"), "");
}

TEST_F(EarlyTerminationE2eTest, AshaStopsTheWorseTrialsAtARungAndTheBestRunsToTheEnd) {
  constexpr int kSteps = 1000;
  // Rungs at 50, 150 and 450; loss/val every 25 steps. One slot: the trials run in grid order,
  // the best (lr 1e-2) first, so it reaches every rung first and runs to the end.
  Submit(Spec("asha", kSteps, "1.0e-2, 1.0e-4, 3.0e-5",
              "early_terminate: [{type: divergence}, {type: asha, min_steps: 50, eta: 3}]\n"));
  ASSERT_TRUE(SweepEnds("asha", seconds(180)));

  EXPECT_EQ(Trial("1e-2", "state"), "completed");
  EXPECT_EQ(Trial("1e-2", "last_step"), std::to_string(kSteps));
  EXPECT_EQ(Db("SELECT group_concat(decision) FROM rungs WHERE trial_id = " + Trial("1e-2", "id")),
            "continue,continue,continue");
  EXPECT_EQ(Db("SELECT COUNT(*) FROM trials WHERE divergence_step IS NOT NULL"), "0");
  for (const char* lr : {"1e-4", "3e-5"}) {
    EXPECT_EQ(Trial(lr, "state"), "stopped") << lr;
    const std::string error = Trial(lr, "error");
    EXPECT_EQ(error.rfind("asha: rung 0 at step 50, loss/val ", 0), 0u) << error;
    // Second of 2 for lr 1e-4; second of 3 for 3e-5 (the stopped 1e-4 ranks last).
    EXPECT_NE(error.find(", not in top 1/3 (rank 2 of "), std::string::npos) << error;
    EXPECT_LT(std::stoi(Trial(lr, "last_step")), kSteps) << lr;
    EXPECT_NE(Trial(lr, "checkpoint"), "") << lr;  // Stopped with a checkpoint.
    EXPECT_EQ(AttemptInfo("asha", lr).value("outcome", ""), "STOPPED") << lr;
  }

  // sweepctl retry: the stopped trial continues from its checkpoint to the end.
  const std::string retried = Trial("1e-4", "id");
  const int stopped_at = std::stoi(Trial("1e-4", "last_step"));
  v1::TrialRef ref;
  ref.set_trial_id(std::stoll(retried));
  v1::Trial trial;
  grpc::ClientContext ctx;
  grpc::Status s = stub_->RetryTrial(&ctx, ref, &trial);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_TRUE(SweepEnds("asha", seconds(180)));
  EXPECT_EQ(Trial("1e-4", "state"), "completed");
  EXPECT_EQ(Trial("1e-4", "attempt"), "2");
  EXPECT_EQ(Trial("1e-4", "last_step"), std::to_string(kSteps));
  EXPECT_NE(Db("SELECT detail FROM events WHERE kind = 'leased' AND trial_id = " + retried +
               " ORDER BY id DESC LIMIT 1")
                .find("resumes from"),
            std::string::npos);
  // Every step of the loss is stored once: the resumed attempt filled in after the stop.
  EXPECT_EQ(Db("SELECT COUNT(*) || ' ' || MIN(step) || ' ' || MAX(step) FROM metrics WHERE "
               "name = 'loss/out' AND trial_id = " +
               retried),
            std::to_string(kSteps) + " 1 " + std::to_string(kSteps));
  EXPECT_GT(kSteps, stopped_at);
}

}  // namespace
}  // namespace sweep
