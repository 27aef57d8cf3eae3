// sweep-worker: leases trials from sweepd and runs each as its own child process.
//
// Lifecycle of a trial on a worker
//   1. LeaseTrials gives it (trial, attempt) with the resolved config, the command (empty: the
//      builtin sweep-train), the checkpoint to resume from and its ranks. The worker gives it
//      free slots (GPU indices as CUDA_VISIBLE_DEVICES: a GPU holds up to trials_per_gpu
//      trials, and a trial of g GPUs takes the g GPUs with the most room; or CPU slots: ranks x
//      the spec's cpu_slots_per_trial) and the directory <workdir>/<sweep>/<trial>/attempt-<n>/
//      holding config.yaml, stdout.log, stderr.log, metrics.jsonl, checkpoints/ and
//      attempt.json (every rank's pid, times, exit status).
//   2. Each process runs through Boost.Process in its own process group (a stop reaches all it
//      starts) and dies with the worker (PR_SET_PDEATHSIG): no orphan trains unseen.
//      A data-parallel trial (ranks N > 1) runs N processes with the same argv and torchrun's
//      environment: WORLD_SIZE=N, RANK=LOCAL_RANK=r, LOCAL_WORLD_SIZE=N, MASTER_ADDR=127.0.0.1,
//      MASTER_PORT (free when chosen), and SWEEP_RENDEZVOUS=<attempt dir>/rendezvous (a c10d
//      FileStore, removed before the ranks start). Every rank sees all the trial's GPUs and
//      gets threads_per_trial threads; only rank 0 writes metrics.jsonl and checkpoints, rank
//      r > 0 logs to rank<r>.stdout.log / rank<r>.stderr.log. The first rank to exit non-zero
//      or by a signal decides the trial's exit (its number and stderr tail in a failure); the
//      other ranks get SIGTERM, then SIGKILL after the grace period. A one-process trial gets
//      none of these variables.
//      Builtin: `sweep-train --config config.yaml --dump-dir DIR threads=N [device=cuda]
//      [--resume <checkpoint folder>]`. Command: the spec's template with ${config},
//      ${trial_dir}, ${params}, ${gpus}, ${threads}, ${resume}, ${trial_id}, ${attempt},
//      ${sweep} substituted.
//   3. The worker tails metrics.jsonl (see metrics_file.h) and streams rows to sweepd every
//      flush interval; a checkpoint is reported only after every row before it is stored, so a
//      resumed attempt never leaves a hole. While sweepd is unreachable training goes on and
//      rows wait (in memory up to a budget, then in the file itself), retried with backoff.
//   4. Heartbeats renew the leases and carry each trial's step; a stop in the reply sends every
//      rank's group SIGTERM (the trainer checkpoints and exits), then SIGKILL after the grace
//      period. With GPUs and nvidia-smi on PATH, every gpu_telemetry_seconds the worker adds
//      gpu/mem_used_mib (summed over the trial's GPUs), gpu/util_pct (their mean) and
//      gpu/trial_mem_mib (what the trial's own processes hold) at each GPU trial's latest
//      step, once per step.
//   5. The exit becomes the outcome: completed, diverged (sweep-train's exit 3), stopped (on
//      sweepd's request), released (the worker handed it back), or failed with the tail of
//      stderr; with the final and best value of the spec's metric and the last checkpoint.
//
// Shutdown (SIGTERM): every trial is stopped with a checkpoint and released, so sweepd requeues
// it at once and a drained node loses only the steps since the last checkpoint. A worker
// restarted under the same name reconciles the trials sweepd says it still holds: it stops
// every rank that survived (pid and start time from attempt.json), delivers the rows and the checkpoint that attempt
// left in its metrics.jsonl, and releases the trial.
#ifndef SWEEP_WORKER_WORKER_H_
#define SWEEP_WORKER_WORKER_H_

#include <atomic>
#include <string>
#include <vector>

namespace sweep::worker {

struct WorkerOptions {
  std::string orchestrator = "127.0.0.1:7070";
  std::string token;  // Empty: no authorization metadata.
  std::string tls_ca_pem;  // Non-empty: TLS to sweepd, trusting these PEM root certificates.
  std::string name;
  std::string workdir = "sweep-work";
  std::string sweep_train;  // Path of the sweep-train binary.
  std::vector<int> gpus;    // Device indices this worker hands out.
  int trials_per_gpu = 1;   // Trials one GPU index may hold at once (small trials share a GPU).
  int cpu_slots = 1;
  int threads_per_trial = 1;
  double heartbeat_seconds = 5;
  double flush_seconds = 0.5;
  double stop_grace_seconds = 30;  // SIGTERM -> SIGKILL.
  size_t max_buffered_rows = 200000;  // Past this, rows wait in the trial's metrics.jsonl.
  // Seconds between nvidia-smi samples for the GPU telemetry metrics; 0: none.
  double gpu_telemetry_seconds = 5;
};

// Runs until `stop` becomes true, then stops its trials with a checkpoint, hands them back and
// returns 0. `hard_stop` (a second signal) kills the trials at once.
int RunWorker(const WorkerOptions& options, const std::atomic<bool>& stop,
              const std::atomic<bool>& hard_stop);

}  // namespace sweep::worker

#endif  // SWEEP_WORKER_WORKER_H_
