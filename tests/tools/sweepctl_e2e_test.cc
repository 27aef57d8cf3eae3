// sweepctl against real sweepd / sweep-worker / sweep-train processes.
//   * `run`: the whole system locally; Ctrl-C (SIGINT) pauses with checkpoints and leaves no
//     process behind; running it again resumes without re-running finished trials.
//   * every other verb does what its help says, with exit codes scripts can rely on: a bad
//     spec is file:line:col and 2, an unknown sweep 3, an unreachable sweepd 4, a write through
//     `query` refused.
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/testing/subprocess.h"
#include "worker/trainer/config.h"

namespace sweep {
namespace {
namespace fs = std::filesystem;
using sweep::testing::MakeTempDir;
using sweep::testing::ReadFileOrEmpty;
using sweep::testing::Subprocess;
using sweep::testing::WaitFor;
using std::chrono::seconds;

std::string Spec(const std::string& name, int steps, const std::string& lrs) {
  return "name: " + name + R"(
method: grid
metric: {name: loss/val, goal: minimize}
base:
  steps: )" + std::to_string(steps) + R"(
  model: {dim: 32, n_layers: 1, n_heads: 2, multiple_of: 32, init_std_factor: disabled}
  optim: {warmup: 5}
  data: {sources: {kjv: 1.0}, batch_size: 4, seq_len: 32}
  eval: {steps: 2}
  checkpoint: {every: 20}
parameters:
  model.n_layers: {values: [1, 2]}
  optim.lr: {values: [)" + lrs + "]}\n";
}

class SweepctlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(fs::path(trainer::DefaultDataRoot()) / "kjv"));
    dir_ = MakeTempDir("sweepctl-e2e");
  }

  // Runs sweepctl to the end; stdout and stderr land in out_ and err_.
  int Ctl(std::vector<std::string> args) {
    args.insert(args.begin(), SWEEPCTL_BIN);
    fs::remove(dir_ + "/out");  // Run() appends.
    fs::remove(dir_ + "/err");
    const int code = sweep::testing::Run(args, dir_ + "/out", dir_ + "/err");
    out_ = ReadFileOrEmpty(dir_ + "/out");
    err_ = ReadFileOrEmpty(dir_ + "/err");
    return code;
  }

  // The first column of the first row, or "" (also while the database is still being created).
  std::string Db(const std::string& path, const std::string& sql) {
    sqlite3* db = nullptr;
    std::string out;
    if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
      sqlite3_busy_timeout(db, 2000);
      sqlite3_stmt* st = nullptr;
      if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW &&
          sqlite3_column_type(st, 0) != SQLITE_NULL) {
        out = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
      }
      sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return out;
  }

  int ProcessesMentioning(const std::string& text) {
    return sweep::testing::LiveProcessesMentioning(text, /*ignore=*/"sweepctl");
  }

  std::string dir_, out_, err_;
};

