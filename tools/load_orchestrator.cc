// load_orchestrator: a load test of the real sweepd (issue #8, "Load test").
//
// Starts sweepd as a child process on a fresh database, submits a sweep of many no-op trials
// (a command trainer that nothing ever runs) and drives it with N simulated workers: real gRPC
// clients of the real protocol, one thread each, sharing a few channels, started evenly over
// --ramp-seconds. Each worker registers, then loops: LeaseTrials, StartTrial, StreamMetrics
// every --flush-ms (the --rows-per-second rate in batches, Lingua's metric names with
// increasing steps), Heartbeat every --heartbeat-ms with its trial's step, ReportCheckpoint
// every --checkpoint-every steps, CompleteTrial after --steps-per-trial steps (+- a drawn
// --steps-jitter, so that trials end at different times as real ones do), and leases the next
// one. At the end running trials are handed back (CompleteTrial RELEASED), as a worker that
// shuts down does.
//
// Reports: rows acknowledged vs rows in the database (counted on a read-only connection, per
// trial), trials completed, client-side latency p50/p99/max per RPC method, sweepd's CPU
// seconds (/proc/<pid>/stat) and peak RSS (VmHWM), and the load generator's own CPU. Goals:
// p99 of Heartbeat and LeaseTrials under --latency-goal-ms, no row lost or duplicated, no RPC
// error. Exit 0 when every goal holds, 1 when one is missed (a line says which), 2 for bad
// usage, 3 when sweepd cannot be started.
//
//   load_orchestrator [--workers 200] [--rows-per-second 50] [--seconds 60] [--lease-ttl 10]
//                     [--channels 8] [--steps-per-trial 100] [--no-latency-goal]
//                     [--latency-csv F] [--keep] ...   (--help for all)
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "proto/sweep.grpc.pb.h"
#include "tests/testing/subprocess.h"

namespace {
namespace fs = std::filesystem;
namespace v1 = sweep::v1;
using Steady = std::chrono::steady_clock;
using sweep::testing::MakeTempDir;
using sweep::testing::ReadFileOrEmpty;
using sweep::testing::Subprocess;
using sweep::testing::WaitFor;

struct Options {
  std::string sweepd = SWEEPD_BIN;
  int workers = 200;
  double rows_per_second = 50;
  double seconds = 60;
  double lease_ttl = 10;
  int channels = 8;
  int flush_ms = 200;
  int heartbeat_ms = 1000;
  int64_t steps_per_trial = 100;
  double steps_jitter = 0.25;
  int64_t checkpoint_every = 50;
  double ramp_seconds = 2;
  uint32_t seed = 1;
  std::string latency_csv;
  double latency_goal_ms = 50;
  bool no_latency_goal = false;
  bool keep = false;
};

// The metrics each simulated step logs, with Lingua's names (5 rows per step).
constexpr const char* kMetricNames[] = {"loss/out", "optim/grad_norm", "optim/lr", "speed/wps",
                                        "grad_norm/layers.0.attention"};
constexpr int64_t kRowsPerStep = sizeof(kMetricNames) / sizeof(kMetricNames[0]);

// --- RPC methods, their latencies and errors ---

enum Method { kRegister, kLease, kStart, kHeartbeat, kStream, kCheckpoint, kComplete, kMethods };
constexpr const char* kMethodNames[kMethods] = {"RegisterWorker", "LeaseTrials",
                                                "StartTrial",     "Heartbeat",
                                                "StreamMetrics",  "ReportCheckpoint",
                                                "CompleteTrial"};

struct LatencySummary {
  size_t n = 0;
  double p50 = 0, p99 = 0, max = 0;  // milliseconds
};

LatencySummary Summarize(std::vector<float> ms) {
  LatencySummary s;
  s.n = ms.size();
  if (ms.empty()) return s;
  std::sort(ms.begin(), ms.end());
  auto at = [&](double q) {
    return ms[std::min(ms.size() - 1, static_cast<size_t>(std::ceil(q * ms.size())) - 1)];
  };
  s.p50 = at(0.50);
  s.p99 = at(0.99);
  s.max = ms.back();
  return s;
}

// Every call's client-side latency and outcome, per method. Thread-safe.
class Recorder {
 public:
  explicit Recorder(Steady::time_point origin) : origin_(origin) {}

