#include "worker/trainer/checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <cstdlib>

namespace sweep::trainer {
namespace {
namespace fs = std::filesystem;

ModelArgs Tiny() {
  ModelArgs m;
  m.dim = 16;
  m.n_layers = 1;
  m.n_heads = 2;
  m.multiple_of = 16;
  return m;
}

std::string TempDir() {
  std::string tmpl = fs::temp_directory_path() / "sweep-ckpt-XXXXXX";
  return mkdtemp(tmpl.data());
}

// A model and optimizer that took one step, so every buffer is non-trivial.
struct Trained {
  Transformer model{Tiny(), 258, 8, torch::kCPU};
  AdamW adam{model.flat_params(), model.flat_grads(), OptimArgs{}};
  explicit Trained(int64_t seed) {
    model.InitWeights(seed);
    model.flat_grads().normal_();
    adam.Step(1e-3, 1e-4);
  }
};

TEST(CheckpointTest, SaveLoadRestoresEverything) {
  const std::string dir = TempDir();
  Trained saved(1);
  TrainProgress progress;
  progress.step = 7;
  progress.total_tokens = 1234;
  progress.data.json = R"({"position": 42})";
  absl::StatusOr<std::string> path = SaveCheckpoint(dir, saved.model, saved.adam, progress, TrainConfig{}, 2);
  ASSERT_TRUE(path.ok()) << path.status().message();
  EXPECT_EQ(*path, dir + "/0000000007");
  EXPECT_TRUE(fs::exists(*path + "/COMPLETE"));

  Trained loaded(2);  // Different weights until restored.
  TrainProgress restored;
  ASSERT_TRUE(LoadCheckpoint(*path, loaded.model, loaded.adam, &restored).ok());
  EXPECT_TRUE(torch::equal(loaded.model.flat_params(), saved.model.flat_params()));
  EXPECT_TRUE(torch::equal(loaded.adam.exp_avg(), saved.adam.exp_avg()));
  EXPECT_TRUE(torch::equal(loaded.adam.exp_avg_sq(), saved.adam.exp_avg_sq()));
  EXPECT_EQ(loaded.adam.step(), 1);
  EXPECT_EQ(restored.step, 7);
  EXPECT_EQ(restored.total_tokens, 1234);
  EXPECT_EQ(restored.data.json, progress.data.json);
}

TEST(CheckpointTest, KeepsTheNewestAndIgnoresIncompleteOnes) {
  const std::string dir = TempDir();
  Trained t(1);
  TrainProgress progress;
  for (int64_t step : {10, 20, 30}) {
    progress.step = step;
    ASSERT_TRUE(SaveCheckpoint(dir, t.model, t.adam, progress, TrainConfig{}, 2).ok());
  }
  EXPECT_FALSE(fs::exists(dir + "/0000000010"));
  EXPECT_TRUE(fs::exists(dir + "/0000000020"));
  fs::create_directories(dir + "/0000000040");  // no COMPLETE marker: a crash mid-save
  fs::create_directories(dir + "/.tmp-0000000050");
  absl::StatusOr<std::string> latest = FindLatestCheckpoint(dir);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(*latest, dir + "/0000000030");
  // A dump_dir holding checkpoints/ works too.
  const std::string dump = TempDir();
  fs::rename(dir, dump + "/checkpoints");
  latest = FindLatestCheckpoint(dump);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(*latest, dump + "/checkpoints/0000000030");
  EXPECT_EQ(FindLatestCheckpoint(TempDir()).status().code(), absl::StatusCode::kNotFound);
}

TEST(CheckpointTest, CorruptionAndOtherModelsAreRefused) {
  const std::string dir = TempDir();
  Trained t(1);
  TrainProgress progress;
  progress.step = 1;
  absl::StatusOr<std::string> path = SaveCheckpoint(dir, t.model, t.adam, progress, TrainConfig{}, 0);
  ASSERT_TRUE(path.ok());
  TrainProgress out;

  ModelArgs other = Tiny();
  other.dim = 32;
  Transformer wider(other, 258, 8, torch::kCPU);
  AdamW wider_adam(wider.flat_params(), wider.flat_grads(), OptimArgs{});
  EXPECT_EQ(LoadCheckpoint(*path, wider, wider_adam, &out).code(),
            absl::StatusCode::kFailedPrecondition);

  {  // Flip one payload byte: the checksum catches it.
    std::fstream f(*path + "/state.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    char c;
    f.read(&c, 1);
    f.seekp(100);
    c = static_cast<char>(c ^ 0x5a);
    f.write(&c, 1);
  }
  absl::Status s = LoadCheckpoint(*path, t.model, t.adam, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("corrupted"), std::string::npos) << s.message();

  std::ofstream(*path + "/state.bin", std::ios::trunc) << "not a checkpoint";
  EXPECT_EQ(LoadCheckpoint(*path, t.model, t.adam, &out).code(), absl::StatusCode::kDataLoss);
  fs::remove(*path + "/COMPLETE");
  EXPECT_EQ(LoadCheckpoint(*path, t.model, t.adam, &out).code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace sweep::trainer
