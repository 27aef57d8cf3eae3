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
  EXPECT_EQ(scheduler_->LeaseTrials(w, 0, 4, 10)->size(), 0u);

  Submit("gpu", "resources: {gpus_per_trial: 2}\n");
  EXPECT_EQ(scheduler_->LeaseTrials(w, 1, 4, 10)->size(), 0u);  // needs 2 GPUs
  EXPECT_EQ(scheduler_->LeaseTrials(w, 5, 0, 10)->size(), 2u);  // 5 GPUs: two trials
  EXPECT_EQ(scheduler_->LeaseTrials(999, 5, 5, 10).status().code(), absl::StatusCode::kNotFound);
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
  for (int i = 0; i < 3; ++i) {
    Lease lease = scheduler_->LeaseTrials(w, 0, 1, 1)->at(0);
    ASSERT_OK(scheduler_->Complete(lease.trial_id, lease.attempt, {Outcome::kFailed, 0, {}, 0, "CUDA error"}));
  }
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

}  // namespace
}  // namespace sweep::orchestrator
