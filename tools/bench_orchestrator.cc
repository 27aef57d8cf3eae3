// bench_orchestrator: sweepd's throughput over real loopback gRPC, against baselines measured
// in the same run.
//
//   (a) lease -> start -> complete cycles per second, no-op trials, N concurrent workers,
//       against Optuna 3.1 ask/tell with SQLite storage and N processes (tools/bench_optuna.py)
//   (b) metric rows per second through the StreamMetrics RPC, against inserting the same rows
//       into the same schema in one transaction through the SQLite C API; both --repeat times,
//       alternately, and the medians compared (one 200,000-row transaction takes under half
//       a second, so single runs swung the ratio by +-20 points)
//
//   bench_orchestrator [--sweepd PATH] [--workers 8] [--trials 2000] [--rows 200000]
//                      [--repeat 3] [--optuna-trials-per-process 50] [--python /usr/bin/python3]
#include <grpcpp/grpcpp.h>
#include <sqlite3.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <thread>
#include <vector>

#include "orchestrator/store.h"
#include "proto/sweep.grpc.pb.h"
#include "tests/testing/subprocess.h"

namespace {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using sweep::testing::MakeTempDir;
using sweep::testing::ReadFileOrEmpty;
using sweep::testing::Subprocess;
using sweep::testing::WaitFor;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

std::string SpecWithTrials(const std::string& name, int trials) {
  std::string values;
  for (int i = 1; i <= trials; ++i) values += (i > 1 ? ", " : "") + std::to_string(i);
  return "name: " + name + "\nmethod: grid\nbase: {data: {sources: {kjv: 1}}}\n"
         "parameters: {seed: {values: [" + values + "]}}\n";
}

// Sorts `values` and returns their median.
double Median(std::vector<double>& values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

bool Check(const grpc::Status& s, const char* what) {
  if (!s.ok()) std::fprintf(stderr, "bench_orchestrator: %s: %s\n", what, s.error_message().c_str());
  return s.ok();
}

// (a): each worker thread leases, starts and completes trials until none is left.
double LeaseCycles(const std::string& target, int workers, int trials) {
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto stub = sweep::v1::Orchestrator::NewStub(channel);
  sweep::v1::SubmitSweepRequest submit;
  submit.set_spec_yaml(SpecWithTrials("bench_cycles", trials));
  sweep::v1::SubmitSweepResponse submitted;
  grpc::ClientContext ctx;
  if (!Check(stub->SubmitSweep(&ctx, submit, &submitted), "submit")) return 0;
  std::atomic<int> done{0};
  std::vector<std::thread> threads;
  const Clock::time_point start = Clock::now();
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      // One channel per worker, as separate worker processes would have.
      grpc::ChannelArguments args;
      args.SetInt("grpc.channel_id", w);  // distinct channels, not a shared subchannel
      auto own = sweep::v1::Orchestrator::NewStub(
          grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
      sweep::v1::RegisterWorkerRequest reg;
      reg.set_name("bench-" + std::to_string(w));
      reg.set_cpu_slots(1);
      sweep::v1::RegisterWorkerResponse worker;
      grpc::ClientContext c0;
      if (!Check(own->RegisterWorker(&c0, reg, &worker), "register")) return;
      for (;;) {
        sweep::v1::LeaseTrialsRequest req;
        req.set_worker_id(worker.worker_id());
        req.set_free_cpu_slots(1);
        req.set_max_trials(1);
        sweep::v1::LeaseTrialsResponse leases;
        grpc::ClientContext c1;
        if (!Check(own->LeaseTrials(&c1, req, &leases), "lease") || leases.leases_size() == 0) return;
        const auto& lease = leases.leases(0);
        sweep::v1::TrialAttempt start_req;
        start_req.set_trial_id(lease.trial_id());
        start_req.set_attempt(lease.attempt());
        sweep::v1::Ack ack;
        grpc::ClientContext c2;
        if (!Check(own->StartTrial(&c2, start_req, &ack), "start")) return;
        sweep::v1::CompleteTrialRequest complete;
        complete.set_trial_id(lease.trial_id());
        complete.set_attempt(lease.attempt());
        complete.set_outcome(sweep::v1::CompleteTrialRequest::COMPLETED);
        complete.set_has_final_metric(true);
        complete.set_final_metric(1.0);
        grpc::ClientContext c3;
        if (!Check(own->CompleteTrial(&c3, complete, &ack), "complete")) return;
        ++done;
      }
    });
  }
  for (auto& t : threads) t.join();
  const double seconds = Seconds(start);
  if (done != trials) std::fprintf(stderr, "bench_orchestrator: %d of %d trials completed\n", done.load(), trials);
  return done / seconds;
}

