// ParseSweepSpec + ExpandSweep on arbitrary bytes, with small limits so that each input is
// quick. Besides crashes and sanitizer reports, it checks the contract: a refusal is
// INVALID_ARGUMENT naming the file in a short message; an accepted spec expands again to at
// most max_trials distinct trials, and its early_terminate and detection settings survive the
// JSON the store keeps them in.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>

#include "orchestrator/spec.h"

namespace {

void Check(bool ok, const char* what, const std::string& detail) {
  if (ok) return;
  std::fprintf(stderr, "fuzz_spec: %s: %s\n", what, detail.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sweep::orchestrator;
  static const SpecLimits limits = [] {
    SpecLimits l;
    l.max_trials = 64;
    l.max_spec_bytes = 64 << 10;
    l.max_nodes = 20000;
    return l;
  }();
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<SweepSpec> spec = ParseSweepSpec(text, "fuzz.yaml", limits);
  if (!spec.ok()) {
    const std::string message(spec.status().message());
    Check(spec.status().code() == absl::StatusCode::kInvalidArgument,
          "refusal is not INVALID_ARGUMENT", message);
    Check(message.rfind("fuzz.yaml", 0) == 0, "error does not start with the file", message);
    Check(message.size() <= 4096, "error longer than 4 KiB", message.substr(0, 200));
    return 0;
  }
  absl::StatusOr<std::vector<TrialSpec>> trials = ExpandSweep(*spec, limits);
  Check(trials.ok(), "an accepted spec does not expand", std::string(trials.status().message()));
  Check(static_cast<int64_t>(trials->size()) <= limits.max_trials, "more trials than the limit",
        std::to_string(trials->size()));
  std::set<std::string> keys;
  for (const TrialSpec& t : *trials) keys.insert(t.trial_key);
  Check(keys.size() == trials->size(), "two trials with one key", text);
  if (spec->method == SearchMethod::kGrid) {
    Check(static_cast<int64_t>(trials->size()) == GridSize(*spec), "grid size", text);
  }
  absl::StatusOr<std::vector<EarlyTerminateRule>> rules =
      EarlyTerminateFromJson(EarlyTerminateToJson(spec->early_terminate));
  Check(rules.ok() && rules->size() == spec->early_terminate.size(), "early_terminate JSON", text);
  absl::StatusOr<DetectionOptions> detection = DetectionFromJson(DetectionToJson(spec->detection));
  Check(detection.ok() && detection->window == spec->detection.window, "detection JSON", text);
  return 0;
}
