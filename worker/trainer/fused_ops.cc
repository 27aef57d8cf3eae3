#include "worker/trainer/fused_ops.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace sweep::trainer {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

constexpr int64_t kRowsPerTask = 16;
constexpr int64_t kElementsPerTask = 16384;

class RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_in,
                               const torch::Tensor& weight_in, double eps) {
    const torch::Tensor x = x_in.contiguous();
    const torch::Tensor weight = weight_in.contiguous();
    const int64_t n = x.size(-1);
    const int64_t rows = x.numel() / n;
    torch::Tensor y = torch::empty_like(x);
    torch::Tensor rstd = torch::empty({rows}, x.options());  // rsqrt(mean(x²) + eps) per row
    const float* __restrict xp = x.data_ptr<float>();
    const float* __restrict wp = weight.data_ptr<float>();
    float* __restrict yp = y.data_ptr<float>();
    float* __restrict rp = rstd.data_ptr<float>();
    at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const float* __restrict xr = xp + row * n;
        double sum_sq = 0;
        for (int64_t i = 0; i < n; ++i) sum_sq += static_cast<double>(xr[i]) * xr[i];
        const float r = static_cast<float>(1.0 / std::sqrt(sum_sq / n + eps));
        rp[row] = r;
        float* __restrict yr = yp + row * n;
        for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * r * wp[i];
      }
    });
    ctx->save_for_backward({x, weight, rstd});
    return y;
  }

  // y_i = x_i·r·w_i with r = (mean(x²) + eps)^-½, so for one row
  //   dx_j = r·g_j·w_j − x_j·r³/n · Σ_i g_i·w_i·x_i,    dw_i = Σ_rows g_i·x_i·r.
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& x = saved[0];
    const torch::Tensor& weight = saved[1];
    const torch::Tensor& rstd = saved[2];
    const torch::Tensor g = grads[0].contiguous();
    const int64_t n = x.size(-1);
    const int64_t rows = x.numel() / n;
    torch::Tensor gx = torch::empty_like(x);
    // One weight-gradient accumulator per thread, summed at the end.
    const int threads = at::get_num_threads();
    std::vector<double> partial(static_cast<size_t>(threads) * n, 0.0);
    const float* __restrict xp = x.data_ptr<float>();
    const float* __restrict wp = weight.data_ptr<float>();
    const float* __restrict rp = rstd.data_ptr<float>();
    const float* __restrict gp = g.data_ptr<float>();
    float* __restrict gxp = gx.data_ptr<float>();
    at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
      double* gw = partial.data() + static_cast<size_t>(at::get_thread_num()) * n;
      for (int64_t row = begin; row < end; ++row) {
        const float* __restrict xr = xp + row * n;
        const float* __restrict gr = gp + row * n;
        const double r = rp[row];
        double dot = 0;  // Σ g·w·x
        for (int64_t i = 0; i < n; ++i) {
          dot += static_cast<double>(gr[i]) * wp[i] * xr[i];
          gw[i] += static_cast<double>(gr[i]) * xr[i] * r;
        }
        const double c = dot * r * r * r / n;
        float* __restrict gxr = gxp + row * n;
        for (int64_t i = 0; i < n; ++i) {
          gxr[i] = static_cast<float>(r * gr[i] * wp[i] - xr[i] * c);
        }
      }
    });
    torch::Tensor gw = torch::zeros({n}, x.options().dtype(torch::kDouble));
    double* gwp = gw.data_ptr<double>();
    for (int t = 0; t < threads; ++t) {
      for (int64_t i = 0; i < n; ++i) gwp[i] += partial[static_cast<size_t>(t) * n + i];
    }
    return {gx, gw.to(torch::kFloat32).view(weight.sizes()), torch::Tensor()};
  }
};

class SwiGluFunction : public torch::autograd::Function<SwiGluFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& a_in,
                               const torch::Tensor& b_in) {
    const torch::Tensor a = a_in.contiguous();
    const torch::Tensor b = b_in.contiguous();
    // σ(a) through ATen's vectorised exp; the rest is one pass that the compiler vectorises.
    const torch::Tensor sig = torch::sigmoid(a);
    torch::Tensor out = torch::empty_like(a);
    const float* __restrict ap = a.data_ptr<float>();
    const float* __restrict bp = b.data_ptr<float>();
    const float* __restrict sp = sig.data_ptr<float>();
    float* __restrict op = out.data_ptr<float>();
    at::parallel_for(0, a.numel(), kElementsPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) op[i] = ap[i] * sp[i] * bp[i];
    });
    ctx->save_for_backward({a, b, sig});
    return out;
  }

  // out = a·σ(a)·b:  da = g·b·σ(a)·(1 + a·(1 − σ(a))),  db = g·a·σ(a).
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& a = saved[0];
    const torch::Tensor& b = saved[1];
    const torch::Tensor& sig = saved[2];
    const torch::Tensor g = grads[0].contiguous();
    torch::Tensor ga = torch::empty_like(a);
    torch::Tensor gb = torch::empty_like(b);
    const float* __restrict ap = a.data_ptr<float>();
    const float* __restrict bp = b.data_ptr<float>();
    const float* __restrict sp = sig.data_ptr<float>();
    const float* __restrict gp = g.data_ptr<float>();
    float* __restrict gap = ga.data_ptr<float>();
    float* __restrict gbp = gb.data_ptr<float>();
    at::parallel_for(0, a.numel(), kElementsPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        gap[i] = gp[i] * bp[i] * sp[i] * (1.0f + ap[i] * (1.0f - sp[i]));
        gbp[i] = gp[i] * ap[i] * sp[i];
      }
    });
    return {ga, gb};
  }
};

bool Fusable(const torch::Tensor& t) { return t.device().is_cpu() && t.scalar_type() == torch::kFloat32; }

}  // namespace

torch::Tensor FusedRmsNorm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  if (!Fusable(x) || !Fusable(weight)) {  // e.g. bf16 activations on CUDA: norm in float32
    const torch::Tensor xf = x.to(torch::kFloat32);
    return (xf * torch::rsqrt((xf * xf).mean(-1, /*keepdim=*/true) + eps) *
            weight.to(torch::kFloat32))
        .to(x.scalar_type());
  }
  return RmsNormFunction::apply(x, weight, eps);
}

torch::Tensor FusedSwiGlu(const torch::Tensor& a, const torch::Tensor& b) {
  if (!Fusable(a) || !Fusable(b)) return torch::silu(a) * b;
  return SwiGluFunction::apply(a, b);
}

}  // namespace sweep::trainer
