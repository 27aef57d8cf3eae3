#include "orchestrator/service.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <thread>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "analysis/analysis.h"
#include "orchestrator/auth.h"
#include "orchestrator/sql.h"

namespace sweep::orchestrator {
namespace {

// What one request may carry. Anything beyond is refused with INVALID_ARGUMENT, so that a
// hostile or broken client cannot store garbage, exhaust memory or hold the lock for long.
constexpr size_t kMaxNameBytes = 256;       // worker names and hosts, labels, metric names
constexpr size_t kMaxPathBytes = 4096;      // checkpoint paths, a spec's origin
constexpr int kMaxLabels = 64;
constexpr int kMaxWorkerResources = 1 << 16;  // GPUs, CPU slots
constexpr int kMaxHeartbeatTrials = 4096;
constexpr int64_t kMaxStep = int64_t{1} << 53;  // steps stay exact in JSON and JavaScript
constexpr size_t kMaxErrorBytes = 64 << 10;     // an attempt's error text is cut to this
constexpr size_t kMaxQueryBytes = 1 << 20;
constexpr int kMaxQueryValueBytes = 16 << 20;         // SQLITE_LIMIT_LENGTH of query connections
constexpr size_t kMaxQueryResponseBytes = 32 << 20;   // then the answer is truncated
constexpr size_t kMaxStatusMessageBytes = 4096;       // gRPC trailers have a size limit

grpc::Status Invalid(const std::string& message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message);
}

// "field: at most N bytes" when `value` is longer.
std::optional<grpc::Status> TooLong(const char* field, const std::string& value, size_t max) {
  if (value.size() <= max) return std::nullopt;
  return Invalid(absl::StrCat(field, ": at most ", max, " bytes, got ", value.size()));
}

std::optional<grpc::Status> BadStep(const char* field, int64_t step) {
  if (step >= 0 && step <= kMaxStep) return std::nullopt;
  return Invalid(absl::StrCat(field, ": must be between 0 and ", kMaxStep, ", got ", step));
}

// `text` as valid UTF-8 (proto3 strings must be), each invalid byte replaced by U+FFFD.
std::string ValidUtf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  for (size_t i = 0; i < text.size();) {
    const size_t n = p[i] < 0x80               ? 1
                     : (p[i] & 0xE0) == 0xC0 ? 2
                     : (p[i] & 0xF0) == 0xE0 ? 3
                     : (p[i] & 0xF8) == 0xF0 ? 4
                                             : 0;
    bool ok = n > 0 && i + n <= text.size();
    uint32_t code = n == 1 ? p[i] : n == 2 ? p[i] & 0x1F : n == 3 ? p[i] & 0x0F : p[i] & 0x07;
    for (size_t k = 1; ok && k < n; ++k) {
      ok = (p[i + k] & 0xC0) == 0x80;
      code = (code << 6) | (p[i + k] & 0x3F);
    }
    constexpr uint32_t kSmallest[] = {0, 0, 0x80, 0x800, 0x10000};
    ok = ok && code >= kSmallest[n] && code <= 0x10FFFF && !(code >= 0xD800 && code <= 0xDFFF);
    if (ok) {
      out.append(text.substr(i, n));
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

// At most `max` bytes of valid UTF-8: the start and the end of a longer text, with the number
// of bytes cut between them.
std::string Bounded(std::string_view text, size_t max) {
  std::string valid = ValidUtf8(text);
  if (valid.size() <= max) return valid;
  const std::string cut = absl::StrCat(" ... (", valid.size() - max, " bytes cut) ... ");
  // Cutting may split a character: ValidUtf8 again mends both ends.
  return ValidUtf8(valid.substr(0, max / 4) + cut + valid.substr(valid.size() - max / 2));
}

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  // Messages can echo what the caller sent (a megabyte-long name): keep them within gRPC's
  // trailer limit, or the caller gets RESOURCE_EXHAUSTED instead of the error.
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()),
                      Bounded(std::string(s.message()), kMaxStatusMessageBytes));
}

