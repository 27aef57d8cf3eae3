// Chaos: a sweep of short builtin trials on 3 workers while the processes are killed, stopped
// and restarted at random (the real sweepd, sweep-worker and sweep-train, on loopback). At the
// end every trial must have completed exactly once, every step's metrics must be stored once
// and only from attempts that held the lease, and the interrupted trials' traces must equal
// uninterrupted runs of the same configs, to the bit.
//
// Events, drawn from a std::mt19937 seeded by --chaos_seed=N, else SWEEP_CHAOS_SEED, else the
// clock (printed first: the same seed replays the same choices; timing still varies):
//   * worker SIGKILL: its sweep-train dies with it (PR_SET_PDEATHSIG); the worker is restarted
//     under the same name after a random pause. Back within the lease, it reconciles what it
//     held (delivers the rows, hands the trial back); later, sweepd has requeued the trial.
//   * sweepd SIGKILL: restarted on the same database and port after a random pause; the
//     workers train on, keep their rows, deliver them once it is back.
//   * worker SIGSTOP for longer than the lease TTL, then SIGCONT. Its trainer (its own process
//     group) trains on meanwhile; sweepd requeues the trial to another worker. Once running
//     again the worker must find its lease lost (FAILED_PRECONDITION), stop that trainer and
//     report nothing into the new attempt.
// Several events may overlap (a worker stopped while sweepd is down); the first three are one
// of each kind. Pacing: each event comes a random gap_min..gap_max seconds after the previous
// one, and the k-th also waits until k / (events + 1) of the sweep's steps are in reported
// checkpoints, so the events spread over the whole sweep and trials move on between them.
//
// Variants: ChaosTest.Short (CI: 30 trials, at least 8 events, a few minutes on 2 cores) and
// ChaosTest.DISABLED_Long (tools/chaos.sh: 60 trials, 60 events). SWEEP_CHAOS_TRIALS and
// SWEEP_CHAOS_EVENTS override either; SWEEP_CHAOS_KEEP=1 keeps the folder (logs, database).
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "tests/testing/cluster.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/tiny_spec.h"

