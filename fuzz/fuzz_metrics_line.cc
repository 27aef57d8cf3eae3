// ParseMetricsLine (worker/metrics_file.h) on arbitrary bytes: what a trainer, any program,
// writes to metrics.jsonl. Besides crashes and sanitizer reports, it checks that every row is
// one sweepd accepts (a name of 1 to 256 bytes, a step in [0, 2^53]), since the worker would
// re-send a refused row for ever.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "worker/metrics_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view line(reinterpret_cast<const char*>(data), size);
  std::optional<sweep::worker::MetricsLine> parsed = sweep::worker::ParseMetricsLine(line);
  if (!parsed) return 0;
  constexpr int64_t kMaxStep = int64_t{1} << 53;
  if (parsed->step < 0 || parsed->step > kMaxStep) {
    std::fprintf(stderr, "fuzz_metrics_line: step %lld\n", static_cast<long long>(parsed->step));
    std::abort();
  }
  for (const sweep::worker::MetricRow& row : parsed->rows) {
    if (row.name.empty() || row.name.size() > 256 || row.step != parsed->step) {
      std::fprintf(stderr, "fuzz_metrics_line: row '%s' (%zu bytes) at step %lld\n",
                   row.name.substr(0, 100).c_str(), row.name.size(),
                   static_cast<long long>(row.step));
      std::abort();
    }
  }
  if (!parsed->event.empty() && !parsed->rows.empty()) {
    std::fprintf(stderr, "fuzz_metrics_line: an event with rows\n");
    std::abort();
  }
  return 0;
}
