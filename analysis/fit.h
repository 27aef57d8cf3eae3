// The numerics behind sweep analysis: least squares (Eigen), the vertex of a quadratic with
// Fieller's interval, power laws with residual-bootstrap-t intervals, and the rolling z-score
// spike rule. No I/O, no SQLite; analysis.h builds the sweep-level answers on top.
//
// Contract
//   * Every fit checks its input first: fewer points than parameters, a singular design
//     (all x equal), or a non-finite value is a FailedPrecondition / InvalidArgument status
//     whose message says what is missing. A fit never returns NaN and never compares one.
//   * Intervals may be unbounded on either side (a flat quadratic, too few points to
//     resample): such ends are +/-infinity and Interval::bounded() is false. Callers print
//     them as "unbounded" and write them to JSON as null.
//   * Bootstraps are seeded (std::mt19937_64): the same input and seed give the same interval.
//
// Thread-safety: pure functions on values.
#ifndef SWEEP_ANALYSIS_FIT_H_
#define SWEEP_ANALYSIS_FIT_H_

#include <Eigen/Dense>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/status/statusor.h"

namespace sweep::analysis {

inline constexpr double kInf = std::numeric_limits<double>::infinity();

// A closed interval [lo, hi]; an unbounded end is -inf / +inf.
struct Interval {
  double lo = -kInf;
  double hi = kInf;
  bool bounded() const { return lo > -kInf && hi < kInf; }
  bool Contains(double x) const { return lo <= x && x <= hi; }
};

// Two-sided Student t quantile: t such that P(|T| <= t) = confidence, with `dof` degrees of
// freedom (Boost.Math). dof must be >= 1.
double StudentTQuantile(double confidence, int dof);

// Ordinary least squares y = X beta + e.
struct LinearModelFit {
  Eigen::VectorXd beta;
  Eigen::MatrixXd xtx_inv;  // (X'X)^-1; the covariance of beta is sigma^2 * xtx_inv.
  Eigen::VectorXd residuals;
  double sigma = 0;  // Residual standard deviation sqrt(RSS / dof); 0 when dof == 0.
  int n = 0;
  int dof = 0;    // n - columns.
  double r2 = 0;  // 1 - RSS/TSS about the mean of y; 1 when TSS == 0.

  // Standard error of c'beta (0 when dof == 0: unknown, not zero; check dof first).
  double ContrastSe(const Eigen::VectorXd& c) const;
};

// Fails (FailedPrecondition) when n < columns or X is rank deficient, and (InvalidArgument)
// on a non-finite entry.
absl::StatusOr<LinearModelFit> FitLinearModel(const Eigen::MatrixXd& x, const Eigen::VectorXd& y);

// y = a + b x + c x^2 by least squares on the given points (repeated x allowed: replicate
// seeds at one lr), and where it is lowest.
struct QuadraticFit {
  // Fitted in u = x - x0 (x0: the mean of x) for conditioning: y = a + b u + c u^2.
  LinearModelFit model;  // beta = (a, b, c)
  double x0 = 0;
  double a = 0, b = 0, c = 0;
  double x_min = 0, x_max = 0;  // span of the fitted x
  bool convex() const { return c > 0; }
  // Where the parabola is lowest, x0 - b / 2c; only meaningful when convex().
  double Vertex() const { return x0 - b / (2 * c); }
  // The fitted value at x.
  double ValueAt(double x) const { return a + b * (x - x0) + c * (x - x0) * (x - x0); }
  // Delta-method standard error of the vertex from the covariance; 0 when dof == 0.
  double VertexSe() const;
  // Fieller's interval for the vertex at `confidence` (t quantile with the fit's dof): the
  // set of x where b + 2cx = 0 is not rejected. Unbounded when the curvature is not
  // significantly positive; FailedPrecondition when dof == 0 (no residual left).
  absl::StatusOr<Interval> VertexInterval(double confidence) const;
};

// Needs >= 3 points and >= 3 distinct x.
absl::StatusOr<QuadraticFit> FitQuadratic(const std::vector<double>& x,
                                          const std::vector<double>& y);

struct BootstrapOptions {
  int resamples = 1000;
  double confidence = 0.90;
  uint64_t seed = 0x5eed;
};

// log10 y = intercept + slope * log10 x, i.e. y = 10^intercept * x^slope, on positive data,
// with residual-bootstrap-t intervals (Davison & Hinkley 1997, algorithm 6.3 with modified
// residuals e_i / sqrt(1 - h_i), studentized): the resampled replicates are kept so that the
// law can be evaluated with an interval anywhere (Predict).
class PowerLawFit {
 public:
  // Fails with fewer than 2 points, all x equal, or a non-positive or non-finite value.
  static absl::StatusOr<PowerLawFit> Fit(const std::vector<double>& x, const std::vector<double>& y,
                                         const BootstrapOptions& options);

