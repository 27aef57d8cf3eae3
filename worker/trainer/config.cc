#include "worker/trainer/config.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "worker/trainer/schedule.h"
#include "yaml-cpp/yaml.h"

namespace sweep::trainer {

std::string DefaultDataRoot() {
  if (const char* dir = std::getenv("SWEEP_DATA_DIR"); dir != nullptr && *dir != '\0') {
    return dir;
  }
  if (const char* xdg = std::getenv("XDG_DATA_HOME"); xdg != nullptr && *xdg != '\0') {
    return absl::StrCat(xdg, "/sweep/data");
  }
  const char* home = std::getenv("HOME");
  return absl::StrCat(home != nullptr ? home : "", "/.local/share/sweep/data");
}

void ForEachConfigField(TrainConfig& c, const std::function<void(const char*, FieldRef)>& fn) {
  fn("name", &c.name);
  fn("dump_dir", &c.dump_dir);
  fn("seed", &c.seed);
  fn("steps", &c.steps);
  fn("grad_acc_steps", &c.grad_acc_steps);
  fn("probe_freq", &c.probe_freq);
  fn("device", &c.device);
  fn("threads", &c.threads);

  fn("model.dim", &c.model.dim);
  fn("model.n_layers", &c.model.n_layers);
  fn("model.n_heads", &c.model.n_heads);
  fn("model.n_kv_heads", &c.model.n_kv_heads);
  fn("model.head_dim", &c.model.head_dim);
  fn("model.norm_eps", &c.model.norm_eps);
  fn("model.rope_theta", &c.model.rope_theta);
  fn("model.multiple_of", &c.model.multiple_of);
  fn("model.ffn_dim_multiplier", &c.model.ffn_dim_multiplier);
  fn("model.init_base_std", &c.model.init_base_std);
  fn("model.init_std_factor", &c.model.init_std_factor);
  fn("model.weight_tying", &c.model.weight_tying);
  fn("model.vocab_size", &c.model.vocab_size);
  fn("model.seed", &c.model.seed);
  fn("model.qk_norm", &c.model.qk_norm);

  fn("optim.lr", &c.optim.lr);
  fn("optim.weight_decay", &c.optim.weight_decay);
  fn("optim.beta1", &c.optim.beta1);
  fn("optim.beta2", &c.optim.beta2);
  fn("optim.epsilon", &c.optim.epsilon);
  fn("optim.clip", &c.optim.clip);
  fn("optim.scheduler", &c.optim.scheduler);
  fn("optim.warmup", &c.optim.warmup);
  fn("optim.lr_min_ratio", &c.optim.lr_min_ratio);
  fn("optim.cycle_length", &c.optim.cycle_length);
  fn("optim.cosine_theta", &c.optim.cosine_theta);
  fn("optim.decay_fraction", &c.optim.decay_fraction);
  fn("optim.exp_factor", &c.optim.exp_factor);
  fn("optim.z_loss", &c.optim.z_loss);
  fn("optim.independent_wd", &c.optim.independent_wd);

  fn("data.root_dir", &c.data.root_dir);
  fn("data.sources", &c.data.sources);
  fn("data.batch_size", &c.data.batch_size);
  fn("data.seq_len", &c.data.seq_len);
  fn("data.tokenizer", &c.data.tokenizer);
  fn("data.seed", &c.data.seed);
  fn("data.add_bos", &c.data.add_bos);
  fn("data.add_eos", &c.data.add_eos);
  fn("data.prefetch_size", &c.data.prefetch_size);

  fn("checkpoint.every", &c.checkpoint.every);
  fn("checkpoint.keep", &c.checkpoint.keep);
  fn("eval.every", &c.eval.every);
  fn("eval.steps", &c.eval.steps);
  fn("logging.freq", &c.logging.freq);
  fn("divergence.loss_factor", &c.divergence.loss_factor);
  fn("distributed.timeout", &c.distributed.timeout);
  fn("distributed.gns_ema", &c.distributed.gns_ema);
}

const char* FieldTypeName(const FieldRef& field) {
  struct Namer {
    const char* operator()(int*) const { return "an integer"; }
    const char* operator()(int64_t*) const { return "an integer"; }
    const char* operator()(double*) const { return "a number"; }
    const char* operator()(bool*) const { return "a boolean (true or false)"; }
    const char* operator()(std::string*) const { return "a string"; }
    const char* operator()(std::vector<std::pair<std::string, double>>*) const {
      return "a map of source name to weight";
    }
  };
  return std::visit(Namer{}, field);
}

namespace {

// "file:line:column" of a YAML node (yaml-cpp counts from 0).
std::string Where(const std::string& origin, const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  if (mark.is_null()) return origin;
  return absl::StrCat(origin, ":", mark.line + 1, ":", mark.column + 1);
}

std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Null:
      return "null";
    default:
      return absl::StrCat("'", node.Scalar(), "'");
  }
}

