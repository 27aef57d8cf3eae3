#include "orchestrator/spec.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "tests/testing/status.h"

namespace sweep::orchestrator {
namespace {

constexpr char kBase[] = R"(name: t
method: grid
base:
  steps: 10
  model: {dim: 64, n_layers: 2, n_heads: 4}
  data: {sources: {kjv: 1.0}, batch_size: 4, seq_len: 32}
)";

std::string Spec(const std::string& rest) { return std::string(kBase) + rest; }

TEST(SpecTest, TheBundledDepthLrSpecExpandsToItsGrid) {
  absl::StatusOr<SweepSpec> spec = LoadSweepSpec(std::string(SWEEP_SOURCE_DIR) + "/sweeps/depth_lr.yaml");
  ASSERT_OK(spec);
  EXPECT_EQ(spec->name, "depth_lr");
  // 4 seeds x 3 depths x 3 learning rates, sized for 2 cores (see the spec's comment).
  EXPECT_EQ(GridSize(*spec), 36);
  absl::StatusOr<std::vector<TrialSpec>> trials = ExpandSweep(*spec);
  ASSERT_OK(trials);
  ASSERT_EQ(trials->size(), 36u);
  // Seed outermost, deepest first within a seed: the longest trials start first.
  EXPECT_EQ((*trials)[0].trial_key, "model.n_layers=10,optim.lr=0.01,seed=0");
  EXPECT_EQ((*trials)[35].trial_key, "model.n_layers=2,optim.lr=0.1,seed=3");
  std::set<std::string> keys;
  for (const TrialSpec& t : *trials) keys.insert(t.trial_key);
  EXPECT_EQ(keys.size(), 36u);
  EXPECT_NE((*trials)[0].config_yaml.find("n_layers: 10"), std::string::npos);
  EXPECT_NE((*trials)[0].config_yaml.find("init_std_factor: disabled"), std::string::npos);
  ASSERT_EQ(spec->early_terminate.size(), 1u);
  EXPECT_EQ(spec->early_terminate[0].type, "divergence");
}

// Every example in sweeps/ must stay submittable: it parses, validates against the trainer's
// schema and expands to distinct trials (the GPU-cluster one included, although nothing runs
// it here).
TEST(SpecTest, EveryBundledSweepParsesAndExpands) {
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(SWEEP_SOURCE_DIR) + "/sweeps")) {
    if (entry.path().extension() == ".yaml") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  ASSERT_GE(files.size(), 7u);  // depth_lr, depth_fix, data_lr, lr_wd, batch_lr, width_lr, lingua_1b_depth
  for (const std::filesystem::path& file : files) {
    SCOPED_TRACE(file.string());
    absl::StatusOr<SweepSpec> spec = LoadSweepSpec(file.string());
    ASSERT_OK(spec);
    EXPECT_EQ(spec->name, file.stem().string());
    absl::StatusOr<std::vector<TrialSpec>> trials = ExpandSweep(*spec);
    ASSERT_OK(trials);
    ASSERT_FALSE(trials->empty());
    EXPECT_EQ(static_cast<int64_t>(trials->size()), GridSize(*spec));
    std::set<std::string> keys;
    for (const TrialSpec& t : *trials) keys.insert(t.trial_key);
    EXPECT_EQ(keys.size(), trials->size());
  }
}

TEST(SpecTest, DetectionSettingsDefaultToOlmoCoresAndCanBeChanged) {
  absl::StatusOr<SweepSpec> plain =
      ParseSweepSpec(Spec("parameters: {optim.lr: {values: [1e-3]}}\n"), "a.yaml");
  ASSERT_OK(plain);
  EXPECT_EQ(plain->detection.window, 128);
  EXPECT_EQ(plain->detection.z, 6);
  EXPECT_EQ(plain->detection.min_values, 20);
  EXPECT_EQ(plain->detection.initial_steps, 5);
  EXPECT_EQ(plain->detection.loss_margin, 0.05);
  EXPECT_EQ(plain->detection.grad_norm_factor, 10);
  EXPECT_EQ(plain->detection.consecutive, 5);
  absl::StatusOr<SweepSpec> set = ParseSweepSpec(
      Spec("parameters: {optim.lr: {values: [1e-3]}}\n"
           "detection: {window: 1000, z: 7, min_values: 100, initial_steps: 10, loss_margin: 0,\n"
           "            grad_norm_factor: 5, consecutive: 3}\n"
           "early_terminate: [{type: divergence}, {type: hyperband, min_steps: 10, eta: 3, "
           "max_steps: 270}]\n"),
      "b.yaml");
  ASSERT_OK(set);
  EXPECT_EQ(set->detection.window, 1000);  // OLMo 2's spike score: 7 sigma over 1000 steps.
  EXPECT_EQ(set->detection.z, 7);
  EXPECT_EQ(set->detection.min_values, 100);
  EXPECT_EQ(set->detection.initial_steps, 10);
  EXPECT_EQ(set->detection.loss_margin, 0);
  EXPECT_EQ(set->detection.grad_norm_factor, 5);
  EXPECT_EQ(set->detection.consecutive, 3);
  ASSERT_EQ(set->early_terminate.size(), 2u);
  EXPECT_EQ(set->early_terminate[1].max_steps, 270);
}

