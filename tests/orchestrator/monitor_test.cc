// The monitor on a real store and scheduler with a fake clock: spikes and divergence on
// ingest, early termination (divergence, ASHA, hyperband) through the heartbeat, and how the
// stopped trials end.
#include "orchestrator/monitor.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>

#include "tests/orchestrator/fake_clock.h"
#include "tests/testing/sqlite.h"
#include "tests/testing/status.h"

namespace sweep::orchestrator {
namespace {
namespace fs = std::filesystem;
using sweep::testing::QueryScalar;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// --- ASHA's arithmetic. ---

TEST(AshaTest, RungStepsGrowByEtaBelowTheLimit) {
  EXPECT_EQ(RungSteps(10, 3, 300), (std::vector<int64_t>{10, 30, 90, 270}));
  EXPECT_EQ(RungSteps(10, 3, 270), (std::vector<int64_t>{10, 30, 90}));  // The end needs no rung.
  EXPECT_EQ(RungSteps(1, 1.5, 10), (std::vector<int64_t>{1, 2, 3, 5, 8}));  // Rounded, increasing.
  EXPECT_EQ(RungSteps(50, 2, 0).size(), 58u);  // No limit known: while 50 · 2^k fits.
  EXPECT_TRUE(RungSteps(100, 3, 100).empty());
  EXPECT_EQ(HyperbandBrackets(10, 3, 300), 4);  // min_steps 10, 30, 90, 270
  EXPECT_EQ(HyperbandBrackets(10, 3, 270), 4);
  EXPECT_EQ(HyperbandBrackets(10, 3, 269), 3);
  EXPECT_EQ(HyperbandBrackets(10, 3, 0), 1);
}

TEST(AshaTest, KeepsTheTopOneOverEtaAndNeverComparesNaN) {
  const std::optional<double> none;
  auto v = [](double x) { return RungEntry{x, false}; };
  auto last = [](double x) { return RungEntry{x, true}; };
  struct Case {
    const char* what;
    RungEntry candidate;
    std::vector<RungEntry> others;
    bool minimize;
    double eta;
    bool keep;
    int rank, n, allowed;
  } cases[] = {
      {"the first trial at a rung continues", v(9), {}, true, 3, true, 1, 1, 1},
      {"second of two, eta 3: only the best", v(3), {v(2)}, true, 3, false, 2, 2, 1},
      {"best of two", v(1), {v(2)}, true, 3, true, 1, 2, 1},
      {"second of four, eta 3: ceil(4/3) = 2", v(3), {v(2), v(4), v(5)}, true, 3, true, 2, 4, 2},
      {"third of four", v(4.5), {v(2), v(4), v(5)}, true, 3, false, 3, 4, 2},
      {"ties are not better", v(2), {v(2), v(2)}, true, 3, true, 1, 3, 1},
      {"maximize", v(0.9), {v(0.5), v(0.7)}, false, 2, true, 1, 3, 2},
      {"a NaN candidate stops, even alone", RungEntry{none, false}, {}, true, 3, false, 1, 1, 1},
      {"a NaN other never out-ranks", v(100), {RungEntry{none, false}}, true, 2, true, 1, 2, 1},
      {"...nor when maximizing", v(-100), {RungEntry{none, false}}, false, 2, true, 1, 2, 1},
      {"a diverged trial's 0.0 never out-ranks", v(3.5), {last(0.0), v(3)}, true, 2, true, 2, 3, 2},
      {"a stopped trial ranks last", v(9), {last(1), last(2), v(3)}, true, 2, true, 2, 4, 2},
      {"a candidate that diverged ranks last", last(0.0), {v(3), v(4)}, true, 2, false, 3, 3, 2},
      {"non-integer eta", v(3), {v(1), v(2), v(4), v(5)}, true, 2.5, false, 3, 5, 2},
  };
  for (const Case& c : cases) {
    const RungDecision d = DecideRung(c.candidate, c.others, c.minimize, c.eta);
    EXPECT_EQ(d.keep, c.keep) << c.what;
    EXPECT_EQ(d.rank, c.rank) << c.what;
    EXPECT_EQ(d.n, c.n) << c.what;
    EXPECT_EQ(d.allowed, c.allowed) << c.what;
  }
}

// --- The monitor with a store, a scheduler and a fake clock. ---

class MonitorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string dir = fs::temp_directory_path() / "sweep-monitor-XXXXXX";
    path_ = std::string(mkdtemp(dir.data())) + "/sweep.db";
    store_ = *Store::Open(path_);
    scheduler_ = std::make_unique<Scheduler>(store_.get(), &clock_, SchedulerOptions{30, 3});
    monitor_ = std::make_unique<Monitor>(store_.get(), &clock_);
    worker_ = *scheduler_->RegisterWorker({"w", "host", 0, 8, "{}"});
  }

