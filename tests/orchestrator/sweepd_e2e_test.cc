// The real sweepd binary on a temp database, driven over loopback by a test worker that
// speaks the real protocol. sweepd is SIGKILLed mid-sweep and restarted on the same file;
// the sweep still finishes with every trial completed exactly once and exactly the metric
// rows that were sent.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>

#include "proto/sweep.grpc.pb.h"
#include "tests/testing/subprocess.h"

namespace sweep {
namespace {
namespace fs = std::filesystem;
using sweep::testing::MakeTempDir;
using sweep::testing::ReadFileOrEmpty;
using sweep::testing::Subprocess;
using sweep::testing::WaitFor;

constexpr int kTrials = 6;
constexpr int kSteps = 20;
constexpr char kToken[] = "e2e-token-0123456789abcdef";

class Sweepd {
 public:
  explicit Sweepd(const std::string& dir, std::vector<std::string> extra = {})
      : dir_(dir), extra_(std::move(extra)) {}

  void Start() {
    fs::remove(dir_ + "/port");
    std::vector<std::string> argv = {SWEEPD_BIN, "--db", dir_ + "/sweep.db", "--listen",
                                     "127.0.0.1:0", "--port-file", dir_ + "/port", "--token-file",
                                     dir_ + "/token", "--lease-ttl", "10"};
    argv.insert(argv.end(), extra_.begin(), extra_.end());
    process_ = std::make_unique<Subprocess>(argv, "", dir_ + "/sweepd.log");
    ASSERT_TRUE(WaitFor([&] { return fs::exists(dir_ + "/port"); }, std::chrono::seconds(30)))
        << ReadFileOrEmpty(dir_ + "/sweepd.log");
    port_ = std::stoi(ReadFileOrEmpty(dir_ + "/port"));
    stub_ = v1::Orchestrator::NewStub(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials()));
  }
  int port() const { return port_; }
  void Kill() {
    process_->Signal(SIGKILL);
    process_->Wait();
  }
  int Stop() {
    process_->Signal(SIGTERM);
    return process_->Wait();
  }
  v1::Orchestrator::Stub* stub() { return stub_.get(); }

 private:
  const std::string dir_;
  const std::vector<std::string> extra_;
  int port_ = 0;
  std::unique_ptr<Subprocess> process_;
  std::unique_ptr<v1::Orchestrator::Stub> stub_;
};

std::unique_ptr<grpc::ClientContext> Ctx() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->AddMetadata("authorization", std::string("Bearer ") + kToken);
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  return ctx;
}

double ValueOf(int64_t trial, int64_t step) { return 1.0 + trial * 0.01 + 1.0 / step; }