namespace sweep {
namespace {

namespace fs = std::filesystem;
using sweep::testing::Cluster;
using sweep::testing::ReadFileOrEmpty;
using sweep::testing::Subprocess;
using sweep::testing::WaitFor;
using Steady = std::chrono::steady_clock;

std::optional<uint32_t> g_seed_flag;  // --chaos_seed=N

constexpr double kLeaseTtl = 3;  // seconds; a SIGSTOP lasts longer
constexpr int kWorkers = 3;
constexpr int kCheckpointEvery = 25;
constexpr int kEvalEvery = 50;
const int kSteps[] = {150, 200, 250};

struct Variant {
  const char* name;
  int trials;
  int events;               // chaos events to inject (fewer if the sweep ends first)
  int min_events;           // the test fails below this
  double gap_min, gap_max;  // the random pause before each event, in seconds
  int timeout_s;            // the sweep must end within this
  int max_references;       // interrupted trials compared with a reference run (0: all)
};

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

uint32_t ChaosSeed() {
  if (g_seed_flag) return *g_seed_flag;
  if (const char* v = std::getenv("SWEEP_CHAOS_SEED"); v != nullptr && *v != '\0') {
    return static_cast<uint32_t>(std::strtoul(v, nullptr, 10));
  }
  return static_cast<uint32_t>(std::chrono::system_clock::now().time_since_epoch().count());
}

// Where sweep-train looks for its corpora (docs/trainer.md).
std::string DataRoot() {
  if (const char* dir = std::getenv("SWEEP_DATA_DIR"); dir != nullptr && *dir != '\0') return dir;
  if (const char* xdg = std::getenv("XDG_DATA_HOME"); xdg != nullptr && *xdg != '\0') {
    return std::string(xdg) + "/sweep/data";
  }
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr ? home : "") + "/.local/share/sweep/data";
}

double Seconds(Steady::duration d) { return std::chrono::duration<double>(d).count(); }

// A grid of optim.lr x steps: `trials` (rounded up to a multiple of 3) tiny builtin trials
// (tests/testing/tiny_spec.h) of 150-250 steps, a checkpoint every 25 steps. Lease expiries
// are this test's doing, not the trials' fault: max_attempts leaves room for them.
std::string ChaosSpec(int trials) {
  const int n_lr = (trials + 2) / 3;
  std::vector<std::string> lrs;
  for (int i = 0; i < n_lr; ++i) lrs.push_back(absl::StrFormat("%.6g", 1e-3 + 2.5e-4 * i));
  sweep::testing::TinySpec spec;
  spec.name = "chaos";
  spec.lrs = absl::StrJoin(lrs, ", ");
  spec.checkpoint_every = kCheckpointEvery;
  spec.eval_every = kEvalEvery;
  spec.header = "max_attempts: 100\n";
  spec.parameters = absl::StrCat("  steps: {values: [", absl::StrJoin(kSteps, ", "), "]}\n");
  return sweep::testing::TinyBuiltinSpec(spec);
}

// Rows of a query on a read-only connection, every column as text ("" for NULL).
std::vector<std::vector<std::string>> Rows(const std::string& db_path, const std::string& sql) {
  sqlite3* db = nullptr;
  sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
  sqlite3_busy_timeout(db, 5000);
  sqlite3_stmt* st = nullptr;
  std::vector<std::vector<std::string>> out;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) != SQLITE_OK) {
    ADD_FAILURE() << sql << ": " << sqlite3_errmsg(db);
  } else {
    while (sqlite3_step(st) == SQLITE_ROW) {
      std::vector<std::string>& row = out.emplace_back();
      for (int i = 0; i < sqlite3_column_count(st); ++i) {
        const unsigned char* text = sqlite3_column_text(st, i);
        row.emplace_back(text != nullptr ? reinterpret_cast<const char*>(text) : "");
      }
    }
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  return out;
}

// One trial's metric values: name -> step -> value (NaN for a stored non-finite value).
using Trace = std::map<std::string, std::map<int64_t, double>>;

Trace StoredTrace(const std::string& db_path, int64_t trial_id) {
  sqlite3* db = nullptr;
  sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db, "SELECT name, step, value FROM metrics WHERE trial_id = ?", -1, &st,
                     nullptr);
  sqlite3_bind_int64(st, 1, trial_id);
  Trace out;
  while (sqlite3_step(st) == SQLITE_ROW) {
    const double value =
        sqlite3_column_type(st, 2) == SQLITE_NULL ? std::nan("") : sqlite3_column_double(st, 2);
    out[reinterpret_cast<const char*>(sqlite3_column_text(st, 0))][sqlite3_column_int64(st, 1)] =
        value;
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  return out;
}

// What sweep-train wrote to a metrics.jsonl, read as the worker reads it: every numeric key of
// a step record but global_step and acc_step.
Trace FileTrace(const std::string& path) {
  std::ifstream in(path);
  Trace out;
  for (std::string line; std::getline(in, line);) {
    nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!record.is_object() || record.contains("event") || !record.contains("global_step")) {
      continue;
    }
    const int64_t step = record["global_step"].get<int64_t>();
    for (const auto& [name, value] : record.items()) {
      if (name != "global_step" && name != "acc_step" && value.is_number()) {
        out[name][step] = value.get<double>();
      }
    }
  }
  return out;
}

// Logged per step whatever the run's history? Everything but the timings.
bool Deterministic(const std::string& name) { return name.rfind("speed/", 0) != 0; }

// A lease a worker lost while it was stopped: sweepd gave the trial to another attempt. The
// worker must say so once it runs again, unless it is killed before it reaches sweepd.
struct LostLease {
  std::string worker;
  int64_t trial;
  int attempt;
  bool killed_first = false;  // SIGKILLed before it had said so
};

class ChaosTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (HasFailure() && cluster_) std::cerr << cluster_->Logs();
    cluster_.reset();
    // Kept after a failure, or with SWEEP_CHAOS_KEEP=1: the logs, the database, the trial folders.
    if (!HasFailure() && !dir_.empty() && EnvInt("SWEEP_CHAOS_KEEP", 0) == 0) fs::remove_all(dir_);
  }

  void Run(Variant v);

  // The chaos loop: injects events and undoes them until the sweep ends (true) or the time
  // runs out (false).
  bool InjectUntilTheSweepEnds(const Variant& v);
  void KillWorker(const std::string& name);
  void KillSweepd();
  void StopWorker(const std::string& name);
  void StartSweepd() {
    ASSERT_TRUE(cluster_->StartSweepd({"--lease-ttl", absl::StrCat(kLeaseTtl)}))
        << cluster_->Logs();
  }
  // Undoes every event still in effect (restarts, SIGCONTs) whose time has come, or all of them.
  void Recover(bool all);
  std::string Db(const std::string& sql) const { return cluster_->Db(sql); }
  // The fraction of all the sweep's steps that are done or in a reported checkpoint.
  double Progress() const {
    const std::string p =
        Db("SELECT SUM(CASE WHEN state = 'completed' THEN json_extract(params, '$.steps') ELSE "
           "MIN(COALESCE(checkpoint_step, 0), json_extract(params, '$.steps')) END) * 1.0 / "
           "SUM(json_extract(params, '$.steps')) FROM trials");
    return p.empty() ? 0 : std::stod(p);
  }
  // The worker noticed: it stopped the trial ("lease lost"), or the trial had already ended
  // while the worker was stopped and sweepd refused its outcome ("[not recorded: ... holds no
  // lease"). Either way nothing went into the requeued attempt (Check() verifies the rows).
  bool SaidLeaseLost(const LostLease& lost) const {
    const std::string log = ReadFileOrEmpty(dir_ + "/" + lost.worker + ".log");
    const std::string prefix = absl::StrCat("trial ", lost.trial, " attempt ", lost.attempt, ": ");
    for (size_t at = log.find(prefix); at != std::string::npos; at = log.find(prefix, at + 1)) {
      const size_t end = log.find('\n', at);
      const std::string line = log.substr(at, end == std::string::npos ? std::string::npos : end - at);
      if (line.rfind(prefix + "lease lost", 0) == 0) return true;
      if (line.find("[not recorded: ") != std::string::npos &&
          line.find("holds no lease") != std::string::npos) {
        return true;
      }
    }
    return false;
  }
  double Uniform(double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(rng_);
  }

  void Check(const Variant& v);

  std::string dir_;
  std::unique_ptr<Cluster> cluster_;
  std::mt19937 rng_;
  Steady::time_point begin_;

  // Events in effect, to be undone at a time: a worker to restart or to SIGCONT, sweepd to
  // restart.
  struct Undo {
    Steady::time_point at;
    enum Kind { kRestartWorker, kContinueWorker, kRestartSweepd } kind;
    std::string worker;
  };
  std::vector<Undo> undo_;
  std::map<std::string, std::vector<std::pair<int64_t, int>>>
      held_when_stopped_;  // (trial, attempt)
  std::vector<LostLease> lost_;
  int worker_kills_ = 0, sweepd_kills_ = 0, sigstops_ = 0;
};

