// Data-parallel sweep-train as real processes over real Gloo (worker/trainer/distributed.h):
// two ranks match one rank with twice the batch, stop together on SIGTERM and resume bit for
// bit, and fail within distributed.timeout (never hang) when a peer dies, stalls or never
// comes; the noise-scale metrics are logged.
//
// Each rank gets threads=1, so the two ranks share the machine's 2 cores.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
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
using Clock = std::chrono::steady_clock;

// Per rank: 4 sequences of 32 bytes a step. The 1-rank comparison runs data.batch_size=8.
// What a resumed run must reproduce bit for bit, the noise-scale averages (which the
// checkpoint carries) included.
const std::vector<std::string> kCompared = {"loss/out",          "optim/grad_norm",  "optim/lr",
                                            "optim/param_norm",  "optim/gns_grad_sq", "optim/gns_trace",
                                            "optim/total_tokens"};

constexpr char kTinyConfig[] = R"(name: tiny_dp
seed: 11
steps: 300
threads: 1
model: {dim: 32, n_layers: 2, n_heads: 2, multiple_of: 32}
optim: {lr: 3.0e-3, warmup: 10, scheduler: cosine, clip: 1.0}
data: {sources: {kjv: 1.0}, batch_size: 4, seq_len: 32, prefetch_size: 8}
eval: {steps: 2}
logging: {freq: 1}
distributed: {timeout: 5}
)";

class DataParallelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(fs::path(DefaultDataRoot()) / "kjv"))
        << "the bundled corpus is missing at " << DefaultDataRoot()
        << "/kjv; run tools/setup.sh (or sweep-prepare-data kjv)";
    dir_ = MakeTempDir("sweep-train-dp");
    config_ = dir_ + "/config.yaml";
    std::ofstream(config_) << kTinyConfig;
  }

  // The argv of one rank of a `world`-rank trial in `dump_dir`, as sweep-worker starts it:
  // the same for every rank, the rank in the environment, a fresh rendezvous file per attempt.
  std::vector<std::string> RankArgv(const std::string& dump_dir, int world, int rank,
                                    const std::string& rendezvous,
                                    const std::vector<std::string>& extra) const {
    std::vector<std::string> argv = {"/usr/bin/env",
                                     "WORLD_SIZE=" + std::to_string(world),
                                     "RANK=" + std::to_string(rank),
                                     "LOCAL_RANK=" + std::to_string(rank),
                                     "LOCAL_WORLD_SIZE=" + std::to_string(world),
                                     "SWEEP_RENDEZVOUS=" + rendezvous,
                                     SWEEP_TRAIN_BIN,
                                     "--config",
                                     config_,
                                     "--dump-dir",
                                     dump_dir};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
  }

  // Starts every rank of one attempt; stderr of rank r goes to <dump_dir>.rank<r>.log.
  std::vector<std::unique_ptr<Subprocess>> StartRanks(const std::string& dump_dir, int world,
                                                      const std::vector<std::string>& extra = {}) {
    const std::string rendezvous = dump_dir + ".rdzv" + std::to_string(attempt_++);
    fs::remove(rendezvous);
    std::vector<std::unique_ptr<Subprocess>> ranks;
    for (int r = 0; r < world; ++r) {
      ranks.push_back(std::make_unique<Subprocess>(RankArgv(dump_dir, world, r, rendezvous, extra),
                                                   "", Log(dump_dir, r)));
    }
    return ranks;
  }

  static std::string Log(const std::string& dump_dir, int rank) {
    return dump_dir + ".rank" + std::to_string(rank) + ".log";
  }

  static std::string Logs(const std::string& dump_dir, int world) {
    std::string all;
    for (int r = 0; r < world; ++r) all += ReadFileOrEmpty(Log(dump_dir, r));
    return all;
  }

  // Runs all ranks to the end; returns each rank's exit code.
  std::vector<int> RunRanks(const std::string& dump_dir, int world,
                            const std::vector<std::string>& extra = {}) {
    std::vector<std::unique_ptr<Subprocess>> ranks = StartRanks(dump_dir, world, extra);
    std::vector<int> codes;
    for (auto& rank : ranks) codes.push_back(rank->Wait());
    return codes;
  }

  // A plain single-process run.
  int RunSingle(const std::string& dump_dir, const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {SWEEP_TRAIN_BIN, "--config", config_, "--dump-dir", dump_dir};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return sweep::testing::Run(argv, "", dump_dir + ".log");
  }

  std::string dir_;
  std::string config_;
  int attempt_ = 0;
};