  void Record(Method m, Steady::time_point start, const grpc::Status& status) {
    const float ms = std::chrono::duration<float, std::milli>(Steady::now() - start).count();
    const float at = std::chrono::duration<float>(start - origin_).count();
    PerMethod& p = methods_[m];
    std::lock_guard<std::mutex> lock(p.mu);
    p.ms.push_back(ms);
    p.at.push_back(at);
    // FAILED_PRECONDITION is the protocol's answer to a lost lease, counted by the worker.
    if (!status.ok() && status.error_code() != grpc::StatusCode::FAILED_PRECONDITION) {
      ++p.errors;
      if (p.errors <= 3) {
        std::fprintf(stderr, "load_orchestrator: %s failed: %d %s\n", kMethodNames[m],
                     static_cast<int>(status.error_code()), status.error_message().c_str());
      }
    }
  }
  // Latencies recorded since the previous call (for the progress lines).
  std::vector<float> Since(Method m, size_t* mark) {
    PerMethod& p = methods_[m];
    std::lock_guard<std::mutex> lock(p.mu);
    std::vector<float> out(p.ms.begin() + static_cast<std::ptrdiff_t>(*mark), p.ms.end());
    *mark = p.ms.size();
    return out;
  }
  std::vector<float> All(Method m) {
    std::lock_guard<std::mutex> lock(methods_[m].mu);
    return methods_[m].ms;
  }
  int64_t Errors(Method m) {
    std::lock_guard<std::mutex> lock(methods_[m].mu);
    return methods_[m].errors;
  }
  // Every call as "method,start_s,latency_ms" lines.
  bool WriteCsv(const std::string& path) {
    std::FILE* f = std::fopen(path.c_str(), "w");
    if (f == nullptr) return false;
    std::fprintf(f, "method,start_s,latency_ms\n");
    for (int m = 0; m < kMethods; ++m) {
      std::lock_guard<std::mutex> lock(methods_[m].mu);
      for (size_t i = 0; i < methods_[m].ms.size(); ++i) {
        std::fprintf(f, "%s,%.4f,%.3f\n", kMethodNames[m], methods_[m].at[i], methods_[m].ms[i]);
      }
    }
    return std::fclose(f) == 0;
  }
  int64_t TotalErrors() {
    int64_t n = 0;
    for (int m = 0; m < kMethods; ++m) n += Errors(static_cast<Method>(m));
    return n;
  }

 private:
  struct PerMethod {
    std::mutex mu;
    std::vector<float> ms;  // GUARDED_BY(mu) latency, milliseconds
    std::vector<float> at;  // GUARDED_BY(mu) start, seconds after origin_
    int64_t errors = 0;     // GUARDED_BY(mu)
  };
  const Steady::time_point origin_;
  PerMethod methods_[kMethods];
};

// Counters the workers share with the progress line and the report.
struct Totals {
  std::atomic<int64_t> rows_acked{0};     // rows in StreamMetrics calls that returned OK
  std::atomic<int64_t> rows_new{0};       // their rows_stored, as sweepd reported
  std::atomic<int64_t> rows_refused{0};   // rows refused with FAILED_PRECONDITION (lease lost)
  std::atomic<int64_t> trials_leased{0};
  std::atomic<int64_t> trials_completed{0};
  std::atomic<int64_t> trials_released{0};  // handed back at the end
  std::atomic<int64_t> leases_lost{0};      // FAILED_PRECONDITION or a stop in a heartbeat
  std::atomic<int64_t> empty_leases{0};     // LeaseTrials that found nothing
  std::atomic<int64_t> late_flushes{0};     // flushes more than one interval behind
  std::atomic<int64_t> checkpoints{0};
  std::atomic<int> running{0};
};

// --- One simulated worker ---

class SimulatedWorker {
 public:
  SimulatedWorker(int index, v1::Orchestrator::Stub* stub, const Options& options,
                  Recorder* recorder, Totals* totals)
      : index_(index),
        stub_(stub),
        options_(options),
        recorder_(recorder),
        totals_(totals),
        rng_(options.seed * 1000003u + static_cast<uint32_t>(index)) {}

  // Runs until `deadline`, then hands its trial back. Returns false if it could not register.
  bool Run(Steady::time_point start_at, Steady::time_point deadline) {
    std::this_thread::sleep_until(start_at);  // Staggered, so flushes do not all line up.
    if (!Register()) return false;
    const auto flush = std::chrono::milliseconds(options_.flush_ms);
    const auto heartbeat = std::chrono::milliseconds(options_.heartbeat_ms);
    Steady::time_point next_heartbeat = Steady::now() + heartbeat, next_lease = Steady::now();
    for (;;) {
      Steady::time_point now = Steady::now();
      if (now >= deadline) break;
      if (now >= next_heartbeat) {
        Heartbeat();
        next_heartbeat += heartbeat;
        if (next_heartbeat < now) next_heartbeat = now + heartbeat;
      }
      if (!trial_ && now >= next_lease) {
        if (!Lease()) next_lease = now + std::chrono::milliseconds(500);
        if (trial_) trial_->next_flush = Steady::now() + flush;
      } else if (trial_ && now >= trial_->next_flush) {
        if (now - trial_->next_flush > flush) ++totals_->late_flushes;
        trial_->next_flush += flush;
        if (trial_->next_flush < now) trial_->next_flush = now + flush;
        Flush();
        if (trial_ && trial_->next_row >= trial_->steps * kRowsPerStep) Complete();
        continue;  // A completed trial leases the next one at once.
      }
      Steady::time_point wake = std::min(next_heartbeat, deadline);
      wake = std::min(wake, trial_ ? trial_->next_flush : next_lease);
      std::this_thread::sleep_until(wake);
    }
    if (trial_) Release();
    return true;
  }

