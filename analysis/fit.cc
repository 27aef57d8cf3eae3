#include "analysis/fit.h"

#include <algorithm>
#include <boost/math/distributions/students_t.hpp>
#include <cmath>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sweep::analysis {
namespace {

bool AllFinite(const Eigen::MatrixXd& m) { return m.allFinite(); }

// Replicates of a residual bootstrap: rows of beta* and their residual sd sigma*.
struct Replicates {
  Eigen::MatrixXd beta;   // (resamples, p)
  Eigen::VectorXd sigma;  // (resamples)
};

// Davison & Hinkley (1997), algorithm 6.3: resample the modified residuals
// r_i = e_i / sqrt(1 - h_i), centred, onto the fitted values, and refit. Points with leverage
// 1 (fitted exactly whatever their noise, e.g. the only point of a family) give no residual.
// Empty when there is nothing to resample (dof == 0).
Replicates ResidualBootstrap(const Eigen::MatrixXd& x, const LinearModelFit& fit,
                             const BootstrapOptions& options) {
  Replicates out;
  if (fit.dof <= 0 || options.resamples <= 0) return out;
  std::vector<double> pool;
  for (int i = 0; i < fit.n; ++i) {
    const double h = x.row(i).dot(fit.xtx_inv * x.row(i).transpose());
    if (h < 1.0 - 1e-9) pool.push_back(fit.residuals(i) / std::sqrt(1.0 - h));
  }
  if (pool.empty()) return out;
  double mean = 0;
  for (double r : pool) mean += r;
  mean /= static_cast<double>(pool.size());
  for (double& r : pool) r -= mean;

  const Eigen::MatrixXd solve = fit.xtx_inv * x.transpose();  // beta = solve * y
  const Eigen::VectorXd fitted = x * fit.beta;
  std::mt19937_64 rng(options.seed);
  std::uniform_int_distribution<size_t> pick(0, pool.size() - 1);
  out.beta.resize(options.resamples, x.cols());
  out.sigma.resize(options.resamples);
  Eigen::VectorXd y(fit.n);
  for (int b = 0; b < options.resamples; ++b) {
    for (int i = 0; i < fit.n; ++i) y(i) = fitted(i) + pool[pick(rng)];
    const Eigen::VectorXd beta = solve * y;
    const double rss = (y - x * beta).squaredNorm();
    out.beta.row(b) = beta.transpose();
    out.sigma(b) = std::sqrt(rss / fit.dof);
  }
  return out;
}

// Bootstrap-t: t*_b = (c'beta*_b - c'beta) / se*_b; the interval is
// [c'beta - t*_(1-a/2) se, c'beta - t*_(a/2) se]. A resample whose residuals are all equal has
// se* = 0: its t* is 0 when the contrast did not move and +/-inf when it did, so a small
// sample that resamples into degenerate sets gets a wide (possibly unbounded) interval.
Interval StudentizedFromReplicates(const LinearModelFit& fit, const Replicates& reps,
                                   const Eigen::VectorXd& c, double confidence) {
  const double estimate = c.dot(fit.beta);
  if (reps.beta.rows() == 0) return Interval{};
  const double q = std::sqrt(std::max(0.0, c.dot(fit.xtx_inv * c)));
  const double se = fit.sigma * q;
  if (!(se > 0)) return Interval{estimate, estimate};  // an exact fit: nothing varies
  const double tiny = 1e-9 * se;
  std::vector<double> t;
  t.reserve(reps.beta.rows());
  for (int b = 0; b < reps.beta.rows(); ++b) {
    const double moved = reps.beta.row(b).dot(c) - estimate;
    const double se_b = reps.sigma(b) * q;
    if (se_b > tiny) {
      t.push_back(moved / se_b);
    } else if (std::abs(moved) <= tiny) {
      t.push_back(0.0);
    } else {
      t.push_back(moved > 0 ? kInf : -kInf);
    }
  }
  std::sort(t.begin(), t.end());
  const double alpha = 1.0 - confidence;
  const double t_lo = SortedQuantile(t, alpha / 2);
  const double t_hi = SortedQuantile(t, 1.0 - alpha / 2);
  return Interval{estimate - t_hi * se, estimate - t_lo * se};
}

}  // namespace

double StudentTQuantile(double confidence, int dof) {
  boost::math::students_t dist(static_cast<double>(std::max(dof, 1)));
  return boost::math::quantile(dist, 0.5 + confidence / 2.0);
}