// Two ranks with 4 sequences each follow the trajectory of one rank with 8, from the same
// data stream. They cannot match bit for bit: the 1-rank loss is one float32 mean over 8·32
// tokens and its gradient one backward pass, while the 2-rank ones are means of two halves
// (another summation order, ~1e-7 relative). Over these 40 steps the difference did not grow:
// we measured at most 2.2e-7 relative on the loss and 1.0e-7 on the grad norm (threads=1
// everywhere). 1e-5 leaves a 50x margin for other BLAS kernels and still catches any real
// mistake (a wrong slice, a missing average or a rank training on other data is >1e-3).
TEST_F(DataParallelTest, TwoRanksMatchOneRankWithTwiceTheBatch) {
  constexpr double kRelTolerance = 1e-5;
  const std::string single = dir_ + "/single";
  ASSERT_EQ(RunSingle(single, {"steps=40", "data.batch_size=8"}), kExitCompleted)
      << ReadFileOrEmpty(single + ".log");
  const std::string dp = dir_ + "/dp";
  const Clock::time_point start = Clock::now();
  const std::vector<int> codes = RunRanks(dp, 2, {"steps=40"});
  std::printf("2 ranks x 40 steps: %.1f s\n",
              std::chrono::duration<double>(Clock::now() - start).count());
  ASSERT_EQ(codes, (std::vector<int>{kExitCompleted, kExitCompleted})) << Logs(dp, 2);

  const std::vector<json> want = Steps(Records(single + "/metrics.jsonl"));
  const std::vector<json> got = Steps(Records(dp + "/metrics.jsonl"));
  ASSERT_EQ(want.size(), 40u);
  ASSERT_EQ(got.size(), 40u);
  double max_loss_rel = 0, max_grad_rel = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double loss_rel =
        std::abs(got[i]["loss/out"].get<double>() / want[i]["loss/out"].get<double>() - 1);
    const double grad_rel = std::abs(
        got[i]["optim/grad_norm"].get<double>() / want[i]["optim/grad_norm"].get<double>() - 1);
    max_loss_rel = std::max(max_loss_rel, loss_rel);
    max_grad_rel = std::max(max_grad_rel, grad_rel);
    EXPECT_LT(loss_rel, kRelTolerance) << "step " << i + 1;
    EXPECT_LT(grad_rel, kRelTolerance) << "step " << i + 1;
    // Token counts are global; only rank 0 reports, with the noise scale from step 1 on.
    EXPECT_EQ(got[i]["optim/total_tokens"], want[i]["optim/total_tokens"]);
    EXPECT_TRUE(got[i].contains("optim/gns_trace")) << got[i].dump();
    EXPECT_FALSE(want[i].contains("optim/gns_trace"));
  }
  std::printf(
      "max relative difference, 2 ranks vs 1 rank with twice the batch: loss %.3g, "
      "grad norm %.3g\n",
      max_loss_rel, max_grad_rel);
  // The final validation loss (each rank evaluates half of every batch) agrees as well.
  double val_single = NAN, val_dp = NAN;
  for (const json& r : Records(single + "/metrics.jsonl")) {
    if (r.contains("loss/val")) val_single = r["loss/val"].get<double>();
  }
  for (const json& r : Records(dp + "/metrics.jsonl")) {
    if (r.contains("loss/val")) val_dp = r["loss/val"].get<double>();
  }
  EXPECT_NEAR(val_dp, val_single, kRelTolerance * val_single);
  // Only rank 0 wrote into the trial folder: one metrics file, one config, its checkpoints.
  EXPECT_EQ(Events(Records(dp + "/metrics.jsonl"), "completed").size(), 1u);
  EXPECT_TRUE(fs::exists(dp + "/checkpoints/0000000040/COMPLETE"));
  EXPECT_EQ(ReadFileOrEmpty(Log(dp, 1)).find("step     40/40"), std::string::npos);
}

