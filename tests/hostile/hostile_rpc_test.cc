// Malformed RPCs against the real sweepd: unknown ids, stale attempts (fencing), absurd steps,
// oversized strings and batches, writes and tricks through Query, ... Each case names the
// status code and a substring of the message it must get. Afterwards sweepd must be alive and
// answering, the database must pass PRAGMA integrity_check, and what no case may change (the
// trials' states, attempts, steps, checkpoints and errors, the metric rows, the sweeps and the
// workers) must be exactly as before. Non-finite metric values are data: they are stored as
// such. A 10 MB error text is stored cut to a bounded, valid UTF-8 text.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "tests/hostile/sweepd_process.h"

namespace sweep::hostile {
namespace {
using grpc::StatusCode;

// Four trials; the fixture leases three of them (t1 running, t2 leased, t3 completed) and
// leaves t4 pending.
constexpr char kSpec[] = R"(name: rpc
method: grid
base:
  steps: 100
  model: {dim: 64, n_layers: 2, n_heads: 4}
  data: {sources: {kjv: 1.0}, batch_size: 4, seq_len: 32}
parameters:
  optim.lr: {values: [1.0e-3, 2.0e-3, 3.0e-3, 4.0e-3]}
)";

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

struct Fixture {
  SweepdProcess* sweepd = nullptr;
  int64_t worker = 0;
  v1::Lease t1, t2, t3;  // t1 running, t2 leased, t3 completed.
  int64_t t4 = 0;        // Pending.