void ChaosTest::Run(Variant v) {
  v.trials = EnvInt("SWEEP_CHAOS_TRIALS", v.trials);
  v.events = EnvInt("SWEEP_CHAOS_EVENTS", v.events);
  v.min_events = std::min(v.min_events, v.events);
  const uint32_t seed = ChaosSeed();
  std::cout << "[chaos] seed " << seed << " (replay: SWEEP_CHAOS_SEED=" << seed
            << " or --chaos_seed=" << seed << ")" << std::endl;
  rng_.seed(seed);
  ASSERT_TRUE(fs::exists(DataRoot() + "/kjv")) << "run tools/setup.sh to prepare the corpus";
  dir_ = sweep::testing::MakeTempDir("chaos");
  cluster_ = std::make_unique<Cluster>(
      testing::ClusterBinaries{SWEEPD_BIN, WORKER_BIN, SWEEP_TRAIN_BIN}, dir_);
  begin_ = Steady::now();
  StartSweepd();
  ASSERT_TRUE(cluster_->Submit(ChaosSpec(v.trials)).ok());
  for (int i = 1; i <= kWorkers; ++i) cluster_->StartWorker(absl::StrCat("w", i));
  std::cout << "[chaos] " << v.name << ": " << Db("SELECT COUNT(*) FROM trials") << " trials, "
            << kWorkers << " workers (1 CPU slot each), lease TTL " << kLeaseTtl << " s, up to "
            << v.events << " events, work in " << dir_ << std::endl;

  const bool ended = InjectUntilTheSweepEnds(v);
  if (HasFatalFailure()) return;
  const double sweep_seconds = Seconds(Steady::now() - begin_);
  ASSERT_TRUE(ended)
      << "the sweep did not end within " << v.timeout_s << " s: "
      << Db("SELECT group_concat(state || ':' || n) FROM (SELECT state, COUNT(*) n FROM "
            "trials GROUP BY state)");
  const int events = worker_kills_ + sweepd_kills_ + sigstops_;
  std::cout << "[chaos] sweep ended after " << absl::StrFormat("%.0f", sweep_seconds) << " s and "
            << events << " events" << std::endl;
  EXPECT_GE(events, v.min_events)
      << "the sweep ended before enough events; raise SWEEP_CHAOS_TRIALS";
  EXPECT_GE(worker_kills_, 1);
  EXPECT_GE(sweepd_kills_, 1);
  EXPECT_GE(sigstops_, 1);

  // A worker continued only as the sweep ended gets its next heartbeat's answer first.
  WaitFor(
      [&] {
        return std::all_of(lost_.begin(), lost_.end(),
                           [&](const LostLease& l) { return l.killed_first || SaidLeaseLost(l); });
      },
      std::chrono::seconds(15));
  // Drain the workers: nothing runs, so SIGTERM ends each at once (a worker restarted just now
  // may die of it before it handles signals: 128 + SIGTERM); nothing may outlive them.
  for (const std::string& name : cluster_->worker_names()) {
    const int code = cluster_->SignalWorker(name, SIGTERM);
    EXPECT_TRUE(code == 0 || code == 128 + SIGTERM) << name << " exited with " << code;
  }
  EXPECT_TRUE(WaitFor([&] { return sweep::testing::LiveProcessesMentioning(dir_ + "/work") == 0; },
                      std::chrono::seconds(10)))
      << "a trainer outlived its worker";
  Check(v);
  std::cout << "[chaos] total " << absl::StrFormat("%.0f", Seconds(Steady::now() - begin_)) << " s"
            << std::endl;
}

