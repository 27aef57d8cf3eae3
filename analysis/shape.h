// What a trial trains, reduced to the numbers the scaling fits need: the model's shape, its
// non-embedding parameter count N counted as Lingua counts it, the tokens D it sees and the
// compute C = 6 N D.
//
// N (Lingua's count). Lingua's apps/main/train.py estimates FLOPs from
// `model_param_count - vocab_size * dim`: every parameter except the token embedding. The
// untied output projection (vocab x dim) and the RMSNorm weights are counted. For
// worker/trainer/model.cc's LMTransformer that is, exactly:
//   per layer: attention_norm dim + wq (n_heads*head_dim x dim) + wk, wv (n_kv_heads*head_dim
//              x dim each) + wo (dim x n_heads*head_dim) + [q_norm, k_norm head_dim each] +
//              ffn_norm dim + w1, w3 (hidden x dim each) + w2 (dim x hidden)
//   plus the final norm (dim) and, unless weights are tied, the output (vocab x dim),
// with hidden = multiple_of * ceil(int(ffn_dim_multiplier * int(2 * 4 dim / 3)) / multiple_of)
// (Lingua's FeedForward). 12 L d^2 is only an approximation of this.
//
// Thread-safety: values and pure functions.
#ifndef SWEEP_ANALYSIS_SHAPE_H_
#define SWEEP_ANALYSIS_SHAPE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/trainer/config.h"

namespace sweep::analysis {

struct RunShape {
  // Model (resolved: no zeros meaning "default").
  int n_layers = 0;
  int dim = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int ffn_hidden = 0;
  int vocab_size = 0;
  bool weight_tying = false;
  bool qk_norm = false;
  // Run.
  int64_t steps = 0;
  int batch_size = 0;  // sequences per step per process, before gradient accumulation
  int seq_len = 0;
  int grad_acc_steps = 1;
  int64_t processes = 1;  // data-parallel ranks (1 for sweep-train; 64 for Lingua's 1B)
  int warmup = 0;
  double lr = 0;
  double weight_decay = 0;

  // Lingua's non-embedding count (see the file comment).
  int64_t NonEmbeddingParams() const;
  // Tokens per optimizer step: batch_size * seq_len * grad_acc_steps * processes.
  double TokensPerStep() const;
  // D = steps * TokensPerStep().
  double Tokens() const;
  // C = 6 N D in FLOPs (Kaplan et al. 2020; DeepSeek's M D uses a per-token M that adds the
  // attention term, which this leaves out).
  double Compute() const;
};

// Lingua's FeedForward hidden size for `dim` (as worker/trainer/model.cc).
int LinguaFfnHidden(int dim, int multiple_of = 256, double ffn_dim_multiplier = 0.0);

// From a parsed trainer config (vocab 0 means the byte tokenizer's 258).
RunShape ShapeFromConfig(const trainer::TrainConfig& config);

// From a trial's stored config (YAML, as trials.config holds it).
absl::StatusOr<RunShape> ShapeFromConfigText(const std::string& yaml);

// A published setting to hold a fitted rule against.
struct PublishedLr {
  std::string source;  // "Lingua", "GPT-3 1.3B", ...
  double lr = 0;
  std::string note;  // batch, weight decay, or how it was derived
};

// A model to extrapolate a fitted rule to.
struct TargetModel {
  std::string name;
  RunShape shape;
  std::vector<PublishedLr> published;
};

// Lingua's llama_1B and llama_7B (apps/main/configs; shared/REFERENCE.md): shapes, tiktoken's
// 128,256-id vocabulary, their step counts and global batches (64 GPUs x 4 x 4096 tokens and
// 256 GPUs x 2 x 4096 tokens), and the learning rates published for models of that size
// (Lingua, GPT-3, Pythia, OLMo 2, Llama 2, DeepSeek LLM).
std::vector<TargetModel> LinguaTargets();

// DeepSeek LLM (arXiv 2401.02954): eta_opt = 0.3118 * C^-0.125, C in FLOPs.
double DeepSeekLr(double compute);

}  // namespace sweep::analysis

#endif  // SWEEP_ANALYSIS_SHAPE_H_
