#include "worker/resources.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "tests/testing/subprocess.h"

namespace sweep::worker {
namespace {

TEST(ExpandCommandTest, SubstitutesVariablesInsideArguments) {
  auto command = ExpandCommand({"python", "-m", "apps.main.train", "config=${config}", "$${HOME}", "$1"},
                               {{"config", "/t/config.yaml"}});
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(*command, (std::vector<std::string>{"python", "-m", "apps.main.train",
                                                "config=/t/config.yaml", "${HOME}", "$1"}));
}

TEST(ExpandCommandTest, UnknownOrUnterminatedVariablesAreNamed) {
  auto unknown = ExpandCommand({"run", "--dir=${trail_dir}"}, {{"trial_dir", "/t"}});
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("${trail_dir}"), std::string::npos);
  EXPECT_NE(unknown.status().message().find("${trial_dir}"), std::string::npos);  // the known ones
  auto open = ExpandCommand({"run", "${config"}, {{"config", "c"}});
  ASSERT_FALSE(open.ok());
  EXPECT_NE(open.status().message().find("unterminated"), std::string::npos);
}

TEST(ParseGpuListTest, ListsNoneAndErrors) {
  EXPECT_EQ(*ParseGpuList("0,1, 3"), (std::vector<int>{0, 1, 3}));
  EXPECT_TRUE(ParseGpuList("none")->empty());
  EXPECT_TRUE(ParseGpuList("")->empty());
  EXPECT_FALSE(ParseGpuList("0,x").ok());
  EXPECT_FALSE(ParseGpuList("-1").ok());
  EXPECT_FALSE(ParseGpuList("1,1").ok());
  EXPECT_EQ(JoinGpus({2, 5}), "2,5");
}

// DetectGpus runs the real nvidia-smi found on PATH. On this CPU machine a stand-in script
// prints what nvidia-smi prints for two GPUs; without any, the answer is no GPU.
TEST(DetectGpusTest, ReadsNvidiaSmiFromPath) {
  const std::string dir = sweep::testing::MakeTempDir("nvidia-smi");
  const std::string saved = getenv("PATH");
  setenv("PATH", dir.c_str(), 1);
  EXPECT_TRUE(DetectGpus().empty());
  {
    std::ofstream script(dir + "/nvidia-smi");
    script << "#!/bin/sh\n[ \"$1\" = --query-gpu=index ] || exit 9\necho 0\necho 1\n";
  }
  std::filesystem::permissions(dir + "/nvidia-smi", std::filesystem::perms::owner_all);
  EXPECT_EQ(DetectGpus(), (std::vector<int>{0, 1}));
  setenv("PATH", saved.c_str(), 1);
}

TEST(PickGpusTest, TakesTheGpusWithTheMostRoomFirstListedOnTies) {
  struct Case {
    std::vector<int> shares;
    int count;
    std::vector<size_t> expected;  // Positions, ascending.
  } cases[] = {
      {{1, 1}, 1, {0}},
      {{0, 1}, 1, {1}},
      {{1, 3, 2}, 1, {1}},
      {{1, 3, 2}, 2, {1, 2}},
      {{2, 2, 2}, 2, {0, 1}},
      {{2, 0, 2}, 2, {0, 2}},
      {{3, 0}, 2, {}},   // Two distinct GPUs needed, one has room.
      {{1, 1}, 3, {}},
      {{}, 1, {}},
      {{1}, 0, {}},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(PickGpus(c.shares, c.count), c.expected)
        << ::testing::PrintToString(c.shares) << " count " << c.count;
  }
}

TEST(ParseGpuQueryTest, ReadsIndexMemoryAndUtilisationAndSkipsWhatItCannotRead) {
  std::vector<GpuSample> gpus = ParseGpuQuery(
      "0, 1234, 56\n1, 80000, 100\n2, [N/A], [N/A]\n3, 5\ngarbage\n\n4, 7.5, 0\n");
  ASSERT_EQ(gpus.size(), 3u);
  EXPECT_EQ(gpus[0].index, 0);
  EXPECT_EQ(gpus[0].memory_used_mib, 1234);
  EXPECT_EQ(gpus[0].utilization_pct, 56);
  EXPECT_EQ(gpus[1].memory_used_mib, 80000);
  EXPECT_EQ(gpus[2].index, 4);
  EXPECT_EQ(gpus[2].memory_used_mib, 7.5);
  EXPECT_TRUE(ParseGpuQuery("").empty());
}

TEST(ParseGpuProcessesTest, ReadsPidAndMemoryAndSkipsWhatItCannotRead) {
  std::vector<GpuProcess> processes = ParseGpuProcesses(
      "4242, 1234\n[N/A], [N/A]\n17, [N/A]\n0, 5\n-3, 5\n99, 1, 2\n\n7, 80000\n");
  ASSERT_EQ(processes.size(), 2u);
  EXPECT_EQ(processes[0].pid, 4242);
  EXPECT_EQ(processes[0].memory_used_mib, 1234);
  EXPECT_EQ(processes[1].pid, 7);
  EXPECT_EQ(processes[1].memory_used_mib, 80000);
  EXPECT_TRUE(ParseGpuProcesses("").empty());
}

// QueryGpus runs nvidia-smi from PATH with the telemetry query; a stand-in answers it here.
TEST(QueryGpusTest, RunsTheTelemetryQueryFromPath) {
  const std::string dir = sweep::testing::MakeTempDir("nvidia-smi-query");
  const std::string saved = getenv("PATH");
  setenv("PATH", dir.c_str(), 1);
  EXPECT_TRUE(QueryGpus().empty());  // No nvidia-smi: no sample, no error.
  {
    std::ofstream script(dir + "/nvidia-smi");
    script << "#!/bin/sh\n"
              "[ \"$1\" = --query-gpu=index,memory.used,utilization.gpu ] || exit 9\n"
              "[ \"$2\" = --format=csv,noheader,nounits ] || exit 9\n"
              "echo '0, 100, 10'\necho '1, 200, 30'\n";
  }
  std::filesystem::permissions(dir + "/nvidia-smi", std::filesystem::perms::owner_all);
  std::vector<GpuSample> gpus = QueryGpus();
  ASSERT_EQ(gpus.size(), 2u);
  EXPECT_EQ(gpus[1].index, 1);
  EXPECT_EQ(gpus[1].memory_used_mib, 200);
  EXPECT_EQ(gpus[1].utilization_pct, 30);
  {
    std::ofstream script(dir + "/nvidia-smi");
    script << "#!/bin/sh\necho 'NVIDIA-SMI has failed'\nexit 6\n";
  }
  EXPECT_TRUE(QueryGpus().empty());
  setenv("PATH", saved.c_str(), 1);
}

}  // namespace
}  // namespace sweep::worker