  // A sweep of `trials` learning rates, 100 steps with 10 of warmup.
  void Submit(const std::string& extra, int trials = 4) {
    std::string lrs;
    for (int i = 0; i < trials; ++i) lrs += (i ? ", " : "") + std::to_string(i + 1) + "e-3";
    SweepSpec spec = *ParseSweepSpec(
        "name: m\nmethod: grid\nbase: {steps: 100, optim: {warmup: 10}, data: {sources: {kjv: "
        "1}}}\n"
        "parameters: {optim.lr: {values: [" +
            lrs + "]}}\n" + extra,
        "m.yaml");
    ASSERT_OK(store_->SubmitSweep(spec, *ExpandSweep(spec), clock_.Now()));
  }

  std::vector<Lease> LeaseAll(int n) {
    absl::StatusOr<std::vector<Lease>> leases = scheduler_->LeaseTrials(worker_, 0, n, n);
    EXPECT_TRUE(leases.ok() && static_cast<int>(leases->size()) == n) << leases.status().message();
    for (const Lease& l : *leases) EXPECT_TRUE(scheduler_->MarkRunning(l.trial_id, l.attempt).ok());
    return *leases;
  }

  absl::StatusOr<int64_t> Put(const Lease& l, const std::string& name, int64_t step, double value) {
    return monitor_->Ingest({{l.trial_id, l.attempt, name, step, value, clock_.Now()}});
  }

  // A healthy loss and grad-norm trace for steps [from, to].
  std::vector<MetricRow> Healthy(const Lease& l, int64_t from, int64_t to) {
    std::vector<MetricRow> rows;
    for (int64_t step = from; step <= to; ++step) {
      rows.push_back(
          {l.trial_id, l.attempt, "loss/out", step, 5.5 - 0.01 * step + 0.02 * (step % 3), 0});
      rows.push_back({l.trial_id, l.attempt, "optim/grad_norm", step, 0.5 + 0.01 * (step % 7), 0});
    }
    return rows;
  }

  std::string Sql(const std::string& sql) { return QueryScalar(store_->db(), sql); }
  std::string Trial(int64_t id, const std::string& column) {
    return Sql("SELECT " + column + " FROM trials WHERE id = " + std::to_string(id));
  }
  std::string Events(int64_t id, const std::string& kind) {
    return Sql("SELECT group_concat(detail, ' | ') FROM events WHERE trial_id = " +
               std::to_string(id) + " AND kind = '" + kind + "'");
  }
  // The heartbeat's stop reason for the trial, "" when it is not told to stop.
  std::string StopReason(const Lease& l) {
    absl::StatusOr<std::vector<StopRequest>> stops =
        scheduler_->Heartbeat(worker_, {{l.trial_id, l.attempt, 0}});
    EXPECT_TRUE(stops.ok());
    for (const StopRequest& s : *stops) {
      if (s.trial_id == l.trial_id) return s.reason;
    }
    return "";
  }
  static Completion Stopped(int64_t last_step, const std::string& checkpoint = "") {
    Completion c;
    c.outcome = Outcome::kStopped;
    c.last_step = last_step;
    c.error = "early termination: ...";  // What the worker echoes back.
    c.checkpoint = checkpoint;
    return c;
  }

  std::string path_;
  FakeClock clock_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<Monitor> monitor_;
  int64_t worker_ = 0;
};

