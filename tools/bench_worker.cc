// bench_worker: how long a worker's slot sits idle between one trial's end and the next
// trial's start, over real processes (sweepd, one sweep-worker with one slot, real children).
//
//   (a) command trials that write one metrics line and exit: the gap from the child's exit to
//       the next child's spawn (attempt.json's exited_at -> spawned_at), i.e. reaping, the last
//       rows, CompleteTrial, LeaseTrials and the spawn. Baseline in the same run: a bare
//       fork/exec/wait of the same command, the floor for any orchestrator.
//   (b) builtin sweep-train trials (5 steps): the same gap, and the gap to the next trial's
//       first training step (which adds sweep-train's own start: LibTorch, the corpus).
//
//   bench_worker [--trials 40] [--builtin-trials 8] [--sweepd PATH] [--worker PATH]
//                [--sweep-train PATH]
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "proto/sweep.grpc.pb.h"
#include "tests/testing/subprocess.h"

namespace {
namespace fs = std::filesystem;
using sweep::testing::MakeTempDir;
using sweep::testing::ReadFileOrEmpty;
using sweep::testing::Subprocess;
using sweep::testing::WaitFor;

double UnixNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5)];
}

// "2026-11-28T21:15:25.109828+00:00" -> Unix seconds.
double ParseUtc(const std::string& s) {
  std::tm tm = {};
  double frac = 0;
  if (std::sscanf(s.c_str(), "%d-%d-%dT%d:%d:%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                  &tm.tm_min, &tm.tm_sec) != 6) {
    return 0;
  }
  const size_t dot = s.find('.');
  if (dot != std::string::npos) frac = std::stod("0" + s.substr(dot, s.find('+') - dot));
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return static_cast<double>(timegm(&tm)) + frac;
}

struct Attempt {
  double spawned_at = 0, exited_at = 0, first_step_at = 0;
};

// Runs one sweep on a fresh sweepd with one single-slot worker; returns its attempts in order.
std::vector<Attempt> RunSweep(const std::string& sweepd, const std::string& worker,
                              const std::string& sweep_train, const std::string& spec,
                              const std::string& name, int trials) {
  const std::string dir = MakeTempDir("bench-worker");
  Subprocess server({sweepd, "--db", dir + "/sweep.db", "--listen", "127.0.0.1:0", "--port-file",
                     dir + "/port"},
                    "", dir + "/sweepd.log");
  if (!WaitFor([&] { return !ReadFileOrEmpty(dir + "/port").empty(); }, std::chrono::seconds(30))) {
    std::fprintf(stderr, "bench_worker: sweepd did not start (%s/sweepd.log)\n", dir.c_str());
    std::exit(1);
  }
  const std::string target = "127.0.0.1:" + std::to_string(std::stoi(ReadFileOrEmpty(dir + "/port")));
  auto stub = sweep::v1::Orchestrator::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  sweep::v1::SubmitSweepRequest req;
  req.set_spec_yaml(spec);
  sweep::v1::SubmitSweepResponse resp;
  grpc::ClientContext ctx;
  if (grpc::Status s = stub->SubmitSweep(&ctx, req, &resp); !s.ok()) {
    std::fprintf(stderr, "bench_worker: submit: %s\n", s.error_message().c_str());
    std::exit(1);
  }
  Subprocess w({worker, "--orchestrator", target, "--name", "bench", "--workdir", dir + "/work",
                "--cpu-slots", "1", "--gpus", "none", "--sweep-train", sweep_train},
               "", dir + "/worker.log");
  auto done = [&] {
    sweep::v1::SweepRef ref;
    ref.set_sweep(name);
    sweep::v1::Sweep sweep;
    grpc::ClientContext c;
    return stub->GetSweep(&c, ref, &sweep).ok() && sweep.state() == "completed";
  };
  if (!WaitFor(done, std::chrono::minutes(10))) {
    std::fprintf(stderr, "bench_worker: sweep %s did not finish (%s)\n", name.c_str(), dir.c_str());
    std::exit(1);
  }
  w.Signal(SIGTERM);
  w.Wait();
  std::vector<Attempt> attempts;
  for (const auto& trial : fs::directory_iterator(dir + "/work/" + name)) {
    const std::string attempt_dir = trial.path().string() + "/attempt-1";
    nlohmann::json info = nlohmann::json::parse(ReadFileOrEmpty(attempt_dir + "/attempt.json"));
    Attempt a{info["spawned_at"].get<double>(), info["exited_at"].get<double>(), 0};
    std::ifstream metrics(attempt_dir + "/metrics.jsonl");
    for (std::string line; std::getline(metrics, line);) {
      nlohmann::json row = nlohmann::json::parse(line, nullptr, false);
      if (row.is_object() && row.contains("loss/out") && row.contains("created_at")) {
        a.first_step_at = ParseUtc(row["created_at"].get<std::string>());
        break;
      }
    }
    attempts.push_back(a);
  }
  if (static_cast<int>(attempts.size()) != trials) {
    std::fprintf(stderr, "bench_worker: expected %d attempts, found %zu\n", trials, attempts.size());
    std::exit(1);
  }
  std::sort(attempts.begin(), attempts.end(),
            [](const Attempt& a, const Attempt& b) { return a.spawned_at < b.spawned_at; });
  fs::remove_all(dir);
  return attempts;
}

std::string Values(int n) {
  std::string values;
  for (int i = 1; i <= n; ++i) values += (i > 1 ? ", " : "") + std::to_string(i) + "e-3";
  return values;
}

void Report(const char* what, const std::vector<double>& ms) {
  std::printf("  %-46s median %7.1f ms   p90 %7.1f ms   max %7.1f ms   (n=%zu)\n", what,
              Percentile(ms, 0.5), Percentile(ms, 0.9), Percentile(ms, 1.0), ms.size());
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path here = fs::canonical("/proc/self/exe").parent_path();
  std::string sweepd = (here.parent_path() / "sweepd").string();
  std::string worker = (here.parent_path() / "sweep-worker").string();
  std::string sweep_train = (here.parent_path() / "sweep-train").string();
  int trials = 40, builtin_trials = 8;
  CLI::App app{"bench_worker: idle gap between trials on one worker slot, vs a bare fork/exec/wait"};
  app.add_option("--trials", trials, "Command trials")->capture_default_str();
  app.add_option("--builtin-trials", builtin_trials, "sweep-train trials (0: skip)")->capture_default_str();
  app.add_option("--sweepd", sweepd)->capture_default_str();
  app.add_option("--worker", worker)->capture_default_str();
  app.add_option("--sweep-train", sweep_train)->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  // The command: one Lingua-style metrics line into ${trial_dir}, then exit.
  const std::vector<std::string> command = {
      "/bin/sh", "-c", "echo '{\"global_step\": 1, \"loss/out\": 1.0}' > \"$0/metrics.jsonl\"", "/tmp"};

  // Baseline: the same command, spawned and reaped back to back.
  std::vector<double> bare_ms;
  for (int i = 0; i < trials; ++i) {
    const double begin = UnixNow();
    sweep::testing::Run(command);
    bare_ms.push_back((UnixNow() - begin) * 1000);
  }

  const std::string spec =
      "name: gaps\nmethod: grid\ntrainer: {command: [/bin/sh, -c, "
      "\"echo '{\\\"global_step\\\": 1, \\\"loss/out\\\": 1.0}' > \\\"$0/metrics.jsonl\\\"\", "
      "\"${trial_dir}\"]}\nbase: {optim: {lr: 1.0e-3}}\nparameters: {optim.lr: {values: [" +
      Values(trials) + "]}}\n";
  std::vector<Attempt> a = RunSweep(sweepd, worker, sweep_train, spec, "gaps", trials);
  std::vector<double> gap_ms;
  for (size_t i = 1; i < a.size(); ++i) gap_ms.push_back((a[i].spawned_at - a[i - 1].exited_at) * 1000);

  std::printf("bench_worker: one worker, one slot, %d command trials\n", trials);
  Report("bare fork/exec/wait of the command", bare_ms);
  Report("worker idle gap (exit -> next spawn)", gap_ms);
  std::printf("  ratio (median gap / median bare run): %.1fx\n",
              Percentile(gap_ms, 0.5) / std::max(Percentile(bare_ms, 0.5), 1e-9));

  if (builtin_trials > 1) {
    const std::string builtin_spec =
        "name: builtin_gaps\nmethod: grid\nbase:\n  steps: 5\n"
        "  model: {dim: 32, n_layers: 1, n_heads: 2, multiple_of: 32}\n"
        "  data: {sources: {kjv: 1.0}, batch_size: 4, seq_len: 32}\n  eval: {steps: 1}\n"
        "parameters: {optim.lr: {values: [" + Values(builtin_trials) + "]}}\n";
    std::vector<Attempt> b = RunSweep(sweepd, worker, sweep_train, builtin_spec, "builtin_gaps", builtin_trials);
    std::vector<double> spawn_ms, step_ms;
    for (size_t i = 1; i < b.size(); ++i) {
      spawn_ms.push_back((b[i].spawned_at - b[i - 1].exited_at) * 1000);
      step_ms.push_back((b[i].first_step_at - b[i - 1].exited_at) * 1000);
    }
    std::printf("bench_worker: one worker, one slot, %d sweep-train trials of 5 steps\n", builtin_trials);
    Report("worker idle gap (exit -> next spawn)", spawn_ms);
    Report("exit -> next trial's first step (+ startup)", step_ms);
  }
  return 0;
}
