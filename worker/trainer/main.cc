// sweep-train: trains one Lingua-style Transformer language model (one trial of a sweep).
//
//   sweep-train --config FILE [--resume DIR] [--metrics FILE|-] [--dump-dir DIR] [key=value ...]
//
// Exit codes are listed in worker/trainer/exit_codes.h.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <malloc.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "worker/trainer/config.h"
#include "worker/trainer/exit_codes.h"
#include "worker/trainer/train.h"

namespace {
using namespace sweep::trainer;

int Main(int argc, char** argv) {
  CLI::App app{
      "sweep-train: train one Llama-style language model the way Lingua does (one trial of a "
      "sweep).\n\n"
      "Examples:\n"
      "  sweep-train --config sweeps/configs/kjv_2x128.yaml\n"
      "  sweep-train --config cfg.yaml optim.lr=1e-2 model.n_layers=10 --metrics -\n"
      "  sweep-train --config cfg.yaml --resume out/checkpoints\n\n"
      "Exit codes: 0 completed, 1 failed, 2 bad config or flags, 3 diverged (non-finite loss\n"
      "or grad norm), 4 stopped by SIGTERM/SIGUSR2/SIGINT after writing a checkpoint.\n\n"
      "Data-parallel (one process per rank, same argv): WORLD_SIZE, RANK, LOCAL_RANK,\n"
      "LOCAL_WORLD_SIZE and SWEEP_RENDEZVOUS=<file> or MASTER_ADDR/MASTER_PORT, as torchrun\n"
      "sets them; see docs/data_parallel.md. A rank whose peer dies exits 1.",
      "sweep-train"};
  std::string config_path;
  TrainOptions options;
  std::string dump_dir;
  std::vector<std::string> overrides;
  bool print_config = false;
  app.add_option("--config,-c", config_path, "Trainer config, YAML or JSON (Lingua's keys)")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--resume", options.resume,
                 "Resume from this checkpoint, checkpoints folder or dump_dir (default: the "
                 "newest complete checkpoint in <dump_dir>/checkpoints, if any)");
  app.add_option("--metrics", options.metrics_path,
                 "Append JSON-lines metrics here; '-' for stdout (default: "
                 "<dump_dir>/metrics.jsonl)");
  app.add_option("--dump-dir", dump_dir, "Overrides dump_dir (checkpoints, config, metrics)");
  app.add_option("--dump-batches", options.dump_batches_path,
                 "Append every micro-batch's tokens (raw int64) to this file, for "
                 "tools/reference");
  app.add_flag("--print-config", print_config,
               "Print the resolved configuration (YAML) and exit");
  app.add_option("overrides", overrides, "key=value overrides, e.g. optim.lr=3e-3");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? kExitCompleted : kExitUsage;
  }

  if (!dump_dir.empty()) overrides.push_back("dump_dir=" + dump_dir);
  absl::StatusOr<TrainConfig> config = LoadTrainConfig(config_path, overrides);
  if (!config.ok()) {
    std::cerr << "sweep-train: " << config.status().message() << "\n";
    return kExitUsage;
  }
  if (print_config) {
    std::cout << TrainConfigToYaml(*config);
    return kExitCompleted;
  }

  InstallStopSignalHandlers();
  absl::StatusOr<TrainOutcome> outcome = Train(*config, options);
  if (!outcome.ok()) {
    std::cerr << "sweep-train: " << outcome.status().message() << "\n";
    return absl::IsInvalidArgument(outcome.status()) ? kExitUsage : kExitFailed;
  }
  switch (*outcome) {
    case TrainOutcome::kCompleted:
      return kExitCompleted;
    case TrainOutcome::kDiverged:
      return kExitDiverged;
    case TrainOutcome::kPreempted:
      return kExitPreempted;
  }
  return kExitFailed;
}

}  // namespace

int main(int argc, char** argv) {
  // LibTorch's OpenMP threads spin after each parallel region while OpenBLAS's own threads
  // wait for the same cores: on 2 cores that halves throughput (measured, docs/benchmarks.md).
  // libgomp reads OMP_WAIT_POLICY when it loads, so set it and restart this process once.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv("/proc/self/exe", argv);  // Only returns on failure; then run as we are.
  }
  // Every step frees and reallocates the same activation-sized blocks. glibc would hand them
  // back to the kernel and fault them in again (page faults were ~1/3 of CPU time): keep them.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's maximum
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 64 << 20);
  // Human-readable progress goes to stderr; stdout stays free for `--metrics -`.
  spdlog::set_default_logger(spdlog::stderr_color_mt("sweep-train"));
  // Ranks of a data-parallel trial (worker/trainer/distributed.h) share one stderr log.
  const char* world_size = std::getenv("WORLD_SIZE");
  const char* rank = std::getenv("RANK");
  if (world_size != nullptr && std::atoi(world_size) > 1 && rank != nullptr) {
    spdlog::set_pattern(std::string("[%H:%M:%S.%e] %^%l%$ [rank ") + rank + "] %v");
  } else {
    spdlog::set_pattern("[%H:%M:%S.%e] %^%l%$ %v");
  }
  return Main(argc, argv);
}
