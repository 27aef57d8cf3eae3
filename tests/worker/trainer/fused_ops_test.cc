#include "worker/trainer/fused_ops.h"

#include <gtest/gtest.h>

namespace sweep::trainer {
namespace {

// Values and gradients of the fused kernels against the composite ATen ops they replace.
struct Grads {
  torch::Tensor out;
  std::vector<torch::Tensor> grads;
};

template <typename F>
Grads ValuesAndGrads(F f, std::vector<torch::Tensor> inputs, const torch::Tensor& upstream) {
  for (auto& t : inputs) t = t.detach().clone().set_requires_grad(true);
  torch::Tensor out = f(inputs);
  return {out.detach(), torch::autograd::grad({out}, inputs, {upstream})};
}

void ExpectClose(const Grads& fused, const Grads& composite) {
  EXPECT_TRUE(torch::allclose(fused.out, composite.out, 1e-5, 1e-6))
      << (fused.out - composite.out).abs().max();
  ASSERT_EQ(fused.grads.size(), composite.grads.size());
  for (size_t i = 0; i < fused.grads.size(); ++i) {
    EXPECT_TRUE(torch::allclose(fused.grads[i], composite.grads[i], 1e-4, 1e-5))
        << "input " << i << ": " << (fused.grads[i] - composite.grads[i]).abs().max();
  }
}

TEST(FusedOpsTest, RmsNormMatchesCompositeOps) {
  torch::manual_seed(0);
  for (auto shape : std::vector<std::vector<int64_t>>{{4, 7, 32}, {3, 5, 2, 16}, {1, 1, 8}}) {
    const int64_t n = shape.back();
    torch::Tensor x = torch::randn(shape) * 3;
    torch::Tensor w = torch::rand({n}) + 0.5;
    torch::Tensor g = torch::randn(shape);
    const double eps = 1e-5;
    Grads fused = ValuesAndGrads([&](auto& in) { return FusedRmsNorm(in[0], in[1], eps); }, {x, w}, g);
    Grads composite = ValuesAndGrads(
        [&](auto& in) {
          return in[0] * torch::rsqrt((in[0] * in[0]).mean(-1, true) + eps) * in[1];
        },
        {x, w}, g);
    ExpectClose(fused, composite);
  }
}

TEST(FusedOpsTest, RmsNormAcceptsNonContiguousInput) {
  torch::Tensor x = torch::randn({6, 16}).t();  // (16, 6), not contiguous
  torch::Tensor w = torch::ones({6});
  torch::Tensor expected = x * torch::rsqrt((x * x).mean(-1, true) + 1e-6) * w;
  EXPECT_TRUE(torch::allclose(FusedRmsNorm(x, w, 1e-6), expected, 1e-5, 1e-6));
}

TEST(FusedOpsTest, SwiGluMatchesCompositeOps) {
  torch::manual_seed(1);
  torch::Tensor a = torch::randn({5, 9, 40}) * 4;  // both tails of the sigmoid
  torch::Tensor b = torch::randn({5, 9, 40});
  torch::Tensor g = torch::randn({5, 9, 40});
  Grads fused = ValuesAndGrads([&](auto& in) { return FusedSwiGlu(in[0], in[1]); }, {a, b}, g);
  Grads composite = ValuesAndGrads([&](auto& in) { return torch::silu(in[0]) * in[1]; }, {a, b}, g);
  ExpectClose(fused, composite);
}

}  // namespace
}  // namespace sweep::trainer
