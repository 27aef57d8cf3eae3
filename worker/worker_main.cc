// sweep-worker: runs the trials sweepd hands out, each as its own sweep-train process.
//
//   sweep-worker --orchestrator HOST:PORT [--name NAME] [--workdir DIR] [--gpus LIST|auto|none]
//                [--trials-per-gpu K] [--gpu-telemetry S] [--cpu-slots N]
//                [--threads-per-trial N] [--token-file F] [--tls-ca PEM] [--stop-grace S]
//                [--sweep-train PATH]
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "worker/resources.h"
#include "worker/worker.h"

int main(int argc, char** argv) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  spdlog::set_default_logger(spdlog::stderr_color_mt("sweep-worker"));
  spdlog::set_pattern("[%H:%M:%S.%e] %^%l%$ %v");

  sweep::worker::WorkerOptions options;
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  options.name = host;
  options.sweep_train =
      (std::filesystem::canonical("/proc/self/exe").parent_path() / "sweep-train").string();
  std::string token_file;
  std::string gpus = "auto";
  int cpu_slots = -1;
  CLI::App app{
      "sweep-worker: leases trials from sweepd and runs each as its own process (sweep-train, or\n"
      "the spec's command), streaming its metrics and checkpoints back. SIGTERM stops the trials\n"
      "with a checkpoint and hands them back to sweepd; a second SIGTERM kills them.\n\n"
      "Examples:\n"
      "  sweep-worker --orchestrator 127.0.0.1:7070 --cpu-slots 2 --threads-per-trial 1\n"
      "  sweep-worker --orchestrator head:7070 --token-file ~/.sweep/token --gpus auto\n"
      "  sweep-worker --orchestrator head:7070 --gpus 0,1 --trials-per-gpu 4   # small trials\n\n"
      "Exit codes: 0 clean stop, 1 trials could not be handed back in time, 2 usage,\n"
      "130 killed by a second signal.",
      "sweep-worker"};
  app.add_option("--orchestrator", options.orchestrator, "sweepd address")
      ->envname("SWEEP_ORCHESTRATOR")
      ->capture_default_str();
  app.add_option("--name", options.name, "Worker name; a restarted worker re-attaches by it")
      ->capture_default_str();
  app.add_option("--workdir", options.workdir, "Trial folders go here")->capture_default_str();
  app.add_option("--gpus", gpus,
                 "GPUs to hand out: auto (those nvidia-smi lists), none, or indices like 0,1,3")
      ->capture_default_str();
  app.add_option("--trials-per-gpu", options.trials_per_gpu,
                 "Trials one GPU may hold at once (several small trials share a GPU); a trial "
                 "of g GPUs takes a share of g distinct GPUs")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  app.add_option("--gpu-telemetry", options.gpu_telemetry_seconds,
                 "Seconds between nvidia-smi samples of each GPU trial's memory and utilisation "
                 "(metrics gpu/mem_used_mib, gpu/util_pct); 0: off")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--cpu-slots", cpu_slots,
                 "CPU trials run at once (default: 1 without GPUs, 0 with GPUs)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--threads-per-trial", options.threads_per_trial,
                 "Intra-op threads per trial process (each rank of a data-parallel trial)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--token-file", token_file, "Token for sweepd (authorization: Bearer)")
      ->envname("SWEEP_TOKEN_FILE")
      ->check(CLI::ExistingFile);
  std::string tls_ca;
  app.add_option("--tls-ca", tls_ca,
                 "Connect with TLS, trusting this PEM certificate (sweepd's --tls-cert or its CA)")
      ->check(CLI::ExistingFile);
  app.add_option("--sweep-train", options.sweep_train, "Trainer binary")->capture_default_str();
  app.add_option("--heartbeat", options.heartbeat_seconds, "Seconds between heartbeats")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--stop-grace", options.stop_grace_seconds,
                 "Seconds a stopped trial gets to checkpoint and exit before SIGKILL")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  if (!token_file.empty()) {
    std::ifstream in(token_file);
    std::stringstream buffer;
    buffer << in.rdbuf();
    options.token = buffer.str();
    while (!options.token.empty() && std::isspace(static_cast<unsigned char>(options.token.back()))) {
      options.token.pop_back();
    }
    if (options.token.empty()) {
      spdlog::error("{}: no token", token_file);
      return 2;
    }
  }
  if (!tls_ca.empty()) {
    std::ifstream in(tls_ca);
    std::stringstream pem;
    pem << in.rdbuf();
    options.tls_ca_pem = pem.str();
  }
  if (gpus == "auto") {
    options.gpus = sweep::worker::DetectGpus();
  } else {
    absl::StatusOr<std::vector<int>> list = sweep::worker::ParseGpuList(gpus);
    if (!list.ok()) {
      spdlog::error("{}", std::string(list.status().message()));
      return 2;
    }
    options.gpus = *list;
  }
  options.cpu_slots = cpu_slots >= 0 ? cpu_slots : (options.gpus.empty() ? 1 : 0);
  if (options.cpu_slots == 0 && options.gpus.empty()) {
    spdlog::error("--cpu-slots 0 and no GPUs: this worker could run nothing");
    return 2;
  }
  if (!std::filesystem::exists(options.sweep_train)) {
    spdlog::error("{}: no such trainer (set --sweep-train)", options.sweep_train);
    return 2;
  }

  static std::atomic<bool> stop{false}, hard_stop{false};
  std::thread waiter([signals] {
    for (int count = 0;; ++count) {
      int sig = 0;
      sigwait(&signals, &sig);
      if (count == 0) {
        spdlog::info("signal {}: stopping trials with a checkpoint and handing them back "
                     "(again to kill them at once)", sig);
        stop.store(true);
      } else {
        hard_stop.store(true);
      }
    }
  });
  waiter.detach();
  return sweep::worker::RunWorker(options, stop, hard_stop);
}
