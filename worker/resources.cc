#include "worker/resources.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iterator>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "worker/child_process.h"

namespace sweep::worker {

absl::StatusOr<std::vector<std::string>> ExpandCommand(
    const std::vector<std::string>& command_template,
    const std::map<std::string, std::string>& vars) {
  std::vector<std::string> out;
  for (const std::string& arg : command_template) {
    std::string expanded;
    for (size_t i = 0; i < arg.size(); ++i) {
      if (arg[i] != '$') {
        expanded += arg[i];
      } else if (i + 1 < arg.size() && arg[i + 1] == '$') {
        expanded += '$';
        ++i;
      } else if (i + 1 < arg.size() && arg[i + 1] == '{') {
        const size_t close = arg.find('}', i + 2);
        if (close == std::string::npos) {
          return absl::InvalidArgumentError(
              absl::StrCat("trainer.command: unterminated \"${\" in \"", arg, "\""));
        }
        const std::string name = arg.substr(i + 2, close - i - 2);
        auto it = vars.find(name);
        if (it == vars.end()) {
          std::vector<std::string> known;
          for (const auto& [k, v] : vars) known.push_back("${" + k + "}");
          return absl::InvalidArgumentError(absl::StrCat("trainer.command: unknown variable ${",
                                                         name, "} in \"", arg, "\" (known: ",
                                                         absl::StrJoin(known, " "), ")"));
        }
        expanded += it->second;
        i = close;
      } else {
        expanded += '$';  // A lone "$" (e.g. a shell's "$1") is kept.
      }
    }
    out.push_back(std::move(expanded));
  }
  return out;
}

absl::StatusOr<std::vector<int>> ParseGpuList(const std::string& list) {
  std::vector<int> gpus;
  const absl::string_view trimmed = absl::StripAsciiWhitespace(list);
  if (trimmed.empty() || trimmed == "none") return gpus;
  std::set<int> seen;
  for (absl::string_view item : absl::StrSplit(trimmed, ',')) {
    int index = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(item), &index) || index < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--gpus: \"", item, "\" is not a GPU index (expected e.g. 0,1,3)"));
    }
    if (!seen.insert(index).second) {
      return absl::InvalidArgumentError(absl::StrCat("--gpus: GPU ", index, " is listed twice"));
    }
    gpus.push_back(index);
  }
  return gpus;
}

namespace {

// Runs nvidia-smi (found on PATH) with `args`; its stdout, or nullopt when it is missing, exits
// non-zero or runs past 10 s (then it is killed).
std::optional<std::string> RunNvidiaSmi(const std::vector<std::string>& args) {
  const auto nvidia_smi = bp::search_path("nvidia-smi");
  if (nvidia_smi.empty()) return std::nullopt;
  try {
    // The output (a line per GPU or process) fits the pipe: wait first, read after, so a hung
    // nvidia-smi is killed instead of blocking the read.
    bp::ipstream out;
    bp::child child(nvidia_smi, bp::args(args), bp::std_out > out, bp::std_err > bp::null,
                    bp::std_in < bp::null, OnlyStdioInherited{});
    // Polled rather than child.wait_for(): Boost's wait_for swaps the process's SIGCHLD
    // handler and waits for the signal, which another thread (the worker's loop reaping
    // trials) may take first, so each sample took the whole timeout.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    std::error_code ec;
    while (child.running(ec)) {
      if (std::chrono::steady_clock::now() > deadline) {
        child.terminate(ec);
        return std::nullopt;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (ec || child.exit_code() != 0) return std::nullopt;
    return std::string((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

}  // namespace

std::vector<int> DetectGpus() {
  std::optional<std::string> text = RunNvidiaSmi({"--query-gpu=index", "--format=csv,noheader"});
  if (!text) return {};
  std::vector<int> gpus;
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipWhitespace())) {
    int index = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &index)) gpus.push_back(index);
  }
  return gpus;
}

std::string JoinGpus(const std::vector<int>& gpus) { return absl::StrJoin(gpus, ","); }

std::vector<size_t> PickGpus(const std::vector<int>& free_shares, int count) {
  std::vector<size_t> order(free_shares.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return free_shares[a] > free_shares[b]; });
  if (count < 1 || static_cast<size_t>(count) > order.size() || free_shares[order[count - 1]] <= 0) {
    return {};
  }
  order.resize(count);
  std::sort(order.begin(), order.end());
  return order;
}

std::vector<GpuSample> ParseGpuQuery(const std::string& csv) {
  std::vector<GpuSample> out;
  for (absl::string_view line : absl::StrSplit(csv, '\n', absl::SkipWhitespace())) {
    std::vector<absl::string_view> fields = absl::StrSplit(line, ',');
    if (fields.size() != 3) continue;
    GpuSample g;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(fields[0]), &g.index) ||
        !absl::SimpleAtod(absl::StripAsciiWhitespace(fields[1]), &g.memory_used_mib) ||
        !absl::SimpleAtod(absl::StripAsciiWhitespace(fields[2]), &g.utilization_pct) ||
        !std::isfinite(g.memory_used_mib) || !std::isfinite(g.utilization_pct)) {
      continue;
    }
    out.push_back(g);
  }
  return out;
}

std::vector<GpuSample> QueryGpus() {
  std::optional<std::string> text = RunNvidiaSmi(
      {"--query-gpu=index,memory.used,utilization.gpu", "--format=csv,noheader,nounits"});
  return text ? ParseGpuQuery(*text) : std::vector<GpuSample>{};
}

std::vector<GpuProcess> ParseGpuProcesses(const std::string& csv) {
  std::vector<GpuProcess> out;
  for (absl::string_view line : absl::StrSplit(csv, '\n', absl::SkipWhitespace())) {
    std::vector<absl::string_view> fields = absl::StrSplit(line, ',');
    GpuProcess p;
    if (fields.size() != 2 || !absl::SimpleAtoi(absl::StripAsciiWhitespace(fields[0]), &p.pid) ||
        !absl::SimpleAtod(absl::StripAsciiWhitespace(fields[1]), &p.memory_used_mib) ||
        p.pid <= 0 || !std::isfinite(p.memory_used_mib)) {
      continue;
    }
    out.push_back(p);
  }
  return out;
}

std::vector<GpuProcess> QueryGpuProcesses() {
  std::optional<std::string> text =
      RunNvidiaSmi({"--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"});
  return text ? ParseGpuProcesses(*text) : std::vector<GpuProcess>{};
}

}  // namespace sweep::worker