  int n() const { return line_.n; }
  double exponent() const { return line_.beta(1); }
  double log10_prefactor() const { return line_.beta(0); }
  double prefactor() const;
  double r2() const { return line_.r2; }
  double exponent_se() const { return line_.ContrastSe(Contrast(0.0, 1.0)); }
  double log10_x_min() const { return x_lo_; }
  double log10_x_max() const { return x_hi_; }
  // Intervals at options.confidence. Unbounded with 2 points (nothing to resample) and when
  // too many resamples are degenerate for the quantile to be finite.
  Interval exponent_ci() const { return StudentizedInterval(Contrast(0.0, 1.0)); }
  Interval log10_prefactor_ci() const { return StudentizedInterval(Contrast(1.0, 0.0)); }
  // The law at x (> 0), and the interval of log10 of it (the fitted mean, not a prediction
  // interval for one more point).
  double Predict(double x) const;
  Interval PredictLog10Interval(double x) const;

 private:
  PowerLawFit() = default;
  static Eigen::VectorXd Contrast(double c0, double c1);
  Interval StudentizedInterval(const Eigen::VectorXd& c) const;

  LinearModelFit line_;
  double x_lo_ = 0, x_hi_ = 0;
  BootstrapOptions options_;
  Eigen::MatrixXd boot_beta_;   // (resamples, 2)
  Eigen::VectorXd boot_sigma_;  // (resamples)
};

// Residual bootstrap-t interval for c'beta of a general linear model (used by the batch-size
// fit, which has one intercept per family). Unbounded when dof == 0.
Interval BootstrapTInterval(const Eigen::MatrixXd& x, const LinearModelFit& fit,
                            const Eigen::VectorXd& c, const BootstrapOptions& options);

// The rolling z-score spike rule (OLMo-core's, and the database's grad_norm_spikes view):
// a value is a spike when it is more than `threshold` population standard deviations above
// the mean of the finite values among the previous `window` logged values, once at least
// `min_values` of them exist. Non-finite values are never spikes and never enter a window
// (they still occupy a row, as NULLs do in the view's ROWS window). Earlier spikes stay in
// the window, as in the view.
struct SpikeRule {
  int window = 128;
  int min_values = 20;
  double threshold = 6.0;
};

struct DetectedSpike {
  size_t index = 0;  // into the trace
  double value = 0;
  double mean = 0;
  double z = 0;
};

// `values` in step order; `finite[i]` false marks a non-finite entry (its value is ignored).
std::vector<DetectedSpike> DetectSpikes(const std::vector<double>& values,
                                        const std::vector<bool>& finite, const SpikeRule& rule);

// The q-quantile (0..1) of sorted values by linear interpolation (type 7); values may hold
// +/-inf, never NaN.
double SortedQuantile(const std::vector<double>& sorted, double q);

}  // namespace sweep::analysis

#endif  // SWEEP_ANALYSIS_FIT_H_
