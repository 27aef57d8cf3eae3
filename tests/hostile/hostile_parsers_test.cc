// The other parsers of untrusted bytes, with the inputs their fuzz targets found or guard
// against (fuzz/): the checkpoint reader's train_state.json and state.bin header
// (worker/trainer/checkpoint_format.h) and the worker's metrics.jsonl lines
// (worker/metrics_file.h). Every case is refused with its code, or parsed to what sweepd
// accepts, without an exception.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "worker/metrics_file.h"
#include "worker/trainer/checkpoint_format.h"

namespace sweep {
namespace {
using trainer::CheckStateFile;
using trainer::EncodeStateHeader;
using trainer::EncodeTrainState;
using trainer::ParseTrainState;

TEST(HostileParsersTest, TrainStateRefusesWrongTypesWithoutThrowing) {
  // The reader used nlohmann's value(), which throws on a field of another type (an abort in
  // sweep-train --resume): each of these is now a refusal.
  const struct {
    const char* json;
    absl::StatusCode code;
  } cases[] = {
      {R"({"format": "sweep-checkpoint", "version": 1, "step": 20, "total_tokens": 640, "data_state": "{}"})",
       absl::StatusCode::kOk},
      {R"({"format": "sweep-checkpoint", "version": 1.0})", absl::StatusCode::kOk},
      {R"({"format": 7, "version": 1})", absl::StatusCode::kDataLoss},
      {R"({"format": null})", absl::StatusCode::kDataLoss},
      {R"({"format": "sweep-checkpoint", "version": "1"})", absl::StatusCode::kFailedPrecondition},
      {R"({"format": "sweep-checkpoint", "version": null})", absl::StatusCode::kFailedPrecondition},
      {R"({"format": "sweep-checkpoint", "version": -1})", absl::StatusCode::kFailedPrecondition},
      {R"({"format": "sweep-checkpoint", "version": 1e300})",
       absl::StatusCode::kFailedPrecondition},
      {R"({"format": "sweep-checkpoint", "version": 2})", absl::StatusCode::kFailedPrecondition},
      {R"({"format": "sweep-checkpoint"})", absl::StatusCode::kFailedPrecondition},
      {R"({"format": "sweep-checkpoint", "version": 1, "step": "20"})",
       absl::StatusCode::kDataLoss},
      {R"({"format": "sweep-checkpoint", "version": 1, "step": 2.5})", absl::StatusCode::kDataLoss},
      {R"({"format": "sweep-checkpoint", "version": 1, "step": 18446744073709551615})",
       absl::StatusCode::kDataLoss},
      {R"({"format": "sweep-checkpoint", "version": 1, "total_tokens": []})",
       absl::StatusCode::kDataLoss},
      {R"({"format": "sweep-checkpoint", "version": 1, "data_state": {}})",
       absl::StatusCode::kDataLoss},
      {R"(["sweep-checkpoint", 1])", absl::StatusCode::kDataLoss},
      {R"({"format": "sweep-checkpoint", "vers)", absl::StatusCode::kDataLoss},
      {"", absl::StatusCode::kDataLoss},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.json);
    absl::StatusOr<trainer::TrainStateFile> state =
        ParseTrainState(c.json, "d/train_state.json", "d");
    EXPECT_EQ(state.status().code(), c.code) << state.status().message();
    if (!state.ok()) EXPECT_EQ(std::string(state.status().message()).rfind("d", 0), 0u);
  }
}

TEST(HostileParsersTest, TrainStateRoundTrips) {
  trainer::TrainStateFile state;
  state.step = 41;
  state.total_tokens = 5248;
  state.data_state = R"({"format":"sweep.data_state"})";
  state.layout = nlohmann::json::array({{{"name", "output"}, {"shape", {258, 64}}}});
  absl::StatusOr<trainer::TrainStateFile> back = ParseTrainState(EncodeTrainState(state), "f", "d");
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->step, 41);
  EXPECT_EQ(back->total_tokens, 5248);
  EXPECT_EQ(back->data_state, state.data_state);
  EXPECT_EQ(back->layout, state.layout);
}

TEST(HostileParsersTest, StateHeaderNeedsItsMagicSizeAndChecksum) {
  const std::string payload = "a LibTorch archive would be here";
  const std::string file = EncodeStateHeader(payload) + payload;
  ASSERT_EQ(file.size(), trainer::kCheckpointHeaderSize + payload.size());
  absl::StatusOr<std::string_view> ok = CheckStateFile(file, "state.bin");
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_EQ(*ok, payload);

  std::string huge_size = file;
  const uint64_t size = UINT64_MAX;  // Must not be added to a pointer.
  std::memcpy(&huge_size[12], &size, 8);
  for (const std::string& bad : {std::string(), file.substr(0, 27), "SWPCKPX" + file.substr(7),
                                 file.substr(0, file.size() - 1), file + "x", huge_size,
                                 file.substr(0, 40) + "A" + file.substr(41)}) {
    absl::StatusOr<std::string_view> refused = CheckStateFile(bad, "state.bin");
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss);
  }
}

// Rows sweepd would refuse (and the worker would re-send for ever) are not produced.
TEST(HostileParsersTest, MetricsLinesOnlyYieldRowsSweepdAccepts) {
  using worker::ParseMetricsLine;
  EXPECT_FALSE(ParseMetricsLine(R"({"global_step": -1, "loss/out": 1.0})"));
  EXPECT_FALSE(ParseMetricsLine(R"({"global_step": 9007199254740993, "loss/out": 1.0})"));
  EXPECT_FALSE(ParseMetricsLine(R"({"global_step": 18446744073709551615, "loss/out": 1.0})"));
  EXPECT_TRUE(ParseMetricsLine(R"({"global_step": 9007199254740992, "loss/out": 1.0})"));

  std::optional<worker::MetricsLine> line =
      ParseMetricsLine(R"({"global_step": 3, "": 1.0, "a": {"": 2.0}, ")" + std::string(300, 'k') +
                       R"(": 3.0, "ok": 4.0})");
  ASSERT_TRUE(line);
  ASSERT_EQ(line->rows.size(), 1u);
  EXPECT_EQ(line->rows[0].name, "ok");

  std::string deep = R"({"global_step": 1, )";
  for (int i = 0; i < 20000; ++i) deep += R"("a": {)";
  deep += R"("v": 1.0)" + std::string(20000, '}') + "}";
  line = ParseMetricsLine(deep);  // Nesting is followed 8 levels deep, not 20,000 (the stack).
  ASSERT_TRUE(line);
  EXPECT_TRUE(line->rows.empty());

  line = ParseMetricsLine(R"({"event": "checkpoint", "global_step": 20, "checkpoint": ")" +
                          std::string(2000, 'c') + R"("})");
  ASSERT_TRUE(line);
  EXPECT_EQ(line->event, "checkpoint");
  EXPECT_TRUE(line->checkpoint.empty());  // Too long to be a path sweepd stores.
}

}  // namespace
}  // namespace sweep
