// Hostile sweep specs: every file of tests/hostile/specs (bad YAML, wrong types, absurd
// numbers, huge grids, deep nesting, alias bombs, bad bytes, unsafe names, ...) and a few
// generated at run time (2 MB and 100 MB specs, megabyte-long values) is refused
//   * in-process by ParseSweepSpec + ExpandSweep, and
//   * by the real sweepd over gRPC (SubmitSweep),
// each with the error its first line names (`# expect: <substring>`), at the position its
// second line names (`# at: LINE:COLUMN`, or `-` where there is none), in under 2 s, with a
// message of a few kilobytes at most. sweepd must stay up and answering, and its database
// must hold no sweep and no trial afterwards and pass PRAGMA integrity_check.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "orchestrator/spec.h"
#include "tests/hostile/sweepd_process.h"

namespace sweep::hostile {
namespace {
namespace fs = std::filesystem;
using orchestrator::ExpandSweep;
using orchestrator::ParseSweepSpec;
using orchestrator::SpecLimits;

constexpr int64_t kMaxTrials = 1000;  // sweepd runs with --max-trials 1000 too.
constexpr auto kTimeLimit = std::chrono::seconds(2);
constexpr size_t kMaxMessage = 4096;

struct CorpusSpec {
  std::string file;  // The origin named in errors.
  std::string text;
  std::string expect;  // A substring of the error.
  std::string at;      // "LINE:COLUMN" the error starts with after the file, or "" for none.
  grpc::StatusCode grpc_code = grpc::StatusCode::INVALID_ARGUMENT;
};

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// A valid spec (builtin trainer) that the generated cases grow into hostile ones.
constexpr char kValid[] = R"(name: hostile
method: grid
base:
  steps: 10
  model: {dim: 64, n_layers: 2, n_heads: 4}
  data: {sources: {kjv: 1.0}, batch_size: 4, seq_len: 32}
parameters:
  optim.lr: {values: [1.0e-3, 3.0e-3]}
)";

std::vector<CorpusSpec> Corpus() {
  std::vector<CorpusSpec> corpus;
  std::vector<fs::path> files;
  for (const auto& entry :
       fs::directory_iterator(std::string(SWEEP_SOURCE_DIR) + "/tests/hostile/specs")) {
    if (entry.path().extension() == ".yaml") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  for (const fs::path& path : files) {
    CorpusSpec c;
    c.file = path.filename().string();
    c.text = ReadFile(path);
    // "# expect: ...\n# at: ...\n" open every file.
    std::istringstream header(c.text);
    std::string expect_line, at_line;
    std::getline(header, expect_line);
    std::getline(header, at_line);
    EXPECT_EQ(expect_line.rfind("# expect: ", 0), 0u)
        << c.file << ": first line must be '# expect: ...'";
    EXPECT_EQ(at_line.rfind("# at: ", 0), 0u)
        << c.file << ": second line must be '# at: L:C' or '# at: -'";
    c.expect = expect_line.substr(std::min(expect_line.size(), sizeof("# expect: ") - 1));
    c.at = at_line.substr(std::min(at_line.size(), sizeof("# at: ") - 1));
    if (c.at == "-") c.at.clear();
    corpus.push_back(std::move(c));
  }
  return corpus;
}

// The huge ones are made at run time rather than committed.
std::vector<CorpusSpec> Generated() {
  std::vector<CorpusSpec> out;
  {
    std::string text = std::string(kValid) + "description: |\n";
    const std::string line = "  " + std::string(98, 'x') + "\n";
    while (text.size() < (2u << 20)) text += line;
    out.push_back({"generated_2mb.yaml", text, "bytes; the limit is 1048576", ""});
  }
  {
    std::string text = std::string(kValid) + "description: |\n";
    text.reserve(100u << 20);
    const std::string line = "  " + std::string(1021, 'y') + "\n";
    while (text.size() < (100u << 20)) text += line;
    // Over the 64 MB gRPC message limit: sweepd never sees it.
    out.push_back({"generated_100mb.yaml", text, "bytes; the limit is 1048576", "",
                   grpc::StatusCode::RESOURCE_EXHAUSTED});
  }
  {
    std::string text = kValid;
    text.replace(text.find("method: grid"), 12, "method: " + std::string(500000, 'm'));
    out.push_back(
        {"generated_500k_method.yaml", text, "method: expected grid or random, got 'mmm", "2:9"});
  }
  // An explicit key: yaml-cpp refuses implicit ones above 1024 characters by itself.
  out.push_back({"generated_500k_unknown_key.yaml",
                 std::string(kValid) + "? " + std::string(500000, 'k') + "\n: 1\n",
                 "unknown key (expected one of", "9:3"});
  {
    std::string text = std::string(kValid) + "description: \"";
    text += std::string(900000, 'q');
    out.push_back({"generated_900k_unclosed_quote.yaml", text, "is never closed", "9:14"});
  }
  {  // 150,000 quoted strings on one line: the checks before yaml-cpp must stay linear.
    std::string text = std::string(kValid) + "description: [";
    for (int i = 0; i < 150000; ++i) text += "'a',";
    text += "'a']\n";
    out.push_back({"generated_150k_quotes_on_a_line.yaml", text,
                   "description: expected a string, got a list", "9:14"});
  }
  {  // A 100 KB base for 1,000 trials: 100 MB of configs to store.
    std::string text =
        "name: big\nmethod: grid\ntrainer: {command: [python3, train.py]}\nbase:\n  notes: " +
        std::string(100000, 'n') + "\nparameters:\n  seed: {values: [";
    for (int i = 0; i < 1000; ++i) text += std::to_string(i) + (i < 999 ? ", " : "]}\n");
    out.push_back({"generated_100kb_base_x_1000_trials.yaml", text,
                   "base: 1000 trials of this 100007-byte base would store more than 32 MiB",
                   "5:3"});
  }
  {  // Deep block nesting by indentation, within the size limit (~1,400 levels).
    std::string text = std::string(kValid) + "description:\n";
    for (int i = 1; text.size() < (1u << 20) - 4000; ++i) text += std::string(i, ' ') + "k:\n";
    out.push_back(
        {"generated_deep_indentation.yaml", text, "spec: nested deeper than 64 levels", "74:66"});
  }
  return out;
}

// "file:at: " (or "file: " when there is no position) must open the message.
std::string Prefix(const CorpusSpec& c) {
  return c.at.empty() ? c.file + ": " : c.file + ":" + c.at + ": ";
}

TEST(HostileSpecTest, TheCorpusHasAtLeastAHundredSpecs) { EXPECT_GE(Corpus().size(), 100u); }

TEST(HostileSpecTest, EverySpecIsRefusedInProcessWithItsErrorAndPosition) {
  SpecLimits limits;
  limits.max_trials = kMaxTrials;
  std::vector<CorpusSpec> specs = Corpus();
  for (CorpusSpec& g : Generated()) specs.push_back(std::move(g));
  double slowest = 0;
  std::string slowest_file;
  for (const CorpusSpec& c : specs) {
    SCOPED_TRACE(c.file);
    const auto start = std::chrono::steady_clock::now();
    absl::Status status;
    absl::StatusOr<orchestrator::SweepSpec> spec = ParseSweepSpec(c.text, c.file, limits);
    if (spec.ok()) {
      absl::StatusOr<std::vector<orchestrator::TrialSpec>> trials = ExpandSweep(*spec, limits);
      status = trials.ok() ? absl::OkStatus() : trials.status();
    } else {
      status = spec.status();
    }
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    if (took.count() > slowest) {
      slowest = took.count();
      slowest_file = c.file;
    }
    ASSERT_FALSE(status.ok()) << "accepted";
    const std::string message(status.message());
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << message;
    EXPECT_NE(message.find(c.expect), std::string::npos)
        << "expected '" << c.expect << "' in\n  " << message;
    EXPECT_EQ(message.rfind(Prefix(c), 0), 0u)
        << "expected the message to start with '" << Prefix(c) << "':\n  " << message;
    EXPECT_LE(message.size(), kMaxMessage);
    EXPECT_LT(took, kTimeLimit);
  }
  std::printf("hostile specs: %zu refused in-process; slowest %.3f s (%s)\n", specs.size(), slowest,
              slowest_file.c_str());
}

// The grid limit is the daemon's --max-trials: the spec refused above at 1000 is a valid one.
TEST(HostileSpecTest, TheTrialLimitIsConfigurable) {
  const fs::path path = fs::path(SWEEP_SOURCE_DIR) / "tests/hostile/specs/grid_1001_points.yaml";
  const std::string text = ReadFile(path);
  SpecLimits limits;
  limits.max_trials = 1001;
  absl::StatusOr<orchestrator::SweepSpec> spec =
      ParseSweepSpec(text, "grid_1001_points.yaml", limits);
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  absl::StatusOr<std::vector<orchestrator::TrialSpec>> trials = ExpandSweep(*spec, limits);
  ASSERT_TRUE(trials.ok()) << trials.status().message();
  EXPECT_EQ(trials->size(), 1001u);
}

// The checks that run before yaml-cpp refuse nothing that is valid: quotes in comments and in
// block scalars, brackets inside quoted and plain scalars, JSON-style flow maps, multi-line
// quoted strings, CRLF line ends, a BOM, anchors with a few aliases, and 64 levels of nesting.
TEST(HostileSpecTest, TrickyButValidSpecsAreAccepted) {
  // A command trainer's base is free-form YAML: room for any structure.
  const std::string command =
      "name: tricky\nmethod: grid\ntrainer: {command: [python3, train.py, \"config=${config}\"]}\n"
      "parameters:\n  optim.lr: {values: [1.0e-3, 3.0e-3]}\nbase:\n";
  const std::string nested = std::string(62, '[') + "1" + std::string(62, ']');
  const std::string cases[] = {
      std::string(kValid) +
          "description: it's \"fine\" [really] {yes} # a comment with a ' quote\n",
      std::string(kValid) +
          "description: |\n  a block scalar with ' and \" and [ and {\n  # not a comment\n",
      std::string(kValid) + "description: >-\n    folded 'text\n    \"more\n",
      std::string(kValid) + "description: \"a string\n  over two lines with a \\\" quote\"\n",
      std::string(kValid) + "description: 'it''s quoted'\n",
      command + "  json: {\"json\":\"style\", \"with, comma\": [1, \"a]b\", 'c}d']}\n",
      std::string(kValid) +
          "description: a plain scalar with:colons, [brackets], a#hash and 'quotes\n",
      "\xEF\xBB\xBF" + std::string(kValid),
      [] {
        std::string t = kValid;
        std::string out;
        for (char c : t) out += c == '\n' ? std::string("\r\n") : std::string(1, c);
        return out;
      }(),
      command + "  a: &a {x: 1, y: [1, 2]}\n  b: [*a, *a, *a]\n  c: {d: *a}\n",
      command + "  deep: " + nested + "\n",
      command + "  lists:\n  - - - [a, {b: [c]}]\n  - key: value\n    other: |\n      text ] } '\n",
  };
  for (const std::string& text : cases) {
    SCOPED_TRACE(text);
    absl::StatusOr<orchestrator::SweepSpec> spec = ParseSweepSpec(text, "valid.yaml");
    EXPECT_TRUE(spec.ok()) << spec.status().message();
  }
}

// Valid specs that used to take long: a random search whose space is smaller than its run_cap
// drew 100 x run_cap times (17 s for 100 constant parameters and run_cap 10,000), and a
// command trainer's values were parsed again for every trial.
TEST(HostileSpecTest, ValidSpecsThatAskMuchAreStillQuick) {
  std::string constant =
      "name: constant\nmethod: random\nrun_cap: 10000\n"
      "trainer: {command: [python3, train.py]}\nparameters:\n";
  for (int i = 0; i < 256; ++i)
    constant += "  p" + std::to_string(i) + ": {value: '{a: [1, 2]}'}\n";
  std::string grid =
      "name: grid\nmethod: grid\ntrainer: {command: [python3, train.py]}\nparameters:\n";
  for (int i = 0; i < 4; ++i)
    grid +=
        "  p" + std::to_string(i) + ": {values: ['{a: 1}', '[1, 2]', 3, x, y, z, w, v, u, t]}\n";
  for (const auto& [text, trials] : {std::pair<std::string, size_t>{constant, 1}, {grid, 10000}}) {
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<orchestrator::SweepSpec> spec = ParseSweepSpec(text, "quick.yaml");
    ASSERT_TRUE(spec.ok()) << spec.status().message();
    absl::StatusOr<std::vector<orchestrator::TrialSpec>> expanded = ExpandSweep(*spec);
    ASSERT_TRUE(expanded.ok()) << expanded.status().message();
    EXPECT_EQ(expanded->size(), trials);
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    EXPECT_LT(took, std::chrono::seconds(4)) << spec->name;
    std::printf("%s: %zu trials parsed and expanded twice in %.2f s\n", spec->name.c_str(),
                expanded->size(), took.count());
  }
}

TEST(HostileSpecTest, SweepdRefusesEverySpecAndStaysHealthy) {
  SweepdProcess sweepd({"--max-trials", std::to_string(kMaxTrials)});
  ASSERT_NO_FATAL_FAILURE(sweepd.Start());
  std::vector<CorpusSpec> specs = Corpus();
  for (CorpusSpec& g : Generated()) specs.push_back(std::move(g));
  double slowest = 0;
  std::string slowest_file;
  for (const CorpusSpec& c : specs) {
    SCOPED_TRACE(c.file);
    v1::SubmitSweepRequest request;
    request.set_spec_yaml(c.text);
    request.set_origin(c.file);
    v1::SubmitSweepResponse response;
    const auto start = std::chrono::steady_clock::now();
    const grpc::Status status =
        sweepd.stub()->SubmitSweep(SweepdProcess::Context().get(), request, &response);
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    if (took.count() > slowest) {
      slowest = took.count();
      slowest_file = c.file;
    }
    EXPECT_EQ(status.error_code(), c.grpc_code) << status.error_message();
    if (c.grpc_code == grpc::StatusCode::INVALID_ARGUMENT) {
      EXPECT_NE(status.error_message().find(c.expect), std::string::npos)
          << "expected '" << c.expect << "' in\n  " << status.error_message();
      EXPECT_EQ(status.error_message().rfind(Prefix(c), 0), 0u) << status.error_message();
    }
    EXPECT_LE(status.error_message().size(), kMaxMessage);
    EXPECT_LT(took, kTimeLimit);
    ASSERT_TRUE(sweepd.Running()) << "sweepd died on " << c.file << ":\n" << sweepd.Log();
  }
  std::printf("hostile specs: %zu refused by sweepd; slowest %.3f s (%s)\n", specs.size(), slowest,
              slowest_file.c_str());
  sweepd.ExpectHealthy();
  EXPECT_EQ(sweepd.Scalar("SELECT COUNT(*) FROM sweeps"), "0");
  EXPECT_EQ(sweepd.Scalar("SELECT COUNT(*) FROM trials"), "0");
  // And it still takes a valid spec.
  v1::SubmitSweepRequest request;
  request.set_spec_yaml(kValid);
  request.set_origin("valid.yaml");
  v1::SubmitSweepResponse response;
  const grpc::Status status =
      sweepd.stub()->SubmitSweep(SweepdProcess::Context().get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.sweep().trials_by_state().at("pending"), 2);
  EXPECT_EQ(sweepd.Stop(), 0);
}

}  // namespace
}  // namespace sweep::hostile
