#include "orchestrator/scheduler.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <cstdlib>
#include <filesystem>

#include "tests/orchestrator/fake_clock.h"
#include "tests/testing/sqlite.h"
#include "tests/testing/status.h"

namespace sweep::orchestrator {
namespace {
namespace fs = std::filesystem;
using sweep::testing::QueryScalar;

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string dir = fs::temp_directory_path() / "sweep-sched-XXXXXX";
    store_ = *Store::Open(std::string(mkdtemp(dir.data())) + "/sweep.db");
    scheduler_ = std::make_unique<Scheduler>(store_.get(), &clock_, SchedulerOptions{30, 3});
  }

  int64_t Submit(const std::string& name, const std::string& extra = "") {
    SweepSpec spec = *ParseSweepSpec("name: " + name +
                                         "\nmethod: grid\nbase: {data: {sources: {kjv: 1}}}\n"
                                         "parameters: {optim.lr: {values: [1e-3, 3e-3, 1e-2]}}\n" +
                                         extra,
                                     name + ".yaml");
    return store_->SubmitSweep(spec, *ExpandSweep(spec), clock_.Now())->sweep_id;
  }

  int64_t Worker(const std::string& name, int cpu_slots = 4, int gpus = 0) {
    return *scheduler_->RegisterWorker({name, "host", gpus, cpu_slots, "{}"});
  }

  std::string State(int64_t trial) {
    return QueryScalar(store_->db(), "SELECT state || '/' || attempt FROM trials WHERE id = " + std::to_string(trial));
  }

  // One column of a trial's row, as text ("" for NULL).
  std::string Column(int64_t trial, const std::string& column) {
    return QueryScalar(store_->db(),
                       "SELECT " + column + " FROM trials WHERE id = " + std::to_string(trial));
  }

  // The trial's latest event, "kind: detail".
  std::string LastEvent(int64_t trial) {
    return QueryScalar(store_->db(), "SELECT kind || ': ' || detail FROM events WHERE trial_id = " +
                                         std::to_string(trial) + " ORDER BY id DESC LIMIT 1");
  }

  Lease LeaseOne(int64_t worker) {
    absl::StatusOr<std::vector<Lease>> leases = scheduler_->LeaseTrials(worker, 0, 1, 1);
    EXPECT_TRUE(leases.ok() && leases->size() == 1u) << leases.status().message();
    return leases.ok() && !leases->empty() ? leases->front() : Lease{};
  }

  static Completion Released(const std::string& reason) {
    Completion c;
    c.outcome = Outcome::kReleased;
    c.error = reason;
    return c;
  }

  static Completion Failed(const std::string& error, int exit_code = 1) {
    Completion c;
    c.outcome = Outcome::kFailed;
    c.error = error;
    c.exit_code = exit_code;
    return c;
  }

  FakeClock clock_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Scheduler> scheduler_;
};