TEST_F(SweepctlTest, RunIsPausedByCtrlCAndResumedByRunningItAgain) {
  std::ofstream(dir_ + "/ctl.yaml") << Spec("ctl", 400, "3.0e-3, 1.0e-2, 3.0e-2");
  const std::string run_dir = dir_ + "/run";
  const std::string db = run_dir + "/sweep.db";
  {
    Subprocess run({SWEEPCTL_BIN, "run", dir_ + "/ctl.yaml", "--dir", run_dir, "--workers", "2"},
                   dir_ + "/run1.out", dir_ + "/run1.err");
    ASSERT_TRUE(WaitFor([&] { return fs::exists(db) && Db(db, "SELECT COUNT(*) FROM trials WHERE state = "
                                                              "'completed'") >= "2"; },
                        seconds(120)))
        << ReadFileOrEmpty(dir_ + "/run1.out") << ReadFileOrEmpty(dir_ + "/run1.err");
    run.Signal(SIGINT);
    EXPECT_EQ(run.Wait(), 130) << ReadFileOrEmpty(dir_ + "/run1.err");
  }
  EXPECT_NE(ReadFileOrEmpty(dir_ + "/run1.out").find("run `sweepctl run"), std::string::npos);
  EXPECT_EQ(ProcessesMentioning(run_dir), 0) << "sweepd, a worker or a trainer outlived `sweepctl run`";
  EXPECT_EQ(Db(db, "SELECT state FROM sweeps"), "paused");
  EXPECT_EQ(Db(db, "SELECT COUNT(*) FROM trials WHERE state IN ('leased', 'running')"), "0");
  const std::string finished_before =
      Db(db, "SELECT group_concat(id) FROM (SELECT id FROM trials WHERE state IN ('completed', 'diverged') ORDER BY id)");
  ASSERT_FALSE(finished_before.empty());

  ASSERT_EQ(Ctl({"run", dir_ + "/ctl.yaml", "--dir", run_dir, "--workers", "2"}), 0) << out_ << err_;
  EXPECT_NE(out_.find("resuming"), std::string::npos) << out_;
  EXPECT_EQ(Db(db, "SELECT state FROM sweeps"), "completed");
  EXPECT_EQ(Db(db, "SELECT COUNT(*) FROM trials WHERE state IN ('completed', 'diverged')"), "6");
  // Trials that had finished were not run again: still on their first attempt, one lease each.
  EXPECT_EQ(Db(db, "SELECT COUNT(*) FROM trials WHERE attempt != 1 AND id IN (" + finished_before + ")"), "0");
  EXPECT_EQ(Db(db, "SELECT COUNT(*) FROM events WHERE kind = 'leased' AND trial_id IN (" + finished_before + ")"),
            std::to_string(std::count(finished_before.begin(), finished_before.end(), ',') + 1));
  // Every step of every completed trial's loss, once.
  EXPECT_EQ(Db(db, "SELECT COUNT(*) FROM (SELECT trial_id FROM metrics WHERE name = 'loss/out' GROUP BY trial_id "
                   "HAVING COUNT(*) = 400) "),
            Db(db, "SELECT COUNT(*) FROM trials WHERE state = 'completed'"));
  // The summary: final metric and peak grad norm per depth x lr.
  EXPECT_NE(out_.find("final loss/val by model.n_layers x lr"), std::string::npos) << out_;
  EXPECT_NE(out_.find("peak grad norm after warmup"), std::string::npos) << out_;
  EXPECT_EQ(ProcessesMentioning(run_dir), 0);
}

// A data-parallel sweep runs locally: each worker gets the slots of one 2-rank trial, every
// trial logs the gradient noise scale, and the analysis prints the critical batch from it.
TEST_F(SweepctlTest, RunsDataParallelTrialsAndReportsTheCriticalBatch) {
  std::ofstream(dir_ + "/dp.yaml") << R"(name: dp
method: grid
metric: {name: loss/val, goal: minimize}
base:
  steps: 30
  model: {dim: 32, n_layers: 1, n_heads: 2, multiple_of: 32}
  optim: {warmup: 5, lr: 1.0e-2}
  data: {sources: {kjv: 1.0}, batch_size: 4, seq_len: 32}
  eval: {steps: 2}
  logging: {freq: 5}
parameters:
  data.batch_size: {values: [2, 4]}
resources: {ranks_per_trial: 2}
)";
  const std::string db = dir_ + "/dp-run/sweep.db";
  ASSERT_EQ(Ctl({"run", dir_ + "/dp.yaml", "--dir", dir_ + "/dp-run", "--workers", "1"}), 0) << out_ << err_;
  EXPECT_EQ(Db(db, "SELECT COUNT(*) FROM trials WHERE state = 'completed'"), "2");
  EXPECT_EQ(Db(db, "SELECT COUNT(DISTINCT trial_id) FROM metrics WHERE name = 'optim/noise_scale'"), "2");
  EXPECT_NE(out_.find("Critical batch"), std::string::npos) << out_;
  EXPECT_EQ(ProcessesMentioning(dir_ + "/dp-run"), 0);
}

TEST_F(SweepctlTest, RunRefusesABadSpecWithItsLineAndColumn) {
  std::ofstream(dir_ + "/bad.yaml") << "name: bad\nmethod: grid\nbase:\n  optim: {lr: fast}\n"
                                       "parameters:\n  model.n_layers: {values: [2]}\n";
  EXPECT_EQ(Ctl({"run", dir_ + "/bad.yaml", "--dir", dir_ + "/bad-run"}), 2);
  EXPECT_NE(err_.find("bad.yaml:4:"), std::string::npos) << err_;
  EXPECT_NE(err_.find("optim.lr"), std::string::npos) << err_;
  EXPECT_FALSE(fs::exists(dir_ + "/bad-run/sweep.db"));
}

