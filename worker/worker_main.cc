// sweep-worker: runs the trials sweepd hands out, each as its own sweep-train process.
//
//   sweep-worker --orchestrator HOST:PORT [--name NAME] [--workdir DIR] [--cpu-slots N]
//                [--threads-per-trial N] [--token-file F] [--sweep-train PATH]
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
  CLI::App app{
      "sweep-worker: leases trials from sweepd and runs each as its own sweep-train process,\n"
      "streaming its metrics and checkpoints back. SIGTERM stops the trials with a checkpoint.\n\n"
      "Example:\n"
      "  sweep-worker --orchestrator 127.0.0.1:7070 --cpu-slots 2 --threads-per-trial 1",
      "sweep-worker"};
  app.add_option("--orchestrator", options.orchestrator, "sweepd address")->capture_default_str();
  app.add_option("--name", options.name, "Worker name; a restarted worker re-attaches by it")
      ->capture_default_str();
  app.add_option("--workdir", options.workdir, "Trial folders go here")->capture_default_str();
  app.add_option("--cpu-slots", options.cpu_slots, "Trials run at once")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--threads-per-trial", options.threads_per_trial, "Intra-op threads per trial")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--token-file", token_file, "Token for sweepd (authorization: Bearer)");
  app.add_option("--sweep-train", options.sweep_train, "Trainer binary")->capture_default_str();
  app.add_option("--heartbeat", options.heartbeat_seconds, "Seconds between heartbeats")
      ->capture_default_str();
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
  if (!std::filesystem::exists(options.sweep_train)) {
    spdlog::error("{}: no such trainer (set --sweep-train)", options.sweep_train);
    return 2;
  }

  std::atomic<bool> stop{false};
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    spdlog::info("signal {}: stopping trials with a checkpoint", sig);
    stop.store(true);
  });
  waiter.detach();
  return sweep::worker::RunWorker(options, stop);
}