TEST(SpecTest, EqualNumbersGiveEqualTrialKeys) {
  absl::StatusOr<SweepSpec> a = ParseSweepSpec(Spec("parameters:\n  optim.lr: {values: [3e-3]}\n"), "a.yaml");
  absl::StatusOr<SweepSpec> b = ParseSweepSpec(Spec("parameters:\n  optim.lr: {values: [0.0030]}\n"), "b.yaml");
  ASSERT_OK(a);
  ASSERT_OK(b);
  EXPECT_EQ(ExpandSweep(*a)->at(0).trial_key, "optim.lr=0.003");
  EXPECT_EQ(ExpandSweep(*a)->at(0).trial_key, ExpandSweep(*b)->at(0).trial_key);
}

TEST(SpecTest, BadSpecsAreRefusedWithFileLineColumnAndKey) {
  struct Case {
    std::string text;
    std::string expected;
  } cases[] = {
      {"name: t\nmethod: grid\n", "s.yaml:1:1: parameters: missing"},
      {"name: t\nmethod: bayes\nparameters: {optim.lr: {values: [1]}}\n",
       "s.yaml:2:9: method: expected grid or random, got 'bayes'"},
      {Spec("parameters:\n  optim.lrr: {values: [1e-3]}\n"),
       "s.yaml:8:3: parameters.optim.lrr: not a trainer key"},
      {Spec("parameters:\n  optim.lr: {values: []}\n"),
       "s.yaml:8:22: parameters.optim.lr.values: empty list"},
      {Spec("parameters:\n  optim.lr: {values: [1e-3, -1]}\n"),
       "s.yaml:8:3: parameters.optim.lr=-1: optim.lr: must be a finite number > 0"},
      {Spec("parameters:\n  optim.lr: {values: [fast]}\n"),
       "s.yaml:8:23: parameters.optim.lr: expected a number, got 'fast'"},
      {Spec("parameters:\n  model.n_layers: {values: [2.5]}\n"),
       "parameters.model.n_layers: expected an integer, got '2.5'"},
      {Spec("parameters:\n  model.n_heads: {values: [4, 3]}\n"),
       "s.yaml:8:3: parameters.model.n_heads=3: model.n_heads: must divide model.dim (64), got 3"},
      {Spec("parameters:\n  optim.lr: {min: 1e-4, max: 1e-1}\n"),
       "parameters.optim.lr: a min/max range cannot be a grid axis"},
      {Spec("parameters:\n  optim.lr: {values: [1e-3, 1e-3]}\n"), "value 0.001 is listed twice"},
      {Spec("parameters:\n  optim.lr: {values: [1e-3], step: 2}\n"),
       "s.yaml:8:30: parameters.optim.lr.step: unknown key"},
      {Spec("parameters:\n  data.sources: {values: [kjv]}\n"), "maps cannot be swept"},
      {Spec("colour: blue\nparameters: {optim.lr: {values: [1e-3]}}\n"),
       "s.yaml:7:1: colour: unknown key"},
      {"name: t\nmethod: grid\nbase:\n  model: {dimm: 3}\nparameters: {optim.lr: {values: [1e-3]}}\n",
       "s.yaml:4:11: model.dimm: unknown key"},
      {Spec("parameters: {optim.lr: {values: [1e-3]}}\nearly_terminate: {type: median}\n"),
       "early_terminate.type: expected divergence, asha or hyperband; got 'median'"},
      {Spec("parameters: {optim.lr: {values: [1e-3]}}\nearly_terminate: {type: asha}\n"),
       "early_terminate.min_steps: required for asha"},
      {Spec("parameters: {optim.lr: {values: [1e-3]}}\n"
            "early_terminate: {type: asha, min_steps: 50, max_steps: 50}\n"),
       "s.yaml:8:57: early_terminate.max_steps: must be > min_steps (50), got 50"},
      {Spec("parameters: {optim.lr: {values: [1e-3]}}\ndetection: {window: 1}\n"),
       "s.yaml:8:21: detection.window: must be >= 2, got 1"},
      {Spec("parameters: {optim.lr: {values: [1e-3]}}\ndetection: {z: 0}\n"),
       "s.yaml:8:16: detection.z: must be > 0, got 0"},
      {Spec("parameters: {optim.lr: {values: [1e-3]}}\ndetection: {grad_norm_factor: nan}\n"),
       "detection.grad_norm_factor: expected a finite number"},
      {Spec("parameters: {optim.lr: {values: [1e-3]}}\ndetection: {window: 64, min_values: 65}\n"),
       "detection.min_values: must be <= window (64), got 65"},
      {Spec("parameters: {optim.lr: {values: [1e-3]}}\ndetection: {sigma: 3}\n"),
       "s.yaml:8:13: detection.sigma: unknown key"},
      {Spec("parameters: {optim.lr: {values: [1e-3]}}\nmax_attempts: 0\n"),
       "s.yaml:8:15: max_attempts: must be >= 1, got 0"},
      {Spec("parameters: {optim.lr: {values: [1e-3]}}\nresources: {gpus: 1}\n"),
       "resources.gpus: unknown key"},
      {Spec("parameters: {optim.lr: {values: [1e-3]}}\nresources: {ranks_per_trial: 0}\n"),
       "s.yaml:8:30: resources.ranks_per_trial: must be >= 1, got 0"},
      {Spec("parameters: {optim.lr: {values: [1e-3]}}\nresources: {ranks_per_trial: 1025}\n"),
       "resources.ranks_per_trial: must be <= 1024, got 1025"},
      {Spec("parameters: {optim.lr: {values: [1e-3]}}\nresources: {ranks_per_trial: two}\n"),
       "resources.ranks_per_trial: expected an integer, got 'two'"},
      {Spec("parameters: {optim.lr: {values: [1e-3]}}\n"
            "resources: {gpus_per_trial: 2, ranks_per_trial: 4}\n"),
       "s.yaml:8:49: resources.ranks_per_trial: a GPU trial runs one rank per GPU: with "
       "gpus_per_trial 2 it is 2 (or leave it out), got 4"},
      {Spec("parameters: {optim.lr: {values: [1e-3]}}\n"
            "resources: {ranks_per_trial: 1024, cpu_slots_per_trial: 2147483647}\n"),
       "s.yaml:8:12: resources: ranks_per_trial x cpu_slots_per_trial = 2199023254528 CPU slots "
       "per trial; the limit is 2147483647"},
      {Spec("parameters: {optim.lr: {values: [1e-3]}}\ntrainer: {command: []}\n"),
       "trainer.command: expected a non-empty list"},
      {"name: t\nmethod: random\nparameters: {optim.lr: {values: [1]}}\n", "run_cap: missing"},
      {"name: [t\n", "s.yaml:2:1: invalid YAML"},
      {"just text\n", "s.yaml:1:1: expected a sweep spec"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<SweepSpec> spec = ParseSweepSpec(c.text, "s.yaml");
    ASSERT_FALSE(spec.ok()) << c.text;
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(spec.status().message().find(c.expected), std::string::npos)
        << "spec:\n" << c.text << "want: " << c.expected << "\ngot:  " << spec.status().message();
  }
}

TEST(SpecTest, RanksPerTrialDefaultsToOneAndFollowsTheGpus) {
  struct Case {
    std::string resources;
    int gpus, cpu_slots, ranks;
  } cases[] = {
      {"", 0, 1, 1},
      {"resources: {gpus_per_trial: 0}\n", 0, 1, 1},
      {"resources: {ranks_per_trial: 2}\n", 0, 1, 2},
      {"resources: {ranks_per_trial: 4, cpu_slots_per_trial: 2}\n", 0, 2, 4},
      {"resources: {gpus_per_trial: 1}\n", 1, 1, 1},
      {"resources: {gpus_per_trial: 2}\n", 2, 1, 2},  // One rank per GPU.
      {"resources: {gpus_per_trial: 2, ranks_per_trial: 2}\n", 2, 1, 2},
  };
  for (const Case& c : cases) {
    absl::StatusOr<SweepSpec> spec =
        ParseSweepSpec(Spec("parameters: {optim.lr: {values: [1e-3]}}\n" + c.resources), "s.yaml");
    ASSERT_OK(spec);
    EXPECT_EQ(spec->gpus_per_trial, c.gpus) << c.resources;
    EXPECT_EQ(spec->cpu_slots_per_trial, c.cpu_slots) << c.resources;
    EXPECT_EQ(spec->ranks_per_trial, c.ranks) << c.resources;
  }
}

TEST(SpecTest, HugeGridsAreRefusedBeforeExpansion) {
  std::string text = Spec("parameters:\n");
  for (const char* key : {"optim.lr", "optim.weight_decay", "optim.beta1", "optim.beta2",
                          "optim.epsilon", "optim.clip"}) {
    text += std::string("  ") + key + ": {values: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]}\n";
  }
  absl::StatusOr<SweepSpec> spec = ParseSweepSpec(text, "big.yaml");
  ASSERT_FALSE(spec.ok());
  EXPECT_NE(spec.status().message().find("the grid has 1000000 points; the limit is 10000"),
            std::string::npos)
      << spec.status().message();
}

TEST(SpecTest, RandomSearchIsSeededDistinctAndWithinRanges) {
  const std::string text = R"(name: r
method: random
run_cap: 40
seed: 7
base:
  model: {dim: 64, n_heads: 4}
  data: {sources: {kjv: 1.0}}
parameters:
  optim.lr: {min: 1.0e-4, max: 1.0e-1, distribution: log_uniform}
  optim.weight_decay: {min: 0.0, max: 0.2, distribution: q_uniform, q: 0.05}
  model.n_layers: {min: 2, max: 6}
  optim.scheduler: {values: [cosine, wsd]}
)";
  absl::StatusOr<SweepSpec> spec = ParseSweepSpec(text, "r.yaml");
  ASSERT_OK(spec);
  absl::StatusOr<std::vector<TrialSpec>> a = ExpandSweep(*spec);
  absl::StatusOr<std::vector<TrialSpec>> b = ExpandSweep(*spec);
  ASSERT_OK(a);
  ASSERT_EQ(a->size(), 40u);
  std::set<std::string> keys;
  int below_1e3 = 0;
  for (size_t i = 0; i < a->size(); ++i) {
    const TrialSpec& t = (*a)[i];
    EXPECT_EQ(t.trial_key, (*b)[i].trial_key);  // Same seed, same trials.
    keys.insert(t.trial_key);
    for (const auto& [key, value] : t.params) {
      if (key == "optim.lr") {
        const double lr = std::stod(value);
        EXPECT_GE(lr, 1e-4);
        EXPECT_LE(lr, 1e-1);
        below_1e3 += lr < 1e-3;
      } else if (key == "optim.weight_decay") {
        const double wd = std::stod(value);
        EXPECT_NEAR(wd / 0.05, std::round(wd / 0.05), 1e-9) << value;
      } else if (key == "model.n_layers") {
        const int n = std::stoi(value);
        EXPECT_GE(n, 2);
        EXPECT_LE(n, 6);
      } else {
        EXPECT_TRUE(value == "cosine" || value == "wsd") << value;
      }
    }
  }
  EXPECT_EQ(keys.size(), 40u);
  // Log-uniform: about a third of the draws fall in the lowest of the three decades.
  EXPECT_GT(below_1e3, 5);
  EXPECT_LT(below_1e3, 25);

  SweepSpec other = *spec;
  other.seed = 8;
  EXPECT_NE(ExpandSweep(other)->at(0).trial_key, a->at(0).trial_key);
}

