#include "worker/trainer/config.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <string>

#include "tests/testing/status.h"

namespace sweep::trainer {
namespace {

constexpr char kLinguaStyle[] = R"(# apps/main/configs/debug.yaml, shortened
name: debug
dump_dir: /tmp/debug
steps: 1000
seed: 777
probe_freq: null
optim:
    lr: 3e-4
    weight_decay: 0.1
    warmup: 2000
    lr_min_ratio: 0.000001
    clip: 10.0
model:
    dim: 1024
    n_layers: 8
    n_heads: 8
    rope_theta: 10000.0
    init_std_factor: global_depth
data:
    root_dir: data/shuffled
    sources:
        dclm_baseline_1.0: 100.0
    batch_size: 32
    prefetch_size: 64
    seq_len: 1024
    n_views_ignored_here: 2
    tokenizer:
        name: bytes
)";

TEST(ConfigTest, ReadsLinguaKeysAndNamesTheUnknownOne) {
  absl::StatusOr<TrainConfig> config = ParseTrainConfig(kLinguaStyle, "debug.yaml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().message().rfind(
                "debug.yaml:26:5: data.n_views_ignored_here: unknown key (known here: add_bos, "
                "add_eos, batch_size",
                0),
            0u)
      << config.status().message();
  EXPECT_NE(config.status().message().find("known here:"), std::string::npos);
}

TEST(ConfigTest, ParsesLinguaConfig) {
  std::string text = kLinguaStyle;
  text.erase(text.find("    n_views_ignored_here: 2\n"), std::string("    n_views_ignored_here: 2\n").size());
  absl::StatusOr<TrainConfig> config = ParseTrainConfig(text, "debug.yaml");
  ASSERT_OK(config);
  EXPECT_EQ(config->name, "debug");
  EXPECT_EQ(config->seed, 777);
  EXPECT_EQ(config->probe_freq, 0);  // null keeps the default
  EXPECT_DOUBLE_EQ(config->optim.lr, 3e-4);
  EXPECT_DOUBLE_EQ(config->optim.lr_min_ratio, 1e-6);
  EXPECT_EQ(config->model.init_std_factor, "global_depth");
  ASSERT_EQ(config->data.sources.size(), 1u);
  EXPECT_EQ(config->data.sources[0].first, "dclm_baseline_1.0");
  EXPECT_DOUBLE_EQ(config->data.sources[0].second, 100.0);
  EXPECT_EQ(config->data.tokenizer, "bytes");
  EXPECT_EQ(config->ModelSeed(), 777);  // model.seed unset: the top-level seed
  EXPECT_EQ(config->DataSeed(), 777);
}

TEST(ConfigTest, JsonIsAccepted) {
  absl::StatusOr<TrainConfig> config = ParseTrainConfig(
      R"({"steps": 5, "model": {"dim": 64, "n_heads": 4, "qk_norm": true},
          "data": {"sources": {"kjv": 1.0}}, "optim": {"z_loss": 1e-4}})",
      "c.json");
  ASSERT_OK(config);
  EXPECT_EQ(config->steps, 5);
  EXPECT_TRUE(config->model.qk_norm);
  EXPECT_DOUBLE_EQ(config->optim.z_loss, 1e-4);
}

