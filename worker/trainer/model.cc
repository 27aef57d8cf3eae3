#include "worker/trainer/model.h"

#include <cmath>
#include <limits>

#include "worker/trainer/fused_ops.h"
#include "worker/trainer/torch_compat.h"

namespace sweep::trainer {

int FeedForwardHiddenDim(const ModelArgs& args) {
  int hidden = static_cast<int>(2.0 * (4 * args.dim) / 3.0);
  if (args.ffn_dim_multiplier > 0) hidden = static_cast<int>(args.ffn_dim_multiplier * hidden);
  return args.multiple_of * ((hidden + args.multiple_of - 1) / args.multiple_of);
}

namespace {

// torch.nn.init.trunc_normal_ as PyTorch 1.13 to 2.6 (at least) draw it, step for step (same
// RNG draws, same float operations). PyTorch 2.14 draws the same distribution by rejection
// sampling instead; the reference (tools/reference) spells this draw out to stay comparable.
void TruncNormal(torch::Tensor w, double std, double a, double b) {
  auto norm_cdf = [](double x) { return (1.0 + std::erf(x / std::sqrt(2.0))) / 2.0; };
  const double l = norm_cdf(a / std);
  const double u = norm_cdf(b / std);
  w.uniform_(2 * l - 1, 2 * u - 1);
  w.erfinv_();
  w.mul_(std * std::sqrt(2.0));
  w.add_(0.0);
  w.clamp_(a, b);
}

double DepthFactor(const std::string& kind, int depth, int n_layers, int dim) {
  if (kind == "global_depth") return std::sqrt(2.0 * (n_layers + 1));
  if (kind == "current_depth") return std::sqrt(2.0 * (depth + 1));
  if (kind == "dim_ratio") return dim / 4096.0;
  return 1.0;  // disabled
}

}  // namespace

Transformer::Transformer(const ModelArgs& args, int vocab_size, int max_seq_len,
                         torch::Device device)
    : args_(args),
      vocab_size_(vocab_size),
      head_dim_(args.head_dim > 0 ? args.head_dim : args.dim / args.n_heads),
      n_kv_heads_(args.n_kv_heads > 0 ? args.n_kv_heads : args.n_heads),
      hidden_dim_(FeedForwardHiddenDim(args)),
      device_(device) {
  // 1. Lay out every parameter, group by group, so each group is one contiguous range.
  struct Pending {
    torch::Tensor* target;
  };
  std::vector<Pending> pending;
  int64_t offset = 0;
  auto declare = [&](torch::Tensor* target, const std::string& name,
                     std::vector<int64_t> shape) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    params_.push_back({name, std::move(shape), static_cast<int>(group_names_.size()) - 1,
                       offset, numel});
    pending.push_back({target});
    offset += numel;
  };
  auto begin_group = [&](const std::string& name) {
    if (!group_names_.empty()) group_ranges_.back().second = offset - group_ranges_.back().first;
    group_names_.push_back(name);
    group_ranges_.emplace_back(offset, 0);
  };

  const int64_t dim = args.dim;
  const int64_t q_rows = static_cast<int64_t>(args.n_heads) * head_dim_;
  const int64_t kv_rows = static_cast<int64_t>(n_kv_heads_) * head_dim_;
  layers_.resize(args.n_layers);

  begin_group("tok_embeddings");
  declare(&tok_embeddings_, "tok_embeddings.weight", {vocab_size, dim});
  for (int i = 0; i < args.n_layers; ++i) {
    Layer& layer = layers_[i];
    const std::string prefix = "layers." + std::to_string(i);
    begin_group(prefix + ".attention");
    declare(&layer.attention_norm, prefix + ".attention_norm.weight", {dim});
    declare(&layer.wq, prefix + ".attention.wq.weight", {q_rows, dim});
    declare(&layer.wk, prefix + ".attention.wk.weight", {kv_rows, dim});
    declare(&layer.wv, prefix + ".attention.wv.weight", {kv_rows, dim});
    declare(&layer.wo, prefix + ".attention.wo.weight", {dim, q_rows});
    if (args.qk_norm) {
      declare(&layer.q_norm, prefix + ".attention.q_norm.weight", {head_dim_});
      declare(&layer.k_norm, prefix + ".attention.k_norm.weight", {head_dim_});
    }
    begin_group(prefix + ".feed_forward");
    declare(&layer.ffn_norm, prefix + ".ffn_norm.weight", {dim});
    declare(&layer.w1, prefix + ".feed_forward.w1.weight", {hidden_dim_, dim});
    declare(&layer.w3, prefix + ".feed_forward.w3.weight", {hidden_dim_, dim});
    declare(&layer.w2, prefix + ".feed_forward.w2.weight", {dim, hidden_dim_});
  }
  begin_group("norm");
  declare(&norm_, "norm.weight", {dim});
  if (!args.weight_tying) {
    begin_group("output");
    declare(&output_, "output.weight", {vocab_size, dim});
  }
  group_ranges_.back().second = offset - group_ranges_.back().first;