TEST_F(DataParallelTest, SigtermStopsAllRanksAtOneStepAndResumesBitExactly) {
  const std::string reference = dir_ + "/reference";
  ASSERT_EQ(RunRanks(reference, 2, {"steps=120"}),
            (std::vector<int>{kExitCompleted, kExitCompleted}))
      << Logs(reference, 2);
  const std::vector<json> want = Records(reference + "/metrics.jsonl");

  const std::string run = dir_ + "/run";
  const std::string metrics = run + "/metrics.jsonl";
  {
    std::vector<std::unique_ptr<Subprocess>> ranks = StartRanks(run, 2, {"steps=120"});
    ASSERT_TRUE(WaitFor([&] { return LastStep(metrics) >= 30; }, std::chrono::seconds(60)))
        << Logs(run, 2);
    ranks[1]->Signal(SIGTERM);  // The worker signals every rank, in some order.
    ranks[0]->Signal(SIGTERM);
    EXPECT_EQ(ranks[0]->Wait(), kExitPreempted) << Logs(run, 2);
    EXPECT_EQ(ranks[1]->Wait(), kExitPreempted) << Logs(run, 2);
  }
  std::vector<json> records = Records(metrics);
  const std::vector<json> preempted = Events(records, "preempted");
  ASSERT_EQ(preempted.size(), 1u);
  const int64_t stopped_at = preempted[0]["global_step"].get<int64_t>();
  EXPECT_GE(stopped_at, 30);
  EXPECT_LT(stopped_at, 120);
  EXPECT_TRUE(fs::exists(fs::path(preempted[0]["checkpoint"].get<std::string>()) / "COMPLETE"));
  // Rank 1 stopped after the same step (it says so on its log).
  EXPECT_NE(ReadFileOrEmpty(Log(run, 1)).find("stopping at step " + std::to_string(stopped_at)),
            std::string::npos)
      << ReadFileOrEmpty(Log(run, 1));

  // The same command again, both ranks: they resume from rank 0's checkpoint.
  ASSERT_EQ(RunRanks(run, 2, {"steps=120"}), (std::vector<int>{kExitCompleted, kExitCompleted}))
      << Logs(run, 2);
  records = Records(metrics);
  const std::vector<json> resumed = Events(records, "resumed");
  ASSERT_EQ(resumed.size(), 1u);
  EXPECT_EQ(resumed[0]["global_step"].get<int64_t>(), stopped_at);
  ExpectSameTrajectory(want, records, 0, kCompared);
  EXPECT_EQ(Steps(records).size(), 120u);
}