// Lets a statement read; refuses everything else (writes, ATTACH, PRAGMA, ...).
int ReadOnlyAuthorizer(void*, int action, const char*, const char*, const char*, const char*) {
  switch (action) {
    case SQLITE_SELECT:
    case SQLITE_READ:
    case SQLITE_FUNCTION:
    case SQLITE_RECURSIVE:
      return SQLITE_OK;
    default:
      return SQLITE_DENY;
  }
}

void ToTrial(const TrialRow& row, v1::Trial* out) {
  out->set_id(row.id);
  out->set_sweep_id(row.sweep_id);
  out->set_trial_key(row.trial_key);
  out->set_params_json(row.params_json);
  out->set_state(row.state);
  out->set_attempt(row.attempt);
  if (row.checkpoint) out->set_checkpoint(*row.checkpoint);
  out->set_error(row.error);
  out->set_last_step(row.last_step);
  if (row.final_metric) {
    out->set_has_final_metric(true);
    out->set_final_metric(*row.final_metric);
  }
  if (row.best_metric) {
    out->set_has_best_metric(true);
    out->set_best_metric(*row.best_metric);
  }
  out->set_attempt_errors_json(row.attempt_errors_json);
}

// LeaseTrials and RegisterWorker (held trials) describe a lease the same way.
void ToLease(const Lease& lease, v1::Lease* out) {
  out->set_trial_id(lease.trial_id);
  out->set_attempt(lease.attempt);
  out->set_sweep_id(lease.sweep_id);
  out->set_sweep_name(lease.sweep_name);
  out->set_trial_key(lease.trial_key);
  out->set_config_yaml(lease.config);
  for (const std::string& arg : lease.command) out->add_command(arg);
  if (lease.checkpoint) out->set_resume_checkpoint(*lease.checkpoint);
  out->set_gpus(lease.gpus);
  out->set_cpu_slots(lease.cpu_slots);
  out->set_expires_at(lease.expires_at);
  out->set_metric_name(lease.metric_name);
  out->set_minimize(lease.minimize);
  out->set_params_json(lease.params_json);
  out->set_ranks(lease.ranks);
}

}  // namespace

OrchestratorService::OrchestratorService(Store* store, Scheduler* scheduler, Clock* clock,
                                         ServiceOptions options)
    : options_(std::move(options)),
      clock_(clock),
      store_(store),
      scheduler_(scheduler),
      monitor_(store, clock) {
  // A sweepd that just started is like a database that just recovered: while it was down no
  // worker could heartbeat, so a lease that ran out meanwhile says nothing about its worker.
  // Expiry waits one lease TTL for the live workers to get through and renew; the trials of a
  // worker that died are requeued a TTL later. (Expiring at once took every running trial
  // from its live worker after an outage longer than the TTL, and ran again the trials that
  // had finished during it: found by tests/chaos.)
  storage_recovered_at_.store(clock_->Now());
}

grpc::Status OrchestratorService::Authorize(grpc::ServerContext* context) const {
  if (options_.token.empty()) return grpc::Status::OK;
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  const std::string given = it == metadata.end() ? std::string()
                                                 : std::string(it->second.data(), it->second.size());
  if (!ConstantTimeEquals(given, "Bearer " + options_.token)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing or wrong token (metadata 'authorization: Bearer <token>')");
  }
  return grpc::Status::OK;
}

void OrchestratorService::ExpireLeases() {
  // While the database cannot be written, heartbeats cannot renew leases: expiring them then,
  // or within one lease TTL after it can be written again, would take trials from workers
  // that never stopped heartbeating.
  if (storage_failing_.load() || clock_->Now() - storage_recovered_at_.load() < scheduler_->lease_ttl()) return;
  std::lock_guard<std::mutex> lock(mu_);
  (void)scheduler_->ExpireLeases();
}

