// Checkpoints of a training run: model, optimizer state, RNG state, data position and step.
//
// Layout (Lingua's): <dump_dir>/checkpoints/<step, 10 digits>/
//   state.bin         magic "SWPCKPT\0", format version, payload size, FNV-1a checksum, then a
//                     LibTorch archive of the flat parameter and Adam buffers, the RNG state
//                     and (data-parallel runs) the noise-scale averages
//   train_state.json  step, tokens seen, data position, parameter layout, format version
//                     (both files' LibTorch-free parts: checkpoint_format.h)
//   config.yaml       the resolved configuration the run used
//   COMPLETE          written last; a folder without it is ignored
// A checkpoint is written into `.tmp-<step>` beside its final name, every file is fsync'ed,
// COMPLETE is written, and the folder is renamed into place: a crash at any moment leaves
// either the previous checkpoints or the new complete one.
//
// Not thread-safe; called from the training loop only.
#ifndef SWEEP_WORKER_TRAINER_CHECKPOINT_H_
#define SWEEP_WORKER_TRAINER_CHECKPOINT_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/trainer/checkpoint_format.h"
#include "worker/trainer/config.h"
#include "worker/trainer/data.h"
#include "worker/trainer/model.h"
#include "worker/trainer/noise_scale.h"
#include "worker/trainer/optimizer.h"

namespace sweep::trainer {

inline constexpr char kCheckpointCompleteMarker[] = "COMPLETE";

// Everything besides tensors that a resumed run needs.
struct TrainProgress {
  int64_t step = 0;          // Optimizer steps taken.
  int64_t total_tokens = 0;  // Training tokens consumed.
  DataState data;            // Position of the training batch stream.
  // The noise-scale averages of a data-parallel run (state.bin's "gns_ema", written only
  // once there is something in them; a checkpoint without it resumes with empty averages).
  GradientNoiseScale::State noise_scale;
};

// Writes checkpoint `progress.step` under `checkpoints_dir` and then deletes all but the
// newest `keep` complete checkpoints (keep 0: delete none). Returns the checkpoint's path.
absl::StatusOr<std::string> SaveCheckpoint(const std::string& checkpoints_dir,
                                           Transformer& model, AdamW& optimizer,
                                           const TrainProgress& progress,
                                           const TrainConfig& config, int keep);

// The newest complete checkpoint at `path`: a checkpoint folder itself, a `checkpoints`
// folder, or a dump_dir holding one. NotFound when there is none.
absl::StatusOr<std::string> FindLatestCheckpoint(const std::string& path);

// Restores model, optimizer, RNG and progress from a complete checkpoint. Refuses (with
// FailedPrecondition) a checkpoint whose parameter layout differs from `model`'s, and (with
// DataLoss) a truncated or corrupted one.
absl::Status LoadCheckpoint(const std::string& checkpoint_dir, Transformer& model,
                            AdamW& optimizer, TrainProgress* progress);

}  // namespace sweep::trainer

#endif  // SWEEP_WORKER_TRAINER_CHECKPOINT_H_