bool ParseInt64(const std::string& text, int64_t* out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || end == nullptr || *end != '\0') return false;
  *out = v;
  return true;
}

bool ParseDouble(const std::string& text, double* out) {
  if (text.empty()) return false;
  std::string t = text;
  if (t == ".inf" || t == ".Inf" || t == "+.inf") t = "inf";
  if (t == "-.inf" || t == "-.Inf") t = "-inf";
  if (t == ".nan" || t == ".NaN") t = "nan";
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(t.c_str(), &end);
  if (errno != 0 || end == nullptr || *end != '\0') return false;
  *out = v;
  return true;
}

// Sets one field from a YAML value; `where` and `key` prefix the error message.
absl::Status SetField(FieldRef field, const YAML::Node& value, const std::string& where,
                      const std::string& key) {
  auto wrong = [&]() {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", key, ": expected ",
                                                   FieldTypeName(field), ", got ",
                                                   Describe(value)));
  };
  if (value.IsNull()) return absl::OkStatus();  // Lingua's `null`: keep the default.

  if (auto* sources = std::get_if<std::vector<std::pair<std::string, double>>*>(&field)) {
    if (!value.IsMap()) return wrong();
    (*sources)->clear();
    for (const auto& entry : value) {
      const std::string name = entry.first.Scalar();
      double weight = 0;
      if (!entry.second.IsScalar() || !ParseDouble(entry.second.Scalar(), &weight)) {
        return absl::InvalidArgumentError(absl::StrCat(Where(where, entry.second), ": ", key,
                                                       ".", name, ": expected a number (weight), got ",
                                                       Describe(entry.second)));
      }
      (*sources)->emplace_back(name, weight);
    }
    return absl::OkStatus();
  }
  if (!value.IsScalar()) return wrong();
  const std::string& text = value.Scalar();
  if (auto* i = std::get_if<int*>(&field)) {
    int64_t v;
    if (!ParseInt64(text, &v) || v < INT32_MIN || v > INT32_MAX) return wrong();
    **i = static_cast<int>(v);
  } else if (auto* l = std::get_if<int64_t*>(&field)) {
    if (!ParseInt64(text, *l)) return wrong();
  } else if (auto* d = std::get_if<double*>(&field)) {
    if (!ParseDouble(text, *d)) return wrong();
  } else if (auto* b = std::get_if<bool*>(&field)) {
    if (text == "true" || text == "True" || text == "TRUE") {
      **b = true;
    } else if (text == "false" || text == "False" || text == "FALSE") {
      **b = false;
    } else {
      return wrong();
    }
  } else if (auto* s = std::get_if<std::string*>(&field)) {
    **s = text;
  }
  return absl::OkStatus();
}

using FieldIndex = std::map<std::string, FieldRef>;
using Locations = std::map<std::string, std::string>;  // key -> "file:line:col"

FieldIndex IndexFields(TrainConfig& config) {
  FieldIndex index;
  ForEachConfigField(config, [&](const char* key, FieldRef ref) { index.emplace(key, ref); });
  return index;
}

bool IsSection(const FieldIndex& index, const std::string& prefix) {
  const std::string dotted = prefix + ".";
  auto it = index.lower_bound(dotted);
  return it != index.end() && it->first.compare(0, dotted.size(), dotted) == 0;
}

// Keys that share the section of `key`, to suggest in "unknown key" errors.
std::string KnownKeysNear(const FieldIndex& index, const std::string& key) {
  const size_t dot = key.rfind('.');
  const std::string section = dot == std::string::npos ? "" : key.substr(0, dot + 1);
  std::vector<std::string> keys;
  for (const auto& [name, ref] : index) {
    if (name.compare(0, section.size(), section) != 0) continue;
    const std::string rest = name.substr(section.size());
    keys.push_back(rest.substr(0, rest.find('.')));
  }
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  return absl::StrJoin(keys, ", ");
}

