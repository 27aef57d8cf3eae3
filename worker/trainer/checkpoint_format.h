// The LibTorch-free half of the checkpoint format (checkpoint.h): the state.bin header and
// train_state.json. Split out so that readers of untrusted bytes can be tested and fuzzed
// without LibTorch (fuzz/fuzz_checkpoint.cc).
//
//   state.bin         magic "SWPCKPT\0" (8 bytes), format version (uint32), payload size
//                     (uint64), FNV-1a 64 checksum of the payload (uint64), all little-endian
//                     as the machine writes them, then the payload (a LibTorch archive)
//   train_state.json  {"format": "sweep-checkpoint", "version": 1, "step": ..., "total_tokens":
//                     ..., "data_state": "...", "layout": [{"name": ..., "shape": [...]}, ...]}
//
// Contract: the parsers never throw and never read past their input; errors name `where` (the
// file) and are DataLoss for bytes that are not a checkpoint, FailedPrecondition for another
// format version.
#ifndef SWEEP_WORKER_TRAINER_CHECKPOINT_FORMAT_H_
#define SWEEP_WORKER_TRAINER_CHECKPOINT_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace sweep::trainer {

inline constexpr uint32_t kCheckpointFormatVersion = 1;
inline constexpr size_t kCheckpointHeaderSize = 8 + 4 + 8 + 8;  // magic, version, size, checksum

// FNV-1a, 64 bits.
uint64_t Fnv1a(const char* data, size_t size);

// The state.bin header for `payload` (kCheckpointHeaderSize bytes; the payload follows it).
std::string EncodeStateHeader(std::string_view payload);

// The payload of a state.bin file's contents, after checking magic, version, size and
// checksum. DataLoss "<where>: bad magic number" or "<where>: truncated or corrupted
// (size/checksum mismatch)". The view points into `contents`.
absl::StatusOr<std::string_view> CheckStateFile(std::string_view contents,
                                                const std::string& where);

// train_state.json, the progress besides tensors.
struct TrainStateFile {
  int64_t step = 0;
  int64_t total_tokens = 0;
  std::string data_state;  // DataState::json, opaque here.
  nlohmann::json layout;   // Parameter names and shapes; null when missing.
};

std::string EncodeTrainState(const TrainStateFile& state);

// Parses train_state.json. DataLoss "<where>: not a sweep checkpoint" for anything but a JSON
// object with "format": "sweep-checkpoint" and fields of the right types; FailedPrecondition
// "<dir>: checkpoint format version N, this build reads version 1" (`dir` is the checkpoint
// folder, for that message).
absl::StatusOr<TrainStateFile> ParseTrainState(std::string_view text, const std::string& where,
                                               const std::string& dir);

}  // namespace sweep::trainer

#endif  // SWEEP_WORKER_TRAINER_CHECKPOINT_FORMAT_H_
