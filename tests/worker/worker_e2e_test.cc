// sweepd + sweep-worker + sweep-train (or a command trial) as real processes on loopback.
//
// What the worker promises, each checked against the database and the process table:
//   * a sweep runs to the end and every step's metrics land exactly once;
//   * a worker killed mid-trial (SIGKILL) takes its child down with it; its trial requeues,
//     resumes on the other worker from its last checkpoint, and its loss trace equals an
//     uninterrupted run of the same trial;
//   * sweepd killed and restarted 10 s later: workers train on, buffer, deliver; nothing is
//     lost or run twice;
//   * command trials (a Lingua-like script) report Lingua's metrics; a crashing command is
//     retried up to max_attempts, then fails with its stderr;
//   * GPUs are handed out one trial at a time (CUDA_VISIBLE_DEVICES, ${gpus}), or up to
//     --trials-per-gpu at once, with GPU telemetry from nvidia-smi (a stand-in script here);
//   * a data-parallel trial runs a process per rank with torchrun's environment; a rank that
//     crashes fails the attempt, the other ranks are stopped, and the retry completes;
//   * cancel stops a trial with a checkpoint; SIGTERM hands running trials back; no process
//     outlives the worker; a restarted worker releases what it held at once.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "proto/sweep.grpc.pb.h"
#include "tests/testing/sqlite.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/tiny_spec.h"
#include "worker/trainer/config.h"

