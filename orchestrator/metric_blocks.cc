#include "orchestrator/metric_blocks.h"

#include <sqlite3.h>

#include <cmath>
#include <map>
#include <tuple>

#include "orchestrator/sql.h"

namespace sweep::orchestrator {

void MetricBlock::Add(int64_t step, double value) {
  MetricBlock one;
  one.block = block;
  one.rows = 1;
  one.first_step = one.last_step = step;
  if (std::isfinite(value)) {
    one.min_step = one.max_step = step;
    one.min_value = one.max_value = value;
  } else {
    one.nonfinite_step = step;
    one.nonfinite = std::isnan(value) ? "nan" : value > 0 ? "inf" : "-inf";
  }
  Merge(one);
}

void MetricBlock::Merge(const MetricBlock& other) {
  if (other.rows == 0) return;
  if (rows == 0) {
    const int64_t keep = block;
    *this = other;
    block = keep;
    return;
  }
  rows += other.rows;
  first_step = std::min(first_step, other.first_step);
  last_step = std::max(last_step, other.last_step);
  if (other.min_step &&
      (!min_step || other.min_value < min_value || (other.min_value == min_value && *other.min_step < *min_step))) {
    min_step = other.min_step;
    min_value = other.min_value;
  }
  if (other.max_step &&
      (!max_step || other.max_value > max_value || (other.max_value == max_value && *other.max_step < *max_step))) {
    max_step = other.max_step;
    max_value = other.max_value;
  }
  if (other.nonfinite_step && (!nonfinite_step || *other.nonfinite_step < *nonfinite_step)) {
    nonfinite_step = other.nonfinite_step;
    nonfinite = other.nonfinite;
  }
}

namespace {

constexpr const char* kColumns =
    "block, rows, first_step, last_step, min_step, min_value, max_step, max_value, nonfinite_step, nonfinite";

// A row of SELECT kColumns.
MetricBlock ReadBlock(Statement& st) {
  MetricBlock b;
  b.block = st.Int(0);
  b.rows = st.Int(1);
  b.first_step = st.Int(2);
  b.last_step = st.Int(3);
  if (!st.IsNull(4)) b.min_step = st.Int(4);
  b.min_value = st.Double(5);
  if (!st.IsNull(6)) b.max_step = st.Int(6);
  b.max_value = st.Double(7);
  if (!st.IsNull(8)) b.nonfinite_step = st.Int(8);
  b.nonfinite = st.Text(9);
  return b;
}

}  // namespace

absl::Status UpdateMetricBlocks(StatementCache* statements, const std::vector<MetricRow>& added) {
  std::map<std::tuple<int64_t, std::string, int64_t>, MetricBlock> touched;
  for (const MetricRow& row : added) {
    const int64_t block = row.step / kMetricBlockSteps;
    MetricBlock& b = touched[{row.trial_id, row.name, block}];
    b.block = block;
    b.Add(row.step, row.value);
  }
  Statement read(statements, absl::StrCat("SELECT ", kColumns, " FROM metric_blocks WHERE trial_id = ? AND name = ? AND block = ?"));
  Statement write(statements, absl::StrCat("INSERT OR REPLACE INTO metric_blocks (trial_id, name, ",
                                           kColumns, ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"));
  if (!read.status().ok()) return read.status();
  if (!write.status().ok()) return write.status();
  for (auto& [key, fresh] : touched) {
    const auto& [trial_id, name, block] = key;
    read.Reset();
    read.Bind(1, trial_id);
    read.Bind(2, name);
    read.Bind(3, block);
    MetricBlock merged = fresh;
    if (const int rc = read.Step(); rc == SQLITE_ROW) {
      merged = ReadBlock(read);
      merged.Merge(fresh);
    } else if (rc != SQLITE_DONE) {
      return read.Error("reading a metric block");
    }
    write.Reset();
    write.Bind(1, trial_id);
    write.Bind(2, name);
    write.Bind(3, merged.block);
    write.Bind(4, merged.rows);
    write.Bind(5, merged.first_step);
    write.Bind(6, merged.last_step);
    if (merged.min_step) {
      write.Bind(7, *merged.min_step);
      write.Bind(8, merged.min_value);
      write.Bind(9, *merged.max_step);
      write.Bind(10, merged.max_value);
    } else {
      for (int i = 7; i <= 10; ++i) write.BindNull(i);
    }
    if (merged.nonfinite_step) {
      write.Bind(11, *merged.nonfinite_step);
      write.Bind(12, merged.nonfinite);
    } else {
      write.BindNull(11);
      write.BindNull(12);
    }
    if (write.Step() != SQLITE_DONE) return write.Error("writing a metric block");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<MetricBlock>> ReadMetricBlocks(sqlite3* db, int64_t trial_id, const std::string& name,
                                                          int64_t first_block, int64_t last_block) {
  Statement st(db, absl::StrCat("SELECT ", kColumns,
                                " FROM metric_blocks WHERE trial_id = ? AND name = ? AND block BETWEEN ? AND ?"
                                " ORDER BY block"));
  if (!st.status().ok()) return st.status();
  st.Bind(1, trial_id);
  st.Bind(2, name);
  st.Bind(3, first_block);
  st.Bind(4, last_block);
  std::vector<MetricBlock> blocks;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) blocks.push_back(ReadBlock(st));
  if (rc != SQLITE_DONE) return st.Error("reading metric blocks");
  return blocks;
}

}  // namespace sweep::orchestrator