class SweepctlVerbsTest : public SweepctlTest {
 protected:
  void SetUp() override {
    SweepctlTest::SetUp();
    std::ofstream(dir_ + "/token") << "verbs-test-token\n";
    sweepd_ = std::make_unique<Subprocess>(
        std::vector<std::string>{SWEEPD_BIN, "--db", dir_ + "/sweep.db", "--listen", "127.0.0.1:0",
                                 "--port-file", dir_ + "/port", "--token-file", dir_ + "/token"},
        "", dir_ + "/sweepd.log");
    ASSERT_TRUE(WaitFor([&] { return !ReadFileOrEmpty(dir_ + "/port").empty(); }, seconds(30)));
    address_ = "127.0.0.1:" + std::to_string(std::stoi(ReadFileOrEmpty(dir_ + "/port")));
  }

  void StartWorker() {
    worker_ = std::make_unique<Subprocess>(
        std::vector<std::string>{WORKER_BIN, "--orchestrator", address_, "--name", "w1", "--workdir",
                                 dir_ + "/work", "--cpu-slots", "2", "--gpus", "none", "--heartbeat", "1",
                                 "--token-file", dir_ + "/token", "--sweep-train", SWEEP_TRAIN_BIN},
        "", dir_ + "/worker.log");
  }

  // out_ as JSON; a test failure that shows it when it is not.
  nlohmann::json Json() {
    nlohmann::json j = nlohmann::json::parse(out_, nullptr, false);
    if (j.is_discarded()) ADD_FAILURE() << "not JSON:\n" << out_ << err_;
    return j;
  }

  int Verb(std::vector<std::string> args) {
    args.insert(args.begin(), {"--orchestrator", address_, "--token-file", dir_ + "/token"});
    return Ctl(args);
  }

  std::string address_;
  std::unique_ptr<Subprocess> sweepd_, worker_;
};

