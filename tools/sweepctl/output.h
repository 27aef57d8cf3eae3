// sweepctl's output: a table when a person reads it, stable CSV or JSON when a program does.
#ifndef SWEEP_TOOLS_SWEEPCTL_OUTPUT_H_
#define SWEEP_TOOLS_SWEEPCTL_OUTPUT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sweep::ctl {

// kAuto: a table on a terminal, CSV when stdout is a pipe or a file.
enum class Format { kAuto, kTable, kCsv, kJson };

absl::StatusOr<Format> ParseFormat(const std::string& name);  // auto|table|csv|json

struct Table {
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;
  std::vector<std::vector<bool>> nulls;  // Optional, same shape as rows: SQL NULL.
  bool truncated = false;                 // More rows exist than were returned.
};

// Renders `table`; kAuto is resolved against stdout.
//   table: columns padded to their widths, numbers right-aligned, NULL as "-";
//   csv:   RFC 4180 (quotes where needed), NULL as an empty field, a header row;
//   json:  an array of objects; cells that are numbers are JSON numbers, NULL is null.
std::string Render(const Table& table, Format format);

bool StdoutIsTerminal();

// 0.0123456 -> "0.01235"; keeps `digits` significant digits, no exponent for common ranges.
std::string Number(double value, int digits = 4);
// 75 -> "1m15s".
std::string Duration(double seconds);
// A bar of `width` cells, `fraction` of them full.
std::string Bar(double fraction, int width);

}  // namespace sweep::ctl

#endif  // SWEEP_TOOLS_SWEEPCTL_OUTPUT_H_
