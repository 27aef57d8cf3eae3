// The sweep spec: parsing, validation and expansion into trials. LibTorch-free.
//
//   name: depth_lr
//   method: grid                     # grid | random (with run_cap and seed)
//   metric: {name: loss/val, goal: minimize}
//   trainer: builtin                 # or {command: [python, -m, apps.main.train,
//   "config=${config}"]} base: {...}                      # a trainer config
//   (worker/trainer/config.h keys) parameters:                      # dotted keys override base
//     model.n_layers: {values: [2, 4, 6]}
//     optim.lr: {min: 1e-4, max: 1e-1, distribution: log_uniform}   # random only
//   early_terminate: {type: divergence}   # or a list: [{type: divergence}, {type: asha, ...}]
//   detection: {window: 128, z: 6, min_values: 20}   # spikes and divergence (detector.h)
//   resources: {gpus_per_trial: 1}   # or {ranks_per_trial: 2, cpu_slots_per_trial: 1} on CPU
//   max_attempts: 3
//   parallel: 4                      # max concurrent trials (0: no limit)
//
// Contract
//   * ParseSweepSpec() checks every key and type; errors are InvalidArgument with the message
//     `file:line:column: key: what was expected`. With the builtin trainer, `base` and every
//     parameter key are checked against the trainer's schema (unknown key, wrong type, lr <= 0,
//     n_heads not dividing dim, ...), for every trial the spec expands to.
//   * ExpandSweep() is deterministic: the same spec gives the same trials in the same order.
//     Each trial has a `trial_key`, the canonical parameter string ("model.n_layers=4,
//     optim.lr=0.003", keys sorted, numbers in shortest round-trip form so 3e-3 and 0.003 are
//     one key); the orchestrator stores it with a UNIQUE constraint, so re-submitting a spec
//     never duplicates a configuration.
//   * A grid larger than SpecLimits::max_trials is refused before anything is expanded.
//   * Hostile text is refused quickly (see SpecLimits), also by what names and paths it may
//     carry: `name` is letters, digits, '_', '-' and '.' (it names folders), parameter keys
//     are dotted names (they become config paths and SQL columns), duplicate keys anywhere
//     are refused, and a command's ${variables} must be ones the worker knows.
//   * Error messages are one line of at most a few kilobytes: echoed values are clipped.
#ifndef SWEEP_ORCHESTRATOR_SPEC_H_
#define SWEEP_ORCHESTRATOR_SPEC_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "orchestrator/detector.h"

namespace sweep::orchestrator {

enum class SearchMethod { kGrid, kRandom };

// The most ranks (processes) one data-parallel trial may ask for.
inline constexpr int kMaxRanksPerTrial = 1024;
enum class Distribution { kUniform, kLogUniform, kIntUniform, kQUniform };

struct ParameterSpec {
  std::string key;                  // Dotted trainer key, e.g. "optim.lr".
  std::vector<std::string> values;  // Canonical scalar texts (`values:` or `value:`).
  bool is_range = false;            // min/max with a distribution (random search only).
  double min = 0, max = 0, q = 1;
  Distribution distribution = Distribution::kUniform;
  std::string where;  // "file:line:column" of the key, for error messages.
};

struct EarlyTerminateRule {
  std::string type;  // divergence | asha | hyperband
  int64_t min_steps = 0;
  double eta = 3;
  int64_t max_steps = 0;  // 0: the trial's `steps`.
};

struct SweepSpec {
  std::string name;
  std::string description;
  SearchMethod method = SearchMethod::kGrid;
  int64_t run_cap = 0;  // Random search: number of trials.
  uint64_t seed = 0;    // Random search: sampling seed.
  std::string metric_name = "loss/val";
  bool minimize = true;
  std::vector<std::string> command;  // Empty: the builtin trainer (sweep-train).
  std::string base_yaml;             // The `base` section, re-emitted as YAML.
  std::vector<ParameterSpec> parameters;
  std::vector<EarlyTerminateRule> early_terminate;
  DetectionOptions detection;
  int gpus_per_trial = 0;
  int cpu_slots_per_trial = 1;  // Per rank: a CPU trial takes ranks x this many slots.
  // Processes of one data-parallel trial: gpus_per_trial when > 0 (one rank per GPU), else
  // `resources.ranks_per_trial` (default 1). A spec that sets both differently is refused.
  int ranks_per_trial = 1;
  int max_attempts = 3;
  int parallel = 0;
  std::string origin;       // The file the spec came from.
  std::string source_text;  // The spec as written (error positions point into it).

  bool builtin() const { return command.empty(); }
};

// What a spec may ask of the parser, so that hostile text is refused quickly and with a clear
// error rather than exhausting time, memory or the stack. The text is checked before yaml-cpp
// sees it (size, UTF-8 without NUL or control bytes, quotes closed, flow and block nesting,
// alias count), and the parsed document again (one document, nesting with aliases followed,
// size with every alias expanded, no duplicate or non-scalar keys).
struct SpecLimits {
  int64_t max_trials = 10000;   // Refuse grids (and run_caps) above this.
  size_t max_spec_bytes = 1 << 20;
  int max_depth = 64;          // Nesting of maps and lists (an alias cycle exceeds it).
  int max_aliases = 100;       // `*name` references in the text.
  int64_t max_nodes = 200000;  // Nodes of the document with every alias expanded.
  // `base` times the number of trials: each trial stores its own config.
  size_t max_config_bytes = 32 << 20;
  int64_t max_parameters = 256;  // Keys under `parameters`.
};

// One configuration of the sweep.
struct TrialSpec {
  std::string trial_key;
  std::vector<std::pair<std::string, std::string>> params;  // key -> canonical value, sorted
  std::string config_yaml;  // The resolved trainer config (builtin) or base + overrides.
};

absl::StatusOr<SweepSpec> ParseSweepSpec(const std::string& text, const std::string& origin,
                                         const SpecLimits& limits = {});
absl::StatusOr<SweepSpec> LoadSweepSpec(const std::string& path, const SpecLimits& limits = {});

// Materialises the trials (grid: the cartesian product in spec order; random: run_cap distinct
// draws, fewer if the space holds fewer distinct configurations) and validates each.
absl::StatusOr<std::vector<TrialSpec>> ExpandSweep(const SweepSpec& spec,
                                                   const SpecLimits& limits = {});

// Number of grid points (product of the value counts); 0 for random search.
int64_t GridSize(const SweepSpec& spec);

// The early_terminate rules and detection settings as JSON (sweeps.early_terminate and
// sweeps.detection), and back. Keys missing from the JSON keep their defaults.
std::string EarlyTerminateToJson(const std::vector<EarlyTerminateRule>& rules);
absl::StatusOr<std::vector<EarlyTerminateRule>> EarlyTerminateFromJson(const std::string& json);
std::string DetectionToJson(const DetectionOptions& options);
absl::StatusOr<DetectionOptions> DetectionFromJson(const std::string& json);

}  // namespace sweep::orchestrator

#endif  // SWEEP_ORCHESTRATOR_SPEC_H_
