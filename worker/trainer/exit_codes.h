// Exit codes of sweep-train. The worker (and any script) relies on them to tell a finished
// trial from a divergence, a preemption and a crash. LibTorch-free.
#ifndef SWEEP_WORKER_TRAINER_EXIT_CODES_H_
#define SWEEP_WORKER_TRAINER_EXIT_CODES_H_

namespace sweep::trainer {

enum ExitCode : int {
  kExitCompleted = 0,  // Trained all steps; final checkpoint and metrics written.
  kExitFailed = 1,     // Unexpected error (I/O, corrupt checkpoint, ...); see stderr.
  kExitUsage = 2,      // Bad command line or configuration; the message names the key.
  kExitDiverged = 3,   // Non-finite loss or grad norm; a final "diverged" record names the step.
  kExitPreempted = 4,  // SIGTERM/SIGUSR2/SIGINT: a checkpoint was written; resumable.
};

}  // namespace sweep::trainer

#endif  // SWEEP_WORKER_TRAINER_EXIT_CODES_H_