// Streams steps [from, to] of a trial; returns the gRPC status.
grpc::Status Stream(v1::Orchestrator::Stub* stub, const v1::Lease& lease, int from, int to) {
  v1::StreamMetricsResponse resp;
  auto ctx = Ctx();
  auto writer = stub->StreamMetrics(ctx.get(), &resp);
  for (int step = from; step <= to; ++step) {
    v1::MetricsBatch batch;
    batch.set_trial_id(lease.trial_id());
    batch.set_attempt(lease.attempt());
    for (const char* name : {"loss/out", "optim/grad_norm"}) {
      v1::Metric* m = batch.add_metrics();
      m->set_name(name);
      m->set_step(step);
      m->set_value(ValueOf(lease.trial_id(), step) * (name[0] == 'l' ? 1 : 2));
    }
    if (!writer->Write(batch)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

TEST(SweepdE2eTest, SurvivesSigkillMidSweepWithoutLosingOrDuplicating) {
  const std::string dir = MakeTempDir("sweepd-e2e");
  std::ofstream(dir + "/token") << kToken << "\n";
  Sweepd sweepd(dir);
  ASSERT_NO_FATAL_FAILURE(sweepd.Start());

  v1::SubmitSweepRequest submit;
  submit.set_origin("e2e.yaml");
  submit.set_spec_yaml(
      "name: e2e\nmethod: grid\nbase: {steps: 20, data: {sources: {kjv: 1}}}\n"
      "parameters: {optim.lr: {values: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]}}\n");
  v1::SubmitSweepResponse submitted;
  ASSERT_TRUE(sweepd.stub()->SubmitSweep(Ctx().get(), submit, &submitted).ok());
  ASSERT_EQ(submitted.sweep().trials_by_state().at("pending"), kTrials);

  auto register_worker = [&]() {
    v1::RegisterWorkerRequest req;
    req.set_name("e2e-worker");
    req.set_host("localhost");
    req.set_cpu_slots(1);
    v1::RegisterWorkerResponse resp;
    EXPECT_TRUE(sweepd.stub()->RegisterWorker(Ctx().get(), req, &resp).ok());
    return resp;
  };
  int64_t worker = register_worker().worker_id();
  int completed = 0, kills = 0;
  while (completed < kTrials) {
    v1::LeaseTrialsRequest lease_req;
    lease_req.set_worker_id(worker);
    lease_req.set_free_cpu_slots(1);
    lease_req.set_max_trials(1);
    lease_req.set_wait_ms(2000);
    v1::LeaseTrialsResponse leases;
    ASSERT_TRUE(sweepd.stub()->LeaseTrials(Ctx().get(), lease_req, &leases).ok());
    ASSERT_EQ(leases.leases_size(), 1) << "no trial to lease with " << completed << " done";
    const v1::Lease lease = leases.leases(0);
    v1::TrialAttempt start;
    start.set_trial_id(lease.trial_id());
    start.set_attempt(lease.attempt());
    v1::Ack ack;
    ASSERT_TRUE(sweepd.stub()->StartTrial(Ctx().get(), start, &ack).ok());
    ASSERT_TRUE(Stream(sweepd.stub(), lease, 1, kSteps / 2).ok());
    if (completed == 3 && kills == 0) {
      // Mid-trial: sweepd dies without warning and comes back on the same file.
      sweepd.Kill();
      ++kills;
      ASSERT_NO_FATAL_FAILURE(sweepd.Start());
      const v1::RegisterWorkerResponse again = register_worker();
      EXPECT_EQ(again.worker_id(), worker);  // Re-attaches by name...
      // ...and learns the trial it still holds, at the same attempt.
      ASSERT_EQ(again.held_size(), 1);
      EXPECT_EQ(again.held(0).trial_id(), lease.trial_id());
      EXPECT_EQ(again.held(0).attempt(), lease.attempt());
      EXPECT_EQ(again.held(0).params_json(), lease.params_json());
      EXPECT_EQ(again.lease_ttl_seconds(), 10);
      // Re-send what may not have been committed, then carry on with the same attempt.
      ASSERT_TRUE(Stream(sweepd.stub(), lease, 1, kSteps / 2).ok());
    }
    ASSERT_TRUE(Stream(sweepd.stub(), lease, kSteps / 2 + 1, kSteps).ok());
    v1::CompleteTrialRequest done;
    done.set_trial_id(lease.trial_id());
    done.set_attempt(lease.attempt());
    done.set_outcome(v1::CompleteTrialRequest::COMPLETED);
    done.set_last_step(kSteps);
    done.set_has_final_metric(true);
    done.set_final_metric(ValueOf(lease.trial_id(), kSteps));
    ASSERT_TRUE(sweepd.stub()->CompleteTrial(Ctx().get(), done, &ack).ok());
    ++completed;
  }
  v1::SweepRef ref;
  ref.set_sweep("e2e");
  v1::Sweep sweep;
  ASSERT_TRUE(sweepd.stub()->GetSweep(Ctx().get(), ref, &sweep).ok());
  EXPECT_EQ(sweep.state(), "completed");
  EXPECT_EQ(sweep.trials_by_state().at("completed"), kTrials);
  EXPECT_EQ(sweepd.Stop(), 0);

  // The database, read directly: each trial completed once, each row exactly as sent.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2((dir + "/sweep.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  auto scalar = [&](const std::string& sql) {
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr);
    std::string out;
    if (sqlite3_step(st) == SQLITE_ROW) out = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return out;
  };
  EXPECT_EQ(scalar("PRAGMA integrity_check"), "ok");
  EXPECT_EQ(scalar("SELECT COUNT(*) FROM trials WHERE state = 'completed' AND attempt = 1"), "6");
  EXPECT_EQ(scalar("SELECT COUNT(*) FROM (SELECT trial_id FROM events WHERE kind = 'completed' "
                   "GROUP BY trial_id HAVING COUNT(*) = 1)"),
            "6");
  EXPECT_EQ(scalar("SELECT COUNT(*) FROM metrics"), std::to_string(kTrials * kSteps * 2));
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db, "SELECT trial_id, name, step, value FROM metrics", -1, &st, nullptr);
  int checked = 0;
  while (sqlite3_step(st) == SQLITE_ROW) {
    const int64_t trial = sqlite3_column_int64(st, 0);
    const std::string name = reinterpret_cast<const char*>(sqlite3_column_text(st, 1));
    const int64_t step = sqlite3_column_int64(st, 2);
    EXPECT_EQ(sqlite3_column_double(st, 3), ValueOf(trial, step) * (name == "loss/out" ? 1 : 2));
    ++checked;
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  EXPECT_EQ(checked, kTrials * kSteps * 2);
  std::printf("sweepd e2e: %d trials, %d rows checked, %d kill(s) survived\n", kTrials, checked, kills);
}

TEST(SweepdE2eTest, TlsWithATokenAndPlaintextRefused) {
  const std::string dir = MakeTempDir("sweepd-tls");
  std::ofstream(dir + "/token") << kToken << "\n";
  ASSERT_EQ(sweep::testing::Run({"/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                                 "-keyout", dir + "/key.pem", "-out", dir + "/cert.pem", "-days",
                                 "1", "-subj", "/CN=localhost", "-addext",
                                 "subjectAltName=IP:127.0.0.1,DNS:localhost"},
                                "", dir + "/openssl.log"),
            0)
      << ReadFileOrEmpty(dir + "/openssl.log");
  Sweepd sweepd(dir, {"--tls-cert", dir + "/cert.pem", "--tls-key", dir + "/key.pem"});
  ASSERT_NO_FATAL_FAILURE(sweepd.Start());
  const std::string target = "127.0.0.1:" + std::to_string(sweepd.port());

  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadFileOrEmpty(dir + "/cert.pem");
  auto secure = v1::Orchestrator::NewStub(grpc::CreateChannel(target, grpc::SslCredentials(ssl)));
  v1::ListSweepsResponse sweeps;
  EXPECT_TRUE(secure->ListSweeps(Ctx().get(), {}, &sweeps).ok());
  grpc::ClientContext no_token;
  EXPECT_EQ(secure->ListSweeps(&no_token, {}, &sweeps).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // A plaintext client cannot talk to a TLS server.
  EXPECT_FALSE(sweepd.stub()->ListSweeps(Ctx().get(), {}, &sweeps).ok());
  EXPECT_EQ(sweepd.Stop(), 0);
}

}  // namespace
}  // namespace sweep