TEST_F(DataParallelTest, KilledRankFailsThePeerWithinTheTimeoutAndTheTrialResumes) {
  const std::string reference = dir_ + "/reference";
  ASSERT_EQ(RunRanks(reference, 2, {"steps=120", "checkpoint.every=10"}),
            (std::vector<int>{kExitCompleted, kExitCompleted}))
      << Logs(reference, 2);
  const std::vector<json> want = Records(reference + "/metrics.jsonl");

  const std::string run = dir_ + "/run";
  const std::string metrics = run + "/metrics.jsonl";
  int64_t killed_after = 0;
  {
    std::vector<std::unique_ptr<Subprocess>> ranks =
        StartRanks(run, 2, {"steps=120", "checkpoint.every=10"});
    ASSERT_TRUE(WaitFor([&] { return LastStep(metrics) >= 25; }, std::chrono::seconds(60)))
        << Logs(run, 2);
    ranks[1]->Signal(SIGKILL);
    const Clock::time_point killed = Clock::now();
    EXPECT_EQ(ranks[1]->Wait(), 128 + SIGKILL);
    // distributed.timeout is 5 s; a dead peer's closed sockets usually fail the next
    // collective at once, and the timeout bounds it otherwise.
    ASSERT_TRUE(WaitFor([&] { return ranks[0]->Poll().has_value(); }, std::chrono::seconds(15)))
        << "rank 0 still runs 15 s after its peer was killed\n"
        << Logs(run, 2);
    const double seconds = std::chrono::duration<double>(Clock::now() - killed).count();
    std::printf("rank 0 exited %.2f s after rank 1 was killed\n", seconds);
    EXPECT_EQ(ranks[0]->Wait(), kExitFailed);
    EXPECT_NE(ReadFileOrEmpty(Log(run, 0)).find("a peer died"), std::string::npos)
        << ReadFileOrEmpty(Log(run, 0));
    killed_after = LastStep(metrics);
  }
  ASSERT_LT(killed_after, 120);

  // A new attempt (fresh rendezvous) resumes from the last complete checkpoint.
  ASSERT_EQ(RunRanks(run, 2, {"steps=120", "checkpoint.every=10"}),
            (std::vector<int>{kExitCompleted, kExitCompleted}))
      << Logs(run, 2);
  const std::vector<json> records = Records(metrics);
  const std::vector<json> resumed = Events(records, "resumed");
  ASSERT_EQ(resumed.size(), 1u);
  const int64_t resumed_at = resumed[0]["global_step"].get<int64_t>();
  EXPECT_EQ(resumed_at % 10, 0);
  EXPECT_GE(resumed_at, 20);
  EXPECT_LE(resumed_at, killed_after);
  ExpectSameTrajectory(want, records, 0, kCompared);
  EXPECT_EQ(Steps(records).size(), 120u + static_cast<size_t>(killed_after - resumed_at));
}

TEST_F(DataParallelTest, StalledPeerFailsTheOtherRankAfterTheTimeout) {
  const std::string run = dir_ + "/run";
  std::vector<std::unique_ptr<Subprocess>> ranks =
      StartRanks(run, 2, {"steps=100000", "distributed.timeout=3"});
  ASSERT_TRUE(
      WaitFor([&] { return LastStep(run + "/metrics.jsonl") >= 5; }, std::chrono::seconds(60)))
      << Logs(run, 2);
  ranks[1]->Signal(SIGSTOP);  // Alive, sockets open, but silent.
  const Clock::time_point stopped = Clock::now();
  ASSERT_TRUE(WaitFor([&] { return ranks[0]->Poll().has_value(); }, std::chrono::seconds(20)))
      << "rank 0 still runs 20 s after its peer stalled\n"
      << Logs(run, 2);
  const double seconds = std::chrono::duration<double>(Clock::now() - stopped).count();
  std::printf("rank 0 exited %.2f s after rank 1 stalled (distributed.timeout=3)\n", seconds);
  EXPECT_EQ(ranks[0]->Wait(), kExitFailed) << Logs(run, 2);
  EXPECT_GE(seconds, 2.0);
  EXPECT_NE(ReadFileOrEmpty(Log(run, 0)).find("distributed.timeout"), std::string::npos)
      << ReadFileOrEmpty(Log(run, 0));
  ranks[1]->Signal(SIGKILL);
}

