// Trial command templates cannot inject shell. sweep-worker starts a command trial with an
// argv list (execve), never through `sh -c`: a parameter value such as `; rm -rf ~` or
// `$(touch pwned)` reaches the trainer as part of one argument, byte for byte, and nothing
// runs it. The test drives the real sweepd and sweep-worker with a command trial that records
// the argv it received; HOME points at a folder with a canary file that a shell would delete.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <nlohmann/json.hpp>

#include "tests/testing/cluster.h"
#include "tests/testing/subprocess.h"

namespace sweep {
namespace {

namespace fs = std::filesystem;
using sweep::testing::Cluster;
using sweep::testing::MakeTempDir;
using sweep::testing::ReadFileOrEmpty;

// Values a shell would act on. Each one is a trial's `tag` parameter.
// (A value that YAML cannot hold as a plain scalar, one starting with ` or * say, is refused by
// the spec parser with its position; these are all accepted.)
const std::vector<std::string> kHostileValues = {
    "; rm -rf ~",    "$(touch pwned)",      "x`touch pwned`", "x || touch pwned &&", "a b  c\td",
    "x * ~ ..",      "x' \"y",              "$HOME",          "${trial_dir}",        "x > pwned",
    "x\nrm -rf ~",
};

std::string YamlQuoted(const std::string& s) {
  return nlohmann::json(s).dump();  // A JSON string is a YAML double-quoted scalar.
}

TEST(CommandInjectionTest, ParameterValuesStayOneArgumentAndNothingRunsThem) {
  const std::string dir = MakeTempDir("injection");
  const std::string home = dir + "/home";
  fs::create_directories(home);
  { std::ofstream(home + "/canary") << "a shell's rm -rf ~ would delete this\n"; }
  ASSERT_EQ(setenv("HOME", home.c_str(), 1), 0);  // Inherited by sweepd, the worker, the trials.

  std::string values;
  for (const std::string& v : kHostileValues) values += (values.empty() ? "" : ", ") + YamlQuoted(v);
  const std::string spec = std::string(R"spec(name: inject
method: grid
metric: {name: loss/out, goal: minimize}
trainer:
  command: [/usr/bin/python3, ")spec") + SWEEP_SOURCE_DIR + R"spec(/tests/orchestrator/fixtures/record_argv.py",
            --params, "${params}", "--trial=${trial_id}", "${sweep}", "$(touch pwned)", "; rm -rf ~"]
base: {steps: 3}
parameters:
  tag: {values: [)spec" + values + "]}\n";

  Cluster cluster({SWEEPD_BIN, WORKER_BIN, SWEEP_TRAIN_BIN}, dir);
  ASSERT_TRUE(cluster.StartSweepd()) << cluster.Logs();
  const absl::Status submitted = cluster.Submit(spec);
  ASSERT_TRUE(submitted.ok()) << submitted << "\n" << spec;
  cluster.StartWorker("w1");
  cluster.StartWorker("w2");
  ASSERT_TRUE(cluster.SweepEnds("inject", std::chrono::seconds(120))) << cluster.Logs();

  ASSERT_EQ(cluster.Db("SELECT COUNT(*) FROM trials WHERE state = 'completed'"),
            std::to_string(kHostileValues.size()))
      << cluster.Logs();
  std::set<std::string> seen_values;
  for (const auto& entry : fs::recursive_directory_iterator(dir + "/work")) {
    if (entry.path().filename() != "argv.json") continue;
    const nlohmann::json argv = nlohmann::json::parse(ReadFileOrEmpty(entry.path().string()));
    SCOPED_TRACE(argv.dump());
    // Exactly the template's six arguments after the script: no value was split or joined.
    ASSERT_EQ(argv.size(), 6u);
    EXPECT_EQ(argv[0], "--params");
    const nlohmann::json params = nlohmann::json::parse(argv[1].get<std::string>());
    ASSERT_TRUE(params.contains("tag"));
    seen_values.insert(params["tag"].get<std::string>());
    EXPECT_EQ(argv[2].get<std::string>().rfind("--trial=", 0), 0u);
    EXPECT_EQ(argv[3], "inject");
    // The template's own hostile text is passed verbatim too.
    EXPECT_EQ(argv[4], "$(touch pwned)");
    EXPECT_EQ(argv[5], "; rm -rf ~");
  }
  // Every value arrived byte for byte (a substituted value is not expanded again: the
  // "${trial_dir}" value stays literal).
  EXPECT_EQ(seen_values, std::set<std::string>(kHostileValues.begin(), kHostileValues.end()));

  // Nothing acted on them: the canary lives, no "pwned" file anywhere.
  EXPECT_TRUE(fs::exists(home + "/canary"));
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    EXPECT_NE(entry.path().filename(), "pwned") << entry.path();
  }
  EXPECT_FALSE(fs::exists(fs::current_path() / "pwned"));
}

}  // namespace
}  // namespace sweep
