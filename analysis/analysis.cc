// Analyze(): groups, cells, the optimum, stability, sensitivity, then the fits across groups.
#include "analysis/analysis.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace sweep::analysis {
namespace {

using json = nlohmann::json;

bool Contains(const std::vector<std::string>& list, const std::string& s) {
  return std::find(list.begin(), list.end(), s) != list.end();
}

std::optional<double> FiniteNumber(const json& v) {
  if (!v.is_number()) return std::nullopt;
  const double d = v.get<double>();
  if (!std::isfinite(d)) return std::nullopt;
  return d;
}

std::string ValueText(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "(unset)";
  return v.dump();
}

// "model.n_layers" -> "n_layers" unless two group keys share the last part.
std::vector<std::string> ShortNames(const std::vector<std::string>& keys) {
  std::vector<std::string> out;
  for (const std::string& key : keys) {
    const size_t dot = key.rfind('.');
    out.push_back(dot == std::string::npos ? key : key.substr(dot + 1));
  }
  for (size_t i = 0; i < out.size(); ++i) {
    for (size_t j = 0; j < out.size(); ++j) {
      if (i != j && out[i] == out[j]) out[i] = keys[i];
    }
  }
  return out;
}

// The metric as a score to minimise.
double Score(double metric, bool minimize) { return minimize ? metric : -metric; }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string Plural(int n, const char* one, const char* many) {
  return absl::StrCat(n, " ", n == 1 ? one : many);
}

// A trial after the first pass: its lr, its metric when it counts, its spikes.
struct Prepared {
  const TrialResult* trial = nullptr;
  double lr = 0;
  std::optional<double> metric;
  TrialSummary summary;
};

TrialSummary Summarize(const TrialResult& t, double lr, const AnalysisOptions& options) {
  TrialSummary s;
  s.trial_id = t.trial_id;
  s.trial_key = t.trial_key;
  s.lr = lr;
  s.state = t.state;
  s.outcome = t.outcome;
  s.diverged_step = t.diverged_step;
  if (t.outcome == TrialOutcome::kCompleted && t.final_metric && std::isfinite(*t.final_metric)) {
    s.final_metric = t.final_metric;
  }
  const int64_t warmup = t.shape ? t.shape->warmup : 0;
  for (const TracePoint& p : t.grad_norm) {
    if (!p.finite) {
      s.nonfinite_grad_norm = true;
      continue;
    }
    if (p.step > warmup &&
        (!s.peak_grad_norm_after_warmup || p.value > *s.peak_grad_norm_after_warmup)) {
      s.peak_grad_norm_after_warmup = p.value;
    }
  }
  auto count = [&](int64_t step, bool in_warmup) {
    if (in_warmup) {
      ++s.spikes_in_warmup;
      return;
    }
    ++s.spikes_after_warmup;
    if (!s.first_spike_after_warmup || step < *s.first_spike_after_warmup) {
      s.first_spike_after_warmup = step;
    }
  };
  if (t.spikes && options.use_spikes_table) {
    s.spike_source = "table";
    for (const SpikeRecord& r : *t.spikes) count(r.step, r.in_warmup);
  } else if (!t.grad_norm.empty()) {
    s.spike_source = "trace";
    std::vector<double> values;
    std::vector<bool> finite;
    for (const TracePoint& p : t.grad_norm) {
      values.push_back(p.value);
      finite.push_back(p.finite);
    }
    for (const DetectedSpike& d : DetectSpikes(values, finite, options.spike_rule)) {
      const int64_t step = t.grad_norm[d.index].step;
      count(step, step <= warmup);
    }
  } else {
    s.spike_source = "none";
  }
  return s;
}

void BuildCells(const std::vector<Prepared*>& members, GroupResult* g) {
  std::map<double, std::vector<Prepared*>> by_lr;
  for (Prepared* p : members) by_lr[p->lr].push_back(p);
  for (auto& [lr, list] : by_lr) {
    Cell c;
    c.lr = lr;
    std::vector<double> metrics;
    for (Prepared* p : list) {
      ++c.trials;
      if (p->trial->outcome == TrialOutcome::kDiverged) {
        ++c.diverged;
      } else if (p->metric) {
        ++c.completed;
        metrics.push_back(*p->metric);
      } else {
        ++c.incomplete;
      }
      if (p->summary.spikes_after_warmup > 0) ++c.spiking;
      if (p->summary.unstable()) ++c.unstable;
      g->trials.push_back(p->summary);
    }
    if (!metrics.empty() && c.diverged == 0) {
      double sum = 0;
      for (double m : metrics) sum += m;
      const double mean = sum / static_cast<double>(metrics.size());
      double ss = 0;
      for (double m : metrics) ss += (m - mean) * (m - mean);
      c.mean_metric = mean;
      c.metric_sd =
          metrics.size() > 1 ? std::sqrt(ss / static_cast<double>(metrics.size() - 1)) : 0.0;
    }
    if (c.diverged > 0 || c.spiking > 0) {
      c.stability = Cell::Stability::kUnstable;
    } else if (c.completed > 0) {
      c.stability = Cell::Stability::kStable;
    }
    g->cells.push_back(c);
  }
}

void FindOptimum(const std::vector<Prepared*>& members, const AnalysisOptions& options,
                 GroupResult* g) {
  LrOptimum& o = g->optimum;
  std::vector<size_t> scored;  // indices into g->cells with a mean metric, by lr
  for (size_t i = 0; i < g->cells.size(); ++i) {
    if (g->cells[i].mean_metric) scored.push_back(i);
  }
  if (scored.empty()) {
    o.kind = LrOptimum::Kind::kNone;
    o.note = "no learning rate finished in every seed without diverging";
    return;
  }
  size_t best = 0;
  for (size_t k = 1; k < scored.size(); ++k) {
    if (Score(*g->cells[scored[k]].mean_metric, options.minimize) <
        Score(*g->cells[scored[best]].mean_metric, options.minimize)) {
      best = k;
    }
  }
  const Cell& best_cell = g->cells[scored[best]];
  o.grid_lr = best_cell.lr;
  o.grid_metric = best_cell.mean_metric;
  o.lr = o.grid_lr;
  o.metric = o.grid_metric;

  // The near-optimal band (DeepSeek): every scored cell within the fraction of the best.
  const double best_metric = *best_cell.mean_metric;
  const double tolerance = options.near_optimal_fraction * std::abs(best_metric);
  auto in_band = [&](size_t k) {
    return Score(*g->cells[scored[k]].mean_metric, options.minimize) <=
           Score(best_metric, options.minimize) + tolerance;
  };
  Interval band{kInf, -kInf};
  for (size_t k = 0; k < scored.size(); ++k) {
    if (!in_band(k)) continue;
    g->cells[scored[k]].in_near_optimal_band = true;
    band.lo = std::min(band.lo, g->cells[scored[k]].lr);
    band.hi = std::max(band.hi, g->cells[scored[k]].lr);
  }
  g->near_optimal_band = band;

  if (scored.size() == 1) {
    o.kind = LrOptimum::Kind::kGridOnly;
    o.note = "one learning rate with a result: nothing to fit";
    o.ci_method = "none: one learning rate";
    return;
  }
  if (best == 0) {
    o.kind = LrOptimum::Kind::kAtLowEdge;
    o.note =
        "at the edge of the grid: the smallest learning rate with a result is the best; "
        "the optimum may be lower";
    o.ci_method = "none: at the edge of the grid";
    return;
  }
  if (best + 1 == scored.size()) {
    o.kind = LrOptimum::Kind::kAtHighEdge;
    const bool larger_failed = scored.back() + 1 < g->cells.size();
    o.note = larger_failed
                 ? "at the edge of the grid: the largest learning rate with a result is the best "
                   "and the larger ones diverged or did not finish; the optimum is at the "
                   "stability limit"
                 : "at the edge of the grid: the largest learning rate tried is the best; the "
                   "optimum may be higher";
    o.ci_method = "none: at the edge of the grid";
    return;
  }

  // The fit window: the contiguous near-optimal cells around the best, and one neighbour on
  // each side.
  size_t lo = best, hi = best;
  while (lo > 0 && in_band(lo - 1)) --lo;
  while (hi + 1 < scored.size() && in_band(hi + 1)) ++hi;
  if (lo > 0) --lo;
  if (hi + 1 < scored.size()) ++hi;
  std::set<double> window_lrs;
  for (size_t k = lo; k <= hi; ++k) {
    window_lrs.insert(g->cells[scored[k]].lr);
    o.fit_lrs.push_back(g->cells[scored[k]].lr);
  }
  // Seed-level points: with the same number of seeds per cell the coefficients are those of
  // the cell means, and the residuals also carry the seed-to-seed noise.
  std::vector<double> x, y;
  for (const Prepared* p : members) {
    if (p->metric && window_lrs.count(p->lr) > 0) {
      x.push_back(std::log10(p->lr));
      y.push_back(Score(*p->metric, options.minimize));
    }
  }
  o.fit_points = static_cast<int>(x.size());
  absl::StatusOr<QuadraticFit> fit = FitQuadratic(x, y);
  if (!fit.ok()) {
    o.kind = LrOptimum::Kind::kGridOnly;
    o.note = absl::StrCat("no vertex (", fit.status().message(), "); the grid's best cell");
    o.ci_method = "none: no fit";
    return;
  }
  if (!fit->convex()) {
    o.kind = LrOptimum::Kind::kGridOnly;
    o.note =
        "no vertex: the metric around the minimum is flat or not convex in log lr; the "
        "grid's best cell";
    o.ci_method = "none: no vertex";
    return;
  }
  const double vertex = fit->Vertex();
  if (vertex < fit->x_min || vertex > fit->x_max) {
    o.kind = LrOptimum::Kind::kGridOnly;
    o.note =
        "no vertex: the fitted minimum falls outside the fitted learning rates; the grid's "
        "best cell";
    o.ci_method = "none: no vertex";
    return;
  }
  o.kind = LrOptimum::Kind::kVertex;
  o.lr = std::pow(10.0, vertex);
  const double fitted = fit->ValueAt(vertex);
  o.metric = options.minimize ? fitted : -fitted;
  o.log10_se = fit->VertexSe();
  absl::StatusOr<Interval> ci = fit->VertexInterval(options.bootstrap.confidence);
  if (!ci.ok()) {
    o.ci_method = absl::StrCat("none: ", Plural(o.fit_points, "trial", "trials"), " for ",
                               "3 coefficients leave no residual to estimate the noise (add "
                               "seeds or learning rates near the minimum)");
    return;
  }
  o.ci = Interval{std::pow(10.0, ci->lo), std::pow(10.0, ci->hi)};  // 10^-inf = 0, 10^inf = inf
  o.ci_method =
      absl::StrCat("Fieller interval of the vertex from the quadratic's covariance (",
                   Plural(o.fit_points, "trial", "trials"), ", ", fit->model.dof, " dof)");
  if (!ci->bounded()) {
    absl::StrAppend(&o.ci_method, "; unbounded: the curvature is not significant");
  }
}

void FindMaxStable(GroupResult* g) {
  MaxStableLr& m = g->max_stable;
  std::vector<const Cell*> judged;
  for (const Cell& c : g->cells) {
    if (c.stability != Cell::Stability::kUnknown) judged.push_back(&c);
  }
  if (judged.empty()) {
    m.kind = MaxStableLr::Kind::kUnknown;
    m.note = "no trial finished and none spiked: nothing to judge stability by";
    return;
  }
  size_t first_unstable = judged.size();
  for (size_t i = 0; i < judged.size(); ++i) {
    if (judged[i]->stability == Cell::Stability::kUnstable) {
      first_unstable = i;
      break;
    }
  }
  if (first_unstable == judged.size()) {
    m.kind = MaxStableLr::Kind::kAboveGrid;
    m.lr = judged.back()->lr;
    m.note = "every learning rate tried is stable: the limit is above the grid";
    return;
  }
  const Cell& u = *judged[first_unstable];
  m.first_unstable_lr = u.lr;
  if (u.diverged > 0 && u.spiking > 0) {
    m.first_unstable_why = "diverged and spikes after warmup";
  } else if (u.diverged > 0) {
    m.first_unstable_why = "diverged";
  } else {
    m.first_unstable_why = "spikes after warmup";
  }
  absl::StrAppend(&m.first_unstable_why, " in ", u.unstable, " of ", u.trials);
  if (first_unstable == 0) {
    m.kind = MaxStableLr::Kind::kBelowGrid;
    m.note = "even the smallest learning rate tried is unstable";
  } else {
    m.kind = MaxStableLr::Kind::kFound;
    m.lr = judged[first_unstable - 1]->lr;
  }
  for (size_t i = first_unstable + 1; i < judged.size(); ++i) {
    if (judged[i]->stability == Cell::Stability::kStable) {
      m.note = absl::StrCat("lr ", FormatLr(judged[i]->lr),
                            " was stable again above the first unstable one; the limit is the "
                            "first instability");
      break;
    }
  }
}

void LrSensitivity(const std::vector<Prepared*>& members, const AnalysisOptions& options,
                   GroupResult* g) {
  if (options.initial_loss && std::isfinite(*options.initial_loss)) {
    g->loss_init = *options.initial_loss;
    g->loss_init_source = "option";
  } else {
    std::vector<double> firsts;
    for (const Prepared* p : members) {
      if (p->trial->initial_loss && std::isfinite(*p->trial->initial_loss)) {
        firsts.push_back(*p->trial->initial_loss);
      }
    }
    if (!firsts.empty()) {
      g->loss_init = Median(firsts);
      g->loss_init_source = "first loss/out (median of the group)";
    } else {
      const int vocab = g->shape ? g->shape->vocab_size : 258;
      g->loss_init = std::log(static_cast<double>(vocab));
      g->loss_init_source = "ln(vocab)";
    }
  }
  if (!options.minimize) {
    g->notes.push_back("LR sensitivity is defined for a loss (minimize); not computed");
    return;
  }
  std::map<double, std::pair<double, int>> cell_sum;  // lr -> (sum, count)
  for (const Prepared* p : members) {
    double v;
    if (p->trial->outcome == TrialOutcome::kDiverged) {
      v = g->loss_init;
    } else if (p->metric) {
      v = std::min(*p->metric, g->loss_init);
    } else {
      continue;
    }
    cell_sum[p->lr].first += v;
    cell_sum[p->lr].second += 1;
  }
  if (cell_sum.size() < 2) {
    g->notes.push_back("LR sensitivity needs two learning rates with a result");
    return;
  }
  double sum = 0, min = kInf;
  for (const auto& [lr, sc] : cell_sum) {
    const double v = sc.first / sc.second;
    sum += v;
    min = std::min(min, v);
  }
  g->lr_sensitivity = sum / static_cast<double>(cell_sum.size()) - min;
}

std::string CiText(const LrOptimum& o, double confidence) {
  if (!o.ci) return "no interval";
  const std::string pct = absl::StrFormat("%.0f %% CI", confidence * 100);
  if (o.ci->lo <= 0 && o.ci->hi == kInf) return pct + " unbounded";
  if (o.ci->lo <= 0) return absl::StrCat(pct, " below ", FormatLr(o.ci->hi));
  if (o.ci->hi == kInf) return absl::StrCat(pct, " above ", FormatLr(o.ci->lo));
  return absl::StrCat(pct, " ", FormatLr(o.ci->lo), "–", FormatLr(o.ci->hi));
}

std::string Verdict(const GroupResult& g, double confidence) {
  std::vector<std::string> parts;
  const MaxStableLr& m = g.max_stable;
  const bool diverged = m.first_unstable_why.rfind("diverged", 0) == 0;
  const bool spikes = m.first_unstable_why.find("spikes") != std::string::npos;
  const std::string what = diverged && spikes ? "diverges and spikes"
                           : diverged         ? "diverges"
                                              : "spikes";
  switch (m.kind) {
    case MaxStableLr::Kind::kFound:
      parts.push_back(absl::StrCat(what, " above lr ", FormatLr(*m.lr)));
      break;
    case MaxStableLr::Kind::kAboveGrid:
      parts.push_back(absl::StrCat("stable up to the largest lr tried (", FormatLr(*m.lr), ")"));
      break;
    case MaxStableLr::Kind::kBelowGrid:
      parts.push_back(absl::StrCat(what, " even at the smallest lr tried (",
                                   FormatLr(*m.first_unstable_lr), ")"));
      break;
    case MaxStableLr::Kind::kUnknown:
      parts.push_back("stability unknown (no trial finished)");
      break;
  }
  const LrOptimum& o = g.optimum;
  switch (o.kind) {
    case LrOptimum::Kind::kVertex:
      parts.push_back(absl::StrCat("best lr ", FormatLr(*o.lr), " (", CiText(o, confidence), ")"));
      break;
    case LrOptimum::Kind::kAtLowEdge:
      parts.push_back(absl::StrCat("best lr ", FormatLr(*o.lr),
                                   " at the edge of the grid (the smallest lr with a result)"));
      break;
    case LrOptimum::Kind::kAtHighEdge:
      parts.push_back(absl::StrCat("best lr ", FormatLr(*o.lr),
                                   " at the edge of the grid (the largest lr with a result)"));
      break;
    case LrOptimum::Kind::kGridOnly:
      parts.push_back(absl::StrCat("best grid lr ", FormatLr(*o.lr), " (no fitted vertex)"));
      break;
    case LrOptimum::Kind::kNone:
      parts.push_back("no lr finished without diverging");
      break;
  }
  if (m.kind == MaxStableLr::Kind::kFound) {
    parts.push_back(absl::StrCat("max stable ", FormatLr(*m.lr)));
    if (o.lr && *o.lr > *m.lr * (1 + 1e-9))
      parts.push_back("the best lr is past the stability limit");
  } else if (m.kind == MaxStableLr::Kind::kAboveGrid) {
    parts.push_back(absl::StrCat("max stable ≥ ", FormatLr(*m.lr)));
  }
  if (g.lr_sensitivity) parts.push_back(absl::StrFormat("LR sensitivity %.3g", *g.lr_sensitivity));
  return absl::StrCat(g.label, ": ", absl::StrJoin(parts, "; "));
}

struct Point {
  double x = 0;
  double y = 0;
  std::string label;
  const GroupResult* group = nullptr;
};

// What a law over these groups cannot separate (see ScalingFit::caveat).
std::string Caveat(const std::string& variable, const std::vector<Point>& points) {
  if (points.size() < 2) return "";
  double lo = kInf, hi = -kInf;
  for (const Point& p : points) {
    const double v = variable == "C" ? p.group->tokens : p.group->shape->dim;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  if (variable == "C" && hi <= lo * (1 + 1e-9)) {
    return absl::StrFormat(
        "every group trains on the same D (%.3g tokens): C moves only with N, so this is the N "
        "law in other units and says nothing about training longer",
        lo);
  }
  if (variable == "depth" && hi > lo) {
    return absl::StrFormat(
        "the width varies too (dim %.0f to %.0f): depth and width are confounded", lo, hi);
  }
  return "";
}

ScalingFit FitScaling(const std::string& quantity, const std::string& variable,
                      const std::vector<Point>& points, std::vector<std::string> left_out,
                      const BootstrapOptions& bootstrap) {
  ScalingFit s;
  s.quantity = quantity;
  s.variable = variable;
  s.left_out = std::move(left_out);
  std::vector<double> x, y;
  for (const Point& p : points) {
    x.push_back(p.x);
    y.push_back(p.y);
    s.groups_used.push_back(p.label);
  }
  s.n = static_cast<int>(points.size());
  absl::StatusOr<PowerLawFit> fit = PowerLawFit::Fit(x, y, bootstrap);
  if (!fit.ok()) {
    s.status =
        absl::Status(fit.status().code(), absl::StrCat(s.Label(), ": ", fit.status().message()));
    return s;
  }
  s.exponent = fit->exponent();
  s.exponent_se = fit->exponent_se();
  s.exponent_ci = fit->exponent_ci();
  s.prefactor = fit->prefactor();
  s.log10_prefactor_ci = fit->log10_prefactor_ci();
  s.r2 = fit->r2();
  s.x_min = std::pow(10.0, fit->log10_x_min());
  s.x_max = std::pow(10.0, fit->log10_x_max());
  s.fit = *std::move(fit);
  return s;
}

void ScalingFits(const AnalysisOptions& options, SweepAnalysis* a) {
  const char* kVariables[] = {"N", "depth", "C"};
  uint64_t seed = options.bootstrap.seed;
  for (const bool optimal : {true, false}) {
    for (const char* variable : kVariables) {
      std::vector<Point> points;
      std::vector<std::string> left_out;
      for (const GroupResult& g : a->groups) {
        std::optional<double> y;
        std::string why;
        if (optimal) {
          if (g.optimum.kind == LrOptimum::Kind::kVertex) {
            y = g.optimum.lr;
          } else {
            why = g.optimum.kind == LrOptimum::Kind::kNone ? "no optimum" : "no interior optimum";
          }
        } else if (g.max_stable.kind == MaxStableLr::Kind::kFound) {
          y = g.max_stable.lr;
        } else {
          why = g.max_stable.kind == MaxStableLr::Kind::kAboveGrid   ? "limit above the grid"
                : g.max_stable.kind == MaxStableLr::Kind::kBelowGrid ? "limit below the grid"
                                                                     : "stability unknown";
        }
        std::optional<double> x;
        if (std::string(variable) == "depth") {
          if (g.shape) x = g.shape->n_layers;
        } else if (g.n_params) {
          x = std::string(variable) == "N" ? static_cast<double>(*g.n_params) : g.compute;
        }
        if (y && !x) why = "model shape unknown";
        if (y && x && *x > 0) {
          points.push_back(Point{*x, *y, g.label, &g});
        } else {
          left_out.push_back(absl::StrCat(g.label, ": ", why.empty() ? "no value" : why));
        }
      }
      BootstrapOptions b = options.bootstrap;
      b.seed = seed++;
      ScalingFit fit = FitScaling(optimal ? "optimal lr" : "max stable lr", variable, points,
                                  std::move(left_out), b);
      if (fit.status.ok()) fit.caveat = Caveat(variable, points);
      a->scaling.push_back(std::move(fit));
    }
  }
}

void Extrapolate(const AnalysisOptions& options, SweepAnalysis* a) {
  for (const TargetModel& target : options.targets) {
    Extrapolation e;
    e.target = target.name;
    e.n_params = target.shape.NonEmbeddingParams();
    e.n_layers = target.shape.n_layers;
    e.compute = target.shape.Compute();
    e.deepseek_lr = DeepSeekLr(e.compute);
    e.published = target.published;
    for (const ScalingFit& s : a->scaling) {
      Prediction p;
      p.fit = s.Label();
      p.x = s.variable == "N"       ? static_cast<double>(e.n_params)
            : s.variable == "depth" ? e.n_layers
                                    : e.compute;
      if (!s.status.ok() || !s.fit) {
        p.status = s.status.ok() ? absl::FailedPreconditionError("no fit") : s.status;
        e.predictions.push_back(p);
        continue;
      }
      p.lr = s.fit->Predict(p.x);
      p.log10_ci = s.fit->PredictLog10Interval(p.x);
      const double lx = std::log10(p.x);
      p.decades_beyond = lx > s.fit->log10_x_max()   ? lx - s.fit->log10_x_max()
                         : lx < s.fit->log10_x_min() ? s.fit->log10_x_min() - lx
                                                     : 0.0;
      p.warning = s.variable != "depth" && p.decades_beyond > options.warn_decades;
      if (s.variable == "C" && !s.caveat.empty()) {
        p.warning = true;
        e.warnings.push_back(absl::StrCat(
            p.fit,
            ": D does not vary across the fitted groups, so the value at the target's C "
            "is not meaningful"));
      } else if (p.warning) {
        e.warnings.push_back(absl::StrFormat(
            "%s: %s is %.1f decades beyond the swept range (up to %.2g): a guess, not a "
            "measurement",
            p.fit, s.variable == "N" ? "N" : "C", p.decades_beyond,
            std::pow(10.0, s.fit->log10_x_max())));
      }
      e.predictions.push_back(p);
    }
    a->extrapolations.push_back(std::move(e));
  }
}

// Group keys without `drop`, as text: the family of groups that differ only in `drop`.
std::string FamilyKey(const GroupResult& g, const std::string& drop) {
  json k = g.key;
  k.erase(drop);
  return k.dump();
}

std::string FamilyLabel(const GroupResult& g, const std::string& drop) {
  std::vector<std::string> parts;
  for (const auto& [key, value] : g.key.items()) {
    if (key != drop) parts.push_back(absl::StrCat(key, "=", ValueText(value)));
  }
  return parts.empty() ? "all" : absl::StrJoin(parts, ", ");
}

void CriticalBatchRows(SweepAnalysis* a) {
  for (const GroupResult& g : a->groups) {
    if (!g.noise_scale) continue;
    a->critical_batch.rows.push_back(
        {g.label, g.shape ? g.shape->TokensPerStep() : 0.0, *g.noise_scale, g.noise_scale_trials});
  }
  if (a->critical_batch.rows.empty()) {
    a->critical_batch.status = absl::FailedPreconditionError(
        "no completed trial logged optim/noise_scale (it needs data-parallel trials: "
        "resources.ranks_per_trial or gpus_per_trial >= 2)");
  }
}

void BatchFit(const AnalysisOptions& options, const std::vector<std::string>& group_keys,
              SweepAnalysis* a) {
  BatchSizeFit& b = a->batch;
  if (!Contains(group_keys, options.batch_key)) {
    b.status = absl::FailedPreconditionError(
        absl::StrCat(options.batch_key, " does not vary across groups"));
    return;
  }
  std::map<std::string, std::vector<std::pair<double, double>>> families;  // key -> (tokens, lr)
  for (const GroupResult& g : a->groups) {
    if (g.optimum.kind != LrOptimum::Kind::kVertex || !g.shape) continue;
    families[FamilyKey(g, options.batch_key)].push_back({g.shape->TokensPerStep(), *g.optimum.lr});
  }
  std::vector<std::vector<std::pair<double, double>>> usable;
  for (auto& [key, points] : families) {
    std::set<double> sizes;
    for (const auto& p : points) sizes.insert(p.first);
    if (sizes.size() >= 2) usable.push_back(points);
  }
  if (usable.empty()) {
    b.status = absl::FailedPreconditionError(
        "no two groups that differ only in batch size both have an interior optimum");
    return;
  }
  int n = 0;
  for (const auto& f : usable) n += static_cast<int>(f.size());
  const int k = static_cast<int>(usable.size());
  Eigen::MatrixXd x = Eigen::MatrixXd::Zero(n, k + 1);
  Eigen::VectorXd y(n);
  int row = 0;
  for (int f = 0; f < k; ++f) {
    for (const auto& [tokens, lr] : usable[f]) {
      x(row, f) = 1.0;
      x(row, k) = std::log10(tokens);
      y(row) = std::log10(lr);
      ++row;
    }
  }
  absl::StatusOr<LinearModelFit> fit = FitLinearModel(x, y);
  if (!fit.ok()) {
    b.status = fit.status();
    return;
  }
  b.n = n;
  b.families = k;
  b.exponent = fit->beta(k);
  Eigen::VectorXd c = Eigen::VectorXd::Zero(k + 1);
  c(k) = 1.0;
  b.exponent_se = fit->ContrastSe(c);
  b.exponent_ci = BootstrapTInterval(x, *fit, c, options.bootstrap);
}

void WeightDecayFamilies(const AnalysisOptions& options, const std::vector<std::string>& group_keys,
                         SweepAnalysis* a) {
  if (!Contains(group_keys, options.weight_decay_key)) return;
  std::map<std::string, std::vector<const GroupResult*>> families;
  for (const GroupResult& g : a->groups) {
    families[FamilyKey(g, options.weight_decay_key)].push_back(&g);
  }
  for (const auto& [key, groups] : families) {
    WeightDecayFamily f;
    std::set<double> wds;
    bool found = false;
    int64_t steps = 0;
    for (const GroupResult* g : groups) {
      if (!g->shape) continue;
      wds.insert(g->shape->weight_decay);
      for (const Cell& c : g->cells) {
        if (!c.mean_metric) continue;
        if (!found || Score(*c.mean_metric, options.minimize) < Score(f.metric, options.minimize)) {
          found = true;
          f.metric = *c.mean_metric;
          f.lr = c.lr;
          f.weight_decay = g->shape->weight_decay;
          f.label = FamilyLabel(*g, options.weight_decay_key);
          steps = g->shape->steps;
        }
      }
    }
    if (!found || wds.size() < 2) continue;
    f.weight_decays = static_cast<int>(wds.size());
    f.lr_wd = f.lr * f.weight_decay;
    f.tau_steps = f.lr_wd > 0 ? 1.0 / f.lr_wd : kInf;
    f.tau_fraction = steps > 0 ? f.tau_steps / static_cast<double>(steps) : kInf;
    a->weight_decay_families.push_back(f);
  }
}

}  // namespace

TrialOutcome OutcomeFromState(const std::string& state, std::optional<int64_t> diverged_step) {
  if (state == "diverged" || diverged_step.has_value()) return TrialOutcome::kDiverged;
  if (state == "completed") return TrialOutcome::kCompleted;
  return TrialOutcome::kIncomplete;
}

std::string FormatLr(double lr) {
  if (std::isnan(lr)) return "nan";
  if (std::isinf(lr)) return lr > 0 ? "inf" : "-inf";
  if (lr == 0) return "0";
  const std::string sci = absl::StrFormat("%.1e", lr);  // "1.3e-02"
  const size_t e = sci.find('e');
  std::string mantissa = sci.substr(0, e);
  if (mantissa.size() >= 2 && mantissa.substr(mantissa.size() - 2) == ".0") {
    mantissa.resize(mantissa.size() - 2);
  }
  const int exponent = std::stoi(sci.substr(e + 1));
  return absl::StrCat(mantissa, "e", exponent);
}

absl::StatusOr<SweepAnalysis> Analyze(const std::vector<TrialResult>& trials,
                                      const AnalysisOptions& options) {
  if (trials.empty()) return absl::FailedPreconditionError("no trials to analyse");
  SweepAnalysis a;
  a.metric_name = options.metric_name;
  a.minimize = options.minimize;
  a.trials = static_cast<int>(trials.size());
  a.confidence = options.bootstrap.confidence;

  // Which keys make groups, which are folded into cells.
  std::set<std::string> swept;
  for (const TrialResult& t : trials) {
    for (const auto& [key, value] : t.params.items()) swept.insert(key);
  }
  std::vector<std::string> group_keys = options.group_by;
  if (group_keys.empty()) {
    for (const std::string& key : swept) {
      if (key != options.lr_key && !Contains(options.seed_keys, key)) group_keys.push_back(key);
    }
  }
  for (const std::string& key : group_keys) {
    if (swept.count(key) == 0) a.notes.push_back(absl::StrCat("group key ", key, " is not swept"));
  }
  std::vector<std::string> folded;
  for (const std::string& key : swept) {
    if (key != options.lr_key && !Contains(options.seed_keys, key) && !Contains(group_keys, key)) {
      folded.push_back(key);
    }
  }
  if (!folded.empty()) {
    a.notes.push_back(
        absl::StrCat("averaged within cells like seeds: ", absl::StrJoin(folded, ", ")));
  }
  a.group_by = group_keys;
  const std::vector<std::string> short_names = ShortNames(group_keys);

  // First pass: lr, metric and spikes per trial.
  std::vector<Prepared> prepared;
  prepared.reserve(trials.size());
  int no_lr = 0, nan_metric = 0;
  std::set<std::string> sources;
  for (const TrialResult& t : trials) {
    std::optional<double> lr;
    if (t.params.contains(options.lr_key)) lr = FiniteNumber(t.params.at(options.lr_key));
    if (!lr && t.shape) lr = t.shape->lr;
    if (!lr || !(*lr > 0)) {
      ++no_lr;
      continue;
    }
    Prepared p;
    p.trial = &t;
    p.lr = *lr;
    if (t.outcome == TrialOutcome::kCompleted) {
      if (t.final_metric && std::isfinite(*t.final_metric)) {
        p.metric = t.final_metric;
      } else {
        ++nan_metric;
      }
    }
    p.summary = Summarize(t, *lr, options);
    sources.insert(p.summary.spike_source);
    prepared.push_back(std::move(p));
  }
  if (no_lr > 0) {
    a.notes.push_back(absl::StrCat(Plural(no_lr, "trial", "trials"), " without a positive ",
                                   options.lr_key, " left out"));
  }
  if (nan_metric > 0) {
    a.notes.push_back(absl::StrCat(Plural(nan_metric, "completed trial", "completed trials"),
                                   " without a finite ", options.metric_name,
                                   " counted as unfinished"));
  }
  const std::string rule = absl::StrFormat(
      "> %g sd above the mean of the previous %d values, after %d", options.spike_rule.threshold,
      options.spike_rule.window, options.spike_rule.min_values);
  if (sources.count("table") > 0 && sources.count("trace") > 0) {
    a.spike_source = absl::StrCat("sweepd's spikes table, and detected from optim/grad_norm (",
                                  rule, ") where it had none");
  } else if (sources.count("table") > 0) {
    a.spike_source = "sweepd's spikes table (optim/grad_norm)";
  } else if (sources.count("trace") > 0) {
    a.spike_source = absl::StrCat("detected from optim/grad_norm: ", rule);
  } else {
    a.spike_source = "no grad-norm traces: stability from divergence only";
  }

  // Groups, in order of their key values.
  std::map<json, std::vector<Prepared*>> groups;
  for (Prepared& p : prepared) {
    json key = json::array();
    for (const std::string& k : group_keys) {
      key.push_back(p.trial->params.contains(k) ? p.trial->params.at(k) : json());
    }
    groups[key].push_back(&p);
  }
  for (auto& [key_values, members] : groups) {
    std::sort(members.begin(), members.end(), [](const Prepared* l, const Prepared* r) {
      return l->lr != r->lr ? l->lr < r->lr : l->trial->trial_id < r->trial->trial_id;
    });
    GroupResult g;
    std::vector<std::string> label_parts;
    for (size_t i = 0; i < group_keys.size(); ++i) {
      g.key[group_keys[i]] = key_values[i];
      label_parts.push_back(absl::StrCat(short_names[i], "=", ValueText(key_values[i])));
    }
    g.label = label_parts.empty() ? "all" : absl::StrJoin(label_parts, ", ");
    std::set<int64_t> n_values;
    for (const Prepared* p : members) {
      if (!p->trial->shape) continue;
      if (!g.shape) g.shape = p->trial->shape;
      n_values.insert(p->trial->shape->NonEmbeddingParams());
    }
    if (n_values.size() == 1) {
      g.n_params = *n_values.begin();
      g.tokens = g.shape->Tokens();
      g.compute = g.shape->Compute();
    } else if (n_values.size() > 1) {
      g.notes.push_back("the model size differs within the group: left out of the scaling fits");
    } else {
      g.notes.push_back("no readable config: model size unknown");
    }
    BuildCells(members, &g);
    FindOptimum(members, options, &g);
    FindMaxStable(&g);
    LrSensitivity(members, options, &g);
    if (g.shape && g.optimum.lr) {
      const double wd = g.shape->weight_decay;
      if (wd > 0) {
        g.lr_wd = *g.optimum.lr * wd;
        g.tau_steps = 1.0 / *g.lr_wd;
        if (g.shape->steps > 0) g.tau_fraction = *g.tau_steps / static_cast<double>(g.shape->steps);
      }
    }
    std::vector<double> noise_scales;
    for (const Prepared* p : members) {
      if (p->trial->outcome == TrialOutcome::kCompleted && p->trial->noise_scale) {
        noise_scales.push_back(*p->trial->noise_scale);
      }
    }
    if (!noise_scales.empty()) {
      std::sort(noise_scales.begin(), noise_scales.end());
      g.noise_scale = SortedQuantile(noise_scales, 0.5);
      g.noise_scale_trials = static_cast<int>(noise_scales.size());
    }
    if (!g.optimum.note.empty()) g.notes.push_back(g.optimum.note);
    if (!g.max_stable.note.empty()) g.notes.push_back(g.max_stable.note);
    g.verdict = Verdict(g, options.bootstrap.confidence);
    a.groups.push_back(std::move(g));
  }
  if (a.groups.size() == 1) a.notes.push_back("one group: no scaling fit across groups");

  ScalingFits(options, &a);
  Extrapolate(options, &a);
  BatchFit(options, group_keys, &a);
  CriticalBatchRows(&a);
  WeightDecayFamilies(options, group_keys, &a);
  return a;
}

}  // namespace sweep::analysis