TEST_F(DataParallelTest, MissingPeerFailsTheRendezvousAfterTheTimeout) {
  const std::string run = dir_ + "/run";
  const std::string rendezvous = run + ".rdzv";
  const Clock::time_point start = Clock::now();
  Subprocess rank0(RankArgv(run, 2, 0, rendezvous, {"distributed.timeout=2"}), "", Log(run, 0));
  ASSERT_TRUE(WaitFor([&] { return rank0.Poll().has_value(); }, std::chrono::seconds(30)))
      << "rank 0 still waits for its peer after 30 s";
  EXPECT_EQ(rank0.Wait(), kExitFailed);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("a lone rank gave up after %.2f s (distributed.timeout=2)\n", seconds);
  EXPECT_NE(ReadFileOrEmpty(Log(run, 0)).find("did not all meet"), std::string::npos)
      << ReadFileOrEmpty(Log(run, 0));
  EXPECT_FALSE(fs::exists(run + "/metrics.jsonl"));
}

// A free TCP port on loopback (the kernel's choice; closed again before use).
int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    if (fd >= 0) ::close(fd);
    return -1;
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

// Without SWEEP_RENDEZVOUS the ranks meet through rank 0's TCPStore (torchrun's MASTER_ADDR
// and MASTER_PORT) and train exactly as through the file store.
TEST_F(DataParallelTest, TcpStoreRendezvousTrainsLikeTheFileStore) {
  const std::string by_file = dir_ + "/file";
  ASSERT_EQ(RunRanks(by_file, 2, {"steps=12"}), (std::vector<int>{kExitCompleted, kExitCompleted}))
      << Logs(by_file, 2);
  const int port = FreePort();
  ASSERT_GT(port, 0);
  const std::string by_tcp = dir_ + "/tcp";
  std::vector<std::unique_ptr<Subprocess>> ranks;
  for (int r = 0; r < 2; ++r) {
    std::vector<std::string> argv = RankArgv(by_tcp, 2, r, "", {"steps=12"});
    argv[5] = "MASTER_ADDR=127.0.0.1";  // In place of SWEEP_RENDEZVOUS=.
    argv.insert(argv.begin() + 6, "MASTER_PORT=" + std::to_string(port));
    argv.insert(argv.begin() + 1, {"-u", "SWEEP_RENDEZVOUS"});
    ranks.push_back(std::make_unique<Subprocess>(argv, "", Log(by_tcp, r)));
  }
  for (auto& rank : ranks) ASSERT_EQ(rank->Wait(), kExitCompleted) << Logs(by_tcp, 2);
  ExpectSameTrajectory(Records(by_file + "/metrics.jsonl"), Records(by_tcp + "/metrics.jsonl"), 0,
                       kCompared);
}

TEST_F(DataParallelTest, BadLaunchEnvironmentIsAUsageError) {
  struct Case {
    std::vector<std::string> env;
    std::string expected;
  } cases[] = {
      {{"WORLD_SIZE=2", "RANK=2", "SWEEP_RENDEZVOUS=" + dir_ + "/r"}, "RANK: expected 0 to 1"},
      {{"WORLD_SIZE=two"}, "WORLD_SIZE: expected a non-negative integer"},
      {{"WORLD_SIZE=2", "RANK=0"}, "needs a rendezvous"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> argv = {"/usr/bin/env", "-u", "MASTER_ADDR", "-u", "SWEEP_RENDEZVOUS"};
    argv.insert(argv.end(), c.env.begin(), c.env.end());
    argv.insert(argv.end(), {SWEEP_TRAIN_BIN, "--config", config_, "--dump-dir", dir_ + "/bad"});
    fs::remove(dir_ + "/bad.log");
    EXPECT_EQ(sweep::testing::Run(argv, "", dir_ + "/bad.log"), kExitUsage);
    EXPECT_NE(ReadFileOrEmpty(dir_ + "/bad.log").find(c.expected), std::string::npos)
        << "want: " << c.expected << "\ngot: " << ReadFileOrEmpty(dir_ + "/bad.log");
  }
}

}  // namespace
}  // namespace sweep::trainer
