#include "tools/sweepctl/output.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace sweep::ctl {
namespace {

bool IsNull(const Table& t, size_t r, size_t c) {
  return r < t.nulls.size() && c < t.nulls[r].size() && t.nulls[r][c];
}

bool LooksNumeric(const std::string& s) {
  double v;
  return !s.empty() && absl::SimpleAtod(s, &v) && s.find_first_of("xX") == std::string::npos;
}

// Display width of UTF-8 text (code points; good enough for the bars and dashes we print).
size_t Width(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

}  // namespace

absl::StatusOr<Format> ParseFormat(const std::string& name) {
  if (name == "auto" || name.empty()) return Format::kAuto;
  if (name == "table") return Format::kTable;
  if (name == "csv") return Format::kCsv;
  if (name == "json") return Format::kJson;
  return absl::InvalidArgumentError(
      absl::StrCat("--format: '", name, "' is not one of auto, table, csv, json"));
}

bool StdoutIsTerminal() { return isatty(STDOUT_FILENO) == 1; }

std::string Render(const Table& t, Format format) {
  if (format == Format::kAuto) format = StdoutIsTerminal() ? Format::kTable : Format::kCsv;
  std::string out;
  if (format == Format::kCsv) {
    for (size_t c = 0; c < t.columns.size(); ++c) out += (c ? "," : "") + CsvField(t.columns[c]);
    out += "\n";
    for (size_t r = 0; r < t.rows.size(); ++r) {
      for (size_t c = 0; c < t.rows[r].size(); ++c) {
        out += (c ? "," : "") + (IsNull(t, r, c) ? std::string() : CsvField(t.rows[r][c]));
      }
      out += "\n";
    }
    return out;
  }
  if (format == Format::kJson) {
    nlohmann::json rows = nlohmann::json::array();
    for (size_t r = 0; r < t.rows.size(); ++r) {
      nlohmann::json row = nlohmann::json::object();
      for (size_t c = 0; c < t.columns.size() && c < t.rows[r].size(); ++c) {
        const std::string& cell = t.rows[r][c];
        double v;
        if (IsNull(t, r, c)) {
          row[t.columns[c]] = nullptr;
        } else if (LooksNumeric(cell) && absl::SimpleAtod(cell, &v) && std::isfinite(v)) {
          row[t.columns[c]] = v;
        } else {
          row[t.columns[c]] = cell;
        }
      }
      rows.push_back(std::move(row));
    }
    return rows.dump(2) + "\n";
  }
  std::vector<size_t> widths(t.columns.size());
  std::vector<bool> numeric(t.columns.size(), true);
  for (size_t c = 0; c < t.columns.size(); ++c) widths[c] = Width(t.columns[c]);
  for (size_t r = 0; r < t.rows.size(); ++r) {
    for (size_t c = 0; c < t.columns.size() && c < t.rows[r].size(); ++c) {
      const std::string cell = IsNull(t, r, c) ? "-" : t.rows[r][c];
      widths[c] = std::max(widths[c], Width(cell));
      if (!IsNull(t, r, c) && !LooksNumeric(cell)) numeric[c] = false;
    }
  }
  auto line = [&](const std::vector<std::string>& cells, const std::vector<bool>* nulls) {
    std::string s;
    for (size_t c = 0; c < t.columns.size(); ++c) {
      const bool null = nulls != nullptr && c < nulls->size() && (*nulls)[c];
      const std::string cell = null ? "-" : (c < cells.size() ? cells[c] : "");
      const std::string pad(widths[c] - std::min(widths[c], Width(cell)), ' ');
      s += (c ? "  " : "") + (numeric[c] && nulls != nullptr ? pad + cell : cell + pad);
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s + "\n";
  };
  out += line(t.columns, nullptr);
  for (size_t r = 0; r < t.rows.size(); ++r) {
    static const std::vector<bool> kNone;
    out += line(t.rows[r], r < t.nulls.size() ? &t.nulls[r] : &kNone);
  }
  return out;
}

std::string Number(double value, int digits) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*g", digits, value);
  return buf;
}

std::string Duration(double seconds) {
  if (!(seconds >= 0)) return "?";
  const long s = std::lround(seconds);
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrCat(s / 60, "m", absl::StrFormat("%02d", s % 60), "s");
  return absl::StrCat(s / 3600, "h", absl::StrFormat("%02d", (s % 3600) / 60), "m");
}

std::string Bar(double fraction, int width) {
  fraction = std::clamp(fraction, 0.0, 1.0);
  const int full = static_cast<int>(std::lround(fraction * width));
  std::string out;
  for (int i = 0; i < width; ++i) out += i < full ? "█" : "░";
  return out;
}

}  // namespace sweep::ctl
