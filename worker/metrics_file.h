// Reading a trial's metrics.jsonl: sweep-train's and Lingua's JSON-lines format.
//
// Every trial, builtin or command, writes one JSON object per line to
// <trial_dir>/metrics.jsonl. The worker tails that file; it is also the trial's spool: rows the
// worker could not deliver yet stay in the file (the worker stops reading past its memory
// budget and resumes at the byte offset), and a restarted worker replays the file of an attempt
// it still holds. Re-sending a row is harmless: the store keys metrics by (trial, name, step).
//
// A line is either
//   * a metrics row: {"global_step": 12, "loss/out": 2.3, "optim": {"grad_norm": 0.8}, ...}.
//     Nested objects are flattened with "/" (Lingua's flatten_dict), so both spellings give
//     "optim/grad_norm". "global_step" (or "step") is the step; "acc_step", "created_at" and
//     non-numeric values are not metrics. Python's json writes NaN, Infinity and -Infinity as
//     bare tokens; they (and sweep-train's null for a non-finite value) are kept as NaN/Inf.
//   * an event from sweep-train: {"event": "checkpoint", "global_step": 20, "checkpoint": DIR}.
//     checkpoint, preempted and completed events name a complete checkpoint; diverged marks
//     the step where training diverged.
// What sweepd would refuse is dropped, since the worker would re-send it for ever: a line whose
// step is outside [0, 2^53] is not a metrics line; a metric whose name is empty or longer than
// 256 bytes is skipped, as are objects nested deeper than 8 levels and a checkpoint path longer
// than 1,024 bytes.
#ifndef SWEEP_WORKER_METRICS_FILE_H_
#define SWEEP_WORKER_METRICS_FILE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sweep::worker {

struct MetricRow {
  std::string name;
  int64_t step = 0;
  double value = 0;
};

struct MetricsLine {
  int64_t step = 0;
  std::vector<MetricRow> rows;  // Empty for an event.
  std::string event;            // Empty for a metrics row.
  std::string checkpoint;       // The complete checkpoint an event names, if any.
};

// Parses one line; nullopt when it is not a JSON object (a torn or foreign line).
std::optional<MetricsLine> ParseMetricsLine(std::string_view line);

// Reads the lines appended to a file since the last call. The file may not exist yet.
class MetricsFile {
 public:
  explicit MetricsFile(std::string path) : path_(std::move(path)) {}
  ~MetricsFile();
  MetricsFile(const MetricsFile&) = delete;
  MetricsFile& operator=(const MetricsFile&) = delete;

  // Up to `max_lines` complete lines. With `at_end` (the writer has exited) a last line without
  // a newline is returned too.
  std::vector<std::string> ReadLines(size_t max_lines, bool at_end);
  // Bytes consumed so far.
  uint64_t offset() const { return offset_; }
  const std::string& path() const { return path_; }

 private:
  const std::string path_;
  int fd_ = -1;
  uint64_t offset_ = 0;
  std::string buffer_;  // Read but not yet returned.
};

}  // namespace sweep::worker

#endif  // SWEEP_WORKER_METRICS_FILE_H_
