#include "worker/trainer/model.h"

#include <gtest/gtest.h>

#include <cmath>

#include "worker/trainer/optimizer.h"

namespace sweep::trainer {
namespace {

ModelArgs Tiny() {
  ModelArgs m;
  m.dim = 32;
  m.n_layers = 2;
  m.n_heads = 4;
  m.multiple_of = 16;
  return m;
}

TEST(ModelTest, FeedForwardHiddenSizeFollowsLingua) {
  struct Case {
    int dim;
    int multiple_of;
    double multiplier;
    int expected;
  } cases[] = {
      {2048, 256, 0, 5632},    // Lingua llama_1B
      {4096, 256, 0, 11008},   // Lingua llama_7B
      {1024, 256, 0, 2816},    // Lingua debug
      {128, 256, 0, 512},
      {4096, 1024, 1.3, 14336},  // Llama 3 8B
  };
  for (const Case& c : cases) {
    ModelArgs m;
    m.dim = c.dim;
    m.multiple_of = c.multiple_of;
    m.ffn_dim_multiplier = c.multiplier;
    EXPECT_EQ(FeedForwardHiddenDim(m), c.expected) << "dim " << c.dim;
  }
}

TEST(ModelTest, GroupsPartitionTheFlatBuffer) {
  Transformer model(Tiny(), 258, 16, torch::kCPU);
  int64_t next = 0;
  for (const auto& [offset, numel] : model.group_ranges()) {
    EXPECT_EQ(offset, next);
    EXPECT_GT(numel, 0);
    next = offset + numel;
  }
  EXPECT_EQ(next, model.num_params());
  ASSERT_EQ(model.group_names().size(), 2u * 2 + 3);
  EXPECT_EQ(model.group_names()[0], "tok_embeddings");
  EXPECT_EQ(model.group_names()[1], "layers.0.attention");
  EXPECT_EQ(model.group_names()[2], "layers.0.feed_forward");
  EXPECT_EQ(model.group_names().back(), "output");
  // Every parameter lies inside its group's range.
  for (const ParamInfo& p : model.params()) {
    const auto& [offset, numel] = model.group_ranges()[p.group];
    EXPECT_GE(p.offset, offset) << p.name;
    EXPECT_LE(p.offset + p.numel, offset + numel) << p.name;
  }
}

TEST(ModelTest, GradientsLandInTheFlatBufferAndMatchAutograd) {
  ModelArgs args = Tiny();
  args.n_kv_heads = 2;  // grouped-query attention
  args.qk_norm = true;
  Transformer model(args, 258, 16, torch::kCPU);
  model.InitWeights(3);
  torch::manual_seed(0);
  torch::Tensor tokens = torch::randint(0, 258, {2, 17}, torch::kInt64);
  auto loss_of = [&]() {
    torch::Tensor logits = model.Forward(tokens.narrow(1, 0, 16), nullptr);
    return torch::cross_entropy_loss(logits.reshape({-1, 258}), tokens.narrow(1, 1, 16).reshape({-1}));
  };
  // Reference gradients straight from autograd, per parameter.
  std::vector<torch::Tensor> views;
  for (const ParamInfo& p : model.params()) {
    views.push_back(model.flat_params().narrow(0, p.offset, p.numel));
  }
  model.ZeroGrad();
  loss_of().backward();
  torch::Tensor flat = model.flat_grads().clone();
  EXPECT_GT(flat.norm().item<double>(), 0.0);
  // Accumulation: a second backward without zeroing doubles the buffer.
  loss_of().backward();
  EXPECT_TRUE(torch::allclose(model.flat_grads(), 2 * flat, 1e-5, 1e-7));
  // Group norms squared sum to the total squared.
  double sum_sq = 0;
  for (const auto& [offset, numel] : model.group_ranges()) {
    sum_sq += std::pow(flat.narrow(0, offset, numel).norm().item<double>(), 2);
  }
  EXPECT_NEAR(sum_sq, std::pow(flat.norm().item<double>(), 2), 1e-5 * sum_sq);  // float32 sums
}

TEST(ModelTest, InitialisationFollowsLinguasScales) {
  ModelArgs args;
  args.dim = 256;
  args.n_layers = 4;
  args.n_heads = 4;
  args.init_std_factor = "current_depth";
  Transformer model(args, 258, 8, torch::kCPU);
  model.InitWeights(777);
  const double s = 1.0 / 16.0;  // dim^-0.5
  // A normal truncated at ±3σ has std 0.9866σ.
  const double trunc = 0.9866;
  for (const ParamInfo& p : model.params()) {
    torch::Tensor w = model.flat_params().narrow(0, p.offset, p.numel);
    const double std = w.std().item<double>();
    const double max_abs = w.abs().max().item<double>();
    if (p.name.find("norm") != std::string::npos) {
      EXPECT_EQ(w.min().item<float>(), 1.0f) << p.name;
      EXPECT_EQ(w.max().item<float>(), 1.0f) << p.name;
    } else if (p.name.find(".wq.") != std::string::npos || p.name.find(".w1.") != std::string::npos ||
               p.name == "tok_embeddings.weight" || p.name == "output.weight") {
      EXPECT_NEAR(std, s * trunc, 0.03 * s) << p.name;
      EXPECT_LE(max_abs, 3 * s + 1e-7) << p.name;
    } else if (p.name.find(".wo.") != std::string::npos) {
      const int depth = std::stoi(p.name.substr(7));
      EXPECT_NEAR(std, s / std::sqrt(2.0 * (depth + 1)), 0.04 * s) << p.name;
    } else if (p.name.find(".w2.") != std::string::npos) {
      const int depth = std::stoi(p.name.substr(7));
      const double s_out = std::pow(FeedForwardHiddenDim(args), -0.5) / std::sqrt(2.0 * (depth + 1));
      EXPECT_NEAR(std, s_out * trunc, 0.04 * s_out) << p.name;
      EXPECT_LE(max_abs, 3 * s_out + 1e-7) << p.name;
    }
  }
}

TEST(ModelTest, SameSeedSameWeights) {
  Transformer a(Tiny(), 258, 8, torch::kCPU), b(Tiny(), 258, 8, torch::kCPU),
      c(Tiny(), 258, 8, torch::kCPU);
  a.InitWeights(5);
  b.InitWeights(5);
  c.InitWeights(6);
  EXPECT_TRUE(torch::equal(a.flat_params(), b.flat_params()));
  EXPECT_FALSE(torch::equal(a.flat_params(), c.flat_params()));
}

TEST(ModelTest, AttentionIsCausalAndProbesAreReported) {
  Transformer model(Tiny(), 258, 16, torch::kCPU);
  model.InitWeights(1);
  torch::NoGradGuard no_grad;
  torch::Tensor tokens = torch::randint(0, 256, {1, 16}, torch::kInt64);
  ForwardProbes probes;
  torch::Tensor before = model.Forward(tokens, &probes);
  ASSERT_EQ(before.sizes(), (std::vector<int64_t>{1, 16, 258}));
  ASSERT_EQ(probes.attn_logit_max.size(), 2u);
  for (double m : probes.attn_logit_max) EXPECT_TRUE(std::isfinite(m));
  torch::Tensor changed = tokens.clone();
  changed[0][12] = (changed[0][12].item<int64_t>() + 1) % 256;
  torch::Tensor after = model.Forward(changed, nullptr);
  EXPECT_TRUE(torch::equal(before.narrow(1, 0, 12), after.narrow(1, 0, 12)));
  EXPECT_FALSE(torch::equal(before.narrow(1, 12, 4), after.narrow(1, 12, 4)));
}

TEST(OptimizerTest, AdamWStepMatchesTheFormula) {
  OptimArgs args;
  args.beta1 = 0.9;
  args.beta2 = 0.95;
  args.epsilon = 1e-8;
  torch::Tensor p = torch::tensor({1.0f, -2.0f, 0.5f});
  torch::Tensor g = torch::tensor({0.1f, 0.2f, -0.3f});
  AdamW adam(p, g, args);
  const double lr = 0.01, wd = 0.1;
  adam.Step(lr, lr * wd);
  adam.Step(lr, lr * wd);
  // By hand, in double, two steps with the same gradient.
  const double in[3] = {1.0, -2.0, 0.5}, gr[3] = {0.1, 0.2, -0.3};
  for (int i = 0; i < 3; ++i) {
    double x = in[i], m = 0, v = 0;
    for (int t = 1; t <= 2; ++t) {
      x *= 1 - lr * wd;
      m = 0.9 * m + 0.1 * gr[i];
      v = 0.95 * v + 0.05 * gr[i] * gr[i];
      const double denom = std::sqrt(v) / std::sqrt(1 - std::pow(0.95, t)) + 1e-8;
      x -= lr / (1 - std::pow(0.9, t)) * m / denom;
    }
    EXPECT_NEAR(p[i].item<double>(), x, 1e-6) << i;
  }
  EXPECT_EQ(adam.step(), 2);
}

}  // namespace
}  // namespace sweep::trainer