double SortedQuantile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0.0;
  const double pos = std::clamp(q, 0.0, 1.0) * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  const double frac = pos - static_cast<double>(lo);
  const double a = sorted[lo];
  const double b = sorted[hi];
  if (frac == 0.0 || a == b) return a;
  if (std::isinf(a)) return a;  // -inf below a finite or infinite neighbour
  if (std::isinf(b)) return b;  // +inf above
  return a + frac * (b - a);
}

double LinearModelFit::ContrastSe(const Eigen::VectorXd& c) const {
  return sigma * std::sqrt(std::max(0.0, c.dot(xtx_inv * c)));
}

absl::StatusOr<LinearModelFit> FitLinearModel(const Eigen::MatrixXd& x, const Eigen::VectorXd& y) {
  if (x.rows() != y.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("least squares: ", x.rows(), " rows of X but ", y.size(), " values of y"));
  }
  if (!AllFinite(x) || !y.allFinite()) {
    return absl::InvalidArgumentError("least squares: a value is not finite");
  }
  const int n = static_cast<int>(x.rows());
  const int p = static_cast<int>(x.cols());
  if (n < p) {
    return absl::FailedPreconditionError(
        absl::StrCat("least squares: ", n, " points for ", p, " parameters"));
  }
  Eigen::ColPivHouseholderQR<Eigen::MatrixXd> qr(x);
  if (qr.rank() < p) {
    return absl::FailedPreconditionError(
        "least squares: the points do not determine the fit (too few distinct x)");
  }
  LinearModelFit fit;
  fit.n = n;
  fit.dof = n - p;
  fit.beta = qr.solve(y);
  fit.residuals = y - x * fit.beta;
  // (X'X)^-1 = (R'R)^-1 with the column permutation of the QR, better conditioned than
  // inverting X'X directly.
  const Eigen::MatrixXd r =
      qr.matrixQR().topLeftCorner(p, p).template triangularView<Eigen::Upper>();
  const Eigen::MatrixXd r_inv =
      r.template triangularView<Eigen::Upper>().solve(Eigen::MatrixXd::Identity(p, p));
  const Eigen::MatrixXd perm = qr.colsPermutation();
  fit.xtx_inv = perm * (r_inv * r_inv.transpose()) * perm.transpose();
  const double rss = fit.residuals.squaredNorm();
  fit.sigma = fit.dof > 0 ? std::sqrt(rss / fit.dof) : 0.0;
  const double tss = (y.array() - y.mean()).matrix().squaredNorm();
  fit.r2 = tss > 0 ? 1.0 - rss / tss : 1.0;
  return fit;
}

double QuadraticFit::VertexSe() const {
  if (model.dof <= 0 || !(c != 0)) return 0.0;
  Eigen::Vector3d g(0.0, -1.0 / (2 * c), b / (2 * c * c));
  return model.ContrastSe(g);
}

absl::StatusOr<Interval> QuadraticFit::VertexInterval(double confidence) const {
  if (model.dof <= 0) {
    return absl::FailedPreconditionError(
        "no residual degrees of freedom to estimate the noise (as many points as parameters)");
  }
  // Fieller: u is in the set when (b + 2cu)^2 <= t^2 Var(b + 2cu), a quadratic in u.
  const double t = StudentTQuantile(confidence, model.dof);
  const Eigen::MatrixXd v = model.xtx_inv * (model.sigma * model.sigma);
  const double t2 = t * t;
  const double qa = 4 * (c * c - t2 * v(2, 2));
  const double qb = 4 * (b * c - t2 * v(1, 2));
  const double qc = b * b - t2 * v(1, 1);
  if (!(qa > 0) || !convex()) return Interval{};  // curvature not significant: unbounded
  const double disc = std::max(0.0, qb * qb - 4 * qa * qc);
  const double root = std::sqrt(disc);
  return Interval{x0 + (-qb - root) / (2 * qa), x0 + (-qb + root) / (2 * qa)};
}

absl::StatusOr<QuadraticFit> FitQuadratic(const std::vector<double>& x,
                                          const std::vector<double>& y) {
  if (x.size() != y.size())
    return absl::InvalidArgumentError("quadratic fit: x and y differ in length");
  if (x.size() < 3) {
    return absl::FailedPreconditionError(
        absl::StrCat("quadratic fit: ", x.size(), " points (3 needed)"));
  }
  QuadraticFit fit;
  double sum = 0;
  for (double v : x) {
    if (!std::isfinite(v)) return absl::InvalidArgumentError("quadratic fit: x is not finite");
    sum += v;
  }
  fit.x0 = sum / static_cast<double>(x.size());
  fit.x_min = *std::min_element(x.begin(), x.end());
  fit.x_max = *std::max_element(x.begin(), x.end());
  Eigen::MatrixXd design(x.size(), 3);
  Eigen::VectorXd values(y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double u = x[i] - fit.x0;
    design(i, 0) = 1.0;
    design(i, 1) = u;
    design(i, 2) = u * u;
    values(i) = y[i];
  }
  absl::StatusOr<LinearModelFit> model = FitLinearModel(design, values);
  if (!model.ok()) {
    return absl::Status(model.status().code(),
                        absl::StrCat("quadratic fit: ", model.status().message()));
  }
  fit.model = *std::move(model);
  fit.a = fit.model.beta(0);
  fit.b = fit.model.beta(1);
  fit.c = fit.model.beta(2);
  return fit;
}