TEST_F(MonitorTest, SpikesAreRecordedOnceThroughResentBatchesAndARestart) {
  Submit("", 1);
  const Lease l = LeaseAll(1)[0];
  std::vector<MetricRow> rows = Healthy(l, 1, 100);
  rows[2 * 60 - 1].value = 9.0;  // optim/grad_norm at step 60
  EXPECT_EQ(*monitor_->Ingest(rows), 200);
  EXPECT_EQ(Sql("SELECT name || ' ' || step || ' ' || value || ' ' || in_warmup || ' ' || attempt "
                "|| ' ' || (z > 6) || ' ' || (mean < 0.6) FROM spikes"),
            "optim/grad_norm 60 9.0 0 1 1 1");
  EXPECT_NE(Events(l.trial_id, "spike").find("optim/grad_norm = 9 at step 60: "), std::string::npos)
      << Events(l.trial_id, "spike");

  // The same batch again: nothing is new, nothing is examined.
  EXPECT_EQ(*monitor_->Ingest(rows), 0);
  // A restarted sweepd: the windows come back from the store, so a spike 5 steps later (long
  // before a fresh window would hold min_values) is found, and old rows re-sent are still
  // not new.
  monitor_ = std::make_unique<Monitor>(store_.get(), &clock_);
  EXPECT_EQ(*monitor_->Ingest(rows), 0);
  std::vector<MetricRow> more = Healthy(l, 101, 120);
  more[2 * 5 - 1].value = 7.0;   // optim/grad_norm at step 105
  more[2 * 10 - 2].value = 9.0;  // loss/out at step 110
  EXPECT_EQ(*monitor_->Ingest(more), 40);
  EXPECT_EQ(
      Sql("SELECT group_concat(name || '@' || step) FROM (SELECT * FROM spikes ORDER BY step)"),
      "optim/grad_norm@60,optim/grad_norm@105,loss/out@110");
  EXPECT_EQ(Sql("SELECT COUNT(*) FROM events WHERE kind = 'spike'"), "3");
  EXPECT_EQ(Trial(l.trial_id, "divergence_step"), "");  // Spikes are not a divergence.
}

TEST_F(MonitorTest, DivergenceStopsTheTrialAtOnceAndItEndsDivergedWithTheReason) {
  Submit("early_terminate: [{type: divergence}]\n", 2);
  const std::vector<Lease> leases = LeaseAll(2);
  const Lease& l = leases[0];
  ASSERT_OK(monitor_->Ingest(Healthy(l, 1, 30)));
  EXPECT_EQ(StopReason(l), "");
  ASSERT_OK(Put(l, "loss/out", 31, kNaN));
  EXPECT_EQ(Trial(l.trial_id, "divergence_step"), "31");
  EXPECT_EQ(Trial(l.trial_id, "divergence_reason"),
            "loss/out = nan at step 31: not a finite number");
  EXPECT_EQ(Events(l.trial_id, "divergence_detected"),
            "loss/out = nan at step 31: not a finite number");
  EXPECT_EQ(Trial(l.trial_id, "stop_requested"), "3");
  EXPECT_EQ(Events(l.trial_id, "early_stop"),
            "divergence: loss/out = nan at step 31: not a finite number");
  EXPECT_EQ(StopReason(l),
            "early termination: divergence: loss/out = nan at step 31: not a finite number");
  EXPECT_EQ(StopReason(leases[1]), "");  // The other trial runs on.

  // The worker stops it (STOPPED, with a checkpoint): the trial ends diverged, where and why.
  ASSERT_OK(scheduler_->Complete(l.trial_id, l.attempt, Stopped(33, "/ck/33")));
  EXPECT_EQ(Trial(l.trial_id, "state"), "diverged");
  EXPECT_EQ(Trial(l.trial_id, "diverged_step"), "31");
  EXPECT_EQ(Trial(l.trial_id, "error"),
            "divergence: loss/out = nan at step 31: not a finite number");
  EXPECT_EQ(Trial(l.trial_id, "checkpoint"), "/ck/33");
  EXPECT_NE(Events(l.trial_id, "diverged").find("early termination: divergence"),
            std::string::npos);
  EXPECT_EQ(Sql("SELECT divergence_reason IS NOT NULL FROM trial_summary WHERE trial_id = " +
                std::to_string(l.trial_id)),
            "1");

  // Retry: a fresh chance, the divergence forgotten; it can be detected again.
  ASSERT_OK(scheduler_->RetryTrial(l.trial_id));
  EXPECT_EQ(Trial(l.trial_id, "divergence_step"), "");
  const Lease again = *scheduler_->LeaseTrials(worker_, 0, 1, 1)->begin();
  EXPECT_EQ(again.attempt, 2);
  EXPECT_EQ(again.checkpoint.value_or(""), "/ck/33");
  ASSERT_OK(Put(again, "optim/grad_norm", 40, std::numeric_limits<double>::infinity()));
  EXPECT_EQ(Trial(l.trial_id, "divergence_step"), "40");
  EXPECT_EQ(Trial(l.trial_id, "stop_requested"), "3");
}