TEST_F(SweepctlVerbsTest, EveryVerbDoesWhatItsHelpSays) {
  std::ofstream(dir_ + "/verbs.yaml") << Spec("verbs", 40, "3.0e-3, 1.0e-2, 10");
  ASSERT_EQ(Verb({"submit", dir_ + "/verbs.yaml"}), 0) << err_;
  EXPECT_NE(out_.find("submitted sweep verbs"), std::string::npos) << out_;
  ASSERT_EQ(Verb({"submit", dir_ + "/verbs.yaml"}), 0) << err_;
  EXPECT_NE(out_.find("already there"), std::string::npos) << out_;

  // A bad spec: file:line:col and exit 2; nothing submitted.
  std::ofstream(dir_ + "/bad.yaml") << "name: bad\nmethod: grid\nparameters:\n  model.n_layers: {values: [two]}\n";
  EXPECT_EQ(Verb({"submit", dir_ + "/bad.yaml"}), 2);
  EXPECT_NE(err_.find("bad.yaml:4:"), std::string::npos) << err_;

  StartWorker();
  EXPECT_EQ(Verb({"watch", "verbs"}), 0) << err_;
  EXPECT_NE(out_.find("6/6 done"), std::string::npos) << out_;

  ASSERT_EQ(Verb({"status", "verbs", "--format", "json"}), 0) << err_;
  nlohmann::json status = Json();
  EXPECT_EQ(status["state"], "completed");
  EXPECT_EQ(status["trials"], 6);
  EXPECT_EQ(status["trials_by_state"]["diverged"], 2);
  EXPECT_TRUE(status.contains("best"));

  ASSERT_EQ(Verb({"ls", "--format", "csv"}), 0);
  EXPECT_NE(out_.find("verbs,completed,grid"), std::string::npos) << out_;

  ASSERT_EQ(Verb({"trials", "verbs", "--state", "diverged", "--format", "json"}), 0) << err_;
  EXPECT_EQ(Json().size(), 2u);
  ASSERT_EQ(Verb({"trials", "verbs", "--sort", "loss/val", "--format", "json"}), 0) << err_;
  nlohmann::json sorted = Json();
  ASSERT_EQ(sorted.size(), 6u);
  for (size_t i = 1; i < 4; ++i) {  // four finite values ascending, then the diverged ones
    EXPECT_LE(sorted[i - 1]["last loss/val"].get<double>(), sorted[i]["last loss/val"].get<double>());
  }
  const int64_t best = sorted[0]["id"];
  const int64_t diverged = sorted[5]["id"];

  ASSERT_EQ(Verb({"show", std::to_string(best), "--format", "json"}), 0) << err_;
  nlohmann::json shown = Json();
  EXPECT_EQ(shown["state"], "completed");
  EXPECT_NE(shown["config"].get<std::string>().find("steps: 40"), std::string::npos);
  EXPECT_TRUE(shown["last_metrics"].contains("loss/out"));
  EXPECT_EQ(shown["last_metrics"]["loss/out"]["step"], 40);
  EXPECT_GE(shown["events"].size(), 3u);

  ASSERT_EQ(Verb({"logs", std::to_string(best)}), 0) << err_;
  EXPECT_NE(out_.find("step     40/40"), std::string::npos) << out_;

  const std::string completed_rows =
      "SELECT COUNT(*) AS n FROM metrics m JOIN trials t ON t.id = m.trial_id WHERE t.state = 'completed' "
      "AND m.name = 'loss/out'";
  ASSERT_EQ(Verb({"query", completed_rows, "--format", "csv"}), 0);
  EXPECT_EQ(out_, "n\n160\n");  // 4 completed trials x 40 steps
  const std::string all_rows = Db(dir_ + "/sweep.db", "SELECT COUNT(*) FROM metrics");
  EXPECT_NE(Verb({"query", "DELETE FROM metrics"}), 0);
  EXPECT_NE(err_.find("query"), std::string::npos) << err_;
  EXPECT_EQ(Db(dir_ + "/sweep.db", "SELECT COUNT(*) FROM metrics"), all_rows) << "a refused write changed the database";

  // Export: Lingua's metrics.jsonl, one line per step.
  ASSERT_EQ(Verb({"export", "verbs", "--out", dir_ + "/export"}), 0) << err_;
  std::ifstream jsonl(dir_ + "/export/" + std::to_string(best) + "/metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(jsonl, line); ++lines) {
    nlohmann::json row = nlohmann::json::parse(line);
    EXPECT_EQ(row["global_step"], lines + 1);
    EXPECT_TRUE(row.contains("loss/out") && row.contains("optim/grad_norm")) << line;
  }
  EXPECT_EQ(lines, 40);
  EXPECT_NE(ReadFileOrEmpty(dir_ + "/export/trials.csv").find("id,trial_key,params,state"), std::string::npos);
  ASSERT_EQ(Verb({"export", "verbs", "--as", "csv", "--out", dir_ + "/export-csv"}), 0) << err_;
  EXPECT_NE(ReadFileOrEmpty(dir_ + "/export-csv/" + std::to_string(best) + "/metrics.csv").find("40,loss/out,"),
            std::string::npos);

  // The analysis: verdicts per group (n_layers), stored for the dashboard.
  ASSERT_EQ(Verb({"analyze", "verbs"}), 0) << err_;
  EXPECT_NE(out_.find("Verdicts"), std::string::npos) << out_;
  EXPECT_NE(out_.find("n_layers=2: diverges above lr 1e-2"), std::string::npos) << out_;
  ASSERT_EQ(Verb({"analyze", "verbs", "--json"}), 0) << err_;
  EXPECT_TRUE(Json().is_object());
  EXPECT_EQ(Db(dir_ + "/sweep.db", "SELECT COUNT(*) FROM analyses"), "2");

  ASSERT_EQ(Verb({"workers", "--format", "json"}), 0);
  EXPECT_EQ(Json()[0]["name"], "w1");

  // Retry a diverged trial: it runs again (and diverges again).
  ASSERT_EQ(Verb({"retry", std::to_string(diverged)}), 0) << err_;
  EXPECT_NE(out_.find("pending"), std::string::npos) << out_;
  EXPECT_TRUE(WaitFor([&] { return Db(dir_ + "/sweep.db", "SELECT state || '/' || (SELECT COUNT(*) FROM events "
                                                          "WHERE trial_id = t.id AND kind = 'leased') FROM "
                                                          "trials t WHERE id = " + std::to_string(diverged)) == "diverged/2"; },
                      seconds(60)));

  // Pause / resume / cancel on a long sweep, with its trial running.
  std::ofstream(dir_ + "/long.yaml") << Spec("long", 100000, "1.0e-3");
  ASSERT_EQ(Verb({"submit", dir_ + "/long.yaml"}), 0) << err_;
  ASSERT_TRUE(WaitFor([&] { return Db(dir_ + "/sweep.db", "SELECT COUNT(*) FROM trials t JOIN sweeps s ON "
                                                          "s.id = t.sweep_id WHERE s.name = 'long' AND "
                                                          "t.state = 'running' AND t.checkpoint_step >= 20") == "2"; },
                      seconds(60)));
  ASSERT_EQ(Verb({"pause", "long"}), 0) << err_;
  EXPECT_NE(out_.find("paused"), std::string::npos);
  EXPECT_TRUE(WaitFor([&] { return Db(dir_ + "/sweep.db", "SELECT COUNT(*) FROM trials t JOIN sweeps s ON "
                                                          "s.id = t.sweep_id WHERE s.name = 'long' AND "
                                                          "t.state = 'pending' AND t.checkpoint IS NOT NULL") == "2"; },
                      seconds(30)))
      << "paused trials should checkpoint and wait as pending";
  ASSERT_EQ(Verb({"resume", "long"}), 0) << err_;
  EXPECT_TRUE(WaitFor([&] { return Db(dir_ + "/sweep.db", "SELECT COUNT(*) FROM trials t JOIN sweeps s ON "
                                                          "s.id = t.sweep_id WHERE s.name = 'long' AND "
                                                          "t.state = 'running'") == "2"; },
                      seconds(30)));
  ASSERT_EQ(Verb({"cancel", "long"}), 0) << err_;
  EXPECT_TRUE(WaitFor([&] { return Db(dir_ + "/sweep.db", "SELECT COUNT(*) FROM trials t JOIN sweeps s ON "
                                                          "s.id = t.sweep_id WHERE s.name = 'long' AND "
                                                          "t.state = 'cancelled'") == "2"; },
                      seconds(30)));

  // Exit codes for what does not exist or cannot be reached.
  EXPECT_EQ(Verb({"status", "no-such-sweep"}), 3);
  EXPECT_EQ(Verb({"show", "99999"}), 3);
  EXPECT_EQ(Ctl({"--orchestrator", "127.0.0.1:1", "ls"}), 4);
  EXPECT_EQ(Ctl({"--orchestrator", address_, "ls"}), 1) << "no token: refused";
  EXPECT_NE(err_.find("token"), std::string::npos) << err_;
}

TEST_F(SweepctlVerbsTest, LogsFollowsARunningTrialToItsEnd) {
  std::ofstream(dir_ + "/follow.yaml") << "name: follow\nmethod: grid\nbase:\n  steps: 300\n"
                                          "  model: {dim: 32, n_layers: 1, n_heads: 2, multiple_of: 32}\n"
                                          "  data: {sources: {kjv: 1.0}, batch_size: 4, seq_len: 32}\n"
                                          "parameters:\n  optim.lr: {values: [3.0e-3]}\n";
  ASSERT_EQ(Verb({"submit", dir_ + "/follow.yaml"}), 0) << err_;
  StartWorker();
  ASSERT_TRUE(WaitFor([&] { return Db(dir_ + "/sweep.db", "SELECT state FROM trials") == "running"; }, seconds(60)));
  ASSERT_EQ(Verb({"logs", "1", "-f"}), 0) << err_;
  EXPECT_NE(out_.find("step    300/300"), std::string::npos) << out_;
  EXPECT_EQ(Db(dir_ + "/sweep.db", "SELECT state FROM trials"), "completed");
}

}  // namespace
}  // namespace sweep
