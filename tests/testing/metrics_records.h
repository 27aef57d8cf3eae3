// Reading sweep-train's metrics.jsonl in the trainer's end-to-end tests: every record, the
// events of one kind, the step records, the last step, and a bit-for-bit comparison of two
// runs' step records (resume tests hold a resumed run against an uninterrupted one).
#ifndef SWEEP_TESTS_TESTING_METRICS_RECORDS_H_
#define SWEEP_TESTS_TESTING_METRICS_RECORDS_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/testing/subprocess.h"

namespace sweep::testing {

// Every JSON record of a metrics file, in file order (a malformed line is a test failure).
inline std::vector<nlohmann::json> Records(const std::string& metrics_path) {
  std::vector<nlohmann::json> records;
  std::ifstream in(metrics_path);
  for (std::string line; std::getline(in, line);) {
    nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(record.is_discarded()) << metrics_path << ": " << line;
    if (!record.is_discarded()) records.push_back(std::move(record));
  }
  return records;
}

// The records with "event": kind.
inline std::vector<nlohmann::json> Events(const std::vector<nlohmann::json>& records,
                                          const std::string& kind) {
  std::vector<nlohmann::json> found;
  for (const nlohmann::json& r : records) {
    if (r.value("event", "") == kind) found.push_back(r);
  }
  return found;
}

// Step records (the ones with loss/out) in file order.
inline std::vector<nlohmann::json> Steps(const std::vector<nlohmann::json>& records) {
  std::vector<nlohmann::json> steps;
  for (const nlohmann::json& r : records) {
    if (r.contains("loss/out")) steps.push_back(r);
  }
  return steps;
}

// The global_step of the last step record, 0 if none (the file may be mid-write).
inline int64_t LastStep(const std::string& metrics_path) {
  int64_t last = 0;
  std::istringstream in(ReadFileOrEmpty(metrics_path));
  for (std::string line; std::getline(in, line);) {
    nlohmann::json r = nlohmann::json::parse(line, nullptr, false);
    if (!r.is_discarded() && r.contains("loss/out")) last = r["global_step"].get<int64_t>();
  }
  return last;
}

// Every step record of `run` with step > `after` equals the `reference` run's record of that
// step bit for bit, for each of `keys` (and more than 10 steps were compared).
inline void ExpectSameTrajectory(const std::vector<nlohmann::json>& reference,
                                 const std::vector<nlohmann::json>& run, int64_t after,
                                 const std::vector<std::string>& keys) {
  std::map<int64_t, nlohmann::json> by_step;
  for (const nlohmann::json& r : Steps(reference)) by_step[r["global_step"].get<int64_t>()] = r;
  int compared = 0;
  for (const nlohmann::json& r : Steps(run)) {
    const int64_t step = r["global_step"].get<int64_t>();
    if (step <= after) continue;
    ASSERT_TRUE(by_step.count(step)) << "step " << step;
    const nlohmann::json& want = by_step[step];
    for (const std::string& key : keys) {
      ASSERT_TRUE(r.contains(key) && want.contains(key)) << key << " at step " << step;
      EXPECT_EQ(r[key], want[key]) << key << " at step " << step;
    }
    ++compared;
  }
  EXPECT_GT(compared, 10);
}

}  // namespace sweep::testing

#endif  // SWEEP_TESTS_TESTING_METRICS_RECORDS_H_