// (b): rows through StreamMetrics into one leased trial (of a sweep of its own), in batches.
double StreamRows(const std::string& target, const std::string& sweep, int64_t rows,
                  int batch_size) {
  auto stub = sweep::v1::Orchestrator::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  sweep::v1::SubmitSweepRequest submit;
  submit.set_spec_yaml(SpecWithTrials(sweep, 1));
  sweep::v1::SubmitSweepResponse submitted;
  grpc::ClientContext c0;
  if (!Check(stub->SubmitSweep(&c0, submit, &submitted), "submit")) return 0;
  sweep::v1::RegisterWorkerRequest reg;
  reg.set_name(sweep);
  reg.set_cpu_slots(1);
  sweep::v1::RegisterWorkerResponse worker;
  grpc::ClientContext c1;
  if (!Check(stub->RegisterWorker(&c1, reg, &worker), "register")) return 0;
  sweep::v1::LeaseTrialsRequest req;
  req.set_worker_id(worker.worker_id());
  req.set_free_cpu_slots(1);
  req.set_max_trials(1);
  sweep::v1::LeaseTrialsResponse leases;
  grpc::ClientContext c2;
  if (!Check(stub->LeaseTrials(&c2, req, &leases), "lease") || leases.leases_size() != 1) return 0;
  const auto lease = leases.leases(0);
  const char* names[] = {"loss/out", "optim/grad_norm", "optim/lr", "speed/wps"};
  sweep::v1::StreamMetricsResponse resp;
  grpc::ClientContext c3;
  const Clock::time_point start = Clock::now();
  auto writer = stub->StreamMetrics(&c3, &resp);
  for (int64_t sent = 0; sent < rows;) {
    sweep::v1::MetricsBatch batch;
    batch.set_trial_id(lease.trial_id());
    batch.set_attempt(lease.attempt());
    for (int i = 0; i < batch_size && sent < rows; ++i, ++sent) {
      auto* m = batch.add_metrics();
      m->set_name(names[sent % 4]);
      m->set_step(sent / 4 + 1);
      m->set_value(1.0 / (sent + 1));
      m->set_time(1.0);
    }
    if (!writer->Write(batch)) break;
  }
  writer->WritesDone();
  if (!Check(writer->Finish(), "stream")) return 0;
  const double seconds = Seconds(start);
  if (resp.rows_stored() != rows) {
    std::fprintf(stderr, "bench_orchestrator: sent %lld rows, stored %lld\n",
                 static_cast<long long>(rows), static_cast<long long>(resp.rows_stored()));
  }
  return resp.rows_stored() / seconds;
}