  // 2. Allocate the flat buffers and hand out views; autograd accumulates into grad views.
  const auto options = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  flat_params_ = torch::zeros({offset}, options);
  flat_grads_ = torch::zeros({offset}, options);
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    const ParamInfo& info = params_[i];
    torch::Tensor view = flat_params_.narrow(0, info.offset, info.numel).view(info.shape);
    view.set_requires_grad(true);
    view.mutable_grad() = flat_grads_.narrow(0, info.offset, info.numel).view(info.shape);
    *pending[i].target = view;
  }

  // 3. Rotary tables exactly as Lingua's precompute_freqs_cis (float32 throughout).
  torch::Tensor freqs =
      1.0 / torch::pow(args.rope_theta,
                       torch::arange(0, head_dim_, 2).slice(0, 0, head_dim_ / 2).to(torch::kFloat32) /
                           static_cast<double>(head_dim_));
  torch::Tensor t = torch::arange(max_seq_len);
  freqs = torch::outer(t, freqs).to(torch::kFloat32);
  rope_ = torch::complex(freqs.cos(), freqs.sin()).view({1, max_seq_len, 1, head_dim_ / 2}).to(device);
}

int64_t Transformer::num_non_embedding_params() const {
  return num_params() - tok_embeddings_.numel();
}

void Transformer::InitWeights(int64_t seed) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  const double dim = args_.dim;
  // LMTransformer.reset_parameters(): final norm, embeddings, untied output at dim^-0.5.
  norm_.fill_(1.0);
  const double s0 = std::pow(dim, -0.5);
  TruncNormal(tok_embeddings_, s0, -3 * s0, 3 * s0);
  if (output_.defined()) TruncNormal(output_, s0, -3 * s0, 3 * s0);

  for (int depth = 0; depth < args_.n_layers; ++depth) {
    Layer& layer = layers_[depth];
    const double factor = DepthFactor(args_.init_std_factor, depth, args_.n_layers, args_.dim);
    // Attention.reset_parameters: wq, wk, wv at s; wo at s / factor (bounds stay ±3s, as
    // Lingua writes them).
    const double s = args_.init_base_std > 0 ? args_.init_base_std : std::pow(dim, -0.5);
    TruncNormal(layer.wq, s, -3 * s, 3 * s);
    TruncNormal(layer.wk, s, -3 * s, 3 * s);
    TruncNormal(layer.wv, s, -3 * s, 3 * s);
    TruncNormal(layer.wo, s / factor, -3 * s, 3 * s);
    layer.attention_norm.fill_(1.0);
    if (layer.q_norm.defined()) {
      layer.q_norm.fill_(1.0);
      layer.k_norm.fill_(1.0);
    }
    // FeedForward.reset_parameters: w1, w3 at s_in; w2 at s_out / factor.
    const double s_in = s;
    const double s_out =
        (args_.init_base_std > 0 ? args_.init_base_std : std::pow(hidden_dim_, -0.5)) / factor;
    TruncNormal(layer.w1, s_in, -3 * s_in, 3 * s_in);
    TruncNormal(layer.w3, s_in, -3 * s_in, 3 * s_in);
    TruncNormal(layer.w2, s_out, -3 * s_out, 3 * s_out);
    layer.ffn_norm.fill_(1.0);
  }
}

torch::Tensor Transformer::RmsNorm(const torch::Tensor& x, const torch::Tensor& weight) const {
  // x · rsqrt(mean(x²) + eps) · w, in float32; one fused pass each way on CPU.
  return FusedRmsNorm(x, weight, args_.norm_eps);
}

torch::Tensor Transformer::ApplyRope(const torch::Tensor& x) const {
  // x: (B, S, H, D); rotate interleaved pairs (2i, 2i+1) by position · freq_i. As complex
  // numbers that is one multiplication: (x0 + i·x1)(cos + i·sin)
  //   = (x0·cos − x1·sin) + i·(x0·sin + x1·cos), Lingua's rotation matrix applied per pair.
  const int64_t seq_len = x.size(1);
  torch::Tensor pairs = torch::view_as_complex(
      x.reshape({x.size(0), seq_len, x.size(2), head_dim_ / 2, 2}));  // (B, S, H, D/2) complex
  torch::Tensor rotated = pairs * rope_.narrow(1, 0, seq_len);
  return torch::view_as_real(rotated).flatten(3);  // (B, S, H, D)
}