  // Rows acknowledged per trial id, for the per-trial check against the database.
  const std::map<int64_t, int64_t>& rows_by_trial() const { return rows_by_trial_; }

 private:
  struct Trial {
    int64_t id = 0;
    int attempt = 0;
    int64_t steps = 0;     // CompleteTrial after this many
    int64_t next_row = 0;  // row i is step i / kRowsPerStep + 1, metric i % kRowsPerStep
    double last_loss = 0;
    Steady::time_point next_flush;
  };

  std::unique_ptr<grpc::ClientContext> Ctx() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return ctx;
  }

  // Calls `rpc` until it returns something other than a transport error (at most 5 tries):
  // every call here may be repeated (metrics are keyed by trial, name and step).
  template <typename F>
  grpc::Status Call(Method method, F rpc) {
    grpc::Status s;
    for (int attempt = 0; attempt < 5; ++attempt) {
      const Steady::time_point start = Steady::now();
      s = rpc();
      recorder_->Record(method, start, s);
      if (s.error_code() != grpc::StatusCode::UNAVAILABLE &&
          s.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
        return s;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return s;
  }

  bool Register() {
    v1::RegisterWorkerRequest req;
    req.set_name("load-" + std::to_string(index_));
    req.set_host("load_orchestrator");
    req.set_cpu_slots(1);
    v1::RegisterWorkerResponse resp;
    if (!Call(kRegister, [&] { return stub_->RegisterWorker(Ctx().get(), req, &resp); }).ok()) {
      return false;
    }
    worker_id_ = resp.worker_id();
    return true;
  }

  // wait_ms 0: the call returns at once, so its latency is sweepd's work, not a long poll.
  bool Lease() {
    v1::LeaseTrialsRequest req;
    req.set_worker_id(worker_id_);
    req.set_free_cpu_slots(1);
    req.set_max_trials(1);
    req.set_wait_ms(0);
    v1::LeaseTrialsResponse resp;
    if (!Call(kLease, [&] { return stub_->LeaseTrials(Ctx().get(), req, &resp); }).ok()) {
      return false;
    }
    if (resp.leases_size() == 0) {
      ++totals_->empty_leases;
      return false;
    }
    ++totals_->trials_leased;
    Trial t;
    t.id = resp.leases(0).trial_id();
    t.attempt = resp.leases(0).attempt();
    std::uniform_real_distribution<double> jitter(1 - options_.steps_jitter, 1 + options_.steps_jitter);
    t.steps = std::max<int64_t>(
        1, std::llround(static_cast<double>(options_.steps_per_trial) * jitter(rng_)));
    v1::TrialAttempt start;
    start.set_trial_id(t.id);
    start.set_attempt(t.attempt);
    v1::Ack ack;
    grpc::Status s = Call(kStart, [&] { return stub_->StartTrial(Ctx().get(), start, &ack); });
    if (!s.ok()) {
      if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION) ++totals_->leases_lost;
      return false;
    }
    trial_ = t;
    ++totals_->running;
    return true;
  }

  void Heartbeat() {
    v1::HeartbeatRequest req;
    req.set_worker_id(worker_id_);
    if (trial_) {
      auto* p = req.add_trials();
      p->set_trial_id(trial_->id);
      p->set_attempt(trial_->attempt);
      p->set_step(trial_->next_row / kRowsPerStep);
    }
    v1::HeartbeatResponse resp;
    if (!Call(kHeartbeat, [&] { return stub_->Heartbeat(Ctx().get(), req, &resp); }).ok()) return;
    for (const auto& stop : resp.stop()) {
      if (trial_ && stop.trial_id() == trial_->id) {
        std::fprintf(stderr, "load_orchestrator: worker %d: trial %lld stopped: %s\n", index_,
                     static_cast<long long>(trial_->id), stop.reason().c_str());
        ++totals_->leases_lost;
        Drop();
      }
    }
  }

  // One StreamMetrics call with the next rows_per_second * flush_ms rows, as the real worker
  // sends each flush.
  void Flush() {
    const int64_t total = trial_->steps * kRowsPerStep;
    const int64_t want = std::max<int64_t>(
        1, std::llround(options_.rows_per_second * options_.flush_ms / 1000.0));
    const int64_t end = std::min(total, trial_->next_row + want);
    v1::MetricsBatch batch;
    batch.set_trial_id(trial_->id);
    batch.set_attempt(trial_->attempt);
    const double now = std::chrono::duration<double>(
                           std::chrono::system_clock::now().time_since_epoch()).count();
    double last_loss = trial_->last_loss;
    for (int64_t row = trial_->next_row; row < end; ++row) {
      const int64_t step = row / kRowsPerStep + 1;
      const int name = static_cast<int>(row % kRowsPerStep);
      // Smooth traces with bounded noise: nothing for the spike or divergence detector.
      const double noise = static_cast<double>((step * 2654435761u + name * 40503u) % 1000) / 1e4;
      double value = 0;
      switch (name) {
        case 0: value = last_loss = 1.5 + 4.0 * std::exp(-step / 50.0) + noise; break;
        case 1: value = 1.0 + noise; break;
        case 2: value = 3e-3 * std::min(1.0, step / 10.0); break;
        case 3: value = 50000 + 1000 * noise; break;
        default: value = 0.3 + noise; break;
      }
      v1::Metric* m = batch.add_metrics();
      m->set_name(kMetricNames[name]);
      m->set_step(step);
      m->set_value(value);
      m->set_time(now);
    }
    const int64_t n = end - trial_->next_row;
    v1::StreamMetricsResponse resp;
    grpc::Status s = Call(kStream, [&] {
      auto ctx = Ctx();
      auto writer = stub_->StreamMetrics(ctx.get(), &resp);
      writer->Write(batch);
      writer->WritesDone();
      return writer->Finish();
    });
    if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
      totals_->rows_refused += n;
      ++totals_->leases_lost;
      Drop();
      return;
    }
    if (!s.ok()) return;  // Counted as an error; the rows are sent again with the next flush.
    totals_->rows_acked += n;
    totals_->rows_new += resp.rows_stored();
    rows_by_trial_[trial_->id] += n;
    const int64_t steps_before = trial_->next_row / kRowsPerStep;
    trial_->next_row = end;
    trial_->last_loss = last_loss;
    const int64_t steps_after = trial_->next_row / kRowsPerStep;
    if (options_.checkpoint_every > 0 &&
        steps_after / options_.checkpoint_every > steps_before / options_.checkpoint_every &&
        steps_after < trial_->steps) {
      ReportCheckpoint(steps_after);
    }
  }

