// sweepd + sweep-worker + sweep-train as real processes on loopback: a small sweep runs to
// the end, every step's metrics land in the database, checkpoints are reported, and a
// divergent trial is recorded as diverged. Then a worker killed mid-trial (SIGKILL) takes its
// child down with it, and the trial is requeued and resumed by a second worker.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>

#include <filesystem>
#include <fstream>

#include "proto/sweep.grpc.pb.h"
#include "tests/testing/sqlite.h"
#include "tests/testing/subprocess.h"
#include "worker/trainer/config.h"

namespace sweep {
namespace {
namespace fs = std::filesystem;
using sweep::testing::MakeTempDir;
using sweep::testing::QueryScalar;
using sweep::testing::ReadFileOrEmpty;
using sweep::testing::Subprocess;
using sweep::testing::WaitFor;

class WorkerE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(fs::path(trainer::DefaultDataRoot()) / "kjv"))
        << "run tools/setup.sh to prepare the corpus";
    dir_ = MakeTempDir("worker-e2e");
    sweepd_ = std::make_unique<Subprocess>(
        std::vector<std::string>{SWEEPD_BIN, "--db", dir_ + "/sweep.db", "--listen", "127.0.0.1:0",
                                 "--port-file", dir_ + "/port", "--lease-ttl", "6"},
        "", dir_ + "/sweepd.log");
    ASSERT_TRUE(WaitFor([&] { return fs::exists(dir_ + "/port"); }, std::chrono::seconds(30)));
    target_ = "127.0.0.1:" + std::to_string(std::stoi(ReadFileOrEmpty(dir_ + "/port")));
    stub_ = v1::Orchestrator::NewStub(grpc::CreateChannel(target_, grpc::InsecureChannelCredentials()));
  }

  std::unique_ptr<Subprocess> StartWorker(const std::string& name, int slots) {
    return std::make_unique<Subprocess>(
        std::vector<std::string>{WORKER_BIN, "--orchestrator", target_, "--name", name,
                                 "--workdir", dir_ + "/work", "--cpu-slots", std::to_string(slots),
                                 "--sweep-train", SWEEP_TRAIN_BIN, "--heartbeat", "1"},
        "", dir_ + "/" + name + ".log");
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

  std::string SweepState(const std::string& name) {
    v1::SweepRef ref;
    ref.set_sweep(name);
    v1::Sweep sweep;
    grpc::ClientContext ctx;
    return stub_->GetSweep(&ctx, ref, &sweep).ok() ? sweep.state() : "";
  }

  std::string Db(const std::string& sql) {
    sqlite3* db = nullptr;
    sqlite3_open_v2((dir_ + "/sweep.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
    const std::string out = QueryScalar(db, sql);
    sqlite3_close(db);
    return out;
  }

  std::string dir_, target_;
  std::unique_ptr<Subprocess> sweepd_;
  std::unique_ptr<v1::Orchestrator::Stub> stub_;
};

TEST_F(WorkerE2eTest, RunsASweepAndRecordsEveryStep) {
  Submit(R"(name: small
method: grid
base:
  steps: 30
  model: {dim: 32, n_layers: 1, n_heads: 2, multiple_of: 32}
  optim: {warmup: 5}
  data: {sources: {kjv: 1.0}, batch_size: 4, seq_len: 32}
  eval: {steps: 2}
  checkpoint: {every: 10}
parameters:
  optim.lr: {values: [3.0e-3, 10]}
)");
  auto worker = StartWorker("w1", 2);
  ASSERT_TRUE(WaitFor([&] { return SweepState("small") == "completed"; }, std::chrono::seconds(180)))
      << ReadFileOrEmpty(dir_ + "/w1.log") << ReadFileOrEmpty(dir_ + "/sweepd.log");
  worker->Signal(SIGTERM);
  EXPECT_EQ(worker->Wait(), 0);
  // lr 3e-3 completes; lr 10 diverges (loss above 2 ln V) and is recorded as such.
  EXPECT_EQ(Db("SELECT state FROM trials WHERE trial_key = 'optim.lr=0.003'"), "completed");
  EXPECT_EQ(Db("SELECT state FROM trials WHERE trial_key = 'optim.lr=10'"), "diverged");
  EXPECT_NE(Db("SELECT diverged_step FROM trials WHERE trial_key = 'optim.lr=10'"), "");
  EXPECT_EQ(Db("SELECT COUNT(*) FROM metrics m JOIN trials t ON t.id = m.trial_id "
               "WHERE t.trial_key = 'optim.lr=0.003' AND m.name = 'loss/out'"),
            "30");
  EXPECT_EQ(Db("SELECT COUNT(DISTINCT name) > 5 FROM metrics WHERE name LIKE 'grad_norm/%' OR "
               "name LIKE 'optim/%' OR name LIKE 'loss/%'"),
            "1");
  EXPECT_NE(Db("SELECT final_metric FROM trials WHERE trial_key = 'optim.lr=0.003'"), "");
  EXPECT_EQ(Db("SELECT checkpoint_step FROM trials WHERE trial_key = 'optim.lr=0.003'"), "30");
}

TEST_F(WorkerE2eTest, AKilledWorkersTrialIsRequeuedAndResumedFromItsCheckpoint) {
  Submit(R"(name: resume
method: grid
base:
  steps: 400
  model: {dim: 32, n_layers: 1, n_heads: 2, multiple_of: 32}
  optim: {warmup: 5}
  data: {sources: {kjv: 1.0}, batch_size: 4, seq_len: 32}
  eval: {steps: 2}
  checkpoint: {every: 20}
parameters:
  optim.lr: {values: [3.0e-3]}
)");
  auto first = StartWorker("w-first", 1);
  ASSERT_TRUE(WaitFor([&] { return !Db("SELECT checkpoint_step FROM trials").empty(); },
                      std::chrono::seconds(120)))
      << ReadFileOrEmpty(dir_ + "/w-first.log");
  first->Signal(SIGKILL);  // The worker dies; PR_SET_PDEATHSIG takes sweep-train with it.
  first->Wait();
  auto orphans = [&] {
    int found = 0;
    for (const auto& entry : fs::directory_iterator("/proc")) {
      const std::string cmdline = ReadFileOrEmpty(entry.path().string() + "/cmdline");
      found += cmdline.find(dir_ + "/work/resume") != std::string::npos ? 1 : 0;
    }
    return found;
  };
  EXPECT_TRUE(WaitFor([&] { return orphans() == 0; }, std::chrono::seconds(10)))
      << "sweep-train outlived its worker";
  auto second = StartWorker("w-second", 1);
  ASSERT_TRUE(WaitFor([&] { return SweepState("resume") == "completed"; }, std::chrono::seconds(240)))
      << ReadFileOrEmpty(dir_ + "/w-second.log");
  second->Signal(SIGTERM);
  second->Wait();
  EXPECT_EQ(Db("SELECT state || '/' || attempt FROM trials"), "completed/2");
  EXPECT_EQ(Db("SELECT COUNT(*) FROM events WHERE kind = 'requeued'"), "1");
  EXPECT_NE(Db("SELECT detail FROM events WHERE kind = 'leased' ORDER BY id DESC LIMIT 1")
                .find("resumes from"),
            std::string::npos);
  // Every step of the loss is stored exactly once.
  EXPECT_EQ(Db("SELECT COUNT(*) FROM metrics WHERE name = 'loss/out'"), "400");
  EXPECT_EQ(Db("SELECT MIN(step) || '-' || MAX(step) FROM metrics WHERE name = 'loss/out'"), "1-400");
}

}  // namespace
}  // namespace sweep
