// The trainer's configuration: Lingua's TrainArgs, with the same key names.
//
// Contract
//   * ParseTrainConfig() reads YAML or JSON (JSON is parsed as YAML flow style) and applies
//     optional `key=value` overrides (dotted keys, as Lingua's OmegaConf command line does).
//   * Every key is checked: an unknown key or a value of the wrong type is an
//     InvalidArgument status whose message is `file:line:column: key: what was expected`.
//   * ValidateTrainConfig() checks relations between keys (n_heads divides dim, lr > 0, ...).
//   * ForEachConfigField() lists every key with its type; the orchestrator uses it to check
//     a sweep's dotted parameter keys without linking the trainer (this header is
//     LibTorch-free on purpose).
//
// Thread-safety: plain values; no shared state.
#ifndef SWEEP_WORKER_TRAINER_CONFIG_H_
#define SWEEP_WORKER_TRAINER_CONFIG_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace YAML {
class Node;
}

namespace sweep::trainer {

struct ModelArgs {
  int dim = 512;
  int n_layers = 8;
  int n_heads = 8;
  int n_kv_heads = 0;          // 0: same as n_heads (multi-head attention).
  int head_dim = 0;            // 0: dim / n_heads.
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  int multiple_of = 256;
  double ffn_dim_multiplier = 0.0;  // 0: unset.
  double init_base_std = 0.0;       // 0: unset (dim^-0.5 and hidden^-0.5).
  std::string init_std_factor = "disabled";  // disabled|global_depth|current_depth|dim_ratio
  bool weight_tying = false;
  int vocab_size = 0;  // 0: the tokenizer's size.
  int64_t seed = -1;   // Initialisation seed; -1: the top-level `seed`.
  bool qk_norm = false;  // RMSNorm on q and k per head (Wortsman et al. 2023).
};

struct OptimArgs {
  double lr = 3e-4;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double epsilon = 1e-8;
  double clip = 1.0;  // <= 0: no clipping (the norm is still logged).
  std::string scheduler = "cosine";  // constant|linear|inv_sqrt|cosine|wsd
  int warmup = 2000;
  double lr_min_ratio = 0.1;
  double cycle_length = 1.0;
  double cosine_theta = 1.0;
  double decay_fraction = 0.1;
  double exp_factor = 0.5;
  double z_loss = 0.0;           // Coefficient of the z-loss term coef * log(Z)^2.
  bool independent_wd = false;   // p <- p * (1 - f(step) * wd) instead of (1 - lr * wd).
};

struct DataArgs {
  std::string root_dir;  // Empty: DefaultDataRoot().
  // Source name (a folder under root_dir, an absolute folder, or a .txt file) and weight,
  // in the order written in the config.
  std::vector<std::pair<std::string, double>> sources;
  int batch_size = 2;
  int seq_len = 2048;
  std::string tokenizer = "bytes";  // Only Lingua's byte tokenizer for now.
  int64_t seed = -1;                // Shuffle seed; -1: the top-level `seed`.
  bool add_bos = true;
  bool add_eos = true;
  int prefetch_size = 64;  // Batches gathered and shuffled together.
};

struct CheckpointArgs {
  int every = 0;  // 0: only at the end (and on SIGTERM/SIGUSR2).
  int keep = 2;   // Newest complete checkpoints kept; 0 keeps all.
};

struct EvalArgs {
  int every = 0;     // 0: only at the end of training.
  int steps = 16;    // Validation batches per evaluation.
};

// A run whose loss is far above the loss of a uniform guess has diverged even while it
// stays finite (RMSNorm keeps a blown-up model finite for a long time).
struct DivergenceArgs {
  double loss_factor = 2.0;  // Diverged when loss/out > loss_factor · ln(vocab_size); 0: off.
};

struct LoggingArgs {
  int freq = 1;  // Log every N optimizer steps.
};

// Data-parallel trials (Lingua's `distributed` section; the ranks themselves come from the
// environment, torchrun's WORLD_SIZE/RANK/LOCAL_RANK: worker/trainer/distributed.h). Unused
// by a single-process run.
struct DistributedArgs {
  // Seconds a rank waits for its peers (rendezvous, every collective) before it fails: a rank
  // whose peer died exits with an error within this time instead of hanging.
  double timeout = 60.0;
  // Decay of the exponential moving averages behind optim/noise_scale (noise_scale.h).
  double gns_ema = 0.95;
};

struct TrainConfig {
  std::string name = "sweep";
  std::string dump_dir = "out";
  int64_t seed = 42;
  int64_t steps = 1000;
  int grad_acc_steps = 1;
  int probe_freq = 0;  // 0: no probes.
  std::string device = "cpu";  // cpu|cuda
  int threads = 0;             // Intra-op threads; 0: all cores.
  ModelArgs model;
  OptimArgs optim;
  DataArgs data;
  CheckpointArgs checkpoint;
  EvalArgs eval;
  LoggingArgs logging;
  DivergenceArgs divergence;
  DistributedArgs distributed;

  int64_t ModelSeed() const { return model.seed >= 0 ? model.seed : seed; }
  int64_t DataSeed() const { return data.seed >= 0 ? data.seed : seed; }
};

// The default corpus root: $SWEEP_DATA_DIR, else $XDG_DATA_HOME/sweep/data, else
// $HOME/.local/share/sweep/data. tools/setup.sh prepares the bundled corpus there.
std::string DefaultDataRoot();

// A reference to one field of a TrainConfig, for generic parsing, printing and checking.
using FieldRef = std::variant<int*, int64_t*, double*, bool*, std::string*,
                              std::vector<std::pair<std::string, double>>*>;

// Calls fn(dotted_key, field) for every key, in the order they are documented.
void ForEachConfigField(TrainConfig& config, const std::function<void(const char*, FieldRef)>& fn);

// Human-readable type of a field ("integer", "number", "boolean", "string", "map").
const char* FieldTypeName(const FieldRef& field);

// One override of a key: `value` is YAML scalar text ("3e-3", "true", "cosine"); `where`
// starts its error messages (e.g. "override 'optim.lr=x'" or "spec.yaml:12:11").
struct ConfigOverride {
  std::string key;
  std::string value;
  std::string where;
};

// Parses `text` (YAML or JSON). `origin` names the file in error messages. Each override is
// "key=value".
absl::StatusOr<TrainConfig> ParseTrainConfig(const std::string& text, const std::string& origin,
                                             const std::vector<std::string>& overrides = {});

// Parses an already loaded YAML map (e.g. the `base:` of a sweep spec): error positions are
// those of the file the node was read from. A null node gives the defaults.
absl::StatusOr<TrainConfig> ParseTrainConfigNode(const YAML::Node& root, const std::string& origin,
                                                 const std::vector<ConfigOverride>& overrides);

// Reads and parses a file.
absl::StatusOr<TrainConfig> LoadTrainConfig(const std::string& path,
                                            const std::vector<std::string>& overrides = {});

// For other parsers of YAML files: "file:line:column" of a node, and a short description of
// a node for "expected X, got Y" messages.
std::string YamlWhere(const std::string& origin, const YAML::Node& node);
std::string YamlDescribe(const YAML::Node& node);

// Checks values and relations between keys; the message names the key.
absl::Status ValidateTrainConfig(const TrainConfig& config);

// The resolved configuration as YAML (every key, including defaults), Lingua's layout.
std::string TrainConfigToYaml(const TrainConfig& config);

}  // namespace sweep::trainer

#endif  // SWEEP_WORKER_TRAINER_CONFIG_H_
