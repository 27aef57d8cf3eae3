// The checkpoint reader's LibTorch-free half (worker/trainer/checkpoint_format.h) on arbitrary
// bytes: the first byte picks the file (even: state.bin, odd: train_state.json), the rest is
// its contents. Besides crashes, uncaught exceptions and sanitizer reports, it checks the
// contract: state.bin is accepted only with a matching size and checksum (and then the payload
// is what follows the header), train_state.json refusals are DataLoss or FailedPrecondition,
// and what is accepted encodes and parses back to the same progress.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "worker/trainer/checkpoint_format.h"

namespace {

void Check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz_checkpoint: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sweep::trainer;
  if (size == 0) return 0;
  const std::string_view contents(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 2 == 0) {
    absl::StatusOr<std::string_view> payload = CheckStateFile(contents, "state.bin");
    if (!payload.ok()) {
      Check(payload.status().code() == absl::StatusCode::kDataLoss,
            "state.bin refusal is not DataLoss");
      return 0;
    }
    Check(payload->size() + kCheckpointHeaderSize == contents.size(), "payload size");
    Check(EncodeStateHeader(*payload) == contents.substr(0, kCheckpointHeaderSize),
          "header round trip");
    return 0;
  }
  absl::StatusOr<TrainStateFile> state = ParseTrainState(contents, "train_state.json", "ckpt");
  if (!state.ok()) {
    const absl::StatusCode code = state.status().code();
    Check(code == absl::StatusCode::kDataLoss || code == absl::StatusCode::kFailedPrecondition,
          "train_state.json refusal is neither DataLoss nor FailedPrecondition");
    return 0;
  }
  absl::StatusOr<TrainStateFile> again =
      ParseTrainState(EncodeTrainState(*state), "train_state.json", "ckpt");
  Check(again.ok(), "an accepted train_state.json does not parse back");
  Check(again->step == state->step && again->total_tokens == state->total_tokens &&
            again->data_state == state->data_state && again->layout == state->layout,
        "train_state.json round trip");
  return 0;
}