grpc::Status OrchestratorService::Reply(const absl::Status& s) {
  if (IsStorageFailure(s)) {
    refused_while_failing_.fetch_add(1);
    if (!storage_failing_.exchange(true)) {
      spdlog::error("cannot write the database {}: {}. Requests that write are refused (workers keep "
                    "their rows and retry); nothing is dropped. Free space to recover.",
                    options_.db_path, std::string(s.message()));
    }
  }
  return ToGrpc(s);
}

void OrchestratorService::StorageOk() {
  if (!storage_failing_.load() || !storage_failing_.exchange(false)) return;
  storage_recovered_at_.store(clock_->Now());
  spdlog::info("the database {} is writable again ({} requests were refused meanwhile); lease expiry "
               "resumes in {:.0f} s",
               options_.db_path, refused_while_failing_.exchange(0), scheduler_->lease_ttl());
}

absl::Status OrchestratorService::FillSweep(const std::string& name_or_id, v1::Sweep* out) {
  absl::StatusOr<SweepRow> row = store_->GetSweep(name_or_id);
  if (!row.ok()) return row.status();
  out->set_id(row->id);
  out->set_name(row->name);
  out->set_state(row->state);
  out->set_method(row->method);
  out->set_metric_name(row->metric_name);
  out->set_minimize(row->minimize);
  out->set_created_at(row->created_at);
  Statement counts(store_->db(), "SELECT state, COUNT(*) FROM trials WHERE sweep_id = ? GROUP BY state");
  counts.Bind(1, row->id);
  while (counts.Step() == SQLITE_ROW) (*out->mutable_trials_by_state())[counts.Text(0)] = counts.Int(1);
  return absl::OkStatus();
}

grpc::Status OrchestratorService::SubmitSweep(grpc::ServerContext* context,
                                              const v1::SubmitSweepRequest* request,
                                              v1::SubmitSweepResponse* response) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  if (auto bad = TooLong("origin", request->origin(), kMaxPathBytes)) return *bad;
  // The origin is any file name (bytes on the wire); it is stored in an event's detail.
  const std::string origin = request->origin().empty() ? "spec" : ValidUtf8(request->origin());
  absl::StatusOr<SweepSpec> spec = ParseSweepSpec(request->spec_yaml(), origin, options_.spec_limits);
  if (!spec.ok()) return Reply(spec.status());
  absl::StatusOr<std::vector<TrialSpec>> trials = ExpandSweep(*spec, options_.spec_limits);
  if (!trials.ok()) return Reply(trials.status());
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<SubmitResult> result = store_->SubmitSweep(*spec, *trials, clock_->Now());
  if (!result.ok()) return Reply(result.status());
  response->set_created(result->created);
  return Reply(FillSweep(absl::StrCat(result->sweep_id), response->mutable_sweep()));
}

grpc::Status OrchestratorService::GetSweep(grpc::ServerContext* context, const v1::SweepRef* request,
                                           v1::Sweep* response) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  std::lock_guard<std::mutex> lock(mu_);
  return Reply(FillSweep(request->sweep(), response));
}

grpc::Status OrchestratorService::ListSweeps(grpc::ServerContext* context,
                                             const v1::ListSweepsRequest*,
                                             v1::ListSweepsResponse* response) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<std::vector<SweepRow>> rows = store_->ListSweeps();
  if (!rows.ok()) return Reply(rows.status());
  for (const SweepRow& row : *rows) {
    if (absl::Status s = FillSweep(absl::StrCat(row.id), response->add_sweeps()); !s.ok()) {
      return Reply(s);
    }
  }
  return grpc::Status::OK;
}

grpc::Status OrchestratorService::PauseSweep(grpc::ServerContext* context,
                                             const v1::PauseSweepRequest* request,
                                             v1::Sweep* response) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = scheduler_->PauseSweep(request->sweep(), request->stop_running()); !s.ok()) {
    return Reply(s);
  }
  return Reply(FillSweep(request->sweep(), response));
}

