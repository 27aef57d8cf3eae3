#include "worker/metrics_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

namespace sweep::worker {
namespace {

// Python's json.dumps writes NaN, Infinity and -Infinity as bare tokens, which are not JSON:
// quote them (outside strings) so the line parses and the values survive.
std::string QuoteNonFiniteTokens(std::string_view line) {
  std::string out;
  out.reserve(line.size() + 16);
  bool in_string = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < line.size()) {
        out += line[++i];
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
      out += c;
      continue;
    }
    bool replaced = false;
    for (std::string_view token : {"-Infinity", "Infinity", "NaN"}) {
      if (line.substr(i, token.size()) == token) {
        out += '"';
        out += token;
        out += '"';
        i += token.size() - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  return out;
}

std::optional<double> NumericValue(const nlohmann::json& v) {
  if (v.is_number()) return v.get<double>();
  if (v.is_null()) return std::numeric_limits<double>::quiet_NaN();  // sweep-train's non-finite
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "NaN" || s == "nan") return std::numeric_limits<double>::quiet_NaN();
    if (s == "Infinity" || s == "inf") return std::numeric_limits<double>::infinity();
    if (s == "-Infinity" || s == "-inf") return -std::numeric_limits<double>::infinity();
  }
  return std::nullopt;
}

// What sweepd accepts (orchestrator/service.cc): a row it would refuse would be re-sent for
// ever, holding back every row after it, so such rows are dropped here.
constexpr size_t kMaxNameBytes = 256;
constexpr int64_t kMaxStep = int64_t{1} << 53;
constexpr size_t kMaxCheckpointBytes = 1024;
constexpr int kMaxDepth = 8;  // "grad_norm/layers/3/attention" is 4; deeper objects are skipped

void Flatten(const nlohmann::json& object, const std::string& prefix, int64_t step, int depth,
             std::vector<MetricRow>* rows) {
  for (const auto& [key, value] : object.items()) {
    const std::string name = prefix.empty() ? key : prefix + "/" + key;
    if (prefix.empty() &&
        (key == "global_step" || key == "step" || key == "acc_step" || key == "created_at")) {
      continue;
    }
    if (key.empty() || name.size() > kMaxNameBytes) continue;
    if (value.is_object()) {
      if (depth < kMaxDepth) Flatten(value, name, step, depth + 1, rows);
    } else if (std::optional<double> v = NumericValue(value)) {
      rows->push_back({name, step, *v});
    }
  }
}

}  // namespace

std::optional<MetricsLine> ParseMetricsLine(std::string_view line) {
  nlohmann::json record = nlohmann::json::parse(QuoteNonFiniteTokens(line), nullptr,
                                                /*allow_exceptions=*/false);
  if (record.is_discarded() || !record.is_object()) return std::nullopt;
  MetricsLine out;
  for (const char* key : {"global_step", "step"}) {
    auto it = record.find(key);
    if (it != record.end() && it->is_number_integer()) {
      // An unsigned number above INT64_MAX must not wrap to a negative step.
      if (it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(kMaxStep)) {
        return std::nullopt;
      }
      out.step = it->get<int64_t>();
      break;
    }
  }
  if (out.step < 0 || out.step > kMaxStep) return std::nullopt;  // Not a step sweepd takes.
  if (auto it = record.find("event"); it != record.end() && it->is_string()) {
    out.event = it->get<std::string>();
    if (auto cp = record.find("checkpoint");
        cp != record.end() && cp->is_string() &&
        cp->get_ref<const std::string&>().size() <= kMaxCheckpointBytes) {
      out.checkpoint = cp->get<std::string>();
    }
    return out;
  }
  Flatten(record, "", out.step, 0, &out.rows);
  return out;
}

MetricsFile::~MetricsFile() {
  if (fd_ >= 0) ::close(fd_);
}

std::vector<std::string> MetricsFile::ReadLines(size_t max_lines, bool at_end) {
  std::vector<std::string> lines;
  if (fd_ < 0) {
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) return lines;  // Not written yet.
  }
  auto take_complete = [&] {
    size_t start = 0;
    for (size_t nl; lines.size() < max_lines && (nl = buffer_.find('\n', start)) != std::string::npos;
         start = nl + 1) {
      if (nl > start) lines.emplace_back(buffer_, start, nl - start);
      offset_ += nl + 1 - start;
    }
    buffer_.erase(0, start);
  };
  take_complete();
  char chunk[1 << 16];
  while (lines.size() < max_lines) {
    const ssize_t n = ::read(fd_, chunk, sizeof(chunk));
    if (n <= 0) break;
    buffer_.append(chunk, static_cast<size_t>(n));
    take_complete();
  }
  if (at_end && lines.size() < max_lines && !buffer_.empty() &&
      buffer_.find('\n') == std::string::npos) {
    offset_ += buffer_.size();
    lines.push_back(std::move(buffer_));
    buffer_.clear();
  }
  return lines;
}

}  // namespace sweep::worker
