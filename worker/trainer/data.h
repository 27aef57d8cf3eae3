// Text data for the trainer: Lingua's byte tokenizer, corpus sources and a packed, shuffled,
// resumable batch stream. LibTorch-free.
//
// Sources (DataArgs::sources, resolved against DataArgs::root_dir unless absolute):
//   * a folder of Lingua-style chunks: training text from every `*.jsonl` file except
//     `*.val.jsonl` (sorted by name), validation text from `*.val.jsonl`; one JSON object per
//     line with the document in "text" (or "content");
//   * a plain `.txt` file: documents are separated by blank lines; it has no validation split.
//
// Packing: each document is encoded as [BOS] bytes [EOS] (add_bos/add_eos) and appended to
// a token stream; the stream is cut into non-overlapping windows of seq_len + 1 tokens
// (input = window[:-1], target = window[1:]). With several sources, each window is drawn from
// a source chosen at random with the configured weights.
//
// Shuffling (training only): prefetch_size * batch_size windows are gathered, permuted with a
// seeded RNG and emitted as prefetch_size batches. Validation batches come in file order,
// unshuffled, so every trial is evaluated on the same tokens.
//
// Resuming: State() describes the position exactly; an iterator opened on the same files
// and restored with Restore(State()) returns the same batches as the original from there on.
#ifndef SWEEP_WORKER_TRAINER_DATA_H_
#define SWEEP_WORKER_TRAINER_DATA_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/trainer/config.h"

namespace sweep::trainer {

// Lingua's `bytes` tokenizer: ids 0-255 are the UTF-8 bytes, 256 is BOS, 257 is EOS.
class ByteTokenizer {
 public:
  static constexpr int kBosId = 256;
  static constexpr int kEosId = 257;
  static constexpr int kVocabSize = 258;

  // Appends the ids of `text` to `out`, with BOS first and EOS last if asked.
  static void Encode(std::string_view text, bool add_bos, bool add_eos,
                     std::vector<int64_t>* out);
  // Drops BOS/EOS; other ids become their byte.
  static std::string Decode(const std::vector<int64_t>& ids);
};

enum class Split { kTrain, kVal };

// A serialisable position in the batch stream (stored in checkpoints as JSON text).
struct DataState {
  std::string json;  // Opaque to callers; produced by BatchIterator::State().
};

class BatchIterator {
 public:
  // Opens the sources of `args` for `split`. Errors name the missing path or the bad
  // line (`file:line: ...`). Validation of a source with no `*.val.jsonl` is an error.
  static absl::StatusOr<std::unique_ptr<BatchIterator>> Open(const DataArgs& args,
                                                             uint64_t seed, Split split);
  virtual ~BatchIterator() = default;

  // Fills `tokens` with batch_size * (seq_len + 1) ids, row-major (one window per row).
  // The stream never ends: at the end of the data it starts the next epoch.
  virtual absl::Status Next(std::vector<int64_t>* tokens) = 0;

  virtual DataState State() const = 0;
  virtual absl::Status Restore(const DataState& state) = 0;

  // Number of completed passes over the data (for logging).
  virtual int64_t Epoch() const = 0;
};

// Resolves a source name against the root folder (absolute names are kept as they are).
std::string ResolveSourcePath(const DataArgs& args, const std::string& source);

}  // namespace sweep::trainer

#endif  // SWEEP_WORKER_TRAINER_DATA_H_