grpc::Status OrchestratorService::ResumeSweep(grpc::ServerContext* context,
                                              const v1::SweepRef* request, v1::Sweep* response) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = scheduler_->ResumeSweep(request->sweep()); !s.ok()) return Reply(s);
  return Reply(FillSweep(request->sweep(), response));
}

grpc::Status OrchestratorService::CancelSweep(grpc::ServerContext* context,
                                              const v1::SweepRef* request, v1::Sweep* response) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = scheduler_->CancelSweep(request->sweep()); !s.ok()) return Reply(s);
  return Reply(FillSweep(request->sweep(), response));
}

grpc::Status OrchestratorService::ListTrials(grpc::ServerContext* context,
                                             const v1::ListTrialsRequest* request,
                                             v1::ListTrialsResponse* response) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<SweepRow> sweep = store_->GetSweep(request->sweep());
  if (!sweep.ok()) return Reply(sweep.status());
  absl::StatusOr<std::vector<TrialRow>> rows = store_->ListTrials(sweep->id, request->state());
  if (!rows.ok()) return Reply(rows.status());
  for (const TrialRow& row : *rows) ToTrial(row, response->add_trials());
  return grpc::Status::OK;
}

grpc::Status OrchestratorService::GetTrial(grpc::ServerContext* context,
                                           const v1::TrialRef* request, v1::Trial* response) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<TrialRow> row = store_->GetTrial(request->trial_id());
  if (!row.ok()) return Reply(row.status());
  ToTrial(*row, response);
  return grpc::Status::OK;
}

grpc::Status OrchestratorService::CancelTrial(grpc::ServerContext* context,
                                              const v1::TrialRef* request, v1::Trial* response) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = scheduler_->CancelTrial(request->trial_id()); !s.ok()) return Reply(s);
  absl::StatusOr<TrialRow> row = store_->GetTrial(request->trial_id());
  if (!row.ok()) return Reply(row.status());
  ToTrial(*row, response);
  return grpc::Status::OK;
}

grpc::Status OrchestratorService::RetryTrial(grpc::ServerContext* context,
                                             const v1::TrialRef* request, v1::Trial* response) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = scheduler_->RetryTrial(request->trial_id()); !s.ok()) return Reply(s);
  absl::StatusOr<TrialRow> row = store_->GetTrial(request->trial_id());
  if (!row.ok()) return Reply(row.status());
  ToTrial(*row, response);
  return grpc::Status::OK;
}

grpc::Status OrchestratorService::ListWorkers(grpc::ServerContext* context,
                                              const v1::ListWorkersRequest*,
                                              v1::ListWorkersResponse* response) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  std::lock_guard<std::mutex> lock(mu_);
  Statement st(store_->db(),
               "SELECT w.id, w.name, w.host, w.gpus, w.cpu_slots, w.state, w.consecutive_failures, "
               "w.last_seen, (SELECT COUNT(*) FROM trials t WHERE t.worker_id = w.id "
               "AND t.state IN ('leased', 'running')) FROM workers w ORDER BY w.id");
  if (!st.status().ok()) return Reply(st.status());
  while (st.Step() == SQLITE_ROW) {
    v1::Worker* w = response->add_workers();
    w->set_id(st.Int(0));
    w->set_name(st.Text(1));
    w->set_host(st.Text(2));
    w->set_gpus(static_cast<int>(st.Int(3)));
    w->set_cpu_slots(static_cast<int>(st.Int(4)));
    w->set_state(st.Text(5));
    w->set_consecutive_failures(static_cast<int>(st.Int(6)));
    w->set_last_seen(st.Double(7));
    w->set_running_trials(static_cast<int>(st.Int(8)));
  }
  return grpc::Status::OK;
}

