// The training loop of sweep-train (Lingua's apps/main/train.py, on LibTorch).
//
// Each optimizer step: grad_acc_steps micro-batches (loss / grad_acc_steps, backward), the
// pre-clip total gradient norm and one norm per group, clipping at optim.clip, AdamW with the
// scheduled lr. Every logging.freq steps one JSON object goes to the metrics stream with
// Lingua's keys (global_step, loss/out, optim/grad_norm, optim/lr, optim/total_tokens,
// speed/wps) plus grad_norm/<group>, optim/param_norm and, every probe_freq steps,
// probe/layers.<i>.attn_logit_max and probe/output_logsumexp. loss/val is logged every
// eval.every steps and at the end. Lines with an "event" key mark resumed, checkpoint
// (every checkpoint.every steps), diverged, preempted and completed.
//
// A non-finite loss or gradient norm ends the run as kDiverged (no crash, no checkpoint).
// After RequestStop() (the signal handlers call it) the loop writes a checkpoint at the next
// step boundary and returns kPreempted. A run resumes from the newest complete checkpoint in
// <dump_dir>/checkpoints (as Lingua does) or from TrainOptions::resume, bit-exactly on CPU.
#ifndef SWEEP_WORKER_TRAINER_TRAIN_H_
#define SWEEP_WORKER_TRAINER_TRAIN_H_

#include <string>

#include "absl/status/statusor.h"
#include "worker/trainer/config.h"

namespace sweep::trainer {

struct TrainOptions {
  // A checkpoint folder, a checkpoints folder or a dump_dir to resume from; it must hold a
  // complete checkpoint. Empty: resume from <dump_dir>/checkpoints when one exists.
  std::string resume;
  // Where metrics go: a file (appended to), "-" for stdout. Empty: <dump_dir>/metrics.jsonl.
  std::string metrics_path;
  // If set, every micro-batch's token windows are appended there as raw little-endian int64
  // (batch_size x (seq_len + 1) each); tools/reference replays them.
  std::string dump_batches_path;
};

enum class TrainOutcome { kCompleted, kDiverged, kPreempted };

// Runs training to the end, a divergence or a stop request. Errors (unreadable data, a bad
// checkpoint, a full disk) come back as a status; InvalidArgument means a configuration error.
absl::StatusOr<TrainOutcome> Train(const TrainConfig& config, const TrainOptions& options);

// Asks a running Train() to checkpoint and return kPreempted. Async-signal-safe.
void RequestStop(int signal_number);

// Installs RequestStop() for SIGTERM, SIGUSR2 and SIGINT.
void InstallStopSignalHandlers();

}  // namespace sweep::trainer

#endif  // SWEEP_WORKER_TRAINER_TRAIN_H_