const torch::Tensor& Transformer::CausalMask(int64_t seq_len) {
  if (!causal_mask_.defined() || causal_mask_.size(0) != seq_len) {
    causal_mask_ = torch::full({seq_len, seq_len}, -std::numeric_limits<float>::infinity(),
                               torch::TensorOptions().dtype(torch::kFloat32).device(device_))
                       .triu(1);
  }
  return causal_mask_;
}

torch::Tensor Transformer::Attention(const Layer& layer, const torch::Tensor& x,
                                     double* logit_max) {
  const int64_t bsz = x.size(0), seq_len = x.size(1);
  const int64_t n_heads = args_.n_heads;
  const int64_t q_width = n_heads * head_dim_;
  // Three GEMMs rather than one on a stacked weight: slicing the stacked output costs a
  // full-size copy in the backward pass, more than the GEMMs save (measured).
  torch::Tensor q = torch::matmul(x, layer.wq.t()).view({bsz, seq_len, n_heads, head_dim_});
  torch::Tensor k = torch::matmul(x, layer.wk.t()).view({bsz, seq_len, n_kv_heads_, head_dim_});
  torch::Tensor v = torch::matmul(x, layer.wv.t()).view({bsz, seq_len, n_kv_heads_, head_dim_});
  if (layer.q_norm.defined()) {
    q = RmsNorm(q, layer.q_norm);
    k = RmsNorm(k, layer.k_norm);
  }
  q = ApplyRope(q);
  k = ApplyRope(k);
  if (n_kv_heads_ != n_heads) {  // Grouped-query attention: repeat each kv head.
    const int64_t rep = n_heads / n_kv_heads_;
    k = k.unsqueeze(3).expand({bsz, seq_len, n_kv_heads_, rep, head_dim_}).reshape(
        {bsz, seq_len, n_heads, head_dim_});
    v = v.unsqueeze(3).expand({bsz, seq_len, n_kv_heads_, rep, head_dim_}).reshape(
        {bsz, seq_len, n_heads, head_dim_});
  }
  q = q.transpose(1, 2);  // (B, H, S, D)
  k = k.transpose(1, 2);
  v = v.transpose(1, 2);
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
#if SWEEP_TORCH_AT_LEAST(2, 0)
  // On CUDA, LibTorch 2.x's fused attention (flash / memory-efficient kernels under bf16
  // autocast): the (S, S) scores are never materialised. Probe steps need the largest logit,
  // so they take the explicit path below.
  if (q.is_cuda() && logit_max == nullptr) {
    torch::Tensor out = at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{},
                                                         /*dropout_p=*/0.0, /*is_causal=*/true);
    out = out.transpose(1, 2).reshape({bsz, seq_len, q_width});
    return torch::matmul(out, layer.wo.t());
  }
#endif
  // scores = q·kᵀ·scale + mask, one fused call.  (B, H, S, S)
  torch::Tensor scores =
      torch::baddbmm(CausalMask(seq_len), q.reshape({bsz * n_heads, seq_len, head_dim_}),
                     k.reshape({bsz * n_heads, seq_len, head_dim_}).transpose(1, 2),
                     /*beta=*/1.0, /*alpha=*/scale);
  if (logit_max != nullptr) *logit_max = scores.detach().max().item<double>();
  torch::Tensor probs = torch::softmax(scores, -1);
  torch::Tensor out = torch::bmm(probs, v.reshape({bsz * n_heads, seq_len, head_dim_}));
  out = out.view({bsz, n_heads, seq_len, head_dim_}).transpose(1, 2).reshape({bsz, seq_len, q_width});
  return torch::matmul(out, layer.wo.t());  // (B, S, dim)
}

torch::Tensor Transformer::FeedForward(const Layer& layer, const torch::Tensor& x) const {
  torch::Tensor x1 = torch::matmul(x, layer.w1.t());  // (B, S, hidden)
  torch::Tensor x3 = torch::matmul(x, layer.w3.t());
  return torch::matmul(FusedSwiGlu(x1, x3), layer.w2.t());  // silu(x1)·x3: (B, S, dim)
}

torch::Tensor Transformer::Forward(const torch::Tensor& tokens, ForwardProbes* probes) {
  if (probes != nullptr) probes->attn_logit_max.assign(layers_.size(), 0.0);
  torch::Tensor h = torch::embedding(tok_embeddings_, tokens);  // (B, S, dim)
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& layer = layers_[i];
    double* logit_max = probes != nullptr ? &probes->attn_logit_max[i] : nullptr;
    h = h + Attention(layer, RmsNorm(h, layer.attention_norm), logit_max);
    h = h + FeedForward(layer, RmsNorm(h, layer.ffn_norm));
  }
  const torch::Tensor& out_weight = output_.defined() ? output_ : tok_embeddings_;
  return torch::matmul(RmsNorm(h, norm_), out_weight.t());  // (B, S, V)
}

}  // namespace sweep::trainer