grpc::Status OrchestratorService::WatchSweep(grpc::ServerContext* context,
                                             const v1::WatchSweepRequest* request,
                                             grpc::ServerWriter<v1::Event>* writer) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  int64_t last = request->after_event_id();
  int64_t sweep_id = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    absl::StatusOr<SweepRow> sweep = store_->GetSweep(request->sweep());
    if (!sweep.ok()) return Reply(sweep.status());
    sweep_id = sweep->id;
  }
  while (!context->IsCancelled()) {
    std::vector<v1::Event> batch;
    std::string state;
    {
      std::lock_guard<std::mutex> lock(mu_);
      Statement st(store_->db(),
                   "SELECT e.id, e.time, COALESCE(e.trial_id, 0), e.kind, e.detail, s.state "
                   "FROM events e JOIN sweeps s ON s.id = e.sweep_id "
                   "WHERE e.sweep_id = ? AND e.id > ? ORDER BY e.id LIMIT 1000");
      st.Bind(1, sweep_id);
      st.Bind(2, last);
      while (st.Step() == SQLITE_ROW) {
        v1::Event event;
        event.set_id(st.Int(0));
        event.set_time(st.Double(1));
        event.set_trial_id(st.Int(2));
        event.set_kind(st.Text(3));
        event.set_detail(st.Text(4));
        event.set_sweep_state(st.Text(5));
        batch.push_back(std::move(event));
      }
      Statement s(store_->db(), "SELECT state FROM sweeps WHERE id = ?");
      s.Bind(1, sweep_id);
      if (s.Step() == SQLITE_ROW) state = s.Text(0);
    }
    for (const v1::Event& event : batch) {
      if (!writer->Write(event)) return grpc::Status::OK;  // The caller went away.
      last = event.id();
    }
    if (batch.empty() && (state == "completed" || state == "cancelled")) return grpc::Status::OK;
    if (batch.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return grpc::Status::OK;
}

// The analysis reads on its own read-only connection, outside the lock: WAL gives it a
// consistent snapshot while sweepd goes on writing. Only storing the result takes the lock.
grpc::Status OrchestratorService::AnalyzeSweep(grpc::ServerContext* context,
                                               const v1::AnalyzeSweepRequest* request,
                                               v1::AnalyzeSweepResponse* response) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  int64_t sweep_id = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    absl::StatusOr<SweepRow> sweep = store_->GetSweep(request->sweep());
    if (!sweep.ok()) return Reply(sweep.status());
    sweep_id = sweep->id;
  }
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(options_.db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    const std::string error = db != nullptr ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return grpc::Status(grpc::StatusCode::INTERNAL, "analysis: cannot open the database: " + error);
  }
  sqlite3_busy_timeout(db, 5000);
  analysis::AnalysisOptions options;
  options.group_by.assign(request->group_by().begin(), request->group_by().end());
  absl::StatusOr<analysis::SweepAnalysis> result = analysis::AnalyzeSweep(db, sweep_id, options);
  sqlite3_close(db);
  if (!result.ok()) return Reply(result.status());
  const std::string json = analysis::ToJson(*result).dump();
  response->set_json(json);
  response->set_text(analysis::RenderText(*result));
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<int64_t> id =
      store_->RecordAnalysis(clock_->Now(), sweep_id, nlohmann::json(options.group_by).dump(), json);
  if (!id.ok()) return Reply(id.status());
  response->set_analysis_id(*id);
  return grpc::Status::OK;
}

