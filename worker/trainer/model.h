// The Llama-style decoder of Lingua (apps/main/transformer.py), in LibTorch.
//
//   tokens (B, S) -> tok_embeddings -> n_layers x Block -> RMSNorm -> output -> logits (B, S, V)
//   Block:  h = x + attention(attention_norm(x));  out = h + feed_forward(ffn_norm(h))
//
// Parameters live in one flat float32 buffer, each parameter a view of it, ordered so that
// every gradient-norm group (`tok_embeddings`, `layers.{i}.attention`, `layers.{i}.feed_forward`,
// `norm`, `output`) is one contiguous range. Gradients live in a second flat buffer that
// autograd accumulates into. The optimizer, clipping and the per-group norms then work on a
// few large tensors instead of one small tensor per parameter.
//
// Parameter names, shapes and the initialisation order are Lingua's, so the initial values
// equal Lingua's for the same seed.
//
// Not thread-safe; one model per training process.
#ifndef SWEEP_WORKER_TRAINER_MODEL_H_
#define SWEEP_WORKER_TRAINER_MODEL_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "worker/trainer/config.h"

namespace sweep::trainer {

// Lingua's FeedForward hidden size: int(2·4·dim/3), times ffn_dim_multiplier if set, rounded
// up to multiple_of (dim 2048 -> 5632, 4096 -> 11008 with multiple_of 256).
int FeedForwardHiddenDim(const ModelArgs& args);

// One named parameter: a view of the flat buffer.
struct ParamInfo {
  std::string name;
  std::vector<int64_t> shape;
  int group = 0;       // Index into Transformer::group_names().
  int64_t offset = 0;  // Into the flat buffer.
  int64_t numel = 0;
};

// Statistics gathered during a forward pass when asked (Wortsman et al. 2023's probes).
struct ForwardProbes {
  std::vector<double> attn_logit_max;  // Per layer: largest pre-softmax attention logit.
  double output_logsumexp_mean = 0;    // Mean over tokens of log Σ exp(logits).
};

class Transformer {
 public:
  Transformer(const ModelArgs& args, int vocab_size, int max_seq_len, torch::Device device);
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  // Lingua's init_weights(): torch::manual_seed(seed) then, in order, the final norm,
  // tok_embeddings, output (untied), and per layer wq, wk, wv, wo, w1, w3, w2
  // (truncated normal at ±3σ; see the .cc for each σ).
  void InitWeights(int64_t seed);

  // tokens: (B, S) int64 with S <= max_seq_len. Returns logits (B, S, V) in float32.
  // Fills `probes` (may be null) with per-layer attention-logit maxima (forces a host sync).
  torch::Tensor Forward(const torch::Tensor& tokens, ForwardProbes* probes);

  const std::vector<ParamInfo>& params() const { return params_; }
  const std::vector<std::string>& group_names() const { return group_names_; }
  // [offset, offset + numel) of each group in the flat buffers.
  const std::vector<std::pair<int64_t, int64_t>>& group_ranges() const { return group_ranges_; }

  torch::Tensor& flat_params() { return flat_params_; }
  torch::Tensor& flat_grads() { return flat_grads_; }
  int64_t num_params() const { return flat_params_.numel(); }
  // Parameters outside the embedding table (Lingua's FLOPs estimate uses them).
  int64_t num_non_embedding_params() const;

  void ZeroGrad() { flat_grads_.zero_(); }

 private:
  struct Layer {
    torch::Tensor attention_norm;  // (dim)
    torch::Tensor wq;              // (n_heads · head_dim, dim)
    torch::Tensor wk, wv;          // (n_kv_heads · head_dim, dim)
    torch::Tensor wo;              // (dim, n_heads · head_dim)
    torch::Tensor q_norm, k_norm;  // (head_dim), only with qk_norm
    torch::Tensor ffn_norm;        // (dim)
    torch::Tensor w1, w3;          // (hidden, dim)
    torch::Tensor w2;              // (dim, hidden)
  };

  torch::Tensor AddParam(const std::string& name, std::vector<int64_t> shape, int group);
  torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& weight) const;
  torch::Tensor ApplyRope(const torch::Tensor& x) const;  // (B, S, H, D)
  torch::Tensor Attention(const Layer& layer, const torch::Tensor& x, double* logit_max);
  torch::Tensor FeedForward(const Layer& layer, const torch::Tensor& x) const;
  const torch::Tensor& CausalMask(int64_t seq_len);

  const ModelArgs args_;
  const int vocab_size_;
  const int head_dim_;
  const int n_kv_heads_;
  const int hidden_dim_;
  const torch::Device device_;

  std::vector<ParamInfo> params_;
  std::vector<std::string> group_names_;
  std::vector<std::pair<int64_t, int64_t>> group_ranges_;
  torch::Tensor flat_params_;
  torch::Tensor flat_grads_;

  torch::Tensor tok_embeddings_;  // (V, dim)
  std::vector<Layer> layers_;
  torch::Tensor norm_;    // (dim)
  torch::Tensor output_;  // (V, dim); undefined when tied to tok_embeddings_.

  torch::Tensor rope_;         // (1, max_seq_len, 1, head_dim / 2) complex: cos + i·sin
  torch::Tensor causal_mask_;  // (S, S): 0 on and below the diagonal, -inf above.
};

}  // namespace sweep::trainer

#endif  // SWEEP_WORKER_TRAINER_MODEL_H_