absl::StatusOr<PowerLawFit> PowerLawFit::Fit(const std::vector<double>& x,
                                             const std::vector<double>& y,
                                             const BootstrapOptions& options) {
  if (x.size() != y.size())
    return absl::InvalidArgumentError("power law: x and y differ in length");
  if (x.size() < 2) {
    return absl::FailedPreconditionError(
        absl::StrCat("power law: ", x.size(), " point(s) (2 needed)"));
  }
  PowerLawFit fit;
  fit.options_ = options;
  Eigen::MatrixXd design(x.size(), 2);
  Eigen::VectorXd values(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    if (!(std::isfinite(x[i]) && std::isfinite(y[i]) && x[i] > 0 && y[i] > 0)) {
      return absl::InvalidArgumentError("power law: a value is not positive and finite");
    }
    design(i, 0) = 1.0;
    design(i, 1) = std::log10(x[i]);
    values(i) = std::log10(y[i]);
  }
  fit.x_lo_ = design.col(1).minCoeff();
  fit.x_hi_ = design.col(1).maxCoeff();
  if (!(fit.x_hi_ > fit.x_lo_)) {
    return absl::FailedPreconditionError("power law: every point has the same x");
  }
  absl::StatusOr<LinearModelFit> line = FitLinearModel(design, values);
  if (!line.ok()) return line.status();
  fit.line_ = *std::move(line);
  Replicates reps = ResidualBootstrap(design, fit.line_, options);
  fit.boot_beta_ = std::move(reps.beta);
  fit.boot_sigma_ = std::move(reps.sigma);
  return fit;
}

double PowerLawFit::prefactor() const { return std::pow(10.0, log10_prefactor()); }

Eigen::VectorXd PowerLawFit::Contrast(double c0, double c1) {
  Eigen::VectorXd c(2);
  c << c0, c1;
  return c;
}

Interval PowerLawFit::StudentizedInterval(const Eigen::VectorXd& c) const {
  Replicates reps{boot_beta_, boot_sigma_};
  return StudentizedFromReplicates(line_, reps, c, options_.confidence);
}

double PowerLawFit::Predict(double x) const {
  return std::pow(10.0, line_.beta(0) + line_.beta(1) * std::log10(x));
}

Interval PowerLawFit::PredictLog10Interval(double x) const {
  return StudentizedInterval(Contrast(1.0, std::log10(x)));
}

Interval BootstrapTInterval(const Eigen::MatrixXd& x, const LinearModelFit& fit,
                            const Eigen::VectorXd& c, const BootstrapOptions& options) {
  return StudentizedFromReplicates(fit, ResidualBootstrap(x, fit, options), c, options.confidence);
}

std::vector<DetectedSpike> DetectSpikes(const std::vector<double>& values,
                                        const std::vector<bool>& finite, const SpikeRule& rule) {
  std::vector<DetectedSpike> spikes;
  const size_t n = std::min(values.size(), finite.size());
  const size_t window = static_cast<size_t>(std::max(rule.window, 1));
  for (size_t i = 0; i < n; ++i) {
    if (!finite[i]) continue;
    const size_t begin = i > window ? i - window : 0;
    // Two passes over the window (mean, then spread): exact enough that a flat trace has a
    // spread of exactly 0 and is never scored.
    int count = 0;
    double sum = 0;
    for (size_t j = begin; j < i; ++j) {
      if (!finite[j]) continue;
      sum += values[j];
      ++count;
    }
    if (count < rule.min_values || count == 0) continue;
    const double mean = sum / count;
    double ss = 0;
    for (size_t j = begin; j < i; ++j) {
      if (finite[j]) ss += (values[j] - mean) * (values[j] - mean);
    }
    const double sd = std::sqrt(ss / count);  // population, as the view's AVG(v^2) - AVG(v)^2
    if (!(sd > 0)) continue;
    const double z = (values[i] - mean) / sd;
    if (z > rule.threshold) spikes.push_back(DetectedSpike{i, values[i], mean, z});
  }
  return spikes;
}

}  // namespace sweep::analysis