absl::Status ApplyMap(const YAML::Node& map, const std::string& prefix, const std::string& origin,
                      const FieldIndex& index, Locations* locations) {
  for (const auto& entry : map) {
    const std::string name = entry.first.Scalar();
    const std::string key = prefix.empty() ? name : absl::StrCat(prefix, ".", name);
    const std::string where = Where(origin, entry.first);
    (*locations)[key] = where;
    auto it = index.find(key);
    if (it == index.end()) {
      if (IsSection(index, key)) {
        if (!entry.second.IsMap() && !entry.second.IsNull()) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": ", key, ": expected a map, got ", Describe(entry.second)));
        }
        if (entry.second.IsNull()) continue;
        absl::Status s = ApplyMap(entry.second, key, origin, index, locations);
        if (!s.ok()) return s;
        continue;
      }
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", key,
                                                     ": unknown key (known here: ",
                                                     KnownKeysNear(index, key), ")"));
    }
    // Lingua writes the tokenizer as {name: bytes, path: ...}; accept both forms.
    if (key == "data.tokenizer" && entry.second.IsMap()) {
      const YAML::Node name_node = entry.second["name"];
      if (!name_node || !name_node.IsScalar()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": data.tokenizer: expected a name such as 'bytes'"));
      }
      *std::get<std::string*>(it->second) = name_node.Scalar();
      continue;
    }
    absl::Status s = SetField(it->second, entry.second, Where(origin, entry.second), key);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// A failed relation between keys: the key to blame and what is wrong.
struct Problem {
  std::string key;
  std::string message;
};