grpc::Status OrchestratorService::Query(grpc::ServerContext* context,
                                        const v1::QueryRequest* request,
                                        v1::QueryResponse* response) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  if (auto bad = TooLong("sql", request->sql(), kMaxQueryBytes)) return *bad;
  if (request->sql().find('\0') != std::string::npos) {
    return Invalid("query refused: it holds a NUL byte (SQLite would ignore what follows)");
  }
  absl::StatusOr<std::unique_ptr<Store>> reader = Store::OpenReadOnly(options_.db_path);
  if (!reader.ok()) return Reply(reader.status());
  sqlite3* db = (*reader)->db();
  sqlite3_set_authorizer(db, ReadOnlyAuthorizer, nullptr);
  sqlite3_limit(db, SQLITE_LIMIT_LENGTH, kMaxQueryValueBytes);  // randomblob(1e9) is "too big"
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.query_timeout_ms);
  sqlite3_progress_handler(
      db, 10000,
      [](void* arg) -> int {
        return std::chrono::steady_clock::now() >
               *static_cast<std::chrono::steady_clock::time_point*>(arg);
      },
      const_cast<std::chrono::steady_clock::time_point*>(&deadline));
  sqlite3_stmt* raw = nullptr;
  const char* tail = nullptr;
  if (sqlite3_prepare_v2(db, request->sql().c_str(), -1, &raw, &tail) != SQLITE_OK) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("query refused: ", sqlite3_errmsg(db),
                                     " (only reading statements are allowed)"));
  }
  std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> stmt(raw, &sqlite3_finalize);
  if (stmt == nullptr) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "empty query");
  if (tail != nullptr && std::string(tail).find_first_not_of(" \t\r\n;") != std::string::npos) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "one statement per query");
  }
  if (!sqlite3_stmt_readonly(stmt.get())) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "query refused: it would write");
  }
  const int columns = sqlite3_column_count(stmt.get());
  for (int c = 0; c < columns; ++c) response->add_columns(sqlite3_column_name(stmt.get(), c));
  const int max_rows = request->max_rows() > 0 ? std::min(request->max_rows(), options_.query_max_rows)
                                               : options_.query_max_rows;
  int rc;
  size_t bytes = 0;
  while ((rc = sqlite3_step(stmt.get())) == SQLITE_ROW) {
    if (response->rows_size() >= max_rows || bytes > kMaxQueryResponseBytes) {
      response->set_truncated(true);
      break;
    }
    v1::QueryResponse::Row* row = response->add_rows();
    for (int c = 0; c < columns; ++c) {
      const int type = sqlite3_column_type(stmt.get(), c);
      std::string value;
      if (type == SQLITE_BLOB) {  // As quote() writes it: a string field must be UTF-8.
        const auto* blob = static_cast<const unsigned char*>(sqlite3_column_blob(stmt.get(), c));
        const int size = sqlite3_column_bytes(stmt.get(), c);
        value = "X'";
        for (int i = 0; i < size; ++i) {
          value += "0123456789ABCDEF"[blob[i] >> 4];
          value += "0123456789ABCDEF"[blob[i] & 15];
        }
        value += "'";
      } else if (type != SQLITE_NULL) {
        const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt.get(), c));
        const size_t size = static_cast<size_t>(sqlite3_column_bytes(stmt.get(), c));
        if (text != nullptr) value = ValidUtf8(std::string_view(text, size));
      }
      bytes += value.size();
      row->add_values(std::move(value));
      row->add_is_null(type == SQLITE_NULL);
    }
  }
  if (rc == SQLITE_INTERRUPT) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                        absl::StrCat("query ran past ", options_.query_timeout_ms, " ms"));
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, sqlite3_errmsg(db));
  }
  return grpc::Status::OK;
}

grpc::Status OrchestratorService::RegisterWorker(grpc::ServerContext* context,
                                                 const v1::RegisterWorkerRequest* request,
                                                 v1::RegisterWorkerResponse* response) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  if (auto bad = TooLong("name", request->name(), kMaxNameBytes)) return *bad;
  if (auto bad = TooLong("host", request->host(), kMaxNameBytes)) return *bad;
  if (request->gpus() > kMaxWorkerResources || request->cpu_slots() > kMaxWorkerResources) {
    return Invalid(absl::StrCat("gpus and cpu_slots: at most ", kMaxWorkerResources, " each"));
  }
  if (request->labels_size() > kMaxLabels) {
    return Invalid(absl::StrCat("labels: at most ", kMaxLabels, ", got ", request->labels_size()));
  }
  for (const auto& [k, v] : request->labels()) {
    if (k.size() > kMaxNameBytes || v.size() > kMaxNameBytes) {
      return Invalid(absl::StrCat("labels: at most ", kMaxLabels, " of at most ", kMaxNameBytes,
                                  " bytes each"));
    }
  }
  nlohmann::json labels = nlohmann::json::object();
  for (const auto& [k, v] : request->labels()) labels[k] = v;
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<int64_t> id = scheduler_->RegisterWorker(
      {request->name(), request->host(), request->gpus(), request->cpu_slots(), labels.dump()});
  if (!id.ok()) return Reply(id.status());
  // A restarted worker learns which trials it still holds, under leases just renewed.
  absl::StatusOr<std::vector<Lease>> held = scheduler_->HeldTrials(*id);
  if (!held.ok()) return Reply(held.status());
  response->set_worker_id(*id);
  response->set_lease_ttl_seconds(scheduler_->lease_ttl());
  for (const Lease& lease : *held) ToLease(lease, response->add_held());
  return grpc::Status::OK;
}