  void ReportCheckpoint(int64_t step) {
    v1::ReportCheckpointRequest req;
    req.set_trial_id(trial_->id);
    req.set_attempt(trial_->attempt);
    req.set_path("/nonexistent/load/" + std::to_string(trial_->id) + "/checkpoints/" +
                 std::to_string(step));
    req.set_step(step);
    v1::Ack ack;
    grpc::Status s =
        Call(kCheckpoint, [&] { return stub_->ReportCheckpoint(Ctx().get(), req, &ack); });
    if (s.ok()) ++totals_->checkpoints;
    if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
      ++totals_->leases_lost;
      Drop();
    }
  }

  void Finish(v1::CompleteTrialRequest::Outcome outcome) {
    v1::CompleteTrialRequest req;
    req.set_trial_id(trial_->id);
    req.set_attempt(trial_->attempt);
    req.set_outcome(outcome);
    req.set_last_step(trial_->next_row / kRowsPerStep);
    if (outcome == v1::CompleteTrialRequest::COMPLETED) {
      req.set_has_final_metric(true);
      req.set_final_metric(trial_->last_loss);
    }
    v1::Ack ack;
    grpc::Status s = Call(kComplete, [&] { return stub_->CompleteTrial(Ctx().get(), req, &ack); });
    if (s.ok() && outcome == v1::CompleteTrialRequest::COMPLETED) ++totals_->trials_completed;
    if (s.ok() && outcome == v1::CompleteTrialRequest::RELEASED) ++totals_->trials_released;
    if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION) ++totals_->leases_lost;
    Drop();
  }
  void Complete() { Finish(v1::CompleteTrialRequest::COMPLETED); }
  void Release() { Finish(v1::CompleteTrialRequest::RELEASED); }

  void Drop() {
    if (!trial_) return;
    trial_.reset();
    --totals_->running;
  }

  const int index_;
  v1::Orchestrator::Stub* const stub_;
  const Options& options_;
  Recorder* const recorder_;
  Totals* const totals_;
  int64_t worker_id_ = 0;
  std::optional<Trial> trial_;
  std::map<int64_t, int64_t> rows_by_trial_;
  std::mt19937 rng_;
};

// --- sweepd's resources, from /proc ---

struct ProcessStats {
  double cpu_seconds = 0;  // utime + stime
  int64_t peak_rss_kb = 0;  // VmHWM
  int64_t threads = 0;
};

ProcessStats ReadProcessStats(pid_t pid) {
  ProcessStats stats;
  const std::string stat = ReadFileOrEmpty("/proc/" + std::to_string(pid) + "/stat");
  const size_t paren = stat.rfind(')');
  if (paren != std::string::npos) {
    std::istringstream fields(stat.substr(paren + 2));
    std::vector<std::string> f;
    for (std::string x; fields >> x;) f.push_back(x);
    // After the command: state is field 3, utime field 14, stime field 15 (proc(5)).
    if (f.size() > 12) {
      stats.cpu_seconds = (std::stod(f[11]) + std::stod(f[12])) /
                          static_cast<double>(sysconf(_SC_CLK_TCK));
    }
  }
  std::istringstream status(ReadFileOrEmpty("/proc/" + std::to_string(pid) + "/status"));
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) stats.peak_rss_kb = std::atoll(line.c_str() + 6);
    if (line.rfind("Threads:", 0) == 0) stats.threads = std::atoll(line.c_str() + 8);
  }
  return stats;
}

double SelfCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// Microseconds some runnable task waited for a CPU, machine-wide (PSI, /proc/pressure/cpu);
// -1 where the kernel does not report it. Other work on the machine shows here.
int64_t CpuPressureMicros() {
  const std::string psi = ReadFileOrEmpty("/proc/pressure/cpu");
  const size_t at = psi.find("total=");
  return at == std::string::npos ? -1 : std::atoll(psi.c_str() + at + 6);
}

std::string LoadAverage() {
  std::istringstream in(ReadFileOrEmpty("/proc/loadavg"));
  std::string one, five;
  in >> one >> five;
  return one.empty() ? "?" : one + " (1 min), " + five + " (5 min)";
}

int64_t SelfPeakRssKb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

// --- The database, read-only ---

struct StoredRows {
  bool ok = false;
  std::string error;
  int64_t total = 0;
  std::map<int64_t, int64_t> by_trial;
  std::map<std::string, int64_t> trials_by_state;
  std::string integrity;
};

StoredRows CountStoredRows(const std::string& path) {
  StoredRows out;
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    out.error = db != nullptr ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return out;
  }
  sqlite3_busy_timeout(db, 5000);
  auto each = [&](const char* sql, auto on_row) {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db, sql, -1, &st, nullptr) != SQLITE_OK) {
      out.error = sqlite3_errmsg(db);
      return false;
    }
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) on_row(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) out.error = sqlite3_errmsg(db);
    return rc == SQLITE_DONE;
  };
  out.ok = each("SELECT trial_id, COUNT(*) FROM metrics GROUP BY trial_id",
                [&](sqlite3_stmt* st) {
                  out.by_trial[sqlite3_column_int64(st, 0)] = sqlite3_column_int64(st, 1);
                  out.total += sqlite3_column_int64(st, 1);
                }) &&
           each("SELECT state, COUNT(*) FROM trials GROUP BY state", [&](sqlite3_stmt* st) {
             out.trials_by_state[reinterpret_cast<const char*>(sqlite3_column_text(st, 0))] =
                 sqlite3_column_int64(st, 1);
           }) &&
           each("PRAGMA quick_check", [&](sqlite3_stmt* st) {
             out.integrity += reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
           });
  sqlite3_close(db);
  return out;
}