std::vector<Problem> FindProblems(const TrainConfig& c) {
  std::vector<Problem> p;
  auto require = [&](bool ok, const char* key, std::string message) {
    if (!ok) p.push_back({key, std::move(message)});
  };
  const ModelArgs& m = c.model;
  require(c.steps > 0, "steps", absl::StrCat("must be > 0, got ", c.steps));
  require(c.grad_acc_steps >= 1, "grad_acc_steps", "must be >= 1");
  require(c.probe_freq >= 0, "probe_freq", "must be >= 0 (0 disables probes)");
  require(c.device == "cpu" || c.device == "cuda", "device",
          absl::StrCat("expected 'cpu' or 'cuda', got '", c.device, "'"));
  require(c.threads >= 0, "threads", "must be >= 0 (0: all cores)");
  require(!c.dump_dir.empty(), "dump_dir", "must not be empty");

  require(m.dim > 0, "model.dim", absl::StrCat("must be > 0, got ", m.dim));
  require(m.n_layers > 0, "model.n_layers", absl::StrCat("must be > 0, got ", m.n_layers));
  require(m.n_heads > 0, "model.n_heads", absl::StrCat("must be > 0, got ", m.n_heads));
  if (m.n_heads > 0 && m.head_dim == 0) {
    require(m.dim % m.n_heads == 0, "model.n_heads",
            absl::StrCat("must divide model.dim (", m.dim, "), got ", m.n_heads));
  }
  require(m.n_kv_heads >= 0, "model.n_kv_heads", "must be >= 0 (0: same as n_heads)");
  if (m.n_kv_heads > 0 && m.n_heads > 0) {
    require(m.n_heads % m.n_kv_heads == 0, "model.n_kv_heads",
            absl::StrCat("must divide model.n_heads (", m.n_heads, "), got ", m.n_kv_heads));
  }
  const int head_dim = m.head_dim > 0 ? m.head_dim : (m.n_heads > 0 ? m.dim / m.n_heads : 0);
  require(m.head_dim >= 0, "model.head_dim", "must be >= 0 (0: dim / n_heads)");
  require(head_dim % 2 == 0, "model.head_dim",
          absl::StrCat("must be even for rotary embeddings, got ", head_dim));
  require(m.norm_eps > 0, "model.norm_eps", "must be > 0");
  require(m.rope_theta > 0, "model.rope_theta", "must be > 0");
  require(m.multiple_of > 0, "model.multiple_of", "must be > 0");
  require(m.ffn_dim_multiplier >= 0, "model.ffn_dim_multiplier", "must be >= 0 (0: unset)");
  require(m.init_base_std >= 0, "model.init_base_std", "must be >= 0 (0: unset)");
  static const std::set<std::string> kFactors = {"disabled", "global_depth", "current_depth",
                                                 "dim_ratio"};
  require(kFactors.count(m.init_std_factor) == 1, "model.init_std_factor",
          absl::StrCat("expected one of disabled, global_depth, current_depth, dim_ratio; got '",
                       m.init_std_factor, "'"));
  require(m.vocab_size == 0 || m.vocab_size >= 258, "model.vocab_size",
          "must be 0 (the tokenizer's size) or at least 258 (the byte tokenizer's size)");

  const OptimArgs& o = c.optim;
  require(std::isfinite(o.lr) && o.lr > 0, "optim.lr",
          absl::StrCat("must be a finite number > 0, got ", o.lr));
  require(std::isfinite(o.weight_decay) && o.weight_decay >= 0, "optim.weight_decay",
          "must be a finite number >= 0");
  require(o.beta1 >= 0 && o.beta1 < 1, "optim.beta1", "must be in [0, 1)");
  require(o.beta2 >= 0 && o.beta2 < 1, "optim.beta2", "must be in [0, 1)");
  require(o.epsilon > 0, "optim.epsilon", "must be > 0");
  require(std::isfinite(o.clip), "optim.clip", "must be finite (<= 0 disables clipping)");
  require(IsKnownScheduler(o.scheduler), "optim.scheduler",
          absl::StrCat("expected one of constant, linear, cosine, inv_sqrt, wsd; got '",
                       o.scheduler, "'"));
  require(o.warmup >= 0, "optim.warmup", "must be >= 0");
  require(o.lr_min_ratio > 0 && o.lr_min_ratio <= 1, "optim.lr_min_ratio",
          "must be in (0, 1]");
  require(o.cycle_length > 0, "optim.cycle_length", "must be > 0");
  require(o.cosine_theta > 0, "optim.cosine_theta", "must be > 0");
  require(o.decay_fraction >= 0 && o.decay_fraction <= 1, "optim.decay_fraction",
          "must be in [0, 1]");
  require(o.exp_factor > 0, "optim.exp_factor", "must be > 0");
  require(o.z_loss >= 0, "optim.z_loss", "must be >= 0");

  const DataArgs& d = c.data;
  require(!d.sources.empty(), "data.sources",
          "must name at least one source, e.g. {kjv: 1.0} (the bundled corpus)");
  for (const auto& [name, weight] : d.sources) {
    require(std::isfinite(weight) && weight > 0, "data.sources",
            absl::StrCat("weight of '", name, "' must be > 0, got ", weight));
  }
  require(d.batch_size > 0, "data.batch_size", "must be > 0");
  require(d.seq_len > 1, "data.seq_len", "must be > 1");
  require(d.tokenizer == "bytes", "data.tokenizer",
          absl::StrCat("only 'bytes' (Lingua's byte tokenizer) is supported, got '", d.tokenizer,
                       "'"));
  require(d.prefetch_size >= 1, "data.prefetch_size", "must be >= 1");
  require(c.checkpoint.every >= 0, "checkpoint.every", "must be >= 0 (0: only at the end)");
  require(c.checkpoint.keep >= 0, "checkpoint.keep", "must be >= 0 (0: keep all)");
  require(c.eval.every >= 0, "eval.every", "must be >= 0 (0: only at the end)");
  require(c.eval.steps >= 1, "eval.steps", "must be >= 1");
  require(c.logging.freq >= 1, "logging.freq", "must be >= 1");
  require(c.divergence.loss_factor == 0 || c.divergence.loss_factor > 1, "divergence.loss_factor",
          "must be 0 (off) or > 1");
  require(std::isfinite(c.distributed.timeout) && c.distributed.timeout > 0,
          "distributed.timeout", "must be a finite number of seconds > 0");
  require(c.distributed.gns_ema >= 0 && c.distributed.gns_ema < 1, "distributed.gns_ema",
          "must be in [0, 1)");
  return p;
}