// (b) baseline: the same rows, same schema, one transaction, the SQLite C API directly, into a
// new database file at `path`.
double RawRows(const std::string& path, int64_t rows) {
  auto store = sweep::orchestrator::Store::Open(path);
  if (!store.ok()) return 0;
  sqlite3* db = (*store)->db();
  sqlite3_exec(db,
               "INSERT INTO sweeps (name, state, method, metric_name, metric_goal, max_attempts, "
               "spec_text, spec_hash, created_at, updated_at) VALUES ('raw', 'running', 'grid', "
               "'loss/val', 'minimize', 1, '', '', 0, 0);"
               "INSERT INTO trials (sweep_id, trial_key, params, config, created_at) VALUES "
               "(1, 'k', '{}', '', 0);",
               nullptr, nullptr, nullptr);
  const char* names[] = {"loss/out", "optim/grad_norm", "optim/lr", "speed/wps"};
  const Clock::time_point start = Clock::now();
  sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db,
                     "INSERT OR IGNORE INTO metrics (trial_id, name, step, value, nonfinite, "
                     "attempt, time) VALUES (1, ?, ?, ?, NULL, 1, 1.0)",
                     -1, &st, nullptr);
  for (int64_t i = 0; i < rows; ++i) {
    sqlite3_bind_text(st, 1, names[i % 4], -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, i / 4 + 1);
    sqlite3_bind_double(st, 3, 1.0 / (i + 1));
    sqlite3_step(st);
    sqlite3_reset(st);
  }
  sqlite3_finalize(st);
  sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
  return rows / Seconds(start);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_orchestrator: sweepd over loopback gRPC against Optuna and raw SQLite, "
               "measured in one run", "bench_orchestrator"};
  std::string sweepd = (fs::path(argv[0]).parent_path().parent_path() / "sweepd").string();
  std::string python = "/usr/bin/python3";
  std::string optuna_script = std::string(SWEEP_SOURCE_DIR) + "/tools/bench_optuna.py";
  int workers = 8, trials = 2000, batch = 1000, optuna_per_process = 50, repeat = 3;
  int64_t rows = 200000;
  app.add_option("--sweepd", sweepd, "sweepd binary")->capture_default_str();
  app.add_option("--workers", workers, "Concurrent workers (and Optuna processes)")->capture_default_str();
  app.add_option("--trials", trials, "No-op trials for the lease cycle test")->capture_default_str();
  app.add_option("--rows", rows, "Metric rows for the ingest test")->capture_default_str();
  app.add_option("--batch", batch, "Rows per StreamMetrics message")->capture_default_str();
  app.add_option("--repeat", repeat, "Runs of each side of the ingest test (medians compared)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--optuna-trials-per-process", optuna_per_process)->capture_default_str();
  app.add_option("--python", python, "Python with optuna (Debian's python3-optuna)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  const std::string dir = MakeTempDir("bench-orchestrator");
  Subprocess server({sweepd, "--db", dir + "/sweep.db", "--listen", "127.0.0.1:0", "--port-file",
                     dir + "/port", "--max-trials", "100000"},
                    "", dir + "/sweepd.log");
  if (!WaitFor([&] { return fs::exists(dir + "/port"); }, std::chrono::seconds(30))) {
    std::fprintf(stderr, "sweepd did not start:\n%s\n", ReadFileOrEmpty(dir + "/sweepd.log").c_str());
    return 1;
  }
  const std::string target = "127.0.0.1:" + std::to_string(std::stoi(ReadFileOrEmpty(dir + "/port")));

  std::fprintf(stderr, "(a) %d lease/start/complete cycles with %d workers ...\n", trials, workers);
  const double cycles = LeaseCycles(target, workers, trials);
  std::fprintf(stderr, "(b) %lld metric rows through StreamMetrics and into SQLite, %d times ...\n",
               static_cast<long long>(rows), repeat);
  std::vector<double> streamed, raw;
  for (int i = 0; i < repeat; ++i) {
    streamed.push_back(StreamRows(target, "bench_rows_" + std::to_string(i), rows, batch));
    raw.push_back(RawRows(dir + "/raw_" + std::to_string(i) + ".db", rows));
  }
  server.Signal(SIGTERM);
  server.Wait();

  std::fprintf(stderr, "(a) baseline: Optuna, %d processes x %d ask/tell ...\n", workers, optuna_per_process);
  const std::string optuna_out = dir + "/optuna.json";
  const int rc = sweep::testing::Run({python, optuna_script, "--db", dir + "/optuna.db", "--processes",
                                      std::to_string(workers), "--trials-per-process",
                                      std::to_string(optuna_per_process)},
                                     optuna_out, dir + "/optuna.log");
  nlohmann::json optuna = nlohmann::json::parse(ReadFileOrEmpty(optuna_out), nullptr, false);
  const double optuna_rate = rc == 0 && optuna.is_object() ? optuna.value("trials_per_s", 0.0) : 0.0;

  std::printf("| case | sweepd | baseline | ratio | goal |\n|---|---|---|---|---|\n");
  if (optuna_rate > 0) {
    std::printf("| (a) trials/s, %d workers, lease+start+complete | %.0f | %.1f (Optuna %s, SQLite, %d processes; %d errors) | %.0fx | >= 20x |\n",
                workers, cycles, optuna_rate, optuna.value("optuna", "?").c_str(), workers,
                optuna.value("errors", 0), cycles / optuna_rate);
  } else {
    std::printf("| (a) trials/s, %d workers | %.0f | Optuna did not run (%s) | - | >= 20x |\n", workers,
                cycles, ReadFileOrEmpty(dir + "/optuna.log").substr(0, 200).c_str());
  }
  const double streamed_median = Median(streamed), raw_median = Median(raw);
  std::printf("| (b) metric rows/s, StreamMetrics, batches of %d; median of %d (range) | %.0f (%.0f-%.0f) | %.0f (%.0f-%.0f) (SQLite C API, one transaction) | %.0f%% | >= 50%% |\n",
              batch, repeat, streamed_median, streamed.front(), streamed.back(), raw_median,
              raw.front(), raw.back(), raw_median > 0 ? 100.0 * streamed_median / raw_median : 0.0);
  std::printf("\nmachine: %u CPUs; command: ", std::thread::hardware_concurrency());
  for (int i = 0; i < argc; ++i) std::printf("%s ", argv[i]);
  std::printf("\n");
  fs::remove_all(dir);
  return 0;
}