grpc::Status OrchestratorService::LeaseTrials(grpc::ServerContext* context,
                                              const v1::LeaseTrialsRequest* request,
                                              v1::LeaseTrialsResponse* response) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  if (request->free_gpus() < 0 || request->free_cpu_slots() < 0 || request->max_trials() < 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "free resources and max_trials must be >= 0");
  }
  if (request->free_gpu_shares_size() > kMaxWorkerResources) {
    return Invalid(absl::StrCat("free_gpu_shares: at most ", kMaxWorkerResources, " GPUs"));
  }
  FreeResources free;
  free.cpu_slots = request->free_cpu_slots();
  if (request->free_gpu_shares_size() > 0) {
    for (int share : request->free_gpu_shares()) {
      if (share < 0 || share > kMaxWorkerResources) {
        return Invalid(absl::StrCat("free_gpu_shares: each in [0, ", kMaxWorkerResources,
                                    "], got ", share));
      }
      free.gpu_shares.push_back(share);
    }
  } else {
    free.gpu_shares.assign(std::min(request->free_gpus(), kMaxWorkerResources), 1);
  }
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(std::min(request->wait_ms(), options_.max_lease_wait_ms));
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      absl::StatusOr<std::vector<Lease>> leases = scheduler_->LeaseTrials(
          request->worker_id(), free, request->max_trials() > 0 ? request->max_trials() : 1);
      if (!leases.ok()) return Reply(leases.status());
      for (const Lease& lease : *leases) ToLease(lease, response->add_leases());
    }
    if (response->leases_size() > 0 || std::chrono::steady_clock::now() >= deadline ||
        context->IsCancelled()) {
      return grpc::Status::OK;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

grpc::Status OrchestratorService::Heartbeat(grpc::ServerContext* context,
                                            const v1::HeartbeatRequest* request,
                                            v1::HeartbeatResponse* response) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  if (request->trials_size() > kMaxHeartbeatTrials) {
    return Invalid(absl::StrCat("trials: at most ", kMaxHeartbeatTrials, " per heartbeat, got ",
                                request->trials_size()));
  }
  std::vector<TrialProgress> progress;
  for (const auto& p : request->trials()) {
    if (auto bad = BadStep("step", p.step())) return *bad;
    progress.push_back({p.trial_id(), p.attempt(), p.step()});
  }
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<std::vector<StopRequest>> stops = scheduler_->Heartbeat(request->worker_id(), progress);
  if (!stops.ok()) return Reply(stops.status());
  StorageOk();  // the heartbeat renewed its leases: a write went through
  for (const StopRequest& stop : *stops) {
    auto* out = response->add_stop();
    out->set_trial_id(stop.trial_id);
    out->set_attempt(stop.attempt);
    out->set_reason(stop.reason);
  }
  return grpc::Status::OK;
}

grpc::Status OrchestratorService::StartTrial(grpc::ServerContext* context,
                                             const v1::TrialAttempt* request, v1::Ack*) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  std::lock_guard<std::mutex> lock(mu_);
  return Reply(scheduler_->MarkRunning(request->trial_id(), request->attempt()));
}

