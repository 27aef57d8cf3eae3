// The gRPC service in-process (server->InProcessChannel): auth, error mapping, the worker
// protocol with fencing, and the read-only query RPC.
#include "orchestrator/service.h"

#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>

#include "tests/orchestrator/fake_clock.h"

namespace sweep::orchestrator {
namespace {
namespace fs = std::filesystem;
using grpc::StatusCode;

constexpr char kToken[] = "0123456789abcdef-test-token";
constexpr char kSpec[] = R"(name: svc
method: grid
base: {steps: 20, data: {sources: {kjv: 1}}}
parameters:
  optim.lr: {values: [1e-3, 3e-3]}
)";

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string dir = fs::temp_directory_path() / "sweep-svc-XXXXXX";
    db_path_ = std::string(mkdtemp(dir.data())) + "/sweep.db";
    store_ = *Store::Open(db_path_);
    scheduler_ = std::make_unique<Scheduler>(store_.get(), &clock_, SchedulerOptions{30, 5});
    ServiceOptions options;
    options.db_path = db_path_;
    options.token = kToken;
    options.query_max_rows = 5;
    service_ = std::make_unique<OrchestratorService>(store_.get(), scheduler_.get(), &clock_, options);
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    stub_ = v1::Orchestrator::NewStub(server_->InProcessChannel({}));
  }
  void TearDown() override { server_->Shutdown(); }

  std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token = kToken) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
    return ctx;
  }

  int64_t RegisterWorker(const std::string& name, v1::RegisterWorkerResponse* resp) {
    v1::RegisterWorkerRequest req;
    req.set_name(name);
    req.set_cpu_slots(2);
    grpc::Status s = stub_->RegisterWorker(Ctx().get(), req, resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp->worker_id();
  }

  std::vector<v1::Lease> Lease(int64_t worker, int max_trials = 1) {
    v1::LeaseTrialsRequest req;
    req.set_worker_id(worker);
    req.set_free_cpu_slots(2);
    req.set_max_trials(max_trials);
    v1::LeaseTrialsResponse resp;
    grpc::Status s = stub_->LeaseTrials(Ctx().get(), req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return {resp.leases().begin(), resp.leases().end()};
  }

  grpc::Status Complete(const v1::CompleteTrialRequest& req) {
    v1::Ack ack;
    return stub_->CompleteTrial(Ctx().get(), req, &ack);
  }

  v1::Trial GetTrial(int64_t trial_id) {
    v1::TrialRef ref;
    ref.set_trial_id(trial_id);
    v1::Trial trial;
    grpc::Status s = stub_->GetTrial(Ctx().get(), ref, &trial);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return trial;
  }

  v1::Sweep Submit(const std::string& spec = kSpec) {
    v1::SubmitSweepRequest req;
    req.set_spec_yaml(spec);
    req.set_origin("svc.yaml");
    v1::SubmitSweepResponse resp;
    grpc::Status s = stub_->SubmitSweep(Ctx().get(), req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.sweep();
  }

  std::string db_path_;
  FakeClock clock_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<OrchestratorService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Orchestrator::Stub> stub_;
};

TEST_F(ServiceTest, CallsWithoutTheRightTokenAreUnauthenticated) {
  v1::ListSweepsResponse resp;
  EXPECT_EQ(stub_->ListSweeps(Ctx("").get(), {}, &resp).error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(stub_->ListSweeps(Ctx("wrong-token-of-some-length").get(), {}, &resp).error_code(),
            StatusCode::UNAUTHENTICATED);
  v1::RegisterWorkerResponse reg;
  v1::RegisterWorkerRequest req;
  req.set_name("w");
  req.set_cpu_slots(1);
  EXPECT_EQ(stub_->RegisterWorker(Ctx("").get(), req, &reg).error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(stub_->ListSweeps(Ctx().get(), {}, &resp).ok());
}

TEST_F(ServiceTest, SubmitReportsSpecErrorsAndAttachesOnResubmit) {
  v1::SubmitSweepRequest bad;
  bad.set_spec_yaml("name: x\nmethod: grid\nparameters: {optim.lrr: {values: [1]}}\n");
  bad.set_origin("x.yaml");
  v1::SubmitSweepResponse resp;
  grpc::Status s = stub_->SubmitSweep(Ctx().get(), bad, &resp);
  EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("x.yaml:3:14: parameters.optim.lrr"), std::string::npos)
      << s.error_message();

  v1::Sweep sweep = Submit();
  EXPECT_EQ(sweep.trials_by_state().at("pending"), 2);
  v1::SubmitSweepRequest again;
  again.set_spec_yaml(kSpec);
  ASSERT_TRUE(stub_->SubmitSweep(Ctx().get(), again, &resp).ok());
  EXPECT_FALSE(resp.created());
  EXPECT_EQ(resp.sweep().id(), sweep.id());
}

TEST_F(ServiceTest, WorkerProtocolWithFencing) {
  Submit();
  v1::RegisterWorkerRequest reg;
  reg.set_name("w1");
  reg.set_cpu_slots(2);
  v1::RegisterWorkerResponse worker;
  ASSERT_TRUE(stub_->RegisterWorker(Ctx().get(), reg, &worker).ok());
  EXPECT_EQ(worker.lease_ttl_seconds(), 30);
  EXPECT_EQ(worker.held_size(), 0);

  v1::LeaseTrialsRequest lease_req;
  lease_req.set_worker_id(worker.worker_id());
  lease_req.set_free_cpu_slots(1);
  lease_req.set_max_trials(4);
  v1::LeaseTrialsResponse leases;
  ASSERT_TRUE(stub_->LeaseTrials(Ctx().get(), lease_req, &leases).ok());
  ASSERT_EQ(leases.leases_size(), 1);
  const v1::Lease lease = leases.leases(0);
  EXPECT_EQ(lease.attempt(), 1);
  EXPECT_NE(lease.config_yaml().find("lr: 0.001"), std::string::npos);
  EXPECT_EQ(lease.metric_name(), "loss/val");
  EXPECT_TRUE(lease.minimize());
  EXPECT_EQ(lease.params_json(), R"({"optim.lr":0.001})");

  v1::TrialAttempt start;
  start.set_trial_id(lease.trial_id());
  start.set_attempt(1);
  v1::Ack ack;
  ASSERT_TRUE(stub_->StartTrial(Ctx().get(), start, &ack).ok());

  // Stream metrics, with a NaN and a re-sent batch.
  v1::StreamMetricsResponse stream_resp;
  {
    auto ctx = Ctx();
    auto writer = stub_->StreamMetrics(ctx.get(), &stream_resp);
    v1::MetricsBatch batch;
    batch.set_trial_id(lease.trial_id());
    batch.set_attempt(1);
    for (int step = 1; step <= 20; ++step) {
      v1::Metric* m = batch.add_metrics();
      m->set_name("loss/out");
      m->set_step(step);
      m->set_value(step == 20 ? std::numeric_limits<double>::quiet_NaN() : 5.0 / step);
    }
    ASSERT_TRUE(writer->Write(batch));
    ASSERT_TRUE(writer->Write(batch));  // a retry after a lost reply
    writer->WritesDone();
    ASSERT_TRUE(writer->Finish().ok());
  }
  EXPECT_EQ(stream_resp.rows_received(), 40);
  EXPECT_EQ(stream_resp.rows_stored(), 20);

  // A stale attempt is fenced off.
  v1::CompleteTrialRequest stale;
  stale.set_trial_id(lease.trial_id());
  stale.set_attempt(7);
  stale.set_outcome(v1::CompleteTrialRequest::COMPLETED);
  EXPECT_EQ(stub_->CompleteTrial(Ctx().get(), stale, &ack).error_code(), StatusCode::FAILED_PRECONDITION);

  v1::CompleteTrialRequest done;
  done.set_trial_id(lease.trial_id());
  done.set_attempt(1);
  done.set_outcome(v1::CompleteTrialRequest::DIVERGED);
  done.set_diverged_step(20);
  done.set_last_step(20);
  ASSERT_TRUE(stub_->CompleteTrial(Ctx().get(), done, &ack).ok());
  v1::ListTrialsRequest list;
  list.set_sweep("svc");
  list.set_state("diverged");
  v1::ListTrialsResponse trials;
  ASSERT_TRUE(stub_->ListTrials(Ctx().get(), list, &trials).ok());
  ASSERT_EQ(trials.trials_size(), 1);
  EXPECT_EQ(trials.trials(0).id(), lease.trial_id());

  // Heartbeats for a trial the worker no longer holds ask it to stop.
  v1::HeartbeatRequest hb;
  hb.set_worker_id(worker.worker_id());
  auto* p = hb.add_trials();
  p->set_trial_id(lease.trial_id());
  p->set_attempt(1);
  v1::HeartbeatResponse hb_resp;
  ASSERT_TRUE(stub_->Heartbeat(Ctx().get(), hb, &hb_resp).ok());
  ASSERT_EQ(hb_resp.stop_size(), 1);
}

TEST_F(ServiceTest, StreamedMetricsAreExaminedAndEarlyTerminationReachesTheWorker) {
  Submit(std::string(kSpec) + "early_terminate: [{type: divergence}]\n");
  v1::RegisterWorkerResponse worker;
  const int64_t worker_id = RegisterWorker("w1", &worker);
  const v1::Lease lease = Lease(worker_id).at(0);
  v1::StreamMetricsResponse stream_resp;
  {
    auto ctx = Ctx();
    auto writer = stub_->StreamMetrics(ctx.get(), &stream_resp);
    v1::MetricsBatch batch;
    batch.set_trial_id(lease.trial_id());
    batch.set_attempt(lease.attempt());
    for (int step = 1; step <= 40; ++step) {
      v1::Metric* m = batch.add_metrics();
      m->set_name("optim/grad_norm");
      m->set_step(step);
      m->set_value(step == 30   ? 50.0
                   : step == 35 ? std::numeric_limits<double>::quiet_NaN()
                                : 1.0 + 0.01 * (step % 4));
    }
    ASSERT_TRUE(writer->Write(batch));
    ASSERT_TRUE(writer->Write(batch));  // Re-sent: examined once.
    writer->WritesDone();
    ASSERT_TRUE(writer->Finish().ok());
  }
  EXPECT_EQ(stream_resp.rows_stored(), 40);
  v1::QueryRequest query;
  query.set_sql(
      "SELECT group_concat(step) || ' ' || (SELECT COUNT(*) FROM events WHERE kind = 'spike') FROM "
      "spikes");
  v1::QueryResponse rows;
  ASSERT_TRUE(stub_->Query(Ctx().get(), query, &rows).ok());
  EXPECT_EQ(rows.rows(0).values(0), "30 1");

  v1::HeartbeatRequest hb;
  hb.set_worker_id(worker_id);
  auto* p = hb.add_trials();
  p->set_trial_id(lease.trial_id());
  p->set_attempt(lease.attempt());
  v1::HeartbeatResponse hb_resp;
  ASSERT_TRUE(stub_->Heartbeat(Ctx().get(), hb, &hb_resp).ok());
  ASSERT_EQ(hb_resp.stop_size(), 1);
  EXPECT_EQ(hb_resp.stop(0).reason(),
            "early termination: divergence: optim/grad_norm = nan at step 35: not a finite number");

  v1::CompleteTrialRequest done;
  done.set_trial_id(lease.trial_id());
  done.set_attempt(lease.attempt());
  done.set_outcome(v1::CompleteTrialRequest::STOPPED);
  done.set_last_step(41);
  done.set_error(hb_resp.stop(0).reason());
  ASSERT_TRUE(Complete(done).ok());
  const v1::Trial trial = GetTrial(lease.trial_id());
  EXPECT_EQ(trial.state(), "diverged");
  EXPECT_EQ(trial.error(), "divergence: optim/grad_norm = nan at step 35: not a finite number");
}

TEST_F(ServiceTest, QueryReadsButNeverWrites) {
  Submit();
  v1::QueryRequest q;
  q.set_sql("SELECT trial_key, params FROM trials ORDER BY id");
  v1::QueryResponse resp;
  ASSERT_TRUE(stub_->Query(Ctx().get(), q, &resp).ok());
  ASSERT_EQ(resp.columns_size(), 2);
  ASSERT_EQ(resp.rows_size(), 2);
  EXPECT_EQ(resp.rows(0).values(0), "optim.lr=0.001");

  for (const char* sql : {"DELETE FROM trials", "UPDATE sweeps SET state = 'cancelled'",
                          "ATTACH DATABASE '/tmp/x.db' AS x", "PRAGMA journal_mode=DELETE",
                          "DROP TABLE metrics", "SELECT 1; DELETE FROM trials",
                          "CREATE TABLE t (x)"}) {
    v1::QueryResponse r;
    grpc::Status s = stub_->Query(Ctx().get(), [&] {
      v1::QueryRequest w;
      w.set_sql(sql);
      return w;
    }(), &r);
    EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT) << sql;
  }
  v1::QueryResponse after;
  ASSERT_TRUE(stub_->Query(Ctx().get(), q, &after).ok());
  EXPECT_EQ(after.rows_size(), 2);  // nothing changed
  v1::QueryRequest mode;
  mode.set_sql("SELECT * FROM pragma_journal_mode");
  // The authorizer refuses even reading pragmas as tables; the file stays in WAL mode.
  EXPECT_FALSE(stub_->Query(Ctx().get(), mode, &after).ok());

  v1::QueryRequest many;
  many.set_sql("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n LIMIT 100) SELECT x FROM n");
  v1::QueryResponse limited;
  ASSERT_TRUE(stub_->Query(Ctx().get(), many, &limited).ok());
  EXPECT_EQ(limited.rows_size(), 5);
  EXPECT_TRUE(limited.truncated());
}

TEST_F(ServiceTest, PauseResumeCancelThroughTheService) {
  Submit();
  v1::PauseSweepRequest pause;
  pause.set_sweep("svc");
  v1::Sweep sweep;
  ASSERT_TRUE(stub_->PauseSweep(Ctx().get(), pause, &sweep).ok());
  EXPECT_EQ(sweep.state(), "paused");
  v1::SweepRef ref;
  ref.set_sweep("svc");
  ASSERT_TRUE(stub_->ResumeSweep(Ctx().get(), ref, &sweep).ok());
  EXPECT_EQ(sweep.state(), "running");
  ASSERT_TRUE(stub_->CancelSweep(Ctx().get(), ref, &sweep).ok());
  EXPECT_EQ(sweep.state(), "cancelled");
  EXPECT_EQ(sweep.trials_by_state().at("cancelled"), 2);
  ref.set_sweep("nope");
  EXPECT_EQ(stub_->GetSweep(Ctx().get(), ref, &sweep).error_code(), StatusCode::NOT_FOUND);
}

TEST_F(ServiceTest, TrialsAndWorkersCanBeInspectedAndCancelled) {
  Submit();
  v1::RegisterWorkerRequest reg;
  reg.set_name("w9");
  reg.set_gpus(2);
  v1::RegisterWorkerResponse worker;
  ASSERT_TRUE(stub_->RegisterWorker(Ctx().get(), reg, &worker).ok());
  v1::ListWorkersResponse workers;
  ASSERT_TRUE(stub_->ListWorkers(Ctx().get(), {}, &workers).ok());
  ASSERT_EQ(workers.workers_size(), 1);
  EXPECT_EQ(workers.workers(0).name(), "w9");
  EXPECT_EQ(workers.workers(0).gpus(), 2);
  EXPECT_EQ(workers.workers(0).state(), "active");

  v1::ListTrialsRequest list;
  list.set_sweep("svc");
  v1::ListTrialsResponse trials;
  ASSERT_TRUE(stub_->ListTrials(Ctx().get(), list, &trials).ok());
  v1::TrialRef ref;
  ref.set_trial_id(trials.trials(0).id());
  v1::Trial trial;
  ASSERT_TRUE(stub_->CancelTrial(Ctx().get(), ref, &trial).ok());
  EXPECT_EQ(trial.state(), "cancelled");
  ASSERT_TRUE(stub_->GetTrial(Ctx().get(), ref, &trial).ok());
  EXPECT_EQ(trial.state(), "cancelled");
  ASSERT_TRUE(stub_->RetryTrial(Ctx().get(), ref, &trial).ok());
  EXPECT_EQ(trial.state(), "pending");
  ref.set_trial_id(424242);
  EXPECT_EQ(stub_->GetTrial(Ctx().get(), ref, &trial).error_code(), StatusCode::NOT_FOUND);
}

TEST_F(ServiceTest, WatchStreamsEventsUntilTheSweepEnds) {
  Submit();
  v1::SweepRef ref;
  ref.set_sweep("svc");
  v1::Sweep sweep;
  ASSERT_TRUE(stub_->CancelSweep(Ctx().get(), ref, &sweep).ok());
  v1::WatchSweepRequest watch;
  watch.set_sweep("svc");
  auto ctx = Ctx();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto reader = stub_->WatchSweep(ctx.get(), watch);
  std::vector<std::string> kinds;
  v1::Event event;
  while (reader->Read(&event)) kinds.push_back(event.kind());
  ASSERT_TRUE(reader->Finish().ok());  // Ends by itself: the sweep is over.
  EXPECT_EQ(kinds, (std::vector<std::string>{"submitted", "cancelled"}));
  EXPECT_EQ(event.sweep_state(), "cancelled");
}

TEST_F(ServiceTest, FailedAttemptsRetryAndReleasedOnesAreFree) {
  Submit(std::string(kSpec) + "max_attempts: 2\n");
  v1::RegisterWorkerResponse reg;
  const int64_t worker = RegisterWorker("w1", &reg);
  std::vector<v1::Lease> leases = Lease(worker);
  ASSERT_EQ(leases.size(), 1u);
  const int64_t trial = leases[0].trial_id();

  v1::CompleteTrialRequest failed;
  failed.set_trial_id(trial);
  failed.set_attempt(1);
  failed.set_outcome(v1::CompleteTrialRequest::FAILED);
  failed.set_error("trainer crashed");
  failed.set_exit_code(2);
  ASSERT_TRUE(Complete(failed).ok());
  v1::Trial t = GetTrial(trial);
  EXPECT_EQ(t.state(), "pending");
  EXPECT_EQ(t.attempt_errors_json(), R"(["attempt 1: trainer crashed"])");

  // Handed back with a checkpoint and the best value so far: pending, and still one failure.
  leases = Lease(worker);
  ASSERT_EQ(leases.size(), 1u);
  ASSERT_EQ(leases[0].attempt(), 2);
  v1::CompleteTrialRequest released;
  released.set_trial_id(trial);
  released.set_attempt(2);
  released.set_outcome(v1::CompleteTrialRequest::RELEASED);
  released.set_error("worker shutting down");
  released.set_checkpoint("/runs/svc/1/attempt-2/checkpoints/0000000010");
  released.set_last_step(12);
  ASSERT_TRUE(Complete(released).ok());
  t = GetTrial(trial);
  EXPECT_EQ(t.state(), "pending");
  EXPECT_EQ(t.checkpoint(), "/runs/svc/1/attempt-2/checkpoints/0000000010");
  EXPECT_EQ(t.attempt_errors_json(), R"(["attempt 1: trainer crashed"])");

  leases = Lease(worker);
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_EQ(leases[0].attempt(), 3);
  EXPECT_EQ(leases[0].resume_checkpoint(), "/runs/svc/1/attempt-2/checkpoints/0000000010");
  v1::CompleteTrialRequest done;
  done.set_trial_id(trial);
  done.set_attempt(3);
  done.set_outcome(v1::CompleteTrialRequest::COMPLETED);
  done.set_last_step(20);
  done.set_has_final_metric(true);
  done.set_final_metric(1.5);
  done.set_has_best_metric(true);
  done.set_best_metric(1.25);
  ASSERT_TRUE(Complete(done).ok());
  v1::ListTrialsRequest list;
  list.set_sweep("svc");
  list.set_state("completed");
  v1::ListTrialsResponse trials;
  ASSERT_TRUE(stub_->ListTrials(Ctx().get(), list, &trials).ok());
  ASSERT_EQ(trials.trials_size(), 1);
  EXPECT_TRUE(trials.trials(0).has_best_metric());
  EXPECT_EQ(trials.trials(0).best_metric(), 1.25);
  EXPECT_EQ(trials.trials(0).final_metric(), 1.5);
  t = GetTrial(trial);
  EXPECT_TRUE(t.has_best_metric());
  EXPECT_EQ(t.best_metric(), 1.25);
  EXPECT_FALSE(GetTrial(trial + 1).has_best_metric());

  v1::CompleteTrialRequest unset = done;
  unset.set_outcome(v1::CompleteTrialRequest::OUTCOME_UNSPECIFIED);
  EXPECT_EQ(Complete(unset).error_code(), StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, ReRegisteringReturnsTheTrialsStillHeld) {
  Submit();
  v1::RegisterWorkerResponse first;
  const int64_t worker = RegisterWorker("w1", &first);
  std::vector<v1::Lease> leases = Lease(worker, 2);
  ASSERT_EQ(leases.size(), 2u);
  v1::TrialAttempt start;
  start.set_trial_id(leases[0].trial_id());
  start.set_attempt(1);
  v1::Ack ack;
  ASSERT_TRUE(stub_->StartTrial(Ctx().get(), start, &ack).ok());

  clock_.Advance(10);
  v1::RegisterWorkerResponse again;
  ASSERT_EQ(RegisterWorker("w1", &again), worker);
  ASSERT_EQ(again.held_size(), 2);
  for (int i = 0; i < 2; ++i) {
    v1::Lease expected = leases[i];
    expected.set_expires_at(clock_.Now() + 30);  // renewed: a full lease to reconcile in
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(again.held(i), expected))
        << again.held(i).DebugString() << "\nvs\n" << expected.DebugString();
  }
  v1::RegisterWorkerResponse stranger;
  RegisterWorker("w2", &stranger);
  EXPECT_EQ(stranger.held_size(), 0);
}

}  // namespace
}  // namespace sweep::orchestrator
