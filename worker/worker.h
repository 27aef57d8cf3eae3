// sweep-worker: leases trials from sweepd and runs each as its own sweep-train process.
//
// First cut of issue #4 (builtin trials on CPU slots):
//   * registers its CPU slots under --name (re-attaches by name after a restart);
//   * leases as many trials as it has free slots; each runs in
//     <workdir>/<sweep>/<trial>/attempt-<n>/ as `sweep-train --config config.yaml --dump-dir .
//     --metrics - threads=N [--resume <folder of the checkpoint sweepd named>]` (the newest
//     complete checkpoint there, never older than the reported one), in its own process group,
//     killed if the worker dies (PR_SET_PDEATHSIG);
//   * parses the JSON lines of the child's stdout: metric rows are streamed to sweepd every
//     flush interval (kept and retried while sweepd is unreachable), checkpoint events are
//     reported so a requeued attempt resumes from them;
//   * heartbeats renew its leases; a stop in the reply sends the child SIGTERM (it
//     checkpoints and exits 4);
//   * the child's exit code becomes the trial's outcome (0 completed with the last loss/val as
//     final metric, 3 diverged, 4 stopped, anything else failed with the stderr tail).
// Not yet: command trials, GPUs, spool files, adoption of children after a worker restart.
#ifndef SWEEP_WORKER_WORKER_H_
#define SWEEP_WORKER_WORKER_H_

#include <atomic>
#include <string>

namespace sweep::worker {

struct WorkerOptions {
  std::string orchestrator = "127.0.0.1:7070";
  std::string token;  // Empty: no authorization metadata.
  std::string name;
  std::string workdir = "sweep-work";
  std::string sweep_train;  // Path of the sweep-train binary.
  int cpu_slots = 1;
  int threads_per_trial = 1;
  double heartbeat_seconds = 5;
  double flush_seconds = 0.5;
};

// Runs until `stop` becomes true; then stops its trials (SIGTERM: they checkpoint) and
// returns. Returns a process exit code (0 on a clean stop).
int RunWorker(const WorkerOptions& options, const std::atomic<bool>& stop);

}  // namespace sweep::worker

#endif  // SWEEP_WORKER_WORKER_H_