TEST_F(MonitorTest, DivergenceWithoutTheRuleIsRecordedButNothingStops) {
  Submit("", 1);
  const Lease l = LeaseAll(1)[0];
  ASSERT_OK(monitor_->Ingest(Healthy(l, 1, 20)));
  // Above the initial loss after warmup for 5 steps.
  for (int64_t step = 21; step <= 25; ++step) ASSERT_OK(Put(l, "loss/out", step, 8.0));
  EXPECT_EQ(Trial(l.trial_id, "divergence_step"), "25");
  EXPECT_NE(Trial(l.trial_id, "divergence_reason").find("above the initial loss"),
            std::string::npos);
  EXPECT_EQ(Trial(l.trial_id, "stop_requested"), "0");
  EXPECT_EQ(StopReason(l), "");
  // The trainer gives up on its own later (DIVERGED, no reason of its own): the reason sweepd
  // detected is kept, with the trainer's step.
  Completion c;
  c.outcome = Outcome::kDiverged;
  c.diverged_step = 40;
  ASSERT_OK(scheduler_->Complete(l.trial_id, l.attempt, c));
  EXPECT_EQ(Trial(l.trial_id, "state"), "diverged");
  EXPECT_EQ(Trial(l.trial_id, "diverged_step"), "40");
  EXPECT_NE(Trial(l.trial_id, "error").find("loss/out = 8 at step 25"), std::string::npos);
}

