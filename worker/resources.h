// What a trial's process is given: its command line and its devices.
#ifndef SWEEP_WORKER_RESOURCES_H_
#define SWEEP_WORKER_RESOURCES_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sweep::worker {

// Substitutes ${name} in each argument of a command template (the spec's `trainer.command`):
// config, trial_dir, params, gpus, threads, resume, trial_id, attempt, sweep. "$$" is a literal
// "$". An unknown ${name} or an unterminated "${" is an error that names it, so a typo fails
// the trial with a clear reason instead of running a command with a hole in it.
absl::StatusOr<std::vector<std::string>> ExpandCommand(
    const std::vector<std::string>& command_template,
    const std::map<std::string, std::string>& vars);

// "0,1,3" -> {0, 1, 3}; "" or "none" -> {}. Errors name the bad entry.
absl::StatusOr<std::vector<int>> ParseGpuList(const std::string& list);

// The GPU indices `nvidia-smi --query-gpu=index --format=csv,noheader` lists, or {} when
// nvidia-smi is missing or fails (a CPU machine).
std::vector<int> DetectGpus();

// "0,1" for {0, 1}: the value of CUDA_VISIBLE_DEVICES and ${gpus}.
std::string JoinGpus(const std::vector<int>& gpus);

// The GPUs a trial of `count` GPUs gets, as positions in `free_shares` (each GPU's free trial
// shares, in the worker's order): the `count` GPUs with the most free shares, the first listed
// on ties, returned in ascending position. sweepd fits leases by the same rule
// (orchestrator/scheduler.cc TakeGpuShares), so every trial of one lease reply finds its GPUs.
// Empty when fewer than `count` GPUs have a free share (or count < 1).
std::vector<size_t> PickGpus(const std::vector<int>& free_shares, int count);

// One GPU in `nvidia-smi --query-gpu=index,memory.used,utilization.gpu --format=csv,noheader,
// nounits`.
struct GpuSample {
  int index = 0;
  double memory_used_mib = 0;
  double utilization_pct = 0;
};

// Parses that output ("0, 1234, 56" per line). Lines it cannot read (a field "[N/A]" or
// "[Not Supported]", a short line) are skipped.
std::vector<GpuSample> ParseGpuQuery(const std::string& csv);

// Runs that query (nvidia-smi found on PATH, at most 10 s); {} when nvidia-smi is missing,
// fails or hangs.
std::vector<GpuSample> QueryGpus();

// One process using a GPU, in `nvidia-smi --query-compute-apps=pid,used_memory
// --format=csv,noheader,nounits` (a process on two GPUs has a line for each).
struct GpuProcess {
  int pid = 0;
  double memory_used_mib = 0;
};
// Parses that output ("4242, 1234" per line); unreadable lines are skipped.
std::vector<GpuProcess> ParseGpuProcesses(const std::string& csv);
// Runs that query like QueryGpus ({} when nvidia-smi is missing, fails or hangs). The pids are
// those of nvidia-smi's PID namespace: in a container that does not share the host's, it may
// list none of ours.
std::vector<GpuProcess> QueryGpuProcesses();

}  // namespace sweep::worker

#endif  // SWEEP_WORKER_RESOURCES_H_