TEST(ConfigTest, ErrorsNameFileLineColumnAndKey) {
  struct Case {
    const char* text;
    const char* expected;
  } cases[] = {
      {"steps: 1.5\n", "c.yaml:1:8: steps: expected an integer, got '1.5'"},
      {"model: {dim: big}\n", "c.yaml:1:14: model.dim: expected an integer, got 'big'"},
      {"model: 3\n", "c.yaml:1:1: model: expected a map, got '3'"},
      {"model:\n  qk_norm: yes-please\n", "c.yaml:2:12: model.qk_norm: expected a boolean"},
      {"optim:\n  lr: [1, 2]\n", "c.yaml:2:7: optim.lr: expected a number, got a list"},
      {"data: {sources: [kjv]}\n", "c.yaml:1:17: data.sources: expected a map of source name"},
      {"data: {sources: {kjv: heavy}}\n", "data.sources.kjv: expected a number (weight)"},
      {"colour: blue\n", "c.yaml:1:1: colour: unknown key"},
      {"- 1\n- 2\n", "c.yaml:1:1: expected a map of keys at the top level"},
      {"steps: 10\n  bad indent: 1\n", "c.yaml:2:13: invalid YAML"},
      // Relations are checked after parsing; the message points at the key's line.
      {"data: {sources: {kjv: 1}}\nmodel:\n  dim: 100\n  n_heads: 3\n",
       "c.yaml:4:3: model.n_heads: must divide model.dim (100), got 3"},
      {"data: {sources: {kjv: 1}}\noptim:\n  lr: 0\n", "c.yaml:3:3: optim.lr: must be a finite number > 0"},
      {"data: {sources: {kjv: 1}}\noptim: {scheduler: step}\n", "optim.scheduler: expected one of"},
      {"data: {sources: {kjv: 1}}\nmodel: {n_heads: 8, n_kv_heads: 3}\n",
       "model.n_kv_heads: must divide model.n_heads (8), got 3"},
      {"steps: 10\n", "data.sources: must name at least one source"},
      {"data: {sources: {kjv: 0}}\n", "data.sources: weight of 'kjv' must be > 0"},
      {"data: {sources: {kjv: 1}, tokenizer: tiktoken}\n", "data.tokenizer: only 'bytes'"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<TrainConfig> config = ParseTrainConfig(c.text, "c.yaml");
    ASSERT_FALSE(config.ok()) << c.text;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(config.status().message().find(c.expected), std::string::npos)
        << "input:\n" << c.text << "want: " << c.expected << "\ngot:  " << config.status().message();
  }
}

TEST(ConfigTest, OverridesWinAndAreChecked) {
  const std::string base = "data: {sources: {kjv: 1.0}}\noptim: {lr: 1e-3}\n";
  absl::StatusOr<TrainConfig> config =
      ParseTrainConfig(base, "c.yaml", {"optim.lr=3e-3", "model.n_layers=10", "model.qk_norm=true"});
  ASSERT_OK(config);
  EXPECT_DOUBLE_EQ(config->optim.lr, 3e-3);
  EXPECT_EQ(config->model.n_layers, 10);
  EXPECT_TRUE(config->model.qk_norm);

  struct Case {
    const char* override_item;
    const char* expected;
  } cases[] = {
      {"optim.lr", "expected key=value"},
      {"optim.lrr=1", "optim.lrr: unknown key"},
      {"model.dim=wide", "model.dim: expected an integer, got 'wide'"},
      {"optim.lr=-1", "override 'optim.lr=-1': optim.lr: must be"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<TrainConfig> bad = ParseTrainConfig(base, "c.yaml", {c.override_item});
    ASSERT_FALSE(bad.ok()) << c.override_item;
    EXPECT_NE(bad.status().message().find(c.expected), std::string::npos)
        << bad.status().message();
  }
}

TEST(ConfigTest, YamlRoundTripKeepsEveryField) {
  absl::StatusOr<TrainConfig> config = ParseTrainConfig(
      "data: {sources: {kjv: 0.75, notes: 0.25}, seq_len: 77}\n"
      "optim: {lr: 0.0123456789012345, scheduler: wsd}\n"
      "model: {init_base_std: 0.02, weight_tying: true}\nname: round\n",
      "c.yaml");
  ASSERT_OK(config);
  const std::string yaml = TrainConfigToYaml(*config);
  absl::StatusOr<TrainConfig> again = ParseTrainConfig(yaml, "round.yaml");
  ASSERT_OK(again);
  EXPECT_EQ(TrainConfigToYaml(*again), yaml);
  EXPECT_EQ(again->data.sources, config->data.sources);
  EXPECT_EQ(again->optim.lr, config->optim.lr);
  EXPECT_EQ(again->data.seq_len, 77);
  EXPECT_TRUE(again->model.weight_tying);
}

TEST(ConfigTest, EveryFieldHasADottedKeyAndAType) {
  TrainConfig config;
  std::map<std::string, std::string> types;
  ForEachConfigField(config, [&](const char* key, FieldRef ref) {
    EXPECT_TRUE(types.emplace(key, FieldTypeName(ref)).second) << "duplicate key " << key;
  });
  EXPECT_EQ(types["optim.lr"], "a number");
  EXPECT_EQ(types["model.n_layers"], "an integer");
  EXPECT_EQ(types["model.qk_norm"], "a boolean (true or false)");
  EXPECT_EQ(types["data.sources"], "a map of source name to weight");
  EXPECT_GE(types.size(), 50u);
}

TEST(ConfigTest, DefaultDataRootFollowsTheEnvironment) {
  setenv("SWEEP_DATA_DIR", "/srv/corpora", 1);
  EXPECT_EQ(DefaultDataRoot(), "/srv/corpora");
  unsetenv("SWEEP_DATA_DIR");
  setenv("XDG_DATA_HOME", "/xdg", 1);
  EXPECT_EQ(DefaultDataRoot(), "/xdg/sweep/data");
  unsetenv("XDG_DATA_HOME");
  const std::string home = std::getenv("HOME") != nullptr ? std::getenv("HOME") : "";
  setenv("HOME", "/home/someone", 1);
  EXPECT_EQ(DefaultDataRoot(), "/home/someone/.local/share/sweep/data");
  setenv("HOME", home.c_str(), 1);
}

}  // namespace
}  // namespace sweep::trainer