TEST_F(MonitorTest, AshaStopsTrialsOutsideTheTopOneOverEtaAndRetryRunsThemToTheEnd) {
  Submit("early_terminate: [{type: asha, min_steps: 10, eta: 2}]\n");  // rungs 10, 20, 40, 80
  const std::vector<Lease> t = LeaseAll(4);
  ASSERT_OK(Put(t[0], "loss/val", 10, 3.0));  // n 1: continue
  ASSERT_OK(Put(t[1], "loss/val", 10, 2.0));  // n 2, top 1: best, continue
  ASSERT_OK(Put(t[2], "loss/val", 10, 4.0));  // n 3, top 2: rank 3, stop
  ASSERT_OK(Put(t[3], "loss/val", 10, 2.5));  // n 4, top 2: rank 2 (t[2] is being stopped)
  EXPECT_EQ(
      Sql("SELECT group_concat(decision) FROM (SELECT decision FROM rungs ORDER BY trial_id)"),
      "continue,continue,stop,continue");
  const std::string reason = "asha: rung 0 at step 10, loss/val 4, not in top 1/2 (rank 3 of 3)";
  EXPECT_EQ(Trial(t[2].trial_id, "stop_reason"), reason);
  EXPECT_EQ(Events(t[2].trial_id, "early_stop"), reason);
  EXPECT_EQ(Events(t[2].trial_id, "rung"),
            "asha: rung 0 at step 10, loss/val 4 (step 10), rank 3 of 3, top 2 continue: stop");
  EXPECT_EQ(StopReason(t[2]), "early termination: " + reason);
  for (int i : {0, 1, 3}) EXPECT_EQ(StopReason(t[i]), "") << i;
  // More rows of the stopped trial decide nothing more.
  ASSERT_OK(Put(t[2], "loss/val", 20, 1.0));
  EXPECT_EQ(Sql("SELECT COUNT(*) FROM rungs WHERE trial_id = " + std::to_string(t[2].trial_id)),
            "1");

  // The worker stops it with a checkpoint: `stopped`, with the reason, the checkpoint kept.
  ASSERT_OK(scheduler_->Complete(t[2].trial_id, t[2].attempt, Stopped(21, "/ck/21")));
  EXPECT_EQ(Trial(t[2].trial_id, "state"), "stopped");
  EXPECT_EQ(Trial(t[2].trial_id, "error"), reason);
  EXPECT_EQ(Trial(t[2].trial_id, "checkpoint"), "/ck/21");

  // Rung 1 (step 20): t[1] reaches it first and continues; t[0], worse, is stopped.
  ASSERT_OK(Put(t[1], "loss/val", 20, 1.5));
  ASSERT_OK(Put(t[0], "loss/val", 20, 2.9));
  EXPECT_EQ(
      StopReason(t[0]),
      "early termination: asha: rung 1 at step 20, loss/val 2.9, not in top 1/2 (rank 2 of 2)");

  // sweepctl retry: the stopped trial resumes from its checkpoint and runs to the end, never
  // stopped by a rung again, however bad.
  ASSERT_OK(scheduler_->RetryTrial(t[2].trial_id));
  EXPECT_EQ(Trial(t[2].trial_id, "asha_exempt"), "1");
  const Lease again = *scheduler_->LeaseTrials(worker_, 0, 1, 1)->begin();
  ASSERT_EQ(again.trial_id, t[2].trial_id);
  EXPECT_EQ(again.checkpoint.value_or(""), "/ck/21");
  for (int64_t step : {40, 80, 100}) ASSERT_OK(Put(again, "loss/val", step, 9.0));
  EXPECT_EQ(StopReason(again), "");
  Completion done;
  done.last_step = 100;
  ASSERT_OK(scheduler_->Complete(again.trial_id, again.attempt, done));
  EXPECT_EQ(Trial(t[2].trial_id, "state"), "completed");
}

TEST_F(MonitorTest, ARungUsesTheLatestValueAtOrBeforeItsStep) {
  // loss/val every 15 steps; rungs at 10 and 20 (eta 2, min_steps 10).
  Submit("early_terminate: [{type: asha, min_steps: 10, eta: 2}]\n", 1);
  const Lease l = LeaseAll(1)[0];
  ASSERT_OK(monitor_->Ingest(Healthy(l, 1, 14)));  // loss/out only: no rung yet
  EXPECT_EQ(Sql("SELECT COUNT(*) FROM rungs"), "0");
  ASSERT_OK(Put(l, "loss/val", 15, 3.0));  // Rung 0: none at or before 10, so this one.
  ASSERT_OK(Put(l, "loss/val", 30, 2.0));  // Rung 1 (20): the value of step 15.
  EXPECT_EQ(
      Sql("SELECT group_concat(rung || ':' || step || ':' || value_step || ':' || value) FROM "
          "(SELECT * FROM rungs ORDER BY rung)"),
      "0:10:15:3.0,1:20:15:3.0");
}

TEST_F(MonitorTest, ANaNReportingTrialNeverStopsOrOutranksAHealthyOne) {
  Submit("early_terminate: [{type: asha, min_steps: 10, eta: 2}]\n");
  const std::vector<Lease> t = LeaseAll(4);
  // t[0] reports NaN at the rung: stopped itself, not a number to compare.
  ASSERT_OK(Put(t[0], "loss/val", 10, kNaN));
  EXPECT_EQ(StopReason(t[0]),
            "early termination: asha: rung 0 at step 10, loss/val nan, not a finite number");
  EXPECT_EQ(Sql("SELECT nonfinite FROM rungs WHERE trial_id = " + std::to_string(t[0].trial_id)),
            "nan");
  // A healthy trial, however poor, is not pushed out by it (n 2, top 1: rank 1).
  ASSERT_OK(Put(t[1], "loss/val", 10, 50.0));
  EXPECT_EQ(StopReason(t[1]), "");
  // A trial that diverged (grad norm inf) and then reports an attractive loss 0.0 ranks last.
  ASSERT_OK(Put(t[2], "optim/grad_norm", 5, std::numeric_limits<double>::infinity()));
  ASSERT_OK(Put(t[2], "loss/val", 10, 0.0));   // n 3, top 2: t[1] better, rank 2: continue
  ASSERT_OK(Put(t[3], "loss/val", 10, 60.0));  // n 4, top 2: only t[1] is better: continue
  EXPECT_EQ(StopReason(t[3]), "");
  EXPECT_EQ(Sql("SELECT group_concat(rank || '/' || n || ':' || decision) FROM "
                "(SELECT * FROM rungs ORDER BY trial_id)"),
            "1/1:stop,1/2:continue,2/3:continue,2/4:continue");
}