grpc::Status OrchestratorService::StreamMetrics(grpc::ServerContext* context,
                                                grpc::ServerReader<v1::MetricsBatch>* reader,
                                                v1::StreamMetricsResponse* response) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  v1::MetricsBatch batch;
  int64_t received = 0, stored = 0;
  while (reader->Read(&batch)) {
    if (static_cast<size_t>(batch.metrics_size()) > options_.max_metrics_per_batch) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("batch of ", batch.metrics_size(), " rows; the limit is ",
                                       options_.max_metrics_per_batch));
    }
    std::vector<MetricRow> rows;
    rows.reserve(batch.metrics_size());
    const double now = clock_->Now();
    for (const v1::Metric& m : batch.metrics()) {
      if (auto bad = TooLong("name", m.name(), kMaxNameBytes)) return *bad;
      if (auto bad = BadStep("step", m.step())) return *bad;
      // NaN and infinite values are data; a time that is not a real date is the arrival time.
      rows.push_back({batch.trial_id(), batch.attempt(), m.name(), m.step(), m.value(),
                      std::isfinite(m.time()) && m.time() > 0 ? m.time() : now});
    }
    received += batch.metrics_size();
    std::lock_guard<std::mutex> lock(mu_);
    absl::StatusOr<int64_t> added = monitor_.Ingest(rows);
    if (!added.ok()) return Reply(added.status());
    if (*added > 0) StorageOk();
    stored += *added;
  }
  response->set_rows_received(received);
  response->set_rows_stored(stored);
  return grpc::Status::OK;
}

grpc::Status OrchestratorService::ReportCheckpoint(grpc::ServerContext* context,
                                                   const v1::ReportCheckpointRequest* request,
                                                   v1::Ack*) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  if (request->path().empty()) return Invalid("path: must not be empty");
  if (auto bad = TooLong("path", request->path(), kMaxPathBytes)) return *bad;
  if (auto bad = BadStep("step", request->step())) return *bad;
  std::lock_guard<std::mutex> lock(mu_);
  return Reply(scheduler_->ReportCheckpoint(request->trial_id(), request->attempt(),
                                             request->path(), request->step()));
}

grpc::Status OrchestratorService::CompleteTrial(grpc::ServerContext* context,
                                                const v1::CompleteTrialRequest* request, v1::Ack*) {
  if (grpc::Status a = Authorize(context); !a.ok()) return a;
  if (auto bad = BadStep("last_step", request->last_step())) return *bad;
  if (auto bad = BadStep("diverged_step", request->diverged_step())) return *bad;
  if (auto bad = TooLong("checkpoint", request->checkpoint(), kMaxPathBytes)) return *bad;
  Completion c;
  switch (request->outcome()) {
    case v1::CompleteTrialRequest::COMPLETED:
      c.outcome = Outcome::kCompleted;
      break;
    case v1::CompleteTrialRequest::DIVERGED:
      c.outcome = Outcome::kDiverged;
      break;
    case v1::CompleteTrialRequest::FAILED:
      c.outcome = Outcome::kFailed;
      break;
    case v1::CompleteTrialRequest::STOPPED:
      c.outcome = Outcome::kStopped;
      break;
    case v1::CompleteTrialRequest::RELEASED:
      c.outcome = Outcome::kReleased;
      break;
    default:
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "outcome: must be set");
  }
  c.last_step = request->last_step();
  if (request->has_final_metric()) c.final_metric = request->final_metric();
  c.diverged_step = request->diverged_step();
  c.error = Bounded(request->error(), kMaxErrorBytes);  // bytes on the wire: any tail of stderr
  if (request->has_best_metric()) c.best_metric = request->best_metric();
  c.checkpoint = request->checkpoint();
  c.exit_code = request->exit_code();
  std::lock_guard<std::mutex> lock(mu_);
  absl::Status s = scheduler_->Complete(request->trial_id(), request->attempt(), c);
  if (s.ok()) {
    monitor_.Forget(request->trial_id());
    StorageOk();
  }
  return Reply(s);
}

}  // namespace sweep::orchestrator