absl::Status FirstProblem(const TrainConfig& config, const Locations* locations,
                          const std::string& origin) {
  std::vector<Problem> problems = FindProblems(config);
  if (problems.empty()) return absl::OkStatus();
  const Problem& first = problems.front();
  std::string where = origin;
  if (locations != nullptr) {
    auto it = locations->find(first.key);
    if (it != locations->end()) where = it->second;
  }
  std::string message =
      where.empty() ? absl::StrCat(first.key, ": ", first.message)
                    : absl::StrCat(where, ": ", first.key, ": ", first.message);
  if (problems.size() > 1) absl::StrAppend(&message, " (and ", problems.size() - 1, " more)");
  return absl::InvalidArgumentError(message);
}

}  // namespace

std::string YamlWhere(const std::string& origin, const YAML::Node& node) {
  return Where(origin, node);
}

std::string YamlDescribe(const YAML::Node& node) { return Describe(node); }

absl::StatusOr<TrainConfig> ParseTrainConfigNode(const YAML::Node& root, const std::string& origin,
                                                 const std::vector<ConfigOverride>& overrides) {
  TrainConfig config;
  const FieldIndex index = IndexFields(config);
  Locations locations;
  if (root && !root.IsNull()) {
    if (!root.IsMap()) {
      return absl::InvalidArgumentError(
          absl::StrCat(Where(origin, root), ": expected a map of keys at the top level, got ",
                       Describe(root)));
    }
    absl::Status s = ApplyMap(root, "", origin, index, &locations);
    if (!s.ok()) return s;
  }
  for (const ConfigOverride& item : overrides) {
    auto it = index.find(item.key);
    if (it == index.end()) {
      return absl::InvalidArgumentError(absl::StrCat(item.where, ": ", item.key,
                                                     ": unknown key (known here: ",
                                                     KnownKeysNear(index, item.key), ")"));
    }
    YAML::Node value;
    try {
      value = YAML::Load(item.value);
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(item.where, ": ", item.key, ": ", e.msg));
    }
    absl::Status s = SetField(it->second, value, item.where, item.key);
    if (!s.ok()) return s;
    locations[item.key] = item.where;
  }
  absl::Status s = FirstProblem(config, &locations, origin);
  if (!s.ok()) return s;
  return config;
}

absl::StatusOr<TrainConfig> ParseTrainConfig(const std::string& text, const std::string& origin,
                                             const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ":", e.mark.line + 1, ":",
                                                   e.mark.column + 1, ": invalid YAML: ", e.msg));
  }
  std::vector<ConfigOverride> parsed;
  for (const std::string& item : overrides) {
    const size_t eq = item.find('=');
    const std::string where = absl::StrCat("override '", item, "'");
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": expected key=value, e.g. optim.lr=3e-3"));
    }
    parsed.push_back({item.substr(0, eq), item.substr(eq + 1), where});
  }
  return ParseTrainConfigNode(root, origin, parsed);
}

absl::StatusOr<TrainConfig> LoadTrainConfig(const std::string& path,
                                            const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open config file"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ParseTrainConfig(buffer.str(), path, overrides);
}

absl::Status ValidateTrainConfig(const TrainConfig& config) {
  return FirstProblem(config, nullptr, "");
}

std::string TrainConfigToYaml(const TrainConfig& config) {
  TrainConfig copy = config;
  YAML::Node root(YAML::NodeType::Map);
  ForEachConfigField(copy, [&](const char* key, FieldRef ref) {
    std::vector<std::string> parts = absl::StrSplit(key, '.');
    // yaml-cpp nodes are handles: reset() rebinds one without writing through it.
    YAML::Node leaf_parent = root;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      if (!leaf_parent[parts[i]]) leaf_parent[parts[i]] = YAML::Node(YAML::NodeType::Map);
      leaf_parent.reset(leaf_parent[parts[i]]);
    }
    const std::string& leaf = parts.back();
    std::visit(
        [&](auto* value) {
          using T = std::decay_t<decltype(*value)>;
          if constexpr (std::is_same_v<T, std::vector<std::pair<std::string, double>>>) {
            YAML::Node map(YAML::NodeType::Map);
            for (const auto& [name, weight] : *value) map[name] = weight;
            leaf_parent[leaf] = map;
          } else {
            leaf_parent[leaf] = *value;
          }
        },
        ref);
  });
  YAML::Emitter out;
  out.SetDoublePrecision(17);
  out << root;
  return std::string(out.c_str()) + "\n";
}

}  // namespace sweep::trainer