TEST(SpecTest, RandomSearchOverASmallSpaceStopsAtItsSize) {
  absl::StatusOr<SweepSpec> spec = ParseSweepSpec(
      "name: r\nmethod: random\nrun_cap: 50\nbase: {data: {sources: {kjv: 1}}}\n"
      "parameters: {optim.lr: {values: [1e-3, 3e-3]}, model.n_layers: {values: [2, 4, 6]}}\n",
      "r.yaml");
  ASSERT_OK(spec);
  EXPECT_EQ(ExpandSweep(*spec)->size(), 6u);
}

TEST(SpecTest, CommandTrainersKeepLinguaLayoutAndFreeKeys) {
  absl::StatusOr<SweepSpec> spec = ParseSweepSpec(R"(name: lingua
method: grid
trainer: {command: [python, -m, apps.main.train, "config=${config}"]}
base:
  distributed: {fsdp_type: full_shard}
  optim: {lr: 3.0e-3}
parameters:
  optim.lr: {values: [1e-3, 3e-3]}
  distributed.compile: {values: [true]}
)",
                                                  "l.yaml");
  ASSERT_OK(spec);
  EXPECT_FALSE(spec->builtin());
  ASSERT_EQ(spec->command.size(), 4u);
  absl::StatusOr<std::vector<TrialSpec>> trials = ExpandSweep(*spec);
  ASSERT_OK(trials);
  ASSERT_EQ(trials->size(), 2u);
  EXPECT_EQ((*trials)[0].trial_key, "distributed.compile=true,optim.lr=0.001");
  EXPECT_NE((*trials)[0].config_yaml.find("fsdp_type: full_shard"), std::string::npos);
  EXPECT_NE((*trials)[0].config_yaml.find("lr: 0.001"), std::string::npos)
      << (*trials)[0].config_yaml;
}

}  // namespace
}  // namespace sweep::orchestrator
