// Summaries of every metric per block of kMetricBlockSteps steps (table metric_blocks, schema
// 5): rows, first and last step, the minimum and maximum with their steps, and the first
// non-finite row. The dashboard draws a long trace from these (min and max per bucket of whole
// blocks) instead of reading every row: a trace of a million steps is ~4,000 block rows.
//
// Contract
//   * UpdateMetricBlocks() folds rows that were new into their blocks, inside the caller's
//     transaction (Store::InsertMetrics calls it before COMMIT), so the blocks always
//     summarise exactly the stored rows. Rows must be new: a re-sent row would count twice.
//   * Non-finite values never take part in min/max; the first one per block is kept.
//   * Ties: the earliest step wins, for the minimum and the maximum alike.
#ifndef SWEEP_ORCHESTRATOR_METRIC_BLOCKS_H_
#define SWEEP_ORCHESTRATOR_METRIC_BLOCKS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "orchestrator/store.h"

struct sqlite3;

namespace sweep::orchestrator {

inline constexpr int64_t kMetricBlockSteps = 256;

struct MetricBlock {
  int64_t block = 0;  // step / kMetricBlockSteps
  int64_t rows = 0;
  int64_t first_step = 0, last_step = 0;
  std::optional<int64_t> min_step, max_step;  // unset when every row was non-finite
  double min_value = 0, max_value = 0;
  std::optional<int64_t> nonfinite_step;      // the block's first non-finite row
  std::string nonfinite;                      // its kind: nan, inf, -inf

  // Folds one row in (steps in any order).
  void Add(int64_t step, double value);
  // Folds another summary of the same block (or of a neighbouring one, when buckets span
  // several blocks) in.
  void Merge(const MetricBlock& other);
};

// It runs with every metrics batch, so its statements come from the writer's cache.
absl::Status UpdateMetricBlocks(StatementCache* statements, const std::vector<MetricRow>& added);

// The blocks of one metric of one trial whose steps fall in [first_block, last_block].
absl::StatusOr<std::vector<MetricBlock>> ReadMetricBlocks(sqlite3* db, int64_t trial_id, const std::string& name,
                                                          int64_t first_block, int64_t last_block);

}  // namespace sweep::orchestrator

#endif  // SWEEP_ORCHESTRATOR_METRIC_BLOCKS_H_