namespace sweep {
namespace {
namespace fs = std::filesystem;
using sweep::testing::MakeTempDir;
using sweep::testing::QueryScalar;
using sweep::testing::ReadFileOrEmpty;
using sweep::testing::Subprocess;
using sweep::testing::WaitFor;
using std::chrono::seconds;

// The tiny builtin trial (tests/testing/tiny_spec.h), a checkpoint every 20 steps; `extra`:
// top-level lines after the parameters.
std::string BuiltinSpec(const std::string& name, int steps, const std::string& lrs,
                        const std::string& extra = "") {
  sweep::testing::TinySpec spec;
  spec.name = name;
  spec.steps = steps;
  spec.lrs = lrs;
  spec.tail = extra;
  return sweep::testing::TinyBuiltinSpec(spec);
}

class WorkerE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(fs::path(trainer::DefaultDataRoot()) / "kjv"))
        << "run tools/setup.sh to prepare the corpus";
    dir_ = MakeTempDir("worker-e2e");
  }

  void TearDown() override {
    for (auto& [name, worker] : workers_) worker.reset();
    sweepd_.reset();
    if (HasFailure()) {
      std::cerr << "--- sweepd.log\n" << ReadFileOrEmpty(dir_ + "/sweepd.log");
      for (const auto& entry : fs::directory_iterator(dir_)) {
        if (entry.path().extension() == ".log" && entry.path().filename() != "sweepd.log") {
          std::cerr << "--- " << entry.path().filename() << "\n" << ReadFileOrEmpty(entry.path());
        }
      }
    }
  }

  void StartSweepd(double lease_ttl, const std::string& listen = "127.0.0.1:0",
                   std::vector<std::string> extra = {}) {
    fs::remove(dir_ + "/port");
    std::vector<std::string> argv = {SWEEPD_BIN, "--db", dir_ + "/sweep.db", "--listen", listen,
                                     "--port-file", dir_ + "/port", "--lease-ttl",
                                     std::to_string(lease_ttl)};
    argv.insert(argv.end(), extra.begin(), extra.end());
    sweepd_ = std::make_unique<Subprocess>(argv, "", dir_ + "/sweepd.log");
    ASSERT_TRUE(WaitFor([&] { return !ReadFileOrEmpty(dir_ + "/port").empty(); }, seconds(30)));
    port_ = std::stoi(ReadFileOrEmpty(dir_ + "/port"));
    target_ = "127.0.0.1:" + std::to_string(port_);
    stub_ = v1::Orchestrator::NewStub(grpc::CreateChannel(target_, grpc::InsecureChannelCredentials()));
  }

  Subprocess& StartWorker(const std::string& name, std::vector<std::string> extra = {"--cpu-slots", "1"}) {
    std::vector<std::string> argv = {WORKER_BIN, "--orchestrator", target_, "--name", name,
                                     "--workdir", dir_ + "/work", "--sweep-train", SWEEP_TRAIN_BIN,
                                     "--heartbeat", "1"};
    if (std::find(extra.begin(), extra.end(), "--gpus") == extra.end()) {
      extra.insert(extra.end(), {"--gpus", "none"});  // Whatever this machine has.
    }
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto& slot = workers_[name];
    slot.reset();
    slot = std::make_unique<Subprocess>(argv, "", dir_ + "/" + name + ".log");
    return *slot;
  }

  void Submit(const std::string& spec) {
    v1::SubmitSweepRequest req;
    req.set_spec_yaml(spec);
    req.set_origin("test.yaml");
    v1::SubmitSweepResponse resp;
    grpc::ClientContext ctx;
    if (!token_.empty()) ctx.AddMetadata("authorization", "Bearer " + token_);
    grpc::Status s = stub_->SubmitSweep(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }

  bool SweepEnds(const std::string& name, seconds timeout) {
    return WaitFor([&] { return Db("SELECT state FROM sweeps WHERE name = '" + name + "'") == "completed"; },
                   timeout);
  }

  std::string Db(const std::string& sql) { return sweep::testing::QueryScalarAt(dir_ + "/sweep.db", sql); }

  // Processes whose command line mentions this test's work directory.
  int ProcessesUnderWorkdir() { return sweep::testing::LiveProcessesMentioning(dir_ + "/work"); }

  // A trial's stored loss/out by step.
  std::map<int64_t, double> StoredLosses(const std::string& trial_id) {
    std::map<int64_t, double> out;
    sqlite3* db = nullptr;
    sqlite3_open_v2((dir_ + "/sweep.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(db, ("SELECT step, value FROM metrics WHERE name = 'loss/out' AND trial_id = " + trial_id).c_str(),
                       -1, &st, nullptr);
    while (sqlite3_step(st) == SQLITE_ROW) out[sqlite3_column_int64(st, 0)] = sqlite3_column_double(st, 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return out;
  }

  // The same trial run start to end by sweep-train alone.
  std::map<int64_t, double> UninterruptedLosses(const std::string& trial_id) {
    const std::string run = dir_ + "/reference-" + trial_id;
    fs::create_directories(run);
    std::ofstream(run + "/config.yaml") << Db("SELECT config FROM trials WHERE id = " + trial_id);
    EXPECT_EQ(sweep::testing::Run({SWEEP_TRAIN_BIN, "--config", run + "/config.yaml", "--dump-dir",
                                   run, "threads=1"},
                                  "", run + "/stderr.log"),
              0);
    std::ifstream in(run + "/metrics.jsonl");
    std::map<int64_t, double> out;
    for (std::string line; std::getline(in, line);) {
      nlohmann::json record = nlohmann::json::parse(line);
      if (record.contains("loss/out")) out[record["global_step"].get<int64_t>()] = record["loss/out"].get<double>();
    }
    return out;
  }

  std::string dir_, target_, token_;
  int port_ = 0;
  std::unique_ptr<Subprocess> sweepd_;
  std::map<std::string, std::unique_ptr<Subprocess>> workers_;
  std::unique_ptr<v1::Orchestrator::Stub> stub_;
};

TEST_F(WorkerE2eTest, RunsASweepAndRecordsEveryStep) {
  StartSweepd(6);
  Submit(BuiltinSpec("small", 30, "3.0e-3, 10"));
  Subprocess& worker = StartWorker("w1", {"--cpu-slots", "2"});
  ASSERT_TRUE(SweepEnds("small", seconds(180)));
  worker.Signal(SIGTERM);
  EXPECT_EQ(worker.Wait(), 0);
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
  // The final and best loss/val (the spec's default metric) and the last checkpoint.
  const std::string final_val = Db(
      "SELECT value FROM metrics m JOIN trials t ON t.id = m.trial_id WHERE t.trial_key = "
      "'optim.lr=0.003' AND m.name = 'loss/val' ORDER BY step DESC LIMIT 1");
  EXPECT_EQ(Db("SELECT final_metric FROM trials WHERE trial_key = 'optim.lr=0.003'"), final_val);
  EXPECT_EQ(Db("SELECT best_metric = (SELECT MIN(value) FROM metrics m WHERE m.trial_id = t.id AND "
               "m.name = 'loss/val') FROM trials t WHERE trial_key = 'optim.lr=0.003'"),
            "1");
  EXPECT_EQ(Db("SELECT checkpoint_step FROM trials WHERE trial_key = 'optim.lr=0.003'"), "30");
  // Each attempt's folder has what it promises.
  const std::string attempt = dir_ + "/work/small/" +
                              Db("SELECT id FROM trials WHERE trial_key = 'optim.lr=0.003'") + "/attempt-1";
  for (const char* file : {"config.yaml", "stdout.log", "stderr.log", "metrics.jsonl", "attempt.json"}) {
    EXPECT_TRUE(fs::exists(attempt + "/" + file)) << file;
  }
  nlohmann::json info = nlohmann::json::parse(ReadFileOrEmpty(attempt + "/attempt.json"));
  EXPECT_EQ(info["exit_code"], 0);
  EXPECT_EQ(info["outcome"], "COMPLETED");
}

TEST_F(WorkerE2eTest, AKilledWorkersTrialResumesOnTheOtherWorkerAndMatchesAnUninterruptedRun) {
  StartSweepd(5);
  Submit(BuiltinSpec("kill", 300, "1.0e-3, 2.0e-3, 3.0e-3, 4.0e-3, 5.0e-3, 6.0e-3, 7.0e-3, 8.0e-3"));
  Subprocess& doomed = StartWorker("w-doomed");
  StartWorker("w-survivor");
  // Kill the worker once one of its trials is past a checkpoint and still running.
  std::string victim;
  ASSERT_TRUE(WaitFor(
      [&] {
        victim = Db("SELECT t.id FROM trials t JOIN workers w ON w.id = t.worker_id WHERE "
                    "w.name = 'w-doomed' AND t.state = 'running' AND t.checkpoint_step >= 40 "
                    "AND t.checkpoint_step <= 200");
        return !victim.empty();
      },
      seconds(120)));
  doomed.Signal(SIGKILL);  // PR_SET_PDEATHSIG takes its sweep-train down too.
  doomed.Wait();
  EXPECT_TRUE(WaitFor([&] { return ProcessesUnderWorkdir() <= 1; }, seconds(10)))
      << "the doomed worker's sweep-train outlived it";
  ASSERT_TRUE(SweepEnds("kill", seconds(300)));
  EXPECT_EQ(Db("SELECT COUNT(*) FROM trials WHERE state = 'completed'"), "8");
  EXPECT_EQ(Db("SELECT attempt FROM trials WHERE id = " + victim), "2");
  EXPECT_NE(Db("SELECT detail FROM events WHERE kind = 'leased' AND trial_id = " + victim +
               " ORDER BY id DESC LIMIT 1")
                .find("resumes from"),
            std::string::npos);
  // Every trial has each step of the loss exactly once (the key makes a second copy
  // impossible, so count the steps: none missing)...
  EXPECT_EQ(Db("SELECT COUNT(*) FROM (SELECT trial_id FROM metrics WHERE name = 'loss/out' "
               "GROUP BY trial_id HAVING COUNT(*) = 300 AND MIN(step) = 1 AND MAX(step) = 300)"),
            "8");
  // ...and the resumed trial's trace is the uninterrupted run's, to the last bit.
  const std::map<int64_t, double> stored = StoredLosses(victim), reference = UninterruptedLosses(victim);
  ASSERT_EQ(stored.size(), 300u);
  ASSERT_EQ(reference.size(), 300u);
  int mismatches = 0;
  for (const auto& [step, value] : reference) {
    if (stored.at(step) != value && mismatches++ < 5) {
      ADD_FAILURE() << "step " << step << ": stored " << stored.at(step) << ", uninterrupted " << value;
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST_F(WorkerE2eTest, SweepdKilledAndRestartedLosesNothingAndRunsNothingTwice) {
  StartSweepd(30);
  const std::string listen = target_;
  Submit(BuiltinSpec("outage", 400, "1.0e-3, 2.0e-3, 3.0e-3, 4.0e-3"));
  StartWorker("w1");
  StartWorker("w2");
  ASSERT_TRUE(WaitFor([&] { return !Db("SELECT 1 FROM trials WHERE checkpoint_step >= 20").empty(); },
                      seconds(120)));
  sweepd_->Signal(SIGKILL);
  sweepd_->Wait();
  std::this_thread::sleep_for(seconds(10));  // The workers train on, with sweepd gone.
  StartSweepd(30, listen);
  ASSERT_TRUE(SweepEnds("outage", seconds(240)));
  EXPECT_EQ(Db("SELECT COUNT(*) FROM trials WHERE state = 'completed' AND attempt = 1"), "4");
  EXPECT_EQ(Db("SELECT COUNT(*) FROM events WHERE kind IN ('requeued', 'released')"), "0");
  EXPECT_EQ(Db("SELECT COUNT(*) FROM (SELECT trial_id FROM metrics WHERE name = 'loss/out' "
               "GROUP BY trial_id HAVING COUNT(*) = 400 AND MIN(step) = 1 AND MAX(step) = 400)"),
            "4");
  EXPECT_EQ(Db("PRAGMA integrity_check"), "ok");
}

TEST_F(WorkerE2eTest, CommandTrialsReportLinguaMetricsAndCrashesAreRetriedThenFailed) {
  StartSweepd(10);
  Submit(std::string(R"(name: lingua
method: grid
metric: {name: loss/out, goal: minimize}
trainer:
  command: [/usr/bin/python3, ")") + SWEEP_SOURCE_DIR + R"(/tests/worker/fixtures/lingua_like_train.py",
            "config=${config}", --params, "${params}", --gpus, "${gpus}"]
base:
  steps: 20
  optim: {lr: 0.1}
parameters:
  optim.lr: {values: [0.1, 0.2, 0.5, 2.0]}
max_attempts: 2
)");
  StartWorker("w1", {"--cpu-slots", "2"});
  ASSERT_TRUE(SweepEnds("lingua", seconds(120)));
  // Lingua's keys, one row per step.
  for (const char* lr : {"0.1", "0.2"}) {
    const std::string trial = Db(std::string("SELECT id FROM trials WHERE trial_key = 'optim.lr=") + lr + "'");
    EXPECT_EQ(Db("SELECT state FROM trials WHERE id = " + trial), "completed");
    for (const char* name : {"loss/out", "optim/grad_norm", "optim/lr", "speed/wps"}) {
      EXPECT_EQ(Db("SELECT COUNT(DISTINCT step) FROM metrics WHERE trial_id = " + trial +
                   " AND name = '" + name + "'"),
                "20")
          << name;
    }
    EXPECT_EQ(Db("SELECT COUNT(*) FROM metrics WHERE trial_id = " + trial + " AND name IN ('acc_step', 'global_step')"), "0");
    const double expected = 4.0 * std::exp(-std::stod(lr) * 20) + 1.0;
    EXPECT_NEAR(std::stod(Db("SELECT final_metric FROM trials WHERE id = " + trial)), expected, 1e-12);
    // ${params} and ${config} reached the command.
    nlohmann::json seen = nlohmann::json::parse(
        ReadFileOrEmpty(dir_ + "/work/lingua/" + trial + "/attempt-1/seen.json"));
    EXPECT_DOUBLE_EQ(seen["params"]["optim.lr"].get<double>(), std::stod(lr));
    EXPECT_EQ(seen["cuda_visible_devices"], "");
    EXPECT_EQ(seen["omp_num_threads"], "1");
  }
  // Python's NaN token is stored as a non-finite value, not dropped or read as a number.
  EXPECT_EQ(Db("SELECT COUNT(*) FROM metrics m JOIN trials t ON t.id = m.trial_id WHERE "
               "t.trial_key = 'optim.lr=0.5' AND m.name = 'loss/out' AND m.nonfinite = 'nan'"),
            "20");
  EXPECT_EQ(Db("SELECT final_metric IS NULL FROM trials WHERE trial_key = 'optim.lr=0.5'"), "1");
  // The crashing command: two attempts, then failed with its own words.
  EXPECT_EQ(Db("SELECT state || '/' || attempt FROM trials WHERE trial_key = 'optim.lr=2'"), "failed/2");
  EXPECT_NE(Db("SELECT error FROM trials WHERE trial_key = 'optim.lr=2'").find("simulated crash at step 4"),
            std::string::npos);
  EXPECT_EQ(Db("SELECT json_array_length(attempt_errors) FROM trials WHERE trial_key = 'optim.lr=2'"), "2");
  EXPECT_EQ(Db("SELECT COUNT(*) FROM metrics m JOIN trials t ON t.id = m.trial_id WHERE "
               "t.trial_key = 'optim.lr=2' AND m.name = 'loss/out'"),
            "3");
}

TEST_F(WorkerE2eTest, GpusAreHandedOutOneTrialAtATime) {
  StartSweepd(10);
  Submit(std::string(R"(name: gpus
method: grid
trainer:
  command: [/usr/bin/python3, ")") + SWEEP_SOURCE_DIR + R"(/tests/worker/fixtures/lingua_like_train.py",
            "config=${config}", --gpus, "${gpus}", --sleep, "0.5"]
base: {steps: 5, optim: {lr: 0.1}}
parameters:
  optim.lr: {values: [0.1, 0.2, 0.3, 0.4, 0.6, 0.7]}
resources: {gpus_per_trial: 1}
)");
  // This machine has no GPU: the worker is told it has two, and the command trials only look
  // at what they were given.
  StartWorker("w-gpu", {"--gpus", "0,1", "--cpu-slots", "0"});
  ASSERT_TRUE(SweepEnds("gpus", seconds(120)));
  EXPECT_EQ(Db("SELECT gpus || '/' || cpu_slots FROM workers WHERE name = 'w-gpu'"), "2/0");
  struct Span {
    double begin, end;
    std::string gpu;
  };
  std::vector<Span> spans;
  std::set<std::string> used;
  for (const auto& trial : fs::directory_iterator(dir_ + "/work/gpus")) {
    const std::string attempt = trial.path().string() + "/attempt-1";
    nlohmann::json seen = nlohmann::json::parse(ReadFileOrEmpty(attempt + "/seen.json"));
    nlohmann::json info = nlohmann::json::parse(ReadFileOrEmpty(attempt + "/attempt.json"));
    EXPECT_EQ(seen["gpus"], seen["cuda_visible_devices"]);
    spans.push_back({info["spawned_at"], info["exited_at"], seen["gpus"]});
    used.insert(seen["gpus"].get<std::string>());
  }
  ASSERT_EQ(spans.size(), 6u);
  EXPECT_EQ(used, (std::set<std::string>{"0", "1"}));
  for (size_t i = 0; i < spans.size(); ++i) {
    for (size_t j = i + 1; j < spans.size(); ++j) {
      const bool overlap = spans[i].begin < spans[j].end && spans[j].begin < spans[i].end;
      if (overlap) EXPECT_NE(spans[i].gpu, spans[j].gpu) << "two trials shared GPU " << spans[i].gpu;
    }
  }
}

// The command of tests/worker/fixtures/ranks_train.py, a data-parallel stand-in.
std::string RanksCommand() {
  return std::string("[/usr/bin/python3, \"") + SWEEP_SOURCE_DIR +
         "/tests/worker/fixtures/ranks_train.py\", \"config=${config}\"]";
}

// When each attempt of a sweep ran (attempt.json) and on which GPUs (what its rank 0 saw).
struct Span {
  double begin, end;
  std::string gpus;
  std::string trial;
};

TEST_F(WorkerE2eTest, DataParallelCommandTrialsRunEveryRankAndARankCrashFailsTheAttempt) {
  StartSweepd(10);
  Submit("name: ranks\nmethod: grid\nmetric: {name: loss/out, goal: minimize}\n"
         "trainer: {command: " + RanksCommand() + "}\n" + R"(base: {steps: 40, step_seconds: 0.05, crash_step: 3, stubborn: 1}
parameters:
  crash_rank: {values: [-1, 1]}
resources: {ranks_per_trial: 2}
max_attempts: 2
)");
  // 3 CPU slots hold one 2-rank trial at a time (a rank takes cpu_slots_per_trial, 1).
  StartWorker("w1", {"--cpu-slots", "3", "--stop-grace", "1"});
  ASSERT_TRUE(SweepEnds("ranks", seconds(90)));
  const std::string healthy = Db("SELECT id FROM trials WHERE trial_key = 'crash_rank=-1'");
  const std::string crashed = Db("SELECT id FROM trials WHERE trial_key = 'crash_rank=1'");
  EXPECT_EQ(Db("SELECT state || '/' || attempt FROM trials WHERE id = " + healthy), "completed/1");
  EXPECT_EQ(Db("SELECT state || '/' || attempt FROM trials WHERE id = " + crashed), "completed/2");
  EXPECT_EQ(Db("SELECT cpu_slots FROM workers"), "3");

  // Every rank got torchrun's environment, the same argv and one thread; one port for all.
  const std::string attempt = dir_ + "/work/ranks/" + healthy + "/attempt-1";
  nlohmann::json info = nlohmann::json::parse(ReadFileOrEmpty(attempt + "/attempt.json"));
  EXPECT_EQ(info["world_size"], 2);
  ASSERT_EQ(info["ranks"].size(), 2u);
  std::set<std::string> ports;
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    nlohmann::json env =
        nlohmann::json::parse(ReadFileOrEmpty(attempt + "/rank" + std::to_string(r) + ".env.json"));
    EXPECT_EQ(env["WORLD_SIZE"], "2");
    EXPECT_EQ(env["RANK"], std::to_string(r));
    EXPECT_EQ(env["LOCAL_RANK"], std::to_string(r));
    EXPECT_EQ(env["LOCAL_WORLD_SIZE"], "2");
    EXPECT_EQ(env["MASTER_ADDR"], "127.0.0.1");
    EXPECT_EQ(env["SWEEP_RENDEZVOUS"], attempt + "/rendezvous");
    EXPECT_EQ(env["rendezvous_existed"], false);
    EXPECT_EQ(env["CUDA_VISIBLE_DEVICES"], "");
    EXPECT_EQ(env["OMP_NUM_THREADS"], "1");
    EXPECT_EQ(env["argv"], nlohmann::json::array({"config=" + attempt + "/config.yaml"}));
    EXPECT_EQ(env["pid"], info["ranks"][r]["pid"]);
    EXPECT_EQ(info["ranks"][r]["exit_code"], 0);
    ports.insert(env["MASTER_PORT"].get<std::string>());
  }
  ASSERT_EQ(ports.size(), 1u);
  EXPECT_GT(std::stoi(*ports.begin()), 0);
  // Rank 0 keeps stdout.log and stderr.log; rank 1 has its own.
  EXPECT_NE(ReadFileOrEmpty(attempt + "/stdout.log").find("rank 0 says hello on stdout"), std::string::npos);
  EXPECT_NE(ReadFileOrEmpty(attempt + "/stderr.log").find("rank 0 says hello on stderr"), std::string::npos);
  EXPECT_NE(ReadFileOrEmpty(attempt + "/rank1.stdout.log").find("rank 1 says hello on stdout"), std::string::npos);
  EXPECT_NE(ReadFileOrEmpty(attempt + "/rank1.stderr.log").find("rank 1 says hello on stderr"), std::string::npos);
  EXPECT_EQ(ReadFileOrEmpty(attempt + "/stdout.log").find("rank 1"), std::string::npos);
  // Only rank 0's metrics, every step once.
  EXPECT_EQ(Db("SELECT COUNT(*) || '/' || MIN(step) || '/' || MAX(step) FROM metrics WHERE name = "
               "'loss/out' AND trial_id = " + healthy),
            "40/1/40");

  // Rank 1 crashed in attempt 1: the attempt failed with its number and its stderr, rank 0
  // (which ignores SIGTERM) was SIGKILLed after --stop-grace, and attempt 2 completed.
  const std::string errors = Db("SELECT attempt_errors FROM trials WHERE id = " + crashed);
  EXPECT_NE(errors.find("rank 1 of 2 exited with status 1"), std::string::npos) << errors;
  EXPECT_NE(errors.find("rank 1 crashed at step 3"), std::string::npos) << errors;
  const std::string failed_attempt = dir_ + "/work/ranks/" + crashed + "/attempt-1";
  nlohmann::json failed = nlohmann::json::parse(ReadFileOrEmpty(failed_attempt + "/attempt.json"));
  EXPECT_EQ(failed["failed_rank"], 1);
  EXPECT_EQ(failed["exit_code"], 1);
  EXPECT_EQ(failed["outcome"], "FAILED");
  EXPECT_EQ(failed["ranks"][1]["exit_code"], 1);
  EXPECT_EQ(failed["ranks"][0]["exit_signal"], SIGKILL);
  const double killed_after = failed["ranks"][0]["exited_at"].get<double>() -
                              failed["ranks"][1]["exited_at"].get<double>();
  EXPECT_GE(killed_after, 0.9);
  EXPECT_LT(killed_after, 10);
  EXPECT_EQ(Db("SELECT COUNT(*) || '/' || MAX(step) FROM metrics WHERE name = 'loss/out' AND trial_id = " + crashed),
            "40/40");

  // One 2-rank trial at a time on 3 slots.
  std::vector<Span> spans;
  for (const std::string& dir : {attempt, failed_attempt, dir_ + "/work/ranks/" + crashed + "/attempt-2"}) {
    nlohmann::json i = nlohmann::json::parse(ReadFileOrEmpty(dir + "/attempt.json"));
    spans.push_back({i["spawned_at"], i["exited_at"], "", dir});
  }
  for (size_t i = 0; i < spans.size(); ++i) {
    for (size_t j = i + 1; j < spans.size(); ++j) {
      EXPECT_FALSE(spans[i].begin < spans[j].end && spans[j].begin < spans[i].end)
          << spans[i].trial << " and " << spans[j].trial << " ran at once on 3 slots";
    }
  }
  EXPECT_EQ(sweep::testing::LiveProcessesMentioning(dir_ + "/work/ranks"), 0)
      << "a rank outlived its trial";
}

// sweep-train's own data-parallel trial (Gloo over a FileStore in the attempt folder): it
// completes with every step stored once; SIGKILL one rank and the attempt fails naming it,
// the other rank is stopped, and the next attempt resumes from the checkpoint.
TEST_F(WorkerE2eTest, ABuiltinTwoRankTrialCompletesAndResumesAfterARankIsKilled) {
  StartSweepd(10);
  Submit(BuiltinSpec("dp", 200, "3.0e-3", "resources: {ranks_per_trial: 2}\nmax_attempts: 3\n"));
  StartWorker("w1", {"--cpu-slots", "2", "--stop-grace", "5"});
  const std::string trial = Db("SELECT id FROM trials");
  ASSERT_TRUE(WaitFor([&] { return Db("SELECT checkpoint_step >= 40 FROM trials") == "1"; }, seconds(120)));
  const std::string attempt = dir_ + "/work/dp/" + trial + "/attempt-1";
  nlohmann::json info = nlohmann::json::parse(ReadFileOrEmpty(attempt + "/attempt.json"));
  ASSERT_EQ(info["ranks"].size(), 2u);
  ASSERT_EQ(Db("SELECT attempt || '/' || (state = 'running') FROM trials"), "1/1") << "finished too soon";
  ::kill(info["ranks"][1]["pid"].get<pid_t>(), SIGKILL);
  ASSERT_TRUE(SweepEnds("dp", seconds(180)));
  EXPECT_EQ(Db("SELECT state || '/' || attempt FROM trials"), "completed/2");
  const std::string errors = Db("SELECT attempt_errors FROM trials");
  EXPECT_NE(errors.find("rank 1 of 2 killed by signal 9"), std::string::npos) << errors;
  EXPECT_NE(Db("SELECT detail FROM events WHERE kind = 'leased' ORDER BY id DESC LIMIT 1").find("resumes from"),
            std::string::npos);
  nlohmann::json failed = nlohmann::json::parse(ReadFileOrEmpty(attempt + "/attempt.json"));
  EXPECT_EQ(failed["failed_rank"], 1);
  EXPECT_TRUE(fs::exists(attempt + "/rank1.stderr.log"));
  // Every step once, from rank 0 alone.
  EXPECT_EQ(Db("SELECT COUNT(*) || '/' || MIN(step) || '/' || MAX(step) FROM metrics WHERE name = 'loss/out'"),
            "200/1/200");
  EXPECT_EQ(sweep::testing::LiveProcessesMentioning(dir_ + "/work/dp"), 0) << "a rank outlived its trial";
}

// A stand-in nvidia-smi for the telemetry query (GPU 0: 1000 MiB, 50 %; GPU 1: 2000 MiB,
// 70 %), first on PATH while a worker starts. The hardware is fake, the worker is not.
class FakeNvidiaSmi {
 public:
  explicit FakeNvidiaSmi(const std::string& dir) : dir_(dir) {
    fs::create_directories(dir_);
    // GPU figures as fixed numbers; as GPU processes, every ranks_train.py (any test's, and
    // their ranks_train_child helpers) with 300 MiB each, one process outside every trial
    // (pid 1) and a line nvidia-smi prints for a process it cannot read.
    std::ofstream(dir_ + "/nvidia-smi")
        << "#!/bin/sh\n"
           "case \"$1\" in\n"
           "--query-gpu=index,memory.used,utilization.gpu) echo '0, 1000, 50'; echo '1, 2000, 70' ;;\n"
           "--query-compute-apps=pid,used_memory)\n"
           "  echo '1, 5000'; echo '[N/A], [N/A]'\n"
           "  for d in /proc/[0-9]*; do\n"
           "    if grep -q ranks_train \"$d/cmdline\" 2>/dev/null; then echo \"${d#/proc/}, 300\"; fi\n"
           "  done ;;\n"
           "*) exit 9 ;;\n"
           "esac\n";
    fs::permissions(dir_ + "/nvidia-smi", fs::perms::owner_all);
    saved_ = getenv("PATH");
    setenv("PATH", (dir_ + ":" + saved_).c_str(), 1);
  }
  ~FakeNvidiaSmi() { setenv("PATH", saved_.c_str(), 1); }

 private:
  std::string dir_, saved_;
};

TEST_F(WorkerE2eTest, SeveralTrialsShareAGpuUpToTrialsPerGpuWithTelemetry) {
  StartSweepd(10);
  Submit("name: share\nmethod: grid\nmetric: {name: loss/out, goal: minimize}\n"
         "trainer: {command: " + RanksCommand() + "}\n" + R"(base: {steps: 20, step_seconds: 0.05}
parameters:
  seed: {values: [1, 2, 3, 4, 5, 6, 7, 8]}
resources: {gpus_per_trial: 1}
)");
  const auto begin = std::chrono::steady_clock::now();
  {
    FakeNvidiaSmi smi(dir_ + "/fake-bin");
    StartWorker("w-gpu", {"--gpus", "0,1", "--trials-per-gpu", "2", "--cpu-slots", "0",
                          "--gpu-telemetry", "0.2"});
  }
  ASSERT_TRUE(SweepEnds("share", seconds(90)));
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  EXPECT_EQ(Db("SELECT labels ->> 'trials_per_gpu' FROM workers"), "2");
  std::vector<Span> spans;
  for (const auto& trial : fs::directory_iterator(dir_ + "/work/share")) {
    const std::string attempt = trial.path().string() + "/attempt-1";
    nlohmann::json env = nlohmann::json::parse(ReadFileOrEmpty(attempt + "/rank0.env.json"));
    nlohmann::json info = nlohmann::json::parse(ReadFileOrEmpty(attempt + "/attempt.json"));
    EXPECT_EQ(env["WORLD_SIZE"], nullptr);  // One GPU: one process, not distributed.
    // Nothing of the worker's leaks in: not its log, not the pipe of an nvidia-smi sample taken
    // while the trial was forked (that pipe kept the sampler waiting for the trial's end).
    EXPECT_EQ(env["inherited_fds"], nlohmann::json::array()) << attempt;
    spans.push_back({info["spawned_at"], info["exited_at"], env["CUDA_VISIBLE_DEVICES"],
                     trial.path().filename().string()});
  }
  ASSERT_EQ(spans.size(), 8u);
  // At each trial's start, the trials running on its GPU (itself included): never above 2,
  // and 2 at some point (the GPU was shared).
  int most_on_a_gpu = 0, most_at_once = 0;
  for (const Span& s : spans) {
    int on_gpu = 0, at_once = 0;
    for (const Span& o : spans) {
      if (o.begin <= s.begin && s.begin < o.end) {
        ++at_once;
        if (o.gpus == s.gpus) ++on_gpu;
      }
    }
    EXPECT_LE(on_gpu, 2) << "GPU " << s.gpus << " held " << on_gpu << " trials at once";
    most_on_a_gpu = std::max(most_on_a_gpu, on_gpu);
    most_at_once = std::max(most_at_once, at_once);
    EXPECT_TRUE(s.gpus == "0" || s.gpus == "1") << s.gpus;
  }
  EXPECT_EQ(most_on_a_gpu, 2);
  std::cout << "8 one-second trials on 2 GPUs x 2: " << elapsed << " s, at most " << most_at_once
            << " at once\n";
  // Telemetry: the GPU's figures at steps the trial reported, at least once per trial.
  for (const Span& s : spans) {
    SCOPED_TRACE("trial " + s.trial + " on GPU " + s.gpus);
    EXPECT_EQ(Db("SELECT COUNT(*) > 0 FROM metrics WHERE name = 'gpu/mem_used_mib' AND trial_id = " + s.trial), "1");
    EXPECT_EQ(Db("SELECT COUNT(DISTINCT value) || '/' || MIN(value) FROM metrics WHERE name = 'gpu/mem_used_mib' "
                 "AND trial_id = " + s.trial),
              s.gpus == "0" ? "1/1000.0" : "1/2000.0");
    EXPECT_EQ(Db("SELECT COUNT(DISTINCT value) || '/' || MIN(value) FROM metrics WHERE name = 'gpu/util_pct' "
                 "AND trial_id = " + s.trial),
              s.gpus == "0" ? "1/50.0" : "1/70.0");
    // Its own process's memory, not its GPU neighbour's, not pid 1's.
    EXPECT_EQ(Db("SELECT COUNT(DISTINCT value) || '/' || MIN(value) FROM metrics WHERE name = "
                 "'gpu/trial_mem_mib' AND trial_id = " + s.trial),
              "1/300.0");
  }
  EXPECT_EQ(Db("SELECT COUNT(*) FROM metrics g WHERE g.name LIKE 'gpu/%' AND NOT EXISTS (SELECT 1 "
               "FROM metrics m WHERE m.trial_id = g.trial_id AND m.name = 'loss/out' AND m.step = g.step)"),
            "0");
  // Both GPU figures at every telemetry step; the trial's own memory too unless the sample
  // was taken before its process started.
  EXPECT_EQ(Db("SELECT COUNT(*) FROM (SELECT trial_id, step FROM metrics WHERE name LIKE 'gpu/%' "
               "GROUP BY trial_id, step HAVING SUM(name IN ('gpu/mem_used_mib', 'gpu/util_pct')) != 2)"),
            "0");
}

TEST_F(WorkerE2eTest, ATwoGpuTrialRunsARankPerGpuAndReportsItsGpusTelemetry) {
  StartSweepd(10);
  Submit("name: wide\nmethod: grid\nmetric: {name: loss/out, goal: minimize}\n"
         "trainer: {command: " + RanksCommand() + "}\n" + R"(base: {steps: 30, step_seconds: 0.05, gpu_child: 1}
parameters:
  seed: {values: [1]}
resources: {gpus_per_trial: 2}
)");
  {
    FakeNvidiaSmi smi(dir_ + "/fake-bin");
    StartWorker("w-gpu", {"--gpus", "0,1", "--cpu-slots", "0", "--gpu-telemetry", "0.2"});
  }
  ASSERT_TRUE(SweepEnds("wide", seconds(60)));
  const std::string trial = Db("SELECT id FROM trials");
  EXPECT_EQ(Db("SELECT state FROM trials"), "completed");
  const std::string attempt = dir_ + "/work/wide/" + trial + "/attempt-1";
  for (int r = 0; r < 2; ++r) {
    nlohmann::json env =
        nlohmann::json::parse(ReadFileOrEmpty(attempt + "/rank" + std::to_string(r) + ".env.json"));
    EXPECT_EQ(env["CUDA_VISIBLE_DEVICES"], "0,1");  // Rank r uses cuda:LOCAL_RANK.
    EXPECT_EQ(env["LOCAL_RANK"], std::to_string(r));
    EXPECT_EQ(env["WORLD_SIZE"], "2");
  }
  // Memory summed over the trial's two GPUs, utilisation their mean; one row per step.
  EXPECT_NE(Db("SELECT COUNT(*) FROM metrics WHERE name = 'gpu/mem_used_mib'"), "0");
  EXPECT_EQ(Db("SELECT COUNT(*) FROM metrics WHERE name = 'gpu/mem_used_mib' AND value != 3000"), "0");
  EXPECT_EQ(Db("SELECT COUNT(*) FROM metrics WHERE name = 'gpu/util_pct' AND value != 60"), "0");
  EXPECT_EQ(Db("SELECT COUNT(*) FROM metrics WHERE name = 'gpu/util_pct'"),
            Db("SELECT COUNT(*) FROM metrics WHERE name = 'gpu/mem_used_mib'"));
  // The trial's own memory: both ranks and the helper each started (300 MiB apiece in the
  // fake), found through the ranks' process groups. 1,200 while all four lived; less in a
  // sample taken while a helper was starting or already gone.
  EXPECT_EQ(Db("SELECT MAX(value) FROM metrics WHERE name = 'gpu/trial_mem_mib'"), "1200.0");
  EXPECT_EQ(Db("SELECT COUNT(*) FROM metrics WHERE name = 'gpu/trial_mem_mib' AND value NOT IN "
               "(300, 600, 900, 1200)"),
            "0");
}

TEST_F(WorkerE2eTest, CancelStopsWithACheckpointAndShutdownHandsTrialsBack) {
  StartSweepd(30);
  Submit(BuiltinSpec("stop", 100000, "1.0e-3, 2.0e-3"));
  Subprocess& worker = StartWorker("w1", {"--cpu-slots", "2", "--stop-grace", "20"});
  ASSERT_TRUE(WaitFor([&] { return Db("SELECT COUNT(*) FROM trials WHERE state = 'running' AND "
                                      "last_step > 30") == "2"; },
                      seconds(120)));
  const std::string cancelled = Db("SELECT id FROM trials WHERE trial_key = 'optim.lr=0.001'");
  const std::string released = Db("SELECT id FROM trials WHERE trial_key = 'optim.lr=0.002'");
  v1::TrialRef ref;
  ref.set_trial_id(std::stoll(cancelled));
  v1::Trial trial;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->CancelTrial(&ctx, ref, &trial).ok());
  // The heartbeat (1 s) carries the stop; sweep-train checkpoints and exits well within grace.
  ASSERT_TRUE(WaitFor([&] { return Db("SELECT state FROM trials WHERE id = " + cancelled) == "cancelled"; },
                      seconds(20)));
  const std::string attempt = dir_ + "/work/stop/" + cancelled + "/attempt-1";
  nlohmann::json info = nlohmann::json::parse(ReadFileOrEmpty(attempt + "/attempt.json"));
  EXPECT_EQ(info["exit_code"], 4);  // sweep-train's "stopped with a checkpoint"
  const std::string checkpoint = Db("SELECT checkpoint FROM trials WHERE id = " + cancelled);
  ASSERT_FALSE(checkpoint.empty());
  EXPECT_TRUE(fs::exists(checkpoint + "/COMPLETE")) << checkpoint;
  // SIGTERM: the other trial checkpoints and is handed back at once (pending, no failure).
  worker.Signal(SIGTERM);
  EXPECT_EQ(worker.Wait(), 0);
  EXPECT_EQ(Db("SELECT state FROM trials WHERE id = " + released), "pending");
  EXPECT_EQ(Db("SELECT attempt_errors FROM trials WHERE id = " + released), "[]");
  EXPECT_NE(Db("SELECT checkpoint FROM trials WHERE id = " + released), "");
  EXPECT_EQ(Db("SELECT COUNT(*) FROM events WHERE kind = 'released' AND trial_id = " + released), "1");
  EXPECT_EQ(ProcessesUnderWorkdir(), 0) << "a trial outlived its worker";
}

TEST_F(WorkerE2eTest, ARestartedWorkerHandsBackWhatItHeldWithoutWaitingForTheLease) {
  StartSweepd(120);  // Far longer than the test waits: only the reconcile can requeue it.
  Submit(BuiltinSpec("restart", 400, "3.0e-3"));
  Subprocess& first = StartWorker("w1");
  ASSERT_TRUE(WaitFor([&] { return Db("SELECT checkpoint_step >= 40 FROM trials") == "1"; }, seconds(120)));
  first.Signal(SIGKILL);
  first.Wait();
  StartWorker("w1");  // Same name: sweepd tells it what it held.
  ASSERT_TRUE(WaitFor([&] { return Db("SELECT attempt FROM trials") == "2"; }, seconds(30)));
  EXPECT_NE(Db("SELECT detail FROM events WHERE kind = 'released'").find("worker restarted"),
            std::string::npos);
  ASSERT_TRUE(SweepEnds("restart", seconds(120)));
  EXPECT_EQ(Db("SELECT state || '/' || attempt || '/' || attempt_errors FROM trials"), "completed/2/[]");
  EXPECT_EQ(Db("SELECT COUNT(*) || '/' || MIN(step) || '/' || MAX(step) FROM metrics WHERE name = 'loss/out'"),
            "400/1/400");
}

TEST_F(WorkerE2eTest, WorksOverTlsWithAToken) {
  token_ = "worker-e2e-token-0123456789";
  std::ofstream(dir_ + "/token") << token_ << "\n";
  ASSERT_TRUE(sweep::testing::MakeSelfSignedCertificate(dir_)) << ReadFileOrEmpty(dir_ + "/openssl.log");
  StartSweepd(10, "127.0.0.1:0",
              {"--tls-cert", dir_ + "/cert.pem", "--tls-key", dir_ + "/key.pem", "--token-file", dir_ + "/token"});
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadFileOrEmpty(dir_ + "/cert.pem");
  stub_ = v1::Orchestrator::NewStub(grpc::CreateChannel(target_, grpc::SslCredentials(ssl)));
  Submit(BuiltinSpec("tls", 20, "3.0e-3"));
  StartWorker("w-tls", {"--cpu-slots", "1", "--tls-ca", dir_ + "/cert.pem", "--token-file", dir_ + "/token"});
  ASSERT_TRUE(SweepEnds("tls", seconds(60)));
  EXPECT_EQ(Db("SELECT COUNT(*) FROM metrics WHERE name = 'loss/out'"), "20");
}

}  // namespace
}  // namespace sweep