bool ChaosTest::InjectUntilTheSweepEnds(const Variant& v) {
  // The first three events are one of each kind, in a seeded order; then worker kills are the
  // most frequent (they are the commonest failure), sweepd kills and stops each a quarter.
  std::vector<int> first = {0, 1, 2};
  std::shuffle(first.begin(), first.end(), rng_);
  std::discrete_distribution<int> kinds({2, 1, 1});
  const Steady::time_point deadline = Steady::now() + std::chrono::seconds(v.timeout_s);
  Steady::time_point next_event =
      Steady::now() +
      std::chrono::milliseconds(static_cast<int>(1000 * Uniform(v.gap_min, v.gap_max)));
  Steady::time_point next_poll = Steady::now();
  int injected = 0;
  while (Steady::now() < deadline) {
    Recover(/*all=*/false);
    if (HasFatalFailure()) return false;
    if (Steady::now() >= next_poll) {
      if (Db("SELECT state FROM sweeps WHERE name = 'chaos'") == "completed") break;
      next_poll = Steady::now() + std::chrono::milliseconds(250);
    }
    // The k-th event also waits for k / (events + 1) of the steps (see the top).
    if (injected < v.events && Steady::now() >= next_event &&
        Progress() < injected / (v.events + 1.0)) {
      next_event = Steady::now() + std::chrono::milliseconds(250);
    } else if (injected < v.events && Steady::now() >= next_event) {
      const int kind = injected < 3 ? first[injected] : kinds(rng_);
      // Workers that run and are not stopped; prefer one that holds a trial.
      std::vector<std::string> candidates;
      for (const std::string& name : cluster_->worker_names()) {
        const bool busy = std::any_of(undo_.begin(), undo_.end(),
                                      [&](const Undo& u) { return u.worker == name; });
        if (!busy) candidates.push_back(name);
      }
      std::vector<std::string> holding;
      for (const std::string& name : candidates) {
        if (!Db("SELECT 1 FROM trials t JOIN workers w ON w.id = t.worker_id WHERE w.name = '" +
                name + "' AND t.state = 'running'")
                 .empty()) {
          holding.push_back(name);
        }
      }
      if (!holding.empty()) candidates = holding;
      const bool sweepd_down = !cluster_->sweepd_running();
      if ((kind == 1 && sweepd_down) || (kind != 1 && candidates.empty())) {
        next_event = Steady::now() + std::chrono::milliseconds(200);  // Not now: try again.
        continue;
      }
      const std::string worker =
          candidates.empty()
              ? ""
              : candidates[std::uniform_int_distribution<size_t>(0, candidates.size() - 1)(rng_)];
      const double at = Seconds(Steady::now() - begin_);
      if (kind == 0) {
        KillWorker(worker);
      } else if (kind == 1) {
        KillSweepd();
      } else {
        StopWorker(worker);
      }
      if (HasFatalFailure()) return false;
      ++injected;
      std::cout << absl::StrFormat(
                       "[chaos] %6.1f s  event %2d: %-14s (%3.0f%% of the steps checkpointed, %s "
                       "trials done)",
                       at, injected,
                       kind == 0   ? "SIGKILL " + worker
                       : kind == 1 ? std::string("SIGKILL sweepd")
                                   : "SIGSTOP " + worker,
                       100 * Progress(),
                       Db("SELECT COUNT(*) FROM trials WHERE state = 'completed'"))
                << std::endl;
      next_event = Steady::now() + std::chrono::milliseconds(
                                       static_cast<int>(1000 * Uniform(v.gap_min, v.gap_max)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  Recover(/*all=*/true);
  if (HasFatalFailure()) return false;
  return cluster_->SweepEnds("chaos", std::chrono::duration_cast<std::chrono::seconds>(
                                          std::max(deadline - Steady::now(), Steady::duration(0))));
}

void ChaosTest::KillWorker(const std::string& name) {
  cluster_->SignalWorker(name, SIGKILL);
  for (LostLease& lost : lost_) {
    if (lost.worker == name && !lost.killed_first && !SaidLeaseLost(lost)) lost.killed_first = true;
  }
  ++worker_kills_;
  // Back within the lease TTL or well after it, with similar odds.
  const double pause = Uniform(0.2, 2 * kLeaseTtl);
  undo_.push_back({Steady::now() + std::chrono::milliseconds(static_cast<int>(1000 * pause)),
                   Undo::kRestartWorker, name});
}

void ChaosTest::KillSweepd() {
  cluster_->StopSweepd(SIGKILL);
  ++sweepd_kills_;
  const double pause = Uniform(0.2, 3.0);
  undo_.push_back({Steady::now() + std::chrono::milliseconds(static_cast<int>(1000 * pause)),
                   Undo::kRestartSweepd, ""});
}

void ChaosTest::StopWorker(const std::string& name) {
  auto& held = held_when_stopped_[name];
  held.clear();
  for (const auto& row :
       Rows(cluster_->db_path(),
            "SELECT t.id, t.attempt FROM trials t JOIN workers w ON w.id = t.worker_id "
            "WHERE w.name = '" +
                name + "' AND t.state IN ('leased', 'running')")) {
    held.emplace_back(std::stoll(row[0]), std::stoi(row[1]));
  }
  cluster_->SignalWorker(name, SIGSTOP);
  ++sigstops_;
  // Past the TTL by a margin: sweepd's expiry runs every second.
  const double pause = kLeaseTtl + Uniform(1.5, 3.0);
  undo_.push_back({Steady::now() + std::chrono::milliseconds(static_cast<int>(1000 * pause)),
                   Undo::kContinueWorker, name});
}

void ChaosTest::Recover(bool all) {
  for (auto it = undo_.begin(); it != undo_.end();) {
    if (!all && Steady::now() < it->at) {
      ++it;
      continue;
    }
    if (it->kind == Undo::kRestartSweepd) {
      StartSweepd();
      if (HasFatalFailure()) return;
    } else if (it->kind == Undo::kRestartWorker) {
      cluster_->StartWorker(it->worker);
    } else {
      // Which of its trials went to another attempt while it was stopped (sweepd up: its
      // expiry ran; down: the trial is requeued only at restart, and not counted here).
      for (const auto& [trial, attempt] : held_when_stopped_[it->worker]) {
        const std::string now =
            Db(absl::StrCat("SELECT attempt || '/' || state FROM trials WHERE id = ", trial));
        if (now != absl::StrCat(attempt, "/running") && now != absl::StrCat(attempt, "/leased")) {
          lost_.push_back({it->worker, trial, attempt});
        }
      }
      held_when_stopped_.erase(it->worker);
      cluster_->SignalWorker(it->worker, SIGCONT);
    }
    it = undo_.erase(it);
  }
}

void ChaosTest::Check(const Variant& v) {
  const std::string db = cluster_->db_path();
  const int trials = std::stoi(Db("SELECT COUNT(*) FROM trials"));
  EXPECT_GE(trials, v.trials);

  // Every trial completed, exactly once, by its last attempt.
  EXPECT_EQ(Db("SELECT COUNT(*) FROM trials WHERE state = 'completed'"), absl::StrCat(trials))
      << Db("SELECT group_concat(id || ':' || state || ':' || COALESCE(error, '')) FROM trials "
            "WHERE state != 'completed'");
  for (const auto& row :
       Rows(db,
            "SELECT t.id, t.attempt, (SELECT group_concat(e.detail, ' | ') FROM events e "
            "WHERE e.trial_id = t.id AND e.kind = 'completed'), (SELECT COUNT(*) FROM events e "
            "WHERE e.trial_id = t.id AND e.kind = 'completed') FROM trials t")) {
    EXPECT_EQ(row[3], "1") << "trial " << row[0] << " completed " << row[3] << " times: " << row[2];
    EXPECT_TRUE(row[2] == "attempt " + row[1] || row[2].rfind("attempt " + row[1] + ",", 0) == 0)
        << "trial " << row[0] << " is at attempt " << row[1] << " but completed as: " << row[2];
  }
  // The only failed attempts are the leases this test let expire.
  for (const auto& row :
       Rows(db, "SELECT t.id, e.value FROM trials t, json_each(t.attempt_errors) e")) {
    EXPECT_NE(row[1].find("lease expired (worker lost)"), std::string::npos)
        << "trial " << row[0] << ": an attempt failed: " << row[1];
  }

  // Every step's metrics, once: each per-step name has steps 1..N for a trial of N steps
  // (the primary key forbids a second copy, so count the steps: none missing), and loss/val
  // every kEvalEvery steps and at N; every trial logs the same names.
  std::set<std::string> names;
  for (const auto& row : Rows(db, "SELECT DISTINCT name FROM metrics")) names.insert(row[0]);
  EXPECT_GT(names.size(), 8u);
  int64_t rows_complete = 0;
  for (const auto& row :
       Rows(db, "SELECT t.id, json_extract(t.params, '$.steps') FROM trials t ORDER BY t.id")) {
    const int64_t trial = std::stoll(row[0]), steps = std::stoll(row[1]);
    Trace stored = StoredTrace(db, trial);
    for (const std::string& name : names) {
      std::set<int64_t> expected;
      for (int64_t s = 1; s <= steps; ++s) {
        if (name != "loss/val" || s % kEvalEvery == 0 || s == steps) expected.insert(s);
      }
      std::set<int64_t> got;
      for (const auto& [step, value] : stored[name]) got.insert(step);
      if (got != expected) {
        std::vector<int64_t> missing, extra;
        std::set_difference(expected.begin(), expected.end(), got.begin(), got.end(),
                            std::back_inserter(missing));
        std::set_difference(got.begin(), got.end(), expected.begin(), expected.end(),
                            std::back_inserter(extra));
        ADD_FAILURE() << "trial " << trial << " " << name << ": " << missing.size()
                      << " steps missing (first " << (missing.empty() ? -1 : missing[0]) << "), "
                      << extra.size() << " unexpected";
      }
      rows_complete += static_cast<int64_t>(got.size());
    }
  }
  EXPECT_EQ(std::to_string(rows_complete), Db("SELECT COUNT(*) FROM metrics"));

  // Rows only from attempts that held the lease: each one's attempt was leased, and is not
  // past the trial's last (store.cc refuses rows from any other attempt).
  EXPECT_EQ(
      Db("SELECT COUNT(*) FROM metrics m JOIN trials t ON t.id = m.trial_id WHERE m.attempt < 1 OR "
         "m.attempt > t.attempt OR NOT EXISTS (SELECT 1 FROM events e WHERE e.trial_id = "
         "m.trial_id AND "
         "e.kind = 'leased' AND (e.detail = 'attempt ' || m.attempt OR e.detail LIKE 'attempt ' || "
         "m.attempt || ',%'))"),
      "0");

  // A stopped worker whose lease was lost while it was stopped said so (and, the checks above
  // show, reported nothing that counted), unless it was killed before it reached sweepd.
  int lost_killed_first = 0;
  for (const LostLease& lost : lost_) {
    if (lost.killed_first) {
      ++lost_killed_first;
      continue;
    }
    EXPECT_TRUE(SaidLeaseLost(lost)) << lost.worker << " never noticed it lost trial " << lost.trial
                                     << " attempt " << lost.attempt;
  }

  // The interrupted trials (attempt > 1; a seeded sample of max_references of them), at least
  // 5 (others drawn to make up the number), against uninterrupted runs of the same config by
  // sweep-train alone, 2 at a time.
  std::vector<int64_t> sample;
  for (const auto& row : Rows(db, "SELECT id FROM trials WHERE attempt > 1 ORDER BY id")) {
    sample.push_back(std::stoll(row[0]));
  }
  const int resumed = static_cast<int>(sample.size());
  std::shuffle(sample.begin(), sample.end(), rng_);
  if (v.max_references > 0 && static_cast<int>(sample.size()) > v.max_references) {
    sample.resize(v.max_references);
  }
  std::vector<int64_t> others;
  for (const auto& row : Rows(db, "SELECT id FROM trials WHERE attempt = 1 ORDER BY id")) {
    others.push_back(std::stoll(row[0]));
  }
  std::shuffle(others.begin(), others.end(), rng_);
  for (size_t i = 0; sample.size() < 5 && i < others.size(); ++i) sample.push_back(others[i]);
  const Steady::time_point ref_begin = Steady::now();
  std::vector<std::unique_ptr<Subprocess>> running;
  auto reference_dir = [&](int64_t trial) { return absl::StrCat(dir_, "/reference-", trial); };
  for (size_t i = 0; i < sample.size(); ++i) {
    const std::string run = reference_dir(sample[i]);
    fs::create_directories(run);
    std::ofstream(run + "/config.yaml")
        << Db(absl::StrCat("SELECT config FROM trials WHERE id = ", sample[i]));
    running.push_back(std::make_unique<Subprocess>(
        std::vector<std::string>{SWEEP_TRAIN_BIN, "--config", run + "/config.yaml", "--dump-dir",
                                 run, "threads=1"},
        "", run + "/stderr.log"));
    if (running.size() == 2 || i + 1 == sample.size()) {
      for (auto& p : running) EXPECT_EQ(p->Wait(), 0);
      running.clear();
    }
  }
  int64_t rows_compared = 0, mismatches = 0, inexact = 0;
  for (int64_t trial : sample) {
    Trace stored = StoredTrace(db, trial);
    Trace reference = FileTrace(reference_dir(trial) + "/metrics.jsonl");
    EXPECT_FALSE(reference.empty()) << "trial " << trial << ": no reference trace";
    for (const auto& [name, steps] : reference) {
      if (!Deterministic(name)) continue;
      for (const auto& [step, want] : steps) {
        ++rows_compared;
        auto s = stored[name].find(step);
        const bool present = s != stored[name].end();
        const double got = present ? s->second : std::nan("");
        if (present && got == want) continue;
        const bool close = present && std::abs(got - want) <= 1e-6 * std::abs(want);
        if (close) {
          ++inexact;
          continue;
        }
        if (mismatches++ < 10) {
          ADD_FAILURE() << "trial " << trial << " " << name << " step " << step << ": stored "
                        << (present ? absl::StrFormat("%.17g", got) : "nothing")
                        << ", uninterrupted " << absl::StrFormat("%.17g", want);
        }
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_EQ(inexact, 0) << "values within 1e-6 but not bit-identical";
  EXPECT_EQ(Db("PRAGMA integrity_check"), "ok");

  std::cout << absl::StrFormat(
                   "[chaos] kills survived: %d (worker SIGKILL %d, sweepd SIGKILL %d, SIGSTOP past "
                   "the lease %d; "
                   "leases lost while stopped %d, of which killed before it could notice %d)\n"
                   "[chaos] trials: %d completed, %d resumed (attempt > 1), %s attempts in all\n"
                   "[chaos] rows: %d stored and checked complete; %d compared with uninterrupted "
                   "runs of %d trials "
                   "(%.0f s); mismatches %d (not bit-identical %d)\n",
                   worker_kills_ + sweepd_kills_ + sigstops_, worker_kills_, sweepd_kills_,
                   sigstops_, static_cast<int>(lost_.size()), lost_killed_first, trials, resumed,
                   Db("SELECT SUM(attempt) FROM trials"), rows_complete, rows_compared,
                   static_cast<int>(sample.size()), Seconds(Steady::now() - ref_begin), mismatches,
                   inexact)
            << std::flush;
}

TEST_F(ChaosTest, Short) { Run({"short", 30, 12, 8, 1.5, 4.5, 420, 6}); }

// tools/chaos.sh runs it (--gtest_also_run_disabled_tests).
TEST_F(ChaosTest, DISABLED_Long) { Run({"long", 60, 60, 50, 1.0, 4.0, 1800, 0}); }

}  // namespace
}  // namespace sweep

// gtest's main, plus --chaos_seed=N.
int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  for (int i = 1; i < argc; ++i) {
    const char* flag = "--chaos_seed=";
    if (std::strncmp(argv[i], flag, std::strlen(flag)) == 0) {
      sweep::g_seed_flag =
          static_cast<uint32_t>(std::strtoul(argv[i] + std::strlen(flag), nullptr, 10));
    } else {
      std::cerr << "unknown argument " << argv[i] << "\n";
      return 2;
    }
  }
  return RUN_ALL_TESTS();
}