TEST_F(SchedulerTest, LeasesFitFreeSlotsAndParallel) {
  Submit("a", "parallel: 2\n");
  const int64_t w = Worker("w1");
  absl::StatusOr<std::vector<Lease>> leases = scheduler_->LeaseTrials(w, 0, 4, 10);
  ASSERT_OK(leases);
  ASSERT_EQ(leases->size(), 2u);  // parallel: 2
  EXPECT_EQ((*leases)[0].attempt, 1);
  EXPECT_EQ((*leases)[0].cpu_slots, 1);
  EXPECT_TRUE((*leases)[0].command.empty());
  EXPECT_NE((*leases)[0].config.find("lr: 0.001"), std::string::npos);
  // What the worker needs to report the metric and to fill `${params}`.
  EXPECT_EQ((*leases)[0].metric_name, "loss/val");
  EXPECT_TRUE((*leases)[0].minimize);
  EXPECT_EQ((*leases)[0].params_json, R"({"optim.lr":0.001})");
  EXPECT_EQ((*leases)[1].params_json, R"({"optim.lr":0.003})");
  EXPECT_EQ(scheduler_->LeaseTrials(w, 0, 4, 10)->size(), 0u);

  Submit("gpu", "resources: {gpus_per_trial: 2}\nmetric: {name: eval/acc, goal: maximize}\n");
  EXPECT_EQ(scheduler_->LeaseTrials(w, 1, 4, 10)->size(), 0u);  // needs 2 GPUs
  leases = scheduler_->LeaseTrials(w, 5, 0, 10);
  ASSERT_EQ(leases->size(), 2u);  // 5 GPUs: two trials
  EXPECT_EQ((*leases)[0].metric_name, "eval/acc");
  EXPECT_FALSE((*leases)[0].minimize);
  EXPECT_EQ(scheduler_->LeaseTrials(999, 5, 5, 10).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SchedulerTest, ADataParallelCpuTrialTakesItsSlotsForEveryRank) {
  Submit("ranks", "resources: {ranks_per_trial: 2, cpu_slots_per_trial: 2}\n");
  const int64_t w = Worker("w1", 8);
  EXPECT_EQ(scheduler_->LeaseTrials(w, 0, 3, 10)->size(), 0u);  // needs 2 ranks x 2 slots
  std::vector<Lease> leases = *scheduler_->LeaseTrials(w, 0, 9, 10);
  ASSERT_EQ(leases.size(), 2u);  // 9 slots: two trials of 4
  EXPECT_EQ(leases[0].ranks, 2);
  EXPECT_EQ(leases[0].cpu_slots, 4);
  EXPECT_EQ(leases[0].gpus, 0);
  // A GPU trial runs a rank per GPU and takes no CPU slot.
  Submit("gpu2", "resources: {gpus_per_trial: 2}\n");
  leases = *scheduler_->LeaseTrials(w, 2, 0, 10);
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_EQ(leases[0].ranks, 2);
  EXPECT_EQ(leases[0].cpu_slots, 0);
  // What a restarted worker is told it holds says the same.
  absl::StatusOr<std::vector<Lease>> held_trials = scheduler_->HeldTrials(w);
  ASSERT_OK(held_trials);
  ASSERT_EQ(held_trials->size(), 3u);
  for (const Lease& held : *held_trials) {
    EXPECT_EQ(held.ranks, 2) << held.sweep_name;
    EXPECT_EQ(held.cpu_slots, held.sweep_name == "ranks" ? 4 : 0) << held.sweep_name;
  }
}

TEST_F(SchedulerTest, GpuSharesFitTrialsOnDistinctGpus) {
  Submit("one", "resources: {gpus_per_trial: 1}\n");
  const int64_t w = Worker("w1", 0, 2);
  // Two GPUs with three free shares each (trials_per_gpu 3): all three one-GPU trials.
  FreeResources free;
  free.gpu_shares = {3, 3};
  EXPECT_EQ(scheduler_->LeaseTrials(w, free, 10)->size(), 3u);
  // Two-GPU trials: a share on each of two GPUs. {3, 0} holds none, {2, 1, 1} holds two
  // ({2,1,1} -> {1,0,1} -> {0,0,0}), {5, 1} one.
  Submit("two", "resources: {gpus_per_trial: 2}\n");  // Three trials, released after each case.
  struct Case {
    std::vector<int> shares;
    size_t expected;
  } cases[] = {{{3, 0}, 0}, {{2, 1, 1}, 2}, {{5, 1}, 1}, {{1, 1, 1, 1}, 2}, {{2, 2, 2}, 3}};
  for (const Case& c : cases) {
    free.gpu_shares = c.shares;
    std::vector<Lease> leases = *scheduler_->LeaseTrials(w, free, 10);
    EXPECT_EQ(leases.size(), c.expected) << ::testing::PrintToString(c.shares);
    for (const Lease& lease : leases) {
      EXPECT_EQ(lease.gpus, 2);
      ASSERT_OK(scheduler_->Complete(lease.trial_id, lease.attempt, Released("test")));
    }
  }
  // max_trials still caps it.
  free.gpu_shares = {4, 4};
  EXPECT_EQ(scheduler_->LeaseTrials(w, free, 1)->size(), 1u);
}

TEST_F(SchedulerTest, ExpiredLeasesRequeueWithTheirCheckpointAndFenceTheOldAttempt) {
  Submit("a");
  const int64_t w1 = Worker("w1"), w2 = Worker("w2");
  Lease lease = scheduler_->LeaseTrials(w1, 0, 1, 1)->at(0);
  ASSERT_OK(scheduler_->MarkRunning(lease.trial_id, 1));
  ASSERT_OK(scheduler_->ReportCheckpoint(lease.trial_id, 1, "/runs/a/1/attempt-1/checkpoints/0000000100", 100));
  clock_.Advance(20);
  ASSERT_OK(scheduler_->Heartbeat(w1, {{lease.trial_id, 1, 120}}));  // renews to +30
  clock_.Advance(25);
  EXPECT_EQ(*scheduler_->ExpireLeases(), 0);
  clock_.Advance(10);  // 35 s since the last heartbeat
  EXPECT_EQ(*scheduler_->ExpireLeases(), 1);
  EXPECT_EQ(State(lease.trial_id), "pending/1");

  // The old attempt is fenced off everywhere.
  EXPECT_EQ(scheduler_->Complete(lease.trial_id, 1, {}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->InsertMetrics({{lease.trial_id, 1, "loss/out", 130, 2.0, 0}}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<std::vector<StopRequest>> stops = scheduler_->Heartbeat(w1, {{lease.trial_id, 1, 130}});
  ASSERT_EQ(stops->size(), 1u);
  EXPECT_EQ(stops->at(0).reason, "lease lost (requeued or reassigned)");

  // The next attempt resumes from the checkpoint.
  Lease again = scheduler_->LeaseTrials(w2, 0, 4, 1)->at(0);
  EXPECT_EQ(again.trial_id, lease.trial_id);
  EXPECT_EQ(again.attempt, 2);
  ASSERT_TRUE(again.checkpoint.has_value());
  EXPECT_EQ(*again.checkpoint, "/runs/a/1/attempt-1/checkpoints/0000000100");
  EXPECT_EQ(*store_->InsertMetrics({{again.trial_id, 2, "loss/out", 130, 2.0, 0}}), 1);
  ASSERT_OK(scheduler_->Complete(again.trial_id, 2, {Outcome::kCompleted, 300, 1.5}));
  EXPECT_EQ(State(again.trial_id), "completed/2");
}

TEST_F(SchedulerTest, MaxAttemptsFailsTheTrialWithEveryReason) {
  Submit("a", "max_attempts: 2\n");
  const int64_t w = Worker("w1");
  int64_t trial = 0;
  for (int attempt = 1; attempt <= 2; ++attempt) {
    Lease lease = scheduler_->LeaseTrials(w, 0, 1, 1)->at(0);
    trial = lease.trial_id;
    EXPECT_EQ(lease.attempt, attempt);
    clock_.Advance(31);
    EXPECT_EQ(*scheduler_->ExpireLeases(), 1);
  }
  EXPECT_EQ(State(trial), "failed/2");
  const std::string error = QueryScalar(store_->db(), "SELECT error FROM trials WHERE id = " + std::to_string(trial));
  EXPECT_NE(error.find("attempt 1: lease expired"), std::string::npos) << error;
  EXPECT_NE(error.find("attempt 2: lease expired"), std::string::npos) << error;
}

TEST_F(SchedulerTest, RepeatedFailuresQuarantineAWorker) {
  Submit("a");
  Submit("b");
  const int64_t w = Worker("flaky");
  int64_t trial = 0;
  for (int i = 0; i < 3; ++i) {
    Lease lease = scheduler_->LeaseTrials(w, 0, 1, 1)->at(0);
    trial = lease.trial_id;
    ASSERT_OK(scheduler_->Complete(lease.trial_id, lease.attempt, {Outcome::kFailed, 0, {}, 0, "CUDA error"}));
  }
  // A failed trial is retried first (max_attempts 3): the worker failed one trial three times.
  EXPECT_EQ(State(trial), "failed/3");
  EXPECT_EQ(QueryScalar(store_->db(), "SELECT consecutive_failures FROM workers WHERE id = " + std::to_string(w)), "3");
  absl::StatusOr<std::vector<Lease>> refused = scheduler_->LeaseTrials(w, 0, 1, 1);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("quarantined"), std::string::npos);
  ASSERT_OK(scheduler_->ReleaseWorker("flaky"));
  EXPECT_EQ(scheduler_->LeaseTrials(w, 0, 1, 1)->size(), 1u);
}

TEST_F(SchedulerTest, PauseResumeAndCancel) {
  const int64_t sweep = Submit("a");
  const int64_t w = Worker("w1");
  Lease running = scheduler_->LeaseTrials(w, 0, 1, 1)->at(0);
  ASSERT_OK(scheduler_->PauseSweep("a", /*stop_running=*/true));
  EXPECT_EQ(scheduler_->LeaseTrials(w, 0, 4, 10)->size(), 0u);
  absl::StatusOr<std::vector<StopRequest>> stops = scheduler_->Heartbeat(w, {{running.trial_id, 1, 50}});
  ASSERT_EQ(stops->size(), 1u);
  EXPECT_EQ(stops->at(0).reason, "stop requested");
  // The worker stops it with a checkpoint: it waits as pending and resumes later.
  ASSERT_OK(scheduler_->ReportCheckpoint(running.trial_id, 1, "/ckpt/50", 50));
  ASSERT_OK(scheduler_->Complete(running.trial_id, 1, {Outcome::kStopped, 50}));
  EXPECT_EQ(State(running.trial_id), "pending/1");

  ASSERT_OK(scheduler_->ResumeSweep(std::to_string(sweep)));
  std::vector<Lease> leases = *scheduler_->LeaseTrials(w, 0, 4, 10);
  ASSERT_EQ(leases.size(), 3u);
  EXPECT_EQ(*leases[0].checkpoint, "/ckpt/50");

  ASSERT_OK(scheduler_->CancelSweep("a"));
  stops = scheduler_->Heartbeat(w, {{leases[0].trial_id, leases[0].attempt, 60}});
  ASSERT_EQ(stops->size(), 1u);
  EXPECT_EQ(stops->at(0).reason, "sweep cancelled");
  ASSERT_OK(scheduler_->Complete(leases[0].trial_id, leases[0].attempt, {Outcome::kStopped, 60}));
  EXPECT_EQ(State(leases[0].trial_id), "cancelled/2");
  EXPECT_EQ(QueryScalar(store_->db(), "SELECT state FROM sweeps WHERE id = " + std::to_string(sweep)), "cancelled");
  EXPECT_EQ(scheduler_->PauseSweep("nope", false).code(), absl::StatusCode::kNotFound);
}

TEST_F(SchedulerTest, SweepCompletesWhenNoTrialIsLeftAndRetryReopensIt) {
  const int64_t sweep = Submit("a");
  const int64_t w = Worker("w1");
  std::vector<Lease> leases = *scheduler_->LeaseTrials(w, 0, 4, 10);
  ASSERT_EQ(leases.size(), 3u);
  ASSERT_OK(scheduler_->Complete(leases[0].trial_id, 1, {Outcome::kCompleted, 100, 1.7}));
  ASSERT_OK(scheduler_->Complete(leases[1].trial_id, 1, {Outcome::kDiverged, 12, {}, 12}));
  EXPECT_EQ(QueryScalar(store_->db(), "SELECT state FROM sweeps WHERE id = " + std::to_string(sweep)), "running");
  ASSERT_OK(scheduler_->Complete(leases[2].trial_id, 1, {Outcome::kCompleted, 100, 1.6}));
  EXPECT_EQ(QueryScalar(store_->db(), "SELECT state FROM sweeps WHERE id = " + std::to_string(sweep)), "completed");
  EXPECT_EQ(QueryScalar(store_->db(), "SELECT diverged_step FROM trials WHERE id = " + std::to_string(leases[1].trial_id)), "12");

  ASSERT_OK(scheduler_->RetryTrial(leases[1].trial_id));
  EXPECT_EQ(QueryScalar(store_->db(), "SELECT state FROM sweeps WHERE id = " + std::to_string(sweep)), "running");
  EXPECT_EQ(scheduler_->LeaseTrials(w, 0, 4, 10)->at(0).attempt, 2);
  EXPECT_EQ(scheduler_->RetryTrial(leases[0].trial_id).code(), absl::StatusCode::kFailedPrecondition);  // completed
  // Every transition is in the audit log.
  EXPECT_EQ(QueryScalar(store_->db(), "SELECT COUNT(*) FROM events WHERE trial_id = " + std::to_string(leases[1].trial_id)),
            "4");  // leased, diverged, retry, leased
}

TEST_F(SchedulerTest, CancellingOneTrial) {
  Submit("a");
  const int64_t w = Worker("w1");
  Lease running = scheduler_->LeaseTrials(w, 0, 1, 1)->at(0);
  const int64_t waiting = running.trial_id + 1;
  ASSERT_OK(scheduler_->CancelTrial(waiting));
  EXPECT_EQ(State(waiting), "cancelled/0");
  ASSERT_OK(scheduler_->CancelTrial(running.trial_id));
  absl::StatusOr<std::vector<StopRequest>> stops = scheduler_->Heartbeat(w, {{running.trial_id, 1, 5}});
  ASSERT_EQ(stops->size(), 1u);
  EXPECT_EQ(stops->at(0).reason, "trial cancelled");
  ASSERT_OK(scheduler_->Complete(running.trial_id, 1, {Outcome::kStopped, 5}));
  EXPECT_EQ(State(running.trial_id), "cancelled/1");
  EXPECT_EQ(scheduler_->CancelTrial(running.trial_id).code(), absl::StatusCode::kFailedPrecondition);
  // The last trial still runs to completion.
  Lease last = scheduler_->LeaseTrials(w, 0, 1, 1)->at(0);
  EXPECT_EQ(last.trial_id, running.trial_id + 2);
}

TEST_F(SchedulerTest, WorkersReattachByName) {
  const int64_t first = Worker("node-7", 2);
  const int64_t again = Worker("node-7", 8);
  EXPECT_EQ(first, again);
  EXPECT_EQ(QueryScalar(store_->db(), "SELECT cpu_slots FROM workers WHERE id = " + std::to_string(first)), "8");
  EXPECT_EQ(scheduler_->RegisterWorker({"", "h", 0, 1, "{}"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(scheduler_->RegisterWorker({"x", "h", 0, 0, "{}"}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SchedulerTest, ReleasedTrialsArePendingAtOnceAndCountAsNoFailure) {
  Submit("a", "max_attempts: 1\n");
  const int64_t w = Worker("w1");
  // One real failure first, so there is a count the release must leave alone.
  Lease failing = LeaseOne(w);
  ASSERT_OK(scheduler_->Complete(failing.trial_id, 1, Failed("CUDA error")));
  EXPECT_EQ(State(failing.trial_id), "failed/1");  // max_attempts: 1

  Lease lease = LeaseOne(w);
  ASSERT_OK(scheduler_->MarkRunning(lease.trial_id, 1));
  ASSERT_OK(scheduler_->ReportCheckpoint(lease.trial_id, 1, "/ckpt/10", 10));
  Completion released = Released("worker shutting down");
  released.last_step = 25;
  released.checkpoint = "/ckpt/20";
  ASSERT_OK(scheduler_->Complete(lease.trial_id, 1, released));
  EXPECT_EQ(State(lease.trial_id), "pending/1");
  EXPECT_EQ(Column(lease.trial_id, "worker_id"), "");
  EXPECT_EQ(Column(lease.trial_id, "lease_expires_at"), "");
  EXPECT_EQ(Column(lease.trial_id, "finished_at"), "");
  EXPECT_EQ(Column(lease.trial_id, "error"), "");
  EXPECT_EQ(Column(lease.trial_id, "attempt_errors"), "[]");
  EXPECT_EQ(Column(lease.trial_id, "checkpoint"), "/ckpt/20");
  EXPECT_EQ(Column(lease.trial_id, "checkpoint_step"), "");  // a new checkpoint, step unknown
  EXPECT_EQ(LastEvent(lease.trial_id), "released: attempt 1: worker shutting down");
  EXPECT_EQ(QueryScalar(store_->db(), "SELECT consecutive_failures FROM workers WHERE id = " + std::to_string(w)), "1");
  // The handed-back attempt is fenced off like any other.
  EXPECT_EQ(scheduler_->Complete(lease.trial_id, 1, released).code(), absl::StatusCode::kFailedPrecondition);

  // With max_attempts: 1 the trial still runs again, from the handed-back checkpoint.
  Lease again = LeaseOne(w);
  EXPECT_EQ(again.trial_id, lease.trial_id);
  EXPECT_EQ(again.attempt, 2);
  ASSERT_TRUE(again.checkpoint.has_value());
  EXPECT_EQ(*again.checkpoint, "/ckpt/20");
  ASSERT_OK(scheduler_->Complete(again.trial_id, 2, {Outcome::kCompleted, 100, 1.5}));
  EXPECT_EQ(State(again.trial_id), "completed/2");
}

TEST_F(SchedulerTest, CancelledTrialsNeverGoBackToPending) {
  Submit("a", "max_attempts: 5\n");
  const int64_t w = Worker("w1");
  std::vector<Lease> leases = *scheduler_->LeaseTrials(w, 0, 4, 10);
  ASSERT_EQ(leases.size(), 3u);
  for (const Lease& lease : leases) ASSERT_OK(scheduler_->CancelTrial(lease.trial_id));
  // Handed back, failed with attempts left, or lost: each ends cancelled, not pending.
  ASSERT_OK(scheduler_->Complete(leases[0].trial_id, 1, Released("worker restarting")));
  EXPECT_EQ(State(leases[0].trial_id), "cancelled/1");
  EXPECT_NE(Column(leases[0].trial_id, "finished_at"), "");
  EXPECT_EQ(LastEvent(leases[0].trial_id), "released: attempt 1: worker restarting; trial cancelled");
  ASSERT_OK(scheduler_->Complete(leases[1].trial_id, 1, Failed("killed")));
  EXPECT_EQ(State(leases[1].trial_id), "cancelled/1");
  EXPECT_EQ(Column(leases[1].trial_id, "attempt_errors"), R"(["attempt 1: killed"])");
  clock_.Advance(31);
  EXPECT_EQ(*scheduler_->ExpireLeases(), 1);
  EXPECT_EQ(State(leases[2].trial_id), "cancelled/1");
  EXPECT_EQ(LastEvent(leases[2].trial_id), "cancelled: lease expired");

  // The same when the whole sweep is cancelled.
  Submit("b");
  Lease lease = LeaseOne(w);
  ASSERT_OK(scheduler_->CancelSweep("b"));
  ASSERT_OK(scheduler_->Complete(lease.trial_id, 1, Released("worker shutting down")));
  EXPECT_EQ(State(lease.trial_id), "cancelled/1");
  EXPECT_EQ(QueryScalar(store_->db(), "SELECT COUNT(*) FROM trials WHERE state = 'pending'"), "0");
}

TEST_F(SchedulerTest, FailedAttemptsAreRetriedUntilMaxAttempts) {
  Submit("a", "max_attempts: 3\n");
  const int64_t w1 = Worker("w1"), w2 = Worker("w2");
  Lease lease = LeaseOne(w1);
  const int64_t trial = lease.trial_id;
  ASSERT_OK(scheduler_->ReportCheckpoint(trial, 1, "/ckpt/100", 100));
  ASSERT_OK(scheduler_->Complete(trial, 1, Failed("CUDA error")));
  EXPECT_EQ(State(trial), "pending/1");
  EXPECT_EQ(Column(trial, "attempt_errors"), R"(["attempt 1: CUDA error"])");
  EXPECT_EQ(Column(trial, "error"), "");
  EXPECT_EQ(Column(trial, "worker_id"), "");
  EXPECT_EQ(Column(trial, "finished_at"), "");
  EXPECT_EQ(LastEvent(trial), "requeued: attempt 1, exit 1: CUDA error (failed attempt 1 of 3)");

  // The retry resumes from the checkpoint, on whichever worker leases it.
  lease = LeaseOne(w2);
  EXPECT_EQ(lease.trial_id, trial);
  EXPECT_EQ(lease.attempt, 2);
  EXPECT_EQ(lease.checkpoint.value_or(""), "/ckpt/100");
  ASSERT_OK(scheduler_->Complete(trial, 2, Failed("NCCL timeout")));
  EXPECT_EQ(State(trial), "pending/2");

  lease = LeaseOne(w1);
  ASSERT_OK(scheduler_->Complete(trial, 3, Failed("out of memory", 137)));
  EXPECT_EQ(State(trial), "failed/3");
  EXPECT_EQ(Column(trial, "error"), "failed after 3 attempts: out of memory");
  EXPECT_EQ(Column(trial, "attempt_errors"),
            R"(["attempt 1: CUDA error","attempt 2: NCCL timeout","attempt 3: out of memory"])");
  EXPECT_NE(Column(trial, "finished_at"), "");
  EXPECT_EQ(LastEvent(trial), "failed: attempt 3, exit 137: out of memory");
  // Quarantine bookkeeping counts every failed attempt, retried or not.
  EXPECT_EQ(QueryScalar(store_->db(), "SELECT consecutive_failures FROM workers WHERE id = " + std::to_string(w1)), "2");
  EXPECT_EQ(QueryScalar(store_->db(), "SELECT consecutive_failures FROM workers WHERE id = " + std::to_string(w2)), "1");
}

TEST_F(SchedulerTest, ReleasesAndPauseStopsDoNotUseUpMaxAttempts) {
  const int64_t sweep = Submit("a", "max_attempts: 2\n");
  const int64_t w = Worker("w1");
  // Attempt 1 is stopped for a pause, attempt 2 handed back: neither failed.
  Lease lease = LeaseOne(w);
  const int64_t trial = lease.trial_id;
  ASSERT_OK(scheduler_->PauseSweep("a", /*stop_running=*/true));
  ASSERT_OK(scheduler_->Complete(trial, 1, {Outcome::kStopped, 10}));
  ASSERT_OK(scheduler_->ResumeSweep("a"));
  EXPECT_EQ(LeaseOne(w).attempt, 2);
  ASSERT_OK(scheduler_->Complete(trial, 2, Released("worker shutting down")));
  // Other trials out of the way, so this one is the sweep's last.
  ASSERT_OK(scheduler_->CancelTrial(trial + 1));
  ASSERT_OK(scheduler_->CancelTrial(trial + 2));

  // Attempt 3 is lost: the first failure of two allowed, so it is requeued.
  EXPECT_EQ(LeaseOne(w).attempt, 3);
  clock_.Advance(31);
  EXPECT_EQ(*scheduler_->ExpireLeases(), 1);
  EXPECT_EQ(State(trial), "pending/3");
  EXPECT_EQ(LastEvent(trial), "requeued: lease expired");

  // Attempt 4 is lost too: two failed attempts, it gives up and the sweep is over.
  EXPECT_EQ(LeaseOne(w).attempt, 4);
  clock_.Advance(31);
  EXPECT_EQ(*scheduler_->ExpireLeases(), 1);
  EXPECT_EQ(State(trial), "failed/4");
  const std::string error = Column(trial, "error");
  EXPECT_EQ(error.rfind("failed after 2 attempts: ", 0), 0u) << error;
  EXPECT_NE(error.find("attempt 4: lease expired"), std::string::npos) << error;
  EXPECT_EQ(QueryScalar(store_->db(), "SELECT state FROM sweeps WHERE id = " + std::to_string(sweep)), "completed");
}

TEST_F(SchedulerTest, CompletionsCarryBestMetricCheckpointAndExitCode) {
  Submit("a");
  const int64_t w = Worker("w1");
  std::vector<Lease> leases = *scheduler_->LeaseTrials(w, 0, 4, 10);
  ASSERT_EQ(leases.size(), 3u);
  const int64_t done = leases[0].trial_id, diverged = leases[1].trial_id, kept = leases[2].trial_id;

  ASSERT_OK(scheduler_->ReportCheckpoint(done, 1, "/ckpt/a/200", 200));
  Completion c{Outcome::kCompleted, 300, 1.5};
  c.best_metric = 1.25;
  c.checkpoint = "/ckpt/a/300";
  ASSERT_OK(scheduler_->Complete(done, 1, c));
  EXPECT_EQ(Column(done, "final_metric"), "1.5");
  EXPECT_EQ(Column(done, "best_metric"), "1.25");
  EXPECT_EQ(Column(done, "checkpoint"), "/ckpt/a/300");
  EXPECT_EQ(LastEvent(done), "completed: attempt 1");  // exit 0 goes without saying
  EXPECT_EQ(QueryScalar(store_->db(), "SELECT best_metric FROM trial_summary WHERE trial_id = " + std::to_string(done)), "1.25");
  absl::StatusOr<TrialRow> row = store_->GetTrial(done);
  ASSERT_OK(row);
  EXPECT_EQ(row->best_metric.value_or(0), 1.25);

  Completion d{Outcome::kDiverged, 12, {}, 12, "loss is nan"};
  d.exit_code = 3;
  ASSERT_OK(scheduler_->Complete(diverged, 1, d));
  EXPECT_EQ(LastEvent(diverged), "diverged: attempt 1, exit 3: loss is nan");
  EXPECT_EQ(Column(diverged, "best_metric"), "");

  // No checkpoint in the completion, or the one already reported: the reported one and its
  // step stay.
  ASSERT_OK(scheduler_->ReportCheckpoint(kept, 1, "/ckpt/c/50", 50));
  Completion same{Outcome::kStopped, 60};
  same.checkpoint = "/ckpt/c/50";
  ASSERT_OK(scheduler_->PauseSweep("a", /*stop_running=*/true));
  ASSERT_OK(scheduler_->Complete(kept, 1, same));
  EXPECT_EQ(Column(kept, "checkpoint") + "@" + Column(kept, "checkpoint_step"), "/ckpt/c/50@50");
}

TEST_F(SchedulerTest, ARestartedWorkerGetsItsHeldTrialsWithRenewedLeases) {
  Submit("a");
  const int64_t w1 = Worker("node-1"), w2 = Worker("node-2");
  std::vector<Lease> leases = *scheduler_->LeaseTrials(w1, 0, 2, 2);
  ASSERT_EQ(leases.size(), 2u);
  ASSERT_OK(scheduler_->MarkRunning(leases[1].trial_id, 1));
  ASSERT_OK(scheduler_->ReportCheckpoint(leases[1].trial_id, 1, "/ckpt/7", 7));
  const Lease other = LeaseOne(w2);

  // node-1 restarts 20 s later and registers again: it holds both, at the same attempts.
  clock_.Advance(20);
  ASSERT_EQ(Worker("node-1", 2), w1);
  absl::StatusOr<std::vector<Lease>> held = scheduler_->HeldTrials(w1);
  ASSERT_OK(held);
  ASSERT_EQ(held->size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const Lease& h = (*held)[i];
    const Lease& l = leases[i];
    EXPECT_EQ(h.trial_id, l.trial_id);
    EXPECT_EQ(h.attempt, 1);
    EXPECT_EQ(h.sweep_id, l.sweep_id);
    EXPECT_EQ(h.sweep_name, l.sweep_name);
    EXPECT_EQ(h.trial_key, l.trial_key);
    EXPECT_EQ(h.config, l.config);
    EXPECT_EQ(h.command, l.command);
    EXPECT_EQ(h.gpus, l.gpus);
    EXPECT_EQ(h.cpu_slots, l.cpu_slots);
    EXPECT_EQ(h.metric_name, l.metric_name);
    EXPECT_EQ(h.minimize, l.minimize);
    EXPECT_EQ(h.params_json, l.params_json);
    EXPECT_EQ(h.expires_at, clock_.Now() + 30);  // renewed at registration
  }
  EXPECT_FALSE((*held)[0].checkpoint.has_value());
  EXPECT_EQ((*held)[1].checkpoint.value_or(""), "/ckpt/7");  // resume point as of now

  // 45 s after leasing, only node-2's lease has run out.
  clock_.Advance(25);
  EXPECT_EQ(*scheduler_->ExpireLeases(), 1);
  EXPECT_EQ(State(other.trial_id), "pending/1");
  EXPECT_EQ(scheduler_->HeldTrials(w2)->size(), 0u);
  // Handing one back leaves the other held.
  ASSERT_OK(scheduler_->Complete(leases[0].trial_id, 1, Released("reconciled after restart")));
  held = scheduler_->HeldTrials(w1);
  ASSERT_EQ(held->size(), 1u);
  EXPECT_EQ((*held)[0].trial_id, leases[1].trial_id);
  EXPECT_EQ(scheduler_->HeldTrials(999)->size(), 0u);
}

}  // namespace
}  // namespace sweep::orchestrator
