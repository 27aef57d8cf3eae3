// The gRPC face of sweepd: translates sweep.v1 messages to Store / Scheduler calls and back.
// No scheduling logic lives here (see scheduler.h); every call takes the one mutex that
// serialises access to the database, so the Store keeps a single writer. Metrics go through
// the Monitor (monitor.h): spikes, divergence and early termination on ingest.
//
// A database that cannot be written (full disk, I/O error) is reported once in the log;
// the requests that need a write fail with RESOURCE_EXHAUSTED or UNAVAILABLE (workers keep
// their rows and retry), and leases do not expire until it recovers.
//
// Auth: with a non-empty token every call must carry `authorization: Bearer <token>`
// (compared in constant time), else UNAUTHENTICATED.
// Query: runs on a fresh read-only connection with an authorizer that allows only reading
// (no ATTACH, no PRAGMA, no writes), at most `query_max_rows` rows and `query_timeout_ms`.
#ifndef SWEEP_ORCHESTRATOR_SERVICE_H_
#define SWEEP_ORCHESTRATOR_SERVICE_H_

#include <atomic>
#include <mutex>
#include <string>

#include "orchestrator/monitor.h"
#include "orchestrator/scheduler.h"
#include "orchestrator/spec.h"
#include "orchestrator/store.h"
#include "proto/sweep.grpc.pb.h"

namespace sweep::orchestrator {

struct ServiceOptions {
  std::string db_path;   // For the read-only query connections.
  std::string token;     // Empty: no authentication (loopback only; sweepd enforces that).
  SpecLimits spec_limits;
  int query_max_rows = 10000;
  int query_timeout_ms = 5000;
  int max_lease_wait_ms = 30000;
  size_t max_metrics_per_batch = 100000;
};

class OrchestratorService final : public sweep::v1::Orchestrator::Service {
 public:
  OrchestratorService(Store* store, Scheduler* scheduler, Clock* clock, ServiceOptions options);

  // Expires leases; sweepd calls it every second from a background thread. Does nothing while
  // the database cannot be written, nor for one lease TTL after it recovers or after this
  // service starts: heartbeats could not renew leases meanwhile.
  void ExpireLeases();

  grpc::Status SubmitSweep(grpc::ServerContext* context, const v1::SubmitSweepRequest* request,
                           v1::SubmitSweepResponse* response) override;
  grpc::Status GetSweep(grpc::ServerContext* context, const v1::SweepRef* request,
                        v1::Sweep* response) override;
  grpc::Status ListSweeps(grpc::ServerContext* context, const v1::ListSweepsRequest* request,
                          v1::ListSweepsResponse* response) override;
  grpc::Status PauseSweep(grpc::ServerContext* context, const v1::PauseSweepRequest* request,
                          v1::Sweep* response) override;
  grpc::Status ResumeSweep(grpc::ServerContext* context, const v1::SweepRef* request,
                           v1::Sweep* response) override;
  grpc::Status CancelSweep(grpc::ServerContext* context, const v1::SweepRef* request,
                           v1::Sweep* response) override;
  grpc::Status ListTrials(grpc::ServerContext* context, const v1::ListTrialsRequest* request,
                          v1::ListTrialsResponse* response) override;
  grpc::Status GetTrial(grpc::ServerContext* context, const v1::TrialRef* request,
                        v1::Trial* response) override;
  grpc::Status CancelTrial(grpc::ServerContext* context, const v1::TrialRef* request,
                           v1::Trial* response) override;
  grpc::Status RetryTrial(grpc::ServerContext* context, const v1::TrialRef* request,
                          v1::Trial* response) override;
  grpc::Status ListWorkers(grpc::ServerContext* context, const v1::ListWorkersRequest* request,
                           v1::ListWorkersResponse* response) override;
  grpc::Status WatchSweep(grpc::ServerContext* context, const v1::WatchSweepRequest* request,
                          grpc::ServerWriter<v1::Event>* writer) override;
  grpc::Status Query(grpc::ServerContext* context, const v1::QueryRequest* request,
                     v1::QueryResponse* response) override;
  grpc::Status AnalyzeSweep(grpc::ServerContext* context, const v1::AnalyzeSweepRequest* request,
                            v1::AnalyzeSweepResponse* response) override;
  grpc::Status RegisterWorker(grpc::ServerContext* context,
                              const v1::RegisterWorkerRequest* request,
                              v1::RegisterWorkerResponse* response) override;
  grpc::Status LeaseTrials(grpc::ServerContext* context, const v1::LeaseTrialsRequest* request,
                           v1::LeaseTrialsResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override;
  grpc::Status StartTrial(grpc::ServerContext* context, const v1::TrialAttempt* request,
                          v1::Ack* response) override;
  grpc::Status StreamMetrics(grpc::ServerContext* context,
                             grpc::ServerReader<v1::MetricsBatch>* reader,
                             v1::StreamMetricsResponse* response) override;
  grpc::Status ReportCheckpoint(grpc::ServerContext* context,
                                const v1::ReportCheckpointRequest* request,
                                v1::Ack* response) override;
  grpc::Status CompleteTrial(grpc::ServerContext* context,
                             const v1::CompleteTrialRequest* request, v1::Ack* response) override;

 private:
  grpc::Status Authorize(grpc::ServerContext* context) const;
  // ToGrpc(s), noting a database that cannot be written (full disk, I/O error): logged once,
  // and lease expiry is held until it can be written again (see ExpireLeases).
  grpc::Status Reply(const absl::Status& s);
  // A write went through: if the database was failing, it recovered.
  void StorageOk();
  // Fills a Sweep message (with trial counts by state). Caller holds mu_.
  absl::Status FillSweep(const std::string& name_or_id, v1::Sweep* out);

  const ServiceOptions options_;
  Clock* const clock_;
  std::mutex mu_;
  Store* const store_;          // GUARDED_BY(mu_)
  Scheduler* const scheduler_;  // GUARDED_BY(mu_)
  Monitor monitor_;             // GUARDED_BY(mu_)
  std::atomic<bool> storage_failing_{false};
  std::atomic<double> storage_recovered_at_{0};
  std::atomic<int64_t> refused_while_failing_{0};
};

}  // namespace sweep::orchestrator

#endif  // SWEEP_ORCHESTRATOR_SERVICE_H_