std::string Grouped(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

// A grid of `trials` no-op trials: a command trainer, so nothing checks `base` against
// sweep-train, and nothing ever runs it (the simulated workers only speak the protocol).
std::string NoOpSpec(int64_t trials, int64_t steps) {
  std::string seeds;
  for (int64_t i = 1; i <= trials; ++i) seeds += (i > 1 ? ", " : "") + std::to_string(i);
  return "name: load\nmethod: grid\nmetric: {name: loss/out, goal: minimize}\n"
         "trainer: {command: [/bin/true]}\nbase: {steps: " + std::to_string(steps) +
         "}\nparameters: {seed: {values: [" + seeds + "]}}\n";
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{
      "load_orchestrator: a load test of the real sweepd. Simulated workers (real gRPC clients,\n"
      "a thread each over a few shared channels) lease no-op trials, stream metrics, heartbeat,\n"
      "checkpoint and complete; the report gives rows sent vs stored, trials completed, latency\n"
      "per RPC, sweepd's CPU and peak memory, and whether the goals hold (exit 1 if not).\n\n"
      "Examples:\n"
      "  load_orchestrator                                  # 200 workers x 50 rows/s, 60 s\n"
      "  load_orchestrator --workers 50 --seconds 10 --no-latency-goal   # the CI smoke run",
      "load_orchestrator"};
  app.add_option("--sweepd", o.sweepd, "sweepd binary")->capture_default_str();
  app.add_option("--workers", o.workers, "Simulated workers")
      ->capture_default_str()
      ->check(CLI::Range(1, 10000));
  app.add_option("--rows-per-second", o.rows_per_second, "Metric rows each worker streams per second")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--seconds", o.seconds, "How long the load runs")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--lease-ttl", o.lease_ttl, "sweepd's --lease-ttl (seconds)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--channels", o.channels, "gRPC channels (connections) the workers share")
      ->capture_default_str()
      ->check(CLI::Range(1, 10000));
  app.add_option("--flush-ms", o.flush_ms, "A StreamMetrics call this often per worker")
      ->capture_default_str()
      ->check(CLI::Range(10, 60000));
  app.add_option("--heartbeat-ms", o.heartbeat_ms, "A Heartbeat this often per worker")
      ->capture_default_str()
      ->check(CLI::Range(10, 600000));
  app.add_option("--steps-per-trial", o.steps_per_trial,
                 "Steps before CompleteTrial (5 metric rows per step)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--steps-jitter", o.steps_jitter,
                 "Each trial runs steps-per-trial x (1 +- this), drawn per trial, so that trials "
                 "end at different times as real ones do")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 0.9));
  app.add_option("--ramp-seconds", o.ramp_seconds, "Workers start evenly over this long")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--seed", o.seed, "Seed of the trial lengths")->capture_default_str();
  app.add_option("--latency-csv", o.latency_csv, "Write every call (method, start, latency) here");
  app.add_option("--checkpoint-every", o.checkpoint_every, "ReportCheckpoint every N steps (0: never)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--latency-goal-ms", o.latency_goal_ms, "Goal for the p99 of Heartbeat and LeaseTrials")
      ->capture_default_str();
  app.add_flag("--no-latency-goal", o.no_latency_goal,
               "Print the latency goal's verdict but do not fail on it (CI on noisy machines)");
  app.add_flag("--keep", o.keep, "Keep the temporary folder (database, sweepd.log)");
  CLI11_PARSE(app, argc, argv);

  // Enough trials that no worker ever waits for one: the trials the run can finish, twice.
  const double trial_seconds = (1 - o.steps_jitter) *
                              static_cast<double>(o.steps_per_trial * kRowsPerStep) /
                              o.rows_per_second;
  const int64_t trials = std::max<int64_t>(
      2 * o.workers, static_cast<int64_t>(2 * o.workers * (o.seconds / trial_seconds + 1)));

  const std::string dir = MakeTempDir("load-orchestrator");
  const std::string db_path = dir + "/sweep.db";

  std::ostringstream ttl;
  ttl << o.lease_ttl;
  Subprocess server({o.sweepd, "--db", db_path, "--listen", "127.0.0.1:0", "--port-file",
                     dir + "/port", "--lease-ttl", ttl.str(), "--max-trials",
                     std::to_string(trials)},
                    "", dir + "/sweepd.log");
  if (!WaitFor([&] { return !ReadFileOrEmpty(dir + "/port").empty() || server.Poll(); },
               std::chrono::seconds(30)) ||
      ReadFileOrEmpty(dir + "/port").empty()) {
    std::fprintf(stderr, "load_orchestrator: sweepd did not start:\n%s\n",
                 ReadFileOrEmpty(dir + "/sweepd.log").c_str());
    return 3;
  }
  const std::string target =
      "127.0.0.1:" + std::to_string(std::stoi(ReadFileOrEmpty(dir + "/port")));

  std::vector<std::unique_ptr<v1::Orchestrator::Stub>> stubs;
  for (int c = 0; c < o.channels; ++c) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.channel_id", c);  // A connection of its own, not a shared subchannel.
    stubs.push_back(v1::Orchestrator::NewStub(
        grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args)));
  }
  {
    v1::SubmitSweepRequest req;
    req.set_spec_yaml(NoOpSpec(trials, o.steps_per_trial));
    req.set_origin("load.yaml");
    v1::SubmitSweepResponse resp;
    grpc::ClientContext ctx;
    if (grpc::Status s = stubs[0]->SubmitSweep(&ctx, req, &resp); !s.ok()) {
      std::fprintf(stderr, "load_orchestrator: submit: %s\n", s.error_message().c_str());
      return 3;
    }
  }

  std::printf("load_orchestrator: %d workers (started over %g s) x %g rows/s (%d ms batches), "
              "heartbeat %d ms, %lld steps per trial (+-%g%%), lease TTL %g s, %d channels, %lld "
              "no-op trials, %g s against %s (%u CPUs)\n",
              o.workers, o.ramp_seconds, o.rows_per_second, o.flush_ms, o.heartbeat_ms,
              static_cast<long long>(o.steps_per_trial), 100 * o.steps_jitter, o.lease_ttl,
              o.channels, static_cast<long long>(trials), o.seconds, o.sweepd.c_str(),
              std::thread::hardware_concurrency());
  std::fflush(stdout);

  const Steady::time_point start = Steady::now();
  Recorder recorder(start);
  Totals totals;
  std::vector<std::unique_ptr<SimulatedWorker>> workers;
  for (int w = 0; w < o.workers; ++w) {
    workers.push_back(std::make_unique<SimulatedWorker>(w, stubs[w % o.channels].get(), o,
                                                        &recorder, &totals));
  }
  const ProcessStats sweepd_before = ReadProcessStats(server.pid());
  const double client_cpu_before = SelfCpuSeconds();
  const int64_t pressure_before = CpuPressureMicros();
  const std::string load_before = LoadAverage();
  const Steady::time_point deadline =
      start + std::chrono::milliseconds(static_cast<int64_t>(o.seconds * 1000));
  std::atomic<int> failed_to_start{0};
  std::vector<std::thread> threads;
  threads.reserve(workers.size());
  for (int w = 0; w < o.workers; ++w) {
    // Workers come up over the ramp (and at least over one flush interval).
    const double ramp_us = std::max(o.ramp_seconds * 1e6, o.flush_ms * 1e3);
    const Steady::time_point start_at =
        start + std::chrono::microseconds(static_cast<int64_t>(ramp_us * w / o.workers));
    threads.emplace_back([&, w, start_at] {
      if (!workers[w]->Run(start_at, deadline)) ++failed_to_start;
    });
  }

  // A progress line every 5 s, over the last 5 s.
  size_t marks[kMethods] = {};
  int64_t last_rows = 0;
  ProcessStats last_sweepd = sweepd_before;
  double last_client = client_cpu_before;
  int64_t last_pressure = pressure_before;
  Steady::time_point last = start;
  for (Steady::time_point next = start + std::chrono::seconds(5); next < deadline;
       next += std::chrono::seconds(5)) {
    std::this_thread::sleep_until(next);
    const double dt = std::chrono::duration<double>(Steady::now() - last).count();
    last = Steady::now();
    const ProcessStats now_sweepd = ReadProcessStats(server.pid());
    const double now_client = SelfCpuSeconds();
    const int64_t now_pressure = CpuPressureMicros();
    const int64_t rows = totals.rows_acked.load();
    LatencySummary p[kMethods];
    for (int m = 0; m < kMethods; ++m) p[m] = Summarize(recorder.Since(static_cast<Method>(m), &marks[m]));
    std::printf("[%3.0fs] trials running %d, completed %s | rows %s (%s/s) | p99 ms: lease %.1f, "
                "heartbeat %.1f, stream %.1f, complete %.1f | CPU: sweepd %.0f%%, client %.0f%% "
                "| errors %lld | machine CPU pressure %.0f%%\n",
                std::chrono::duration<double>(last - start).count(), totals.running.load(),
                Grouped(totals.trials_completed).c_str(), Grouped(rows).c_str(),
                Grouped(std::llround((rows - last_rows) / dt)).c_str(), p[kLease].p99,
                p[kHeartbeat].p99, p[kStream].p99, p[kComplete].p99,
                100 * (now_sweepd.cpu_seconds - last_sweepd.cpu_seconds) / dt,
                100 * (now_client - last_client) / dt,
                static_cast<long long>(recorder.TotalErrors()),
                100 * static_cast<double>(now_pressure - last_pressure) / 1e6 / dt);
    std::fflush(stdout);
    last_rows = rows;
    last_sweepd = now_sweepd;
    last_client = now_client;
    last_pressure = now_pressure;
  }
  for (auto& t : threads) t.join();
  const double wall = std::chrono::duration<double>(Steady::now() - start).count();
  const ProcessStats sweepd_after = ReadProcessStats(server.pid());
  const double client_cpu = SelfCpuSeconds() - client_cpu_before;
  const int64_t pressure = CpuPressureMicros() - pressure_before;

  // Every acknowledged row must be in the database, once: count them on a read-only
  // connection while sweepd still runs (WAL), per trial.
  const StoredRows stored = CountStoredRows(db_path);
  server.Signal(SIGTERM);
  const int sweepd_exit = server.Wait();

  std::map<int64_t, int64_t> sent_by_trial;
  for (const auto& w : workers) {
    for (const auto& [trial, rows] : w->rows_by_trial()) sent_by_trial[trial] += rows;
  }
  int64_t mismatched_trials = 0;
  std::string first_mismatches;
  std::map<int64_t, int64_t> all_trials = sent_by_trial;
  for (const auto& [trial, rows] : stored.by_trial) all_trials.emplace(trial, 0);
  for (const auto& [trial, unused] : all_trials) {
    const auto s = sent_by_trial.find(trial);
    const auto d = stored.by_trial.find(trial);
    const int64_t sent = s == sent_by_trial.end() ? 0 : s->second;
    const int64_t in_db = d == stored.by_trial.end() ? 0 : d->second;
    if (sent != in_db) {
      if (++mismatched_trials <= 5) {
        first_mismatches += " trial " + std::to_string(trial) + ": sent " + std::to_string(sent) +
                            ", stored " + std::to_string(in_db) + ";";
      }
    }
  }

  const int64_t rows_acked = totals.rows_acked.load();
  std::printf("\n== load_orchestrator: %d workers, %.1f s ==\n", o.workers, wall);
  std::printf("rows: sent and acknowledged %s, stored in the database %s, reported new by sweepd "
              "%s, refused (lease lost) %s; %s/s overall; trials with a different count: %lld%s\n",
              Grouped(rows_acked).c_str(), Grouped(stored.total).c_str(),
              Grouped(totals.rows_new).c_str(), Grouped(totals.rows_refused).c_str(),
              Grouped(std::llround(rows_acked / wall)).c_str(),
              static_cast<long long>(mismatched_trials), first_mismatches.c_str());
  std::printf("trials: leased %s, completed %s, handed back at the end %s, leases lost %s, "
              "empty lease replies %s, checkpoints %s; late flushes %s\n",
              Grouped(totals.trials_leased).c_str(), Grouped(totals.trials_completed).c_str(),
              Grouped(totals.trials_released).c_str(), Grouped(totals.leases_lost).c_str(),
              Grouped(totals.empty_leases).c_str(), Grouped(totals.checkpoints).c_str(),
              Grouped(totals.late_flushes).c_str());
  std::string states;
  for (const auto& [state, n] : stored.trials_by_state) states += " " + state + " " + Grouped(n);
  std::printf("database: trials by state:%s; quick_check %s%s\n", states.c_str(),
              stored.integrity.c_str(), stored.ok ? "" : (" (error: " + stored.error + ")").c_str());
  std::printf("\n| RPC | calls | errors | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n");
  LatencySummary final_p[kMethods];
  for (int m = 0; m < kMethods; ++m) {
    final_p[m] = Summarize(recorder.All(static_cast<Method>(m)));
    std::printf("| %s | %s | %lld | %.2f | %.2f | %.1f |\n", kMethodNames[m],
                Grouped(static_cast<int64_t>(final_p[m].n)).c_str(),
                static_cast<long long>(recorder.Errors(static_cast<Method>(m))), final_p[m].p50,
                final_p[m].p99, final_p[m].max);
  }
  const double sweepd_cpu = sweepd_after.cpu_seconds - sweepd_before.cpu_seconds;
  std::printf("\nsweepd: %.1f CPU seconds in %.1f s (%.0f%% of one core), peak RSS %.1f MiB, "
              "%lld threads at the end, exit %d\n",
              sweepd_cpu, wall, 100 * sweepd_cpu / wall, sweepd_after.peak_rss_kb / 1024.0,
              static_cast<long long>(sweepd_after.threads), sweepd_exit);
  std::printf("load generator: %.1f CPU seconds (%.0f%% of one core), peak RSS %.1f MiB, %d "
              "threads over %d channels\n",
              client_cpu, 100 * client_cpu / wall, SelfPeakRssKb() / 1024.0, o.workers,
              o.channels);
  std::printf("machine: %u CPUs shared by sweepd, the load generator and anything else; load "
              "average at the start %s; some task (this test's included) waited for a CPU %s of "
              "the run (/proc/pressure/cpu)\n",
              std::thread::hardware_concurrency(), load_before.c_str(),
              pressure_before < 0 ? "? (no PSI)"
                                  : (std::to_string(std::llround(100 * pressure / 1e6 / wall)) +
                                     "%").c_str());

  // The goals.
  bool ok = true;
  auto goal = [&](bool met, bool enforced, const std::string& text) {
    std::printf("goal: %s: %s\n", text.c_str(),
                met ? "met" : enforced ? "MISSED" : "missed (not enforced: --no-latency-goal)");
    if (!met && enforced) ok = false;
  };
  std::printf("\n");
  char line[256];
  for (Method m : {kHeartbeat, kLease}) {
    std::snprintf(line, sizeof line, "p99 of %s < %g ms (%.2f ms)", kMethodNames[m],
                  o.latency_goal_ms, final_p[m].p99);
    goal(final_p[m].n > 0 && final_p[m].p99 < o.latency_goal_ms, !o.no_latency_goal, line);
  }
  std::snprintf(line, sizeof line, "0 rows lost or duplicated (sent %s, stored %s, %lld trials differ)",
                Grouped(rows_acked).c_str(), Grouped(stored.total).c_str(),
                static_cast<long long>(mismatched_trials));
  goal(stored.ok && rows_acked > 0 && rows_acked == stored.total && mismatched_trials == 0, true,
       line);
  std::snprintf(line, sizeof line, "0 RPC errors (%lld), every worker registered (%d did not)",
                static_cast<long long>(recorder.TotalErrors()), failed_to_start.load());
  goal(recorder.TotalErrors() == 0 && failed_to_start == 0, true, line);
  std::snprintf(line, sizeof line, "database intact (quick_check: %s)", stored.integrity.c_str());
  goal(stored.integrity == "ok", true, line);
  std::printf("%s\n", ok ? "RESULT: every goal met" : "RESULT: a goal was missed (see MISSED above)");
  std::printf("command:");
  for (int i = 0; i < argc; ++i) std::printf(" %s", argv[i]);
  std::printf("\n");
  if (!o.latency_csv.empty() && !recorder.WriteCsv(o.latency_csv)) {
    std::fprintf(stderr, "load_orchestrator: cannot write %s\n", o.latency_csv.c_str());
  }
  if (o.keep) {
    std::printf("kept: %s (sweep.db, sweepd.log)\n", dir.c_str());
  } else {
    fs::remove_all(dir);
  }
  return ok ? 0 : 1;
}
