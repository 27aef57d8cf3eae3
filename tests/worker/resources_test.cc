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

}  // namespace
}  // namespace sweep::worker