TEST_F(MonitorTest, AStoppedTrialsLeaseThatExpiresEndsAsDecidedAndPauseDoesNotUndoIt) {
  Submit("early_terminate: [{type: divergence}, {type: asha, min_steps: 10, eta: 2}]\n", 3);
  const std::vector<Lease> t = LeaseAll(3);
  ASSERT_OK(Put(t[0], "loss/val", 10, 1.0));
  ASSERT_OK(Put(t[1], "loss/val", 10, 2.0));  // stopped by ASHA
  ASSERT_OK(Put(t[2], "loss/out", 3, kNaN));  // stopped for divergence
  ASSERT_OK(scheduler_->PauseSweep("m", /*stop_running=*/true));
  EXPECT_EQ(Trial(t[0].trial_id, "stop_requested"), "1");
  EXPECT_EQ(Trial(t[1].trial_id, "stop_requested"), "4");
  EXPECT_EQ(Trial(t[2].trial_id, "stop_requested"), "3");
  clock_.Advance(31);
  EXPECT_EQ(*scheduler_->ExpireLeases(), 3);
  EXPECT_EQ(Trial(t[0].trial_id, "state"), "pending");
  EXPECT_EQ(Trial(t[1].trial_id, "state") + " " + Trial(t[1].trial_id, "error"),
            "stopped asha: rung 0 at step 10, loss/val 2, not in top 1/2 (rank 2 of 2)");
  EXPECT_EQ(Trial(t[2].trial_id, "state") + " " + Trial(t[2].trial_id, "diverged_step"),
            "diverged 3");
}

TEST_F(MonitorTest, HyperbandRanksEachTrialWithinItsBracket) {
  // max 100, min 10, eta 3: brackets start at 10, 30, 90; trial id mod 3 picks one.
  Submit("early_terminate: [{type: hyperband, min_steps: 10, eta: 3}]\n", 3);
  const std::vector<Lease> t = LeaseAll(3);
  for (const Lease& l : t) ASSERT_OK(Put(l, "loss/val", 95, 2.0));
  for (const Lease& l : t) {
    const int64_t bracket = l.trial_id % 3;
    const int64_t first = bracket == 0 ? 10 : bracket == 1 ? 30 : 90;
    EXPECT_EQ(Sql("SELECT MIN(step) || ' ' || MAX(bracket) || ' ' || COUNT(*) FROM rungs WHERE "
                  "trial_id = " +
                  std::to_string(l.trial_id)),
              std::to_string(first) + " " + std::to_string(bracket) + " " +
                  std::to_string(bracket == 0   ? 3
                                 : bracket == 1 ? 2
                                                : 1));
    // Alone in its bracket, each continues.
    EXPECT_EQ(StopReason(l), "");
  }
  EXPECT_NE(Events(t[0].trial_id, "rung").find("hyperband bracket "), std::string::npos);
}

TEST_F(MonitorTest, RowsOfAnAttemptWithoutALeaseAreRefusedAndExamineNothing) {
  Submit("early_terminate: [{type: divergence}]\n", 1);
  const Lease l = LeaseAll(1)[0];
  absl::StatusOr<int64_t> stale =
      monitor_->Ingest({{l.trial_id, l.attempt + 1, "loss/out", 1, kNaN, 0}});
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Trial(l.trial_id, "divergence_step"), "");
  EXPECT_EQ(Sql("SELECT COUNT(*) FROM metrics"), "0");
}

}  // namespace
}  // namespace sweep::orchestrator