  v1::Orchestrator::Stub* stub() { return sweepd->stub(); }
};

std::unique_ptr<grpc::ClientContext> Ctx(
    std::chrono::milliseconds deadline = std::chrono::seconds(20)) {
  return SweepdProcess::Context(deadline);
}

v1::Metric Row(const std::string& name, int64_t step, double value, double time = 0) {
  v1::Metric m;
  m.set_name(name);
  m.set_step(step);
  m.set_value(value);
  m.set_time(time);
  return m;
}

// One StreamMetrics call with these batches.
grpc::Status Stream(Fixture& f, const std::vector<v1::MetricsBatch>& batches,
                    v1::StreamMetricsResponse* response = nullptr) {
  v1::StreamMetricsResponse unused;
  auto ctx = Ctx();
  auto writer = f.stub()->StreamMetrics(ctx.get(), response ? response : &unused);
  for (const v1::MetricsBatch& b : batches) {
    if (!writer->Write(b)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

v1::MetricsBatch Batch(int64_t trial, int attempt, std::vector<v1::Metric> rows) {
  v1::MetricsBatch b;
  b.set_trial_id(trial);
  b.set_attempt(attempt);
  for (v1::Metric& m : rows) *b.add_metrics() = std::move(m);
  return b;
}

grpc::Status GetSweep(Fixture& f, const std::string& sweep) {
  v1::SweepRef ref;
  ref.set_sweep(sweep);
  v1::Sweep out;
  return f.stub()->GetSweep(Ctx().get(), ref, &out);
}

grpc::Status GetTrial(Fixture& f, int64_t id) {
  v1::TrialRef ref;
  ref.set_trial_id(id);
  v1::Trial out;
  return f.stub()->GetTrial(Ctx().get(), ref, &out);
}

grpc::Status Register(Fixture& f, const std::string& name, int gpus, int slots,
                      const std::string& host = "localhost", int labels = 0,
                      size_t label_size = 1) {
  v1::RegisterWorkerRequest req;
  req.set_name(name);
  req.set_host(host);
  req.set_gpus(gpus);
  req.set_cpu_slots(slots);
  for (int i = 0; i < labels; ++i)
    (*req.mutable_labels())["k" + std::to_string(i)] = std::string(label_size, 'v');
  v1::RegisterWorkerResponse out;
  return f.stub()->RegisterWorker(Ctx().get(), req, &out);
}

grpc::Status Lease(Fixture& f, int64_t worker, int gpus, int slots, int max_trials,
                   v1::LeaseTrialsResponse* out = nullptr) {
  v1::LeaseTrialsRequest req;
  req.set_worker_id(worker);
  req.set_free_gpus(gpus);
  req.set_free_cpu_slots(slots);
  req.set_max_trials(max_trials);
  v1::LeaseTrialsResponse unused;
  return f.stub()->LeaseTrials(Ctx().get(), req, out ? out : &unused);
}

// A heartbeat; `stop_reason`, when given, must be among the replies.
grpc::Status Heartbeat(Fixture& f, int64_t worker,
                       std::vector<std::tuple<int64_t, int, int64_t>> trials,
                       const std::string& stop_reason = "") {
  v1::HeartbeatRequest req;
  req.set_worker_id(worker);
  for (const auto& [id, attempt, step] : trials) {
    auto* p = req.add_trials();
    p->set_trial_id(id);
    p->set_attempt(attempt);
    p->set_step(step);
  }
  v1::HeartbeatResponse out;
  grpc::Status s = f.stub()->Heartbeat(Ctx().get(), req, &out);
  if (s.ok() && !stop_reason.empty()) {
    bool found = false;
    for (const auto& stop : out.stop())
      found |= stop.reason().find(stop_reason) != std::string::npos;
    if (!found)
      return grpc::Status(StatusCode::UNKNOWN, "no stop request saying '" + stop_reason + "'");
  }
  return s;
}

grpc::Status Start(Fixture& f, int64_t trial, int attempt) {
  v1::TrialAttempt req;
  req.set_trial_id(trial);
  req.set_attempt(attempt);
  v1::Ack ack;
  return f.stub()->StartTrial(Ctx().get(), req, &ack);
}

grpc::Status Checkpoint(Fixture& f, int64_t trial, int attempt, const std::string& path,
                        int64_t step) {
  v1::ReportCheckpointRequest req;
  req.set_trial_id(trial);
  req.set_attempt(attempt);
  req.set_path(path);
  req.set_step(step);
  v1::Ack ack;
  return f.stub()->ReportCheckpoint(Ctx().get(), req, &ack);
}

grpc::Status Complete(Fixture& f, v1::CompleteTrialRequest req) {
  v1::Ack ack;
  return f.stub()->CompleteTrial(Ctx().get(), req, &ack);
}

v1::CompleteTrialRequest Completion(
    int64_t trial, int attempt,
    v1::CompleteTrialRequest::Outcome outcome = v1::CompleteTrialRequest::COMPLETED) {
  v1::CompleteTrialRequest req;
  req.set_trial_id(trial);
  req.set_attempt(attempt);
  req.set_outcome(outcome);
  req.set_last_step(10);
  return req;
}

grpc::Status Query(Fixture& f, const std::string& sql, int max_rows = 0,
                   bool expect_truncated = false) {
  v1::QueryRequest req;
  req.set_sql(sql);
  req.set_max_rows(max_rows);
  v1::QueryResponse out;
  grpc::Status s = f.stub()->Query(Ctx().get(), req, &out);
  if (s.ok() && expect_truncated && !out.truncated()) {
    return grpc::Status(StatusCode::UNKNOWN, "expected a truncated answer");
  }
  return s;
}

grpc::Status Sweep(Fixture& f,
                   grpc::Status (v1::Orchestrator::Stub::*call)(grpc::ClientContext*,
                                                                const v1::SweepRef&, v1::Sweep*),
                   const std::string& sweep) {
  v1::SweepRef ref;
  ref.set_sweep(sweep);
  v1::Sweep out;
  return (f.stub()->*call)(Ctx().get(), ref, &out);
}

// What no hostile call may change.
std::string Snapshot(SweepdProcess& sweepd) {
  return sweepd.Scalar(
             "SELECT group_concat(id || ':' || state || ':' || attempt || ':' || "
             "COALESCE(worker_id, '-') "
             "|| ':' || COALESCE(last_step, '-') || ':' || COALESCE(checkpoint, '-') || ':' || "
             "COALESCE(checkpoint_step, '-') || ':' || COALESCE(error, '-') || ':' || "
             "COALESCE(final_metric, '-') || ':' || attempt_errors, ' | ') FROM (SELECT * FROM "
             "trials ORDER BY id)") +
         " metrics=" +
         sweepd.Scalar("SELECT COUNT(*) || '/' || COALESCE(SUM(step), 0) FROM metrics") +
         " sweeps=" +
         sweepd.Scalar("SELECT group_concat(id || ':' || name || ':' || state) FROM sweeps") +
         " workers=" +
         sweepd.Scalar(
             "SELECT group_concat(id || ':' || name || ':' || state || ':' || gpus || ':' || "
             "cpu_slots) FROM workers") +
         " spikes=" + sweepd.Scalar("SELECT COUNT(*) FROM spikes");
}

// sweepd with one sweep in the state the cases expect.
void StartWithOneSweep(SweepdProcess& sweepd, Fixture& f) {
  f.sweepd = &sweepd;
  ASSERT_NO_FATAL_FAILURE(sweepd.Start());
  v1::SubmitSweepRequest submit;
  submit.set_spec_yaml(kSpec);
  submit.set_origin("rpc.yaml");
  v1::SubmitSweepResponse submitted;
  ASSERT_TRUE(sweepd.stub()->SubmitSweep(Ctx().get(), submit, &submitted).ok());
  v1::RegisterWorkerRequest reg;
  reg.set_name("hostile-worker");
  reg.set_host("localhost");
  reg.set_cpu_slots(3);
  v1::RegisterWorkerResponse registered;
  ASSERT_TRUE(sweepd.stub()->RegisterWorker(Ctx().get(), reg, &registered).ok());
  f.worker = registered.worker_id();
  v1::LeaseTrialsResponse leases;
  ASSERT_TRUE(Lease(f, f.worker, 0, 3, 3, &leases).ok());
  ASSERT_EQ(leases.leases_size(), 3);
  f.t1 = leases.leases(0);
  f.t2 = leases.leases(1);
  f.t3 = leases.leases(2);
  f.t4 = f.t3.trial_id() + 1;
  ASSERT_TRUE(Start(f, f.t1.trial_id(), f.t1.attempt()).ok());
  std::vector<v1::Metric> rows;
  for (int step = 1; step <= 10; ++step) rows.push_back(Row("loss/out", step, 5.0 - 0.1 * step));
  ASSERT_TRUE(Stream(f, {Batch(f.t1.trial_id(), f.t1.attempt(), rows)}).ok());
  ASSERT_TRUE(Checkpoint(f, f.t1.trial_id(), f.t1.attempt(), "/ckpt/0000000010", 10).ok());
  ASSERT_TRUE(Complete(f, Completion(f.t3.trial_id(), f.t3.attempt())).ok());
}

struct Case {
  std::string name;
  std::function<grpc::Status(Fixture&)> call;
  StatusCode code;
  std::string message;  // A substring of the error message ("" for OK).
};

std::vector<Case> Cases() {
  using O = v1::CompleteTrialRequest;
  const std::string mb(1 << 20, 'x');
  return {
      // --- Sweeps: unknown names and ids. ---
      {"GetSweep unknown name", [](Fixture& f) { return GetSweep(f, "nope"); },
       StatusCode::NOT_FOUND, "no sweep named or numbered 'nope'"},
      {"GetSweep unknown id", [](Fixture& f) { return GetSweep(f, "999999"); },
       StatusCode::NOT_FOUND, "no sweep"},
      {"GetSweep negative id", [](Fixture& f) { return GetSweep(f, "-1"); }, StatusCode::NOT_FOUND,
       "no sweep"},
      {"GetSweep empty", [](Fixture& f) { return GetSweep(f, ""); }, StatusCode::NOT_FOUND,
       "no sweep"},
      {"GetSweep SQL in the name", [](Fixture& f) { return GetSweep(f, "1' OR '1'='1"); },
       StatusCode::NOT_FOUND, "no sweep"},
      {"GetSweep 1 MB name", [mb](Fixture& f) { return GetSweep(f, mb); }, StatusCode::NOT_FOUND,
       "no sweep named or numbered 'xxx"},
      {"PauseSweep unknown",
       [](Fixture& f) {
         v1::PauseSweepRequest req;
         req.set_sweep("nope");
         req.set_stop_running(true);
         v1::Sweep out;
         return f.stub()->PauseSweep(Ctx().get(), req, &out);
       },
       StatusCode::NOT_FOUND, "no sweep"},
      {"ResumeSweep unknown",
       [](Fixture& f) { return Sweep(f, &v1::Orchestrator::Stub::ResumeSweep, "nope"); },
       StatusCode::NOT_FOUND, "no sweep"},
      {"CancelSweep unknown",
       [](Fixture& f) { return Sweep(f, &v1::Orchestrator::Stub::CancelSweep, "nope"); },
       StatusCode::NOT_FOUND, "no sweep"},
      {"ListTrials unknown sweep",
       [](Fixture& f) {
         v1::ListTrialsRequest req;
         req.set_sweep("nope");
         v1::ListTrialsResponse out;
         return f.stub()->ListTrials(Ctx().get(), req, &out);
       },
       StatusCode::NOT_FOUND, "no sweep"},
      {"WatchSweep unknown sweep",
       [](Fixture& f) {
         v1::WatchSweepRequest req;
         req.set_sweep("nope");
         auto ctx = Ctx();
         auto reader = f.stub()->WatchSweep(ctx.get(), req);
         v1::Event event;
         while (reader->Read(&event)) {
         }
         return reader->Finish();
       },
       StatusCode::NOT_FOUND, "no sweep"},
      {"AnalyzeSweep unknown sweep",
       [](Fixture& f) {
         v1::AnalyzeSweepRequest req;
         req.set_sweep("nope");
         v1::AnalyzeSweepResponse out;
         return f.stub()->AnalyzeSweep(Ctx().get(), req, &out);
       },
       StatusCode::NOT_FOUND, "no sweep"},
      {"SubmitSweep same name, other text",
       [](Fixture& f) {
         v1::SubmitSweepRequest req;
         req.set_spec_yaml(std::string(kSpec) + "max_attempts: 2\n");
         req.set_origin("rpc2.yaml");
         v1::SubmitSweepResponse out;
         return f.stub()->SubmitSweep(Ctx().get(), req, &out);
       },
       StatusCode::ALREADY_EXISTS, "a different sweep named 'rpc' exists"},
      {"SubmitSweep 1 MB origin",
       [mb](Fixture& f) {
         v1::SubmitSweepRequest req;
         req.set_spec_yaml(std::string(kSpec) + "parallel: 1\n");
         req.set_origin(mb);
         v1::SubmitSweepResponse out;
         return f.stub()->SubmitSweep(Ctx().get(), req, &out);
       },
       StatusCode::INVALID_ARGUMENT, "origin: at most 4096 bytes"},
      {"SubmitSweep empty spec",
       [](Fixture& f) {
         v1::SubmitSweepRequest req;
         v1::SubmitSweepResponse out;
         return f.stub()->SubmitSweep(Ctx().get(), req, &out);
       },
       StatusCode::INVALID_ARGUMENT, "spec: expected a sweep spec"},

      // --- Trials: unknown ids, wrong states. ---
      {"GetTrial 0", [](Fixture& f) { return GetTrial(f, 0); }, StatusCode::NOT_FOUND,
       "no trial 0"},
      {"GetTrial -1", [](Fixture& f) { return GetTrial(f, -1); }, StatusCode::NOT_FOUND,
       "no trial -1"},
      {"GetTrial INT64_MAX", [](Fixture& f) { return GetTrial(f, kInt64Max); },
       StatusCode::NOT_FOUND, "no trial 9223372036854775807"},
      {"CancelTrial unknown",
       [](Fixture& f) {
         v1::TrialRef ref;
         ref.set_trial_id(424242);
         v1::Trial out;
         return f.stub()->CancelTrial(Ctx().get(), ref, &out);
       },
       StatusCode::FAILED_PRECONDITION, "trial 424242 cannot be cancelled"},
      {"CancelTrial completed",
       [](Fixture& f) {
         v1::TrialRef ref;
         ref.set_trial_id(f.t3.trial_id());
         v1::Trial out;
         return f.stub()->CancelTrial(Ctx().get(), ref, &out);
       },
       StatusCode::FAILED_PRECONDITION, "cannot be cancelled"},
      {"RetryTrial unknown",
       [](Fixture& f) {
         v1::TrialRef ref;
         ref.set_trial_id(-7);
         v1::Trial out;
         return f.stub()->RetryTrial(Ctx().get(), ref, &out);
       },
       StatusCode::FAILED_PRECONDITION, "trial -7 cannot be retried"},
      {"RetryTrial pending",
       [](Fixture& f) {
         v1::TrialRef ref;
         ref.set_trial_id(f.t4);
         v1::Trial out;
         return f.stub()->RetryTrial(Ctx().get(), ref, &out);
       },
       StatusCode::FAILED_PRECONDITION, "has not ended"},

      // --- Workers. ---
      {"RegisterWorker empty name", [](Fixture& f) { return Register(f, "", 0, 1); },
       StatusCode::INVALID_ARGUMENT, "worker name must not be empty"},
      {"RegisterWorker 1 MB name", [mb](Fixture& f) { return Register(f, mb, 0, 1); },
       StatusCode::INVALID_ARGUMENT, "name: at most 256 bytes"},
      {"RegisterWorker 1 MB host", [mb](Fixture& f) { return Register(f, "w2", 0, 1, mb); },
       StatusCode::INVALID_ARGUMENT, "host: at most 256 bytes"},
      {"RegisterWorker 10,000 labels",
       [](Fixture& f) { return Register(f, "w2", 0, 1, "h", 10000); }, StatusCode::INVALID_ARGUMENT,
       "labels: at most 64"},
      {"RegisterWorker 1 MB label",
       [](Fixture& f) { return Register(f, "w2", 0, 1, "h", 1, 1 << 20); },
       StatusCode::INVALID_ARGUMENT, "labels: at most 64"},
      {"RegisterWorker negative GPUs", [](Fixture& f) { return Register(f, "w2", -1, 1); },
       StatusCode::INVALID_ARGUMENT, "needs at least one GPU or CPU slot"},
      {"RegisterWorker no slots", [](Fixture& f) { return Register(f, "w2", 0, 0); },
       StatusCode::INVALID_ARGUMENT, "needs at least one GPU or CPU slot"},
      {"RegisterWorker INT32_MAX GPUs and slots",
       [](Fixture& f) { return Register(f, "w2", INT32_MAX, INT32_MAX); },
       StatusCode::INVALID_ARGUMENT, "at most 65536"},
      {"LeaseTrials unknown worker", [](Fixture& f) { return Lease(f, 999999, 0, 1, 1); },
       StatusCode::NOT_FOUND, "no worker 999999; register first"},
      {"LeaseTrials negative slots", [](Fixture& f) { return Lease(f, f.worker, 0, -5, 1); },
       StatusCode::INVALID_ARGUMENT, "must be >= 0"},
      {"LeaseTrials negative GPUs", [](Fixture& f) { return Lease(f, f.worker, -1, 1, 1); },
       StatusCode::INVALID_ARGUMENT, "must be >= 0"},
      {"LeaseTrials negative max_trials", [](Fixture& f) { return Lease(f, f.worker, 0, 1, -1); },
       StatusCode::INVALID_ARGUMENT, "must be >= 0"},
      {"LeaseTrials nothing free",
       [](Fixture& f) {
         v1::LeaseTrialsResponse out;
         grpc::Status s = Lease(f, f.worker, 0, 0, 1000, &out);
         return s.ok() && out.leases_size() != 0
                    ? grpc::Status(StatusCode::UNKNOWN, "leased with no slot")
                    : s;
       },
       StatusCode::OK, ""},
      {"Heartbeat unknown worker", [](Fixture& f) { return Heartbeat(f, 999999, {}); },
       StatusCode::NOT_FOUND, "no worker 999999"},
      {"Heartbeat for a pending trial",
       [](Fixture& f) {
         return Heartbeat(f, f.worker, {{f.t4, 0, 5}}, "lease lost");
       },
       StatusCode::OK, ""},
      {"Heartbeat with a stale attempt",
       [](Fixture& f) {
         return Heartbeat(f, f.worker, {{f.t1.trial_id(), 7, 5}}, "lease lost");
       },
       StatusCode::OK, ""},
      {"Heartbeat for an unknown trial",
       [](Fixture& f) {
         return Heartbeat(f, f.worker, {{777777, 1, 5}}, "unknown trial");
       },
       StatusCode::OK, ""},
      {"Heartbeat for a completed trial",
       [](Fixture& f) {
         return Heartbeat(f, f.worker, {{f.t3.trial_id(), f.t3.attempt(), 5}}, "lease lost");
       },
       StatusCode::OK, ""},
      {"Heartbeat from another worker",
       [](Fixture& f) {
         return Heartbeat(f, f.worker + 1000, {{f.t1.trial_id(), f.t1.attempt(), 5}});
       },
       StatusCode::NOT_FOUND, "register first"},
      {"Heartbeat negative step",
       [](Fixture& f) {
         return Heartbeat(f, f.worker, {{f.t1.trial_id(), f.t1.attempt(), -5}});
       },
       StatusCode::INVALID_ARGUMENT, "step: must be between 0 and"},
      {"Heartbeat INT64_MAX step",
       [](Fixture& f) {
         return Heartbeat(f, f.worker, {{f.t1.trial_id(), f.t1.attempt(), kInt64Max}});
       },
       StatusCode::INVALID_ARGUMENT, "step: must be between 0 and"},
      {"Heartbeat listing 100,000 trials",
       [](Fixture& f) {
         std::vector<std::tuple<int64_t, int, int64_t>> many;
         for (int i = 0; i < 100000; ++i) many.emplace_back(1000000 + i, 1, 1);
         return Heartbeat(f, f.worker, many);
       },
       StatusCode::INVALID_ARGUMENT, "trials: at most 4096"},

      // --- StartTrial: fencing. ---
      {"StartTrial unknown", [](Fixture& f) { return Start(f, 888888, 1); }, StatusCode::NOT_FOUND,
       "no trial 888888"},
      {"StartTrial stale attempt",
       [](Fixture& f) { return Start(f, f.t2.trial_id(), f.t2.attempt() + 1); },
       StatusCode::FAILED_PRECONDITION, "holds no lease"},
      {"StartTrial negative attempt", [](Fixture& f) { return Start(f, f.t2.trial_id(), -1); },
       StatusCode::FAILED_PRECONDITION, "holds no lease"},
      {"StartTrial pending trial at attempt 0", [](Fixture& f) { return Start(f, f.t4, 0); },
       StatusCode::FAILED_PRECONDITION, "holds no lease (trial is pending"},
      {"StartTrial completed trial",
       [](Fixture& f) { return Start(f, f.t3.trial_id(), f.t3.attempt()); },
       StatusCode::FAILED_PRECONDITION, "trial is completed"},

      // --- StreamMetrics. ---
      {"StreamMetrics unknown trial",
       [](Fixture& f) { return Stream(f, {Batch(555555, 1, {Row("loss/out", 1, 1)})}); },
       StatusCode::NOT_FOUND, "no trial 555555"},
      {"StreamMetrics stale attempt",
       [](Fixture& f) {
         return Stream(f, {Batch(f.t1.trial_id(), f.t1.attempt() + 1, {Row("loss/out", 11, 1)})});
       },
       StatusCode::FAILED_PRECONDITION, "which holds no lease"},
      {"StreamMetrics pending trial",
       [](Fixture& f) { return Stream(f, {Batch(f.t4, 0, {Row("loss/out", 1, 1)})}); },
       StatusCode::FAILED_PRECONDITION, "which holds no lease"},
      {"StreamMetrics completed trial",
       [](Fixture& f) {
         return Stream(f, {Batch(f.t3.trial_id(), f.t3.attempt(), {Row("loss/out", 1, 1)})});
       },
       StatusCode::FAILED_PRECONDITION, "which holds no lease"},
      {"StreamMetrics negative step",
       [](Fixture& f) {
         return Stream(f, {Batch(f.t1.trial_id(), f.t1.attempt(), {Row("loss/out", -1, 1)})});
       },
       StatusCode::INVALID_ARGUMENT, "step"},
      {"StreamMetrics INT64_MIN step",
       [](Fixture& f) {
         return Stream(f, {Batch(f.t1.trial_id(), f.t1.attempt(),
                                 {Row("loss/out", std::numeric_limits<int64_t>::min(), 1)})});
       },
       StatusCode::INVALID_ARGUMENT, "step"},
      {"StreamMetrics INT64_MAX step",
       [](Fixture& f) {
         return Stream(f,
                       {Batch(f.t1.trial_id(), f.t1.attempt(), {Row("loss/out", kInt64Max, 1)})});
       },
       StatusCode::INVALID_ARGUMENT, "step: must be between 0 and"},
      {"StreamMetrics empty name",
       [](Fixture& f) {
         return Stream(f, {Batch(f.t1.trial_id(), f.t1.attempt(), {Row("", 11, 1)})});
       },
       StatusCode::INVALID_ARGUMENT, "metric needs a name"},
      {"StreamMetrics 1 MB name",
       [mb](Fixture& f) {
         return Stream(f, {Batch(f.t1.trial_id(), f.t1.attempt(), {Row(mb, 11, 1)})});
       },
       StatusCode::INVALID_ARGUMENT, "name: at most 256 bytes"},
      {"StreamMetrics 10 MB batch",
       [mb](Fixture& f) {
         std::vector<v1::Metric> rows;
         for (int i = 0; i < 10; ++i) rows.push_back(Row(mb + std::to_string(i), 11, 1));
         return Stream(f, {Batch(f.t1.trial_id(), f.t1.attempt(), rows)});
       },
       StatusCode::INVALID_ARGUMENT, "name: at most 256 bytes"},
      {"StreamMetrics 100,001 rows",
       [](Fixture& f) {
         std::vector<v1::Metric> rows;
         for (int i = 0; i < 100001; ++i) rows.push_back(Row("loss/out", 100 + i, 1));
         return Stream(f, {Batch(f.t1.trial_id(), f.t1.attempt(), rows)});
       },
       StatusCode::INVALID_ARGUMENT, "batch of 100001 rows; the limit is 100000"},
      {"StreamMetrics good rows then a bad one: none stored",
       [](Fixture& f) {
         std::vector<v1::Metric> rows;
         for (int i = 0; i < 50; ++i) rows.push_back(Row("loss/out", 100 + i, 1));
         rows.push_back(Row("loss/out", -3, 1));
         return Stream(f, {Batch(f.t1.trial_id(), f.t1.attempt(), rows)});
       },
       StatusCode::INVALID_ARGUMENT, "step"},
      {"StreamMetrics empty batches",
       [](Fixture& f) {
         v1::StreamMetricsResponse out;
         grpc::Status s =
             Stream(f, {Batch(f.t1.trial_id(), f.t1.attempt(), {}), Batch(0, 0, {})}, &out);
         return s.ok() && out.rows_stored() != 0 ? grpc::Status(StatusCode::UNKNOWN, "stored rows")
                                                 : s;
       },
       StatusCode::OK, ""},

      // --- ReportCheckpoint. ---
      {"ReportCheckpoint unknown trial",
       [](Fixture& f) { return Checkpoint(f, 666666, 1, "/c", 1); }, StatusCode::NOT_FOUND,
       "no trial 666666"},
      {"ReportCheckpoint stale attempt",
       [](Fixture& f) { return Checkpoint(f, f.t1.trial_id(), f.t1.attempt() - 1, "/c", 20); },
       StatusCode::FAILED_PRECONDITION, "holds no lease"},
      {"ReportCheckpoint completed trial",
       [](Fixture& f) { return Checkpoint(f, f.t3.trial_id(), f.t3.attempt(), "/c", 20); },
       StatusCode::FAILED_PRECONDITION, "holds no lease"},
      {"ReportCheckpoint empty path",
       [](Fixture& f) { return Checkpoint(f, f.t1.trial_id(), f.t1.attempt(), "", 20); },
       StatusCode::INVALID_ARGUMENT, "path: must not be empty"},
      {"ReportCheckpoint 1 MB path",
       [mb](Fixture& f) { return Checkpoint(f, f.t1.trial_id(), f.t1.attempt(), mb, 20); },
       StatusCode::INVALID_ARGUMENT, "path: at most 4096 bytes"},
      {"ReportCheckpoint negative step",
       [](Fixture& f) { return Checkpoint(f, f.t1.trial_id(), f.t1.attempt(), "/c", -20); },
       StatusCode::INVALID_ARGUMENT, "step: must be between 0 and"},
      {"ReportCheckpoint INT64_MAX step",
       [](Fixture& f) { return Checkpoint(f, f.t1.trial_id(), f.t1.attempt(), "/c", kInt64Max); },
       StatusCode::INVALID_ARGUMENT, "step: must be between 0 and"},

      // --- CompleteTrial. ---
      {"CompleteTrial unknown trial", [](Fixture& f) { return Complete(f, Completion(444444, 1)); },
       StatusCode::NOT_FOUND, "no trial 444444"},
      {"CompleteTrial outcome unset",
       [](Fixture& f) {
         return Complete(f, Completion(f.t1.trial_id(), f.t1.attempt(), O::OUTCOME_UNSPECIFIED));
       },
       StatusCode::INVALID_ARGUMENT, "outcome: must be set"},
      {"CompleteTrial outcome 99",
       [](Fixture& f) {
         return Complete(f,
                         Completion(f.t1.trial_id(), f.t1.attempt(), static_cast<O::Outcome>(99)));
       },
       StatusCode::INVALID_ARGUMENT, "outcome: must be set"},
      {"CompleteTrial stale attempt",
       [](Fixture& f) { return Complete(f, Completion(f.t1.trial_id(), f.t1.attempt() + 1)); },
       StatusCode::FAILED_PRECONDITION, "holds no lease"},
      {"CompleteTrial twice",
       [](Fixture& f) { return Complete(f, Completion(f.t3.trial_id(), f.t3.attempt())); },
       StatusCode::FAILED_PRECONDITION, "holds no lease (trial is completed"},
      {"CompleteTrial pending trial",
       [](Fixture& f) { return Complete(f, Completion(f.t4, 0, O::FAILED)); },
       StatusCode::FAILED_PRECONDITION, "holds no lease (trial is pending"},
      {"CompleteTrial negative last_step",
       [](Fixture& f) {
         O req = Completion(f.t1.trial_id(), f.t1.attempt());
         req.set_last_step(-1);
         return Complete(f, req);
       },
       StatusCode::INVALID_ARGUMENT, "last_step: must be between 0 and"},
      {"CompleteTrial INT64_MAX last_step",
       [](Fixture& f) {
         O req = Completion(f.t1.trial_id(), f.t1.attempt());
         req.set_last_step(kInt64Max);
         return Complete(f, req);
       },
       StatusCode::INVALID_ARGUMENT, "last_step: must be between 0 and"},
      {"CompleteTrial negative diverged_step",
       [](Fixture& f) {
         O req = Completion(f.t1.trial_id(), f.t1.attempt(), O::DIVERGED);
         req.set_diverged_step(-9);
         return Complete(f, req);
       },
       StatusCode::INVALID_ARGUMENT, "diverged_step: must be between 0 and"},
      {"CompleteTrial 1 MB checkpoint",
       [mb](Fixture& f) {
         O req = Completion(f.t1.trial_id(), f.t1.attempt());
         req.set_checkpoint(mb);
         return Complete(f, req);
       },
       StatusCode::INVALID_ARGUMENT, "checkpoint: at most 4096 bytes"},

      // --- Query: read-only, one statement, bounded. ---
      {"Query INSERT",
       [](Fixture& f) { return Query(f, "INSERT INTO sweeps (name) VALUES ('x')"); },
       StatusCode::INVALID_ARGUMENT, "query refused"},
      {"Query UPDATE", [](Fixture& f) { return Query(f, "UPDATE trials SET state = 'completed'"); },
       StatusCode::INVALID_ARGUMENT, "query refused"},
      {"Query DELETE", [](Fixture& f) { return Query(f, "DELETE FROM metrics"); },
       StatusCode::INVALID_ARGUMENT, "query refused"},
      {"Query DROP TABLE", [](Fixture& f) { return Query(f, "DROP TABLE sweeps"); },
       StatusCode::INVALID_ARGUMENT, "query refused"},
      {"Query CREATE TEMP TABLE", [](Fixture& f) { return Query(f, "CREATE TEMP TABLE t(x)"); },
       StatusCode::INVALID_ARGUMENT, "query refused"},
      {"Query ATTACH",
       [](Fixture& f) { return Query(f, "ATTACH DATABASE '/tmp/hostile-attach.db' AS x"); },
       StatusCode::INVALID_ARGUMENT, "query refused"},
      {"Query PRAGMA write", [](Fixture& f) { return Query(f, "PRAGMA writable_schema = 1"); },
       StatusCode::INVALID_ARGUMENT, "query refused"},
      {"Query PRAGMA read", [](Fixture& f) { return Query(f, "PRAGMA integrity_check"); },
       StatusCode::INVALID_ARGUMENT, "query refused"},
      {"Query VACUUM INTO",
       [](Fixture& f) { return Query(f, "VACUUM INTO '/tmp/hostile-vacuum.db'"); },
       StatusCode::INVALID_ARGUMENT, "query refused"},
      {"Query CTE with DELETE",
       [](Fixture& f) { return Query(f, "WITH x AS (SELECT 1) DELETE FROM trials"); },
       StatusCode::INVALID_ARGUMENT, "query refused"},
      {"Query two statements, the second a write",
       [](Fixture& f) { return Query(f, "SELECT 1; DELETE FROM trials"); },
       StatusCode::INVALID_ARGUMENT, "one statement per query"},
      {"Query two SELECTs", [](Fixture& f) { return Query(f, "SELECT 1; SELECT 2"); },
       StatusCode::INVALID_ARGUMENT, "one statement per query"},
      {"Query NUL then a write",
       [](Fixture& f) { return Query(f, std::string("SELECT 1\0; DELETE FROM trials", 30)); },
       StatusCode::INVALID_ARGUMENT, "NUL byte"},
      {"Query empty", [](Fixture& f) { return Query(f, ""); }, StatusCode::INVALID_ARGUMENT,
       "empty query"},
      {"Query only a comment", [](Fixture& f) { return Query(f, "-- nothing\n"); },
       StatusCode::INVALID_ARGUMENT, "empty query"},
      {"Query syntax error", [](Fixture& f) { return Query(f, "SELEKT * FROM trials"); },
       StatusCode::INVALID_ARGUMENT, "syntax error"},
      {"Query load_extension",
       [](Fixture& f) { return Query(f, "SELECT load_extension('/tmp/nothing.so')"); },
       StatusCode::INVALID_ARGUMENT, "not authorized"},
      {"Query a 900 MB blob", [](Fixture& f) { return Query(f, "SELECT randomblob(900000000)"); },
       StatusCode::INVALID_ARGUMENT, "too big"},
      {"Query a 1 GB zeroblob", [](Fixture& f) { return Query(f, "SELECT zeroblob(1000000000)"); },
       StatusCode::INVALID_ARGUMENT, "too big"},
      {"Query a 40 MB string",
       [](Fixture& f) { return Query(f, "SELECT replace(hex(zeroblob(10000000)), '0', 'ab')"); },
       StatusCode::INVALID_ARGUMENT, "too big"},
      {"Query a blob and bytes that are not UTF-8",
       [](Fixture& f) {
         v1::QueryRequest req;
         req.set_sql("SELECT x'00ff41', CAST(x'ff41' AS TEXT)");
         v1::QueryResponse out;
         grpc::Status s = f.stub()->Query(Ctx().get(), req, &out);
         if (s.ok() && (out.rows_size() != 1 || out.rows(0).values(0) != "X'00FF41'" ||
                        out.rows(0).values(1) != "\xEF\xBF\xBD"
                                                 "A")) {
           return grpc::Status(StatusCode::UNKNOWN, "unexpected values");
         }
         return s;
       },
       StatusCode::OK, ""},
      {"Query 2 GB of rows",
       [](Fixture& f) {
         return Query(f,
                      "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000) "
                      "SELECT x, hex(randomblob(1000000)) FROM c",
                      0, true);
       },
       StatusCode::OK, ""},
      {"Query endless rows",
       [](Fixture& f) {
         return Query(
             f, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c",
             5, true);
       },
       StatusCode::OK, ""},
      {"Query endless count",
       [](Fixture& f) {
         return Query(f,
                      "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT "
                      "COUNT(*) FROM c");
       },
       StatusCode::DEADLINE_EXCEEDED, "query ran past"},
      {"Query 10 MB of SQL",
       [](Fixture& f) { return Query(f, "SELECT '" + std::string(10 << 20, 'a') + "' AS big"); },
       StatusCode::INVALID_ARGUMENT, "sql: at most"},
  };
}

TEST(HostileRpcTest, EveryMalformedCallGetsItsErrorAndChangesNothing) {
  SweepdProcess sweepd({"--max-trials", "1000"});
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(StartWithOneSweep(sweepd, f));
  const std::string before = Snapshot(sweepd);
  const std::vector<Case> cases = Cases();
  ASSERT_GE(cases.size(), 50u);
  double slowest = 0;
  std::string slowest_case;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const auto start = std::chrono::steady_clock::now();
    const grpc::Status s = c.call(f);
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    if (took.count() > slowest) {
      slowest = took.count();
      slowest_case = c.name;
    }
    EXPECT_EQ(s.error_code(), c.code) << s.error_message();
    EXPECT_NE(s.error_message().find(c.message), std::string::npos)
        << "expected '" << c.message << "' in '" << s.error_message().substr(0, 300) << "'";
    EXPECT_LE(s.error_message().size(), 4096u);
    ASSERT_TRUE(sweepd.Running()) << "sweepd died on " << c.name << ":\n" << sweepd.Log();
  }
  std::printf("hostile RPCs: %zu cases; slowest %.2f s (%s)\n", cases.size(), slowest,
              slowest_case.c_str());
  sweepd.ExpectHealthy();
  EXPECT_EQ(Snapshot(sweepd), before);
  EXPECT_EQ(sweepd.Stop(), 0);
}

// NaN and infinities are data: stored as such (metrics.nonfinite), never a crash or an error.
// A 10 MB error text with bytes that are not UTF-8 fails the attempt with a bounded, valid
// UTF-8 reason.
TEST(HostileRpcTest, NonFiniteValuesAreStoredAndHugeErrorsAreCut) {
  SweepdProcess sweepd({"--max-trials", "1000"});
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(StartWithOneSweep(sweepd, f));
  const int64_t t1 = f.t1.trial_id();
  const grpc::Status streamed = Stream(
      f, {Batch(t1, f.t1.attempt(),
                {Row("loss/out", 11, kNaN), Row("loss/out", 12, kInf), Row("loss/out", 13, -kInf),
                 Row("optim/grad_norm", 11, kInf, kNaN), Row("optim/grad_norm", 12, kNaN, kInf),
                 Row("optim/grad_norm", 13, 1e308, -kInf), Row("optim/lr", 11, -0.0),
                 Row("optim/lr", 12, 4.9e-324)})});
  ASSERT_TRUE(streamed.ok()) << streamed.error_message();
  auto at = [&](const std::string& name, int step, const std::string& column) {
    return sweepd.Scalar("SELECT " + column +
                         " FROM metrics WHERE trial_id = " + std::to_string(t1) + " AND name = '" +
                         name + "' AND step = " + std::to_string(step));
  };
  EXPECT_EQ(at("loss/out", 11, "nonfinite"), "nan");
  EXPECT_EQ(at("loss/out", 12, "nonfinite"), "inf");
  EXPECT_EQ(at("loss/out", 13, "nonfinite"), "-inf");
  EXPECT_EQ(at("loss/out", 11, "value"), "");  // NULL
  EXPECT_EQ(at("optim/grad_norm", 12, "nonfinite"), "nan");
  EXPECT_EQ(at("optim/grad_norm", 13, "value"), "1.0e+308");
  // A time that is not a finite positive number is the arrival time.
  EXPECT_EQ(sweepd.Scalar("SELECT COUNT(*) FROM metrics WHERE trial_id = " + std::to_string(t1) +
                          " AND step BETWEEN 11 AND 13 AND name = 'optim/grad_norm' AND time > 1e9 "
                          "AND time < 1e11"),
            "3");
  // sweepd's detector saw a non-finite loss: the trial is flagged diverged, nothing crashed.
  EXPECT_NE(sweepd.Scalar("SELECT divergence_step FROM trials WHERE id = " + std::to_string(t1)),
            "");

  // 10 MB of error text, not UTF-8 in places, on a FAILED attempt: the trial is requeued with a
  // bounded, valid reason.
  std::string error(10 << 20, 'e');
  error[0] = '\xff';
  error[5 << 20] = '\xc3';  // A truncated two-byte sequence.
  error.back() = '\xe2';
  v1::CompleteTrialRequest req =
      Completion(f.t2.trial_id(), f.t2.attempt(), v1::CompleteTrialRequest::FAILED);
  req.set_error(error);
  const grpc::Status completed = Complete(f, req);
  ASSERT_TRUE(completed.ok()) << completed.error_message();
  const std::string t2 = std::to_string(f.t2.trial_id());
  EXPECT_EQ(sweepd.Scalar("SELECT state FROM trials WHERE id = " + t2), "pending");
  const int64_t stored = std::stoll(
      sweepd.Scalar("SELECT length(CAST(attempt_errors AS BLOB)) FROM trials WHERE id = " + t2));
  EXPECT_LT(stored, 100000);
  EXPECT_EQ(sweepd.Scalar("SELECT json_valid(attempt_errors) FROM trials WHERE id = " + t2), "1");
  EXPECT_NE(sweepd.Scalar("SELECT attempt_errors FROM trials WHERE id = " + t2).find("bytes cut"),
            std::string::npos);
  v1::TrialRef ref;
  ref.set_trial_id(f.t2.trial_id());
  v1::Trial trial;
  ASSERT_TRUE(f.stub()->GetTrial(Ctx().get(), ref, &trial).ok());  // Serialisable: valid UTF-8.
  EXPECT_LT(trial.attempt_errors_json().size(), 100000u);
  sweepd.ExpectHealthy();
  EXPECT_EQ(sweepd.Stop(), 0);
}

}  // namespace
}  // namespace sweep::hostile
