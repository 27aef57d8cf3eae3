#include "analysis/shape.h"

#include <cmath>

#include "worker/trainer/data.h"

namespace sweep::analysis {

int LinguaFfnHidden(int dim, int multiple_of, double ffn_dim_multiplier) {
  int hidden = static_cast<int>(2.0 * (4 * dim) / 3.0);
  if (ffn_dim_multiplier > 0) hidden = static_cast<int>(ffn_dim_multiplier * hidden);
  return multiple_of * ((hidden + multiple_of - 1) / multiple_of);
}

int64_t RunShape::NonEmbeddingParams() const {
  const int64_t d = dim;
  const int64_t q_rows = static_cast<int64_t>(n_heads) * head_dim;
  const int64_t kv_rows = static_cast<int64_t>(n_kv_heads) * head_dim;
  const int64_t attention = d + q_rows * d + 2 * kv_rows * d + d * q_rows +
                            (qk_norm ? 2 * static_cast<int64_t>(head_dim) : 0);
  const int64_t feed_forward = d + 3 * static_cast<int64_t>(ffn_hidden) * d;
  const int64_t output = weight_tying ? 0 : static_cast<int64_t>(vocab_size) * d;
  return n_layers * (attention + feed_forward) + d + output;
}

double RunShape::TokensPerStep() const {
  return static_cast<double>(batch_size) * seq_len * grad_acc_steps *
         static_cast<double>(processes);
}

double RunShape::Tokens() const { return static_cast<double>(steps) * TokensPerStep(); }

double RunShape::Compute() const {
  return 6.0 * static_cast<double>(NonEmbeddingParams()) * Tokens();
}

RunShape ShapeFromConfig(const trainer::TrainConfig& config) {
  const trainer::ModelArgs& m = config.model;
  RunShape s;
  s.n_layers = m.n_layers;
  s.dim = m.dim;
  s.n_heads = m.n_heads;
  s.n_kv_heads = m.n_kv_heads > 0 ? m.n_kv_heads : m.n_heads;
  s.head_dim = m.head_dim > 0 ? m.head_dim : (m.n_heads > 0 ? m.dim / m.n_heads : 0);
  s.ffn_hidden = LinguaFfnHidden(m.dim, m.multiple_of, m.ffn_dim_multiplier);
  s.vocab_size = m.vocab_size > 0 ? m.vocab_size : trainer::ByteTokenizer::kVocabSize;
  s.weight_tying = m.weight_tying;
  s.qk_norm = m.qk_norm;
  s.steps = config.steps;
  s.batch_size = config.data.batch_size;
  s.seq_len = config.data.seq_len;
  s.grad_acc_steps = config.grad_acc_steps;
  s.warmup = config.optim.warmup;
  s.lr = config.optim.lr;
  s.weight_decay = config.optim.weight_decay;
  return s;
}

absl::StatusOr<RunShape> ShapeFromConfigText(const std::string& yaml) {
  absl::StatusOr<trainer::TrainConfig> config = trainer::ParseTrainConfig(yaml, "trial config");
  if (!config.ok()) return config.status();
  return ShapeFromConfig(*config);
}

namespace {

RunShape LinguaShape(int dim, int n_layers, int n_heads, int64_t steps, int batch_size,
                     int64_t gpus, int warmup, double lr, double wd) {
  RunShape s;
  s.dim = dim;
  s.n_layers = n_layers;
  s.n_heads = n_heads;
  s.n_kv_heads = n_heads;
  s.head_dim = dim / n_heads;
  s.ffn_hidden = LinguaFfnHidden(dim);
  s.vocab_size = 128256;  // tiktoken (Llama 3's), as Lingua's llama configs
  s.steps = steps;
  s.batch_size = batch_size;
  s.seq_len = 4096;
  s.processes = gpus;
  s.warmup = warmup;
  s.lr = lr;
  s.weight_decay = wd;
  return s;
}

}  // namespace

std::vector<TargetModel> LinguaTargets() {
  std::vector<TargetModel> targets;
  targets.push_back(
      TargetModel{"Lingua 1B",
                  LinguaShape(2048, 25, 16, 60000, 4, 64, 5000, 3e-3, 0.033),
                  {
                      {"Lingua llama_1B", 3e-3, "wd 0.033, ~1M tokens/step, cosine to 1e-6"},
                      {"GPT-3 1.3B", 2e-4, "1M tokens/step"},
                      {"Pythia 1B", 3e-4, "2M tokens/step"},
                      {"OLMo 2 1B", 4e-4, ""},
                  }});
  targets.push_back(TargetModel{"Lingua 7B",
                                LinguaShape(4096, 32, 32, 100000, 2, 256, 2000, 1e-3, 0.1),
                                {
                                    {"Lingua llama_7B", 1e-3, "wd 0.1, ~2M tokens/step"},
                                    {"GPT-3 6.7B", 1.2e-4, "2M tokens/step"},
                                    {"Pythia 6.9B", 1.2e-4, "2M tokens/step"},
                                    {"OLMo 2 7B", 3e-4, ""},
                                    {"Llama 2 7B", 3e-4, "4M tokens/step"},
                                    {"DeepSeek LLM 7B", 4.2e-4, "9.4M tokens/step"},
                                }});
  return targets;
}

double DeepSeekLr(double compute) { return 0.3118 * std::pow(compute, -0.125); }

}  // namespace sweep::analysis
