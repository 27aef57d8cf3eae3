// ToJson() and RenderText(): the analysis for scripts and for a terminal.
#include <cmath>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "analysis/analysis.h"

namespace sweep::analysis {
namespace {

using json = nlohmann::json;

// ----- JSON ------------------------------------------------------------------------------

json Num(double v) { return std::isfinite(v) ? json(v) : json(); }
json Num(const std::optional<double>& v) { return v ? Num(*v) : json(); }
json Int(const std::optional<int64_t>& v) { return v ? json(*v) : json(); }
json Pair(const Interval& i) { return json::array({Num(i.lo), Num(i.hi)}); }
// An interval in lr units, where 0 is the unbounded lower end (10^-inf).
json LrPair(const Interval& i) { return json::array({i.lo > 0 ? Num(i.lo) : json(), Num(i.hi)}); }
json Log10PairAsLr(const Interval& i) {
  return json::array({std::isfinite(i.lo) ? json(std::pow(10.0, i.lo)) : json(),
                      std::isfinite(i.hi) ? json(std::pow(10.0, i.hi)) : json()});
}

const char* OutcomeName(TrialOutcome o) {
  switch (o) {
    case TrialOutcome::kCompleted:
      return "completed";
    case TrialOutcome::kDiverged:
      return "diverged";
    case TrialOutcome::kIncomplete:
      return "incomplete";
  }
  return "?";
}

const char* OptimumName(LrOptimum::Kind k) {
  switch (k) {
    case LrOptimum::Kind::kVertex:
      return "vertex";
    case LrOptimum::Kind::kAtLowEdge:
      return "at_low_edge";
    case LrOptimum::Kind::kAtHighEdge:
      return "at_high_edge";
    case LrOptimum::Kind::kGridOnly:
      return "grid_only";
    case LrOptimum::Kind::kNone:
      return "none";
  }
  return "?";
}

const char* MaxStableName(MaxStableLr::Kind k) {
  switch (k) {
    case MaxStableLr::Kind::kFound:
      return "found";
    case MaxStableLr::Kind::kAboveGrid:
      return "above_grid";
    case MaxStableLr::Kind::kBelowGrid:
      return "below_grid";
    case MaxStableLr::Kind::kUnknown:
      return "unknown";
  }
  return "?";
}

const char* StabilityName(Cell::Stability s) {
  switch (s) {
    case Cell::Stability::kStable:
      return "stable";
    case Cell::Stability::kUnstable:
      return "unstable";
    case Cell::Stability::kUnknown:
      return "unknown";
  }
  return "?";
}

json ShapeJson(const RunShape& s) {
  return {{"n_layers", s.n_layers},     {"dim", s.dim},
          {"n_heads", s.n_heads},       {"n_kv_heads", s.n_kv_heads},
          {"head_dim", s.head_dim},     {"ffn_hidden", s.ffn_hidden},
          {"vocab_size", s.vocab_size}, {"weight_tying", s.weight_tying},
          {"steps", s.steps},           {"tokens_per_step", s.TokensPerStep()},
          {"warmup", s.warmup},         {"weight_decay", s.weight_decay}};
}

json GroupJson(const GroupResult& g) {
  json cells = json::array();
  for (const Cell& c : g.cells) {
    cells.push_back({{"lr", c.lr},
                     {"trials", c.trials},
                     {"completed", c.completed},
                     {"diverged", c.diverged},
                     {"incomplete", c.incomplete},
                     {"spiking", c.spiking},
                     {"mean_metric", Num(c.mean_metric)},
                     {"metric_sd", Num(c.metric_sd)},
                     {"near_optimal", c.in_near_optimal_band},
                     {"stability", StabilityName(c.stability)}});
  }
  json trials = json::array();
  for (const TrialSummary& t : g.trials) {
    trials.push_back({{"trial_id", t.trial_id},
                      {"trial_key", t.trial_key},
                      {"lr", t.lr},
                      {"state", t.state},
                      {"outcome", OutcomeName(t.outcome)},
                      {"final_metric", Num(t.final_metric)},
                      {"diverged_step", Int(t.diverged_step)},
                      {"spikes_after_warmup", t.spikes_after_warmup},
                      {"spikes_in_warmup", t.spikes_in_warmup},
                      {"first_spike_after_warmup", Int(t.first_spike_after_warmup)},
                      {"peak_grad_norm_after_warmup", Num(t.peak_grad_norm_after_warmup)},
                      {"nonfinite_grad_norm", t.nonfinite_grad_norm},
                      {"spike_source", t.spike_source}});
  }
  const LrOptimum& o = g.optimum;
  const MaxStableLr& m = g.max_stable;
  return {
      {"label", g.label},
      {"key", g.key},
      {"shape", g.shape ? ShapeJson(*g.shape) : json()},
      {"non_embedding_params", Int(g.n_params)},
      {"tokens", Num(g.tokens)},
      {"compute", Num(g.compute)},
      {"optimum",
       {{"kind", OptimumName(o.kind)},
        {"lr", Num(o.lr)},
        {"metric", Num(o.metric)},
        {"grid_lr", Num(o.grid_lr)},
        {"grid_metric", Num(o.grid_metric)},
        {"ci", o.ci ? LrPair(*o.ci) : json()},
        {"log10_se", Num(o.log10_se)},
        {"ci_method", o.ci_method},
        {"fit_lrs", o.fit_lrs},
        {"fit_points", o.fit_points},
        {"note", o.note}}},
      {"near_optimal_band", g.near_optimal_band ? Pair(*g.near_optimal_band) : json()},
      {"max_stable",
       {{"kind", MaxStableName(m.kind)},
        {"lr", Num(m.lr)},
        {"first_unstable_lr", Num(m.first_unstable_lr)},
        {"first_unstable_why", m.first_unstable_why},
        {"note", m.note}}},
      {"lr_sensitivity", Num(g.lr_sensitivity)},
      {"loss_init", Num(g.loss_init)},
      {"loss_init_source", g.loss_init_source},
      {"lr_wd", Num(g.lr_wd)},
      {"tau_steps", Num(g.tau_steps)},
      {"tau_fraction", Num(g.tau_fraction)},
      {"noise_scale", Num(g.noise_scale)},
      {"noise_scale_trials", g.noise_scale_trials},
      {"cells", cells},
      {"trials", trials},
      {"notes", g.notes},
      {"verdict", g.verdict},
  };
}

// The fitted line's interval (the one predictions use) at 40 points log-spaced from the
// smallest x fitted to `x_hi`: what a plot shades around the line. Null ends are unbounded.
json Band(const ScalingFit& s, double x_hi) {
  json band = json::array();
  if (!s.fit || !(s.x_min > 0) || !(x_hi > s.x_min)) return band;
  constexpr int kPoints = 40;
  const double lo = std::log10(s.x_min), hi = std::log10(x_hi);
  for (int i = 0; i < kPoints; ++i) {
    const double x = std::pow(10.0, lo + (hi - lo) * i / (kPoints - 1));
    const Interval ci = s.fit->PredictLog10Interval(x);
    band.push_back({{"x", x},
                    {"lo", std::isfinite(ci.lo) ? json(std::pow(10.0, ci.lo)) : json(nullptr)},
                    {"hi", std::isfinite(ci.hi) ? json(std::pow(10.0, ci.hi)) : json(nullptr)}});
  }
  return band;
}

// `x_hi`: the largest x the band reaches (the farthest extrapolation target, or x_max).
json ScalingJson(const ScalingFit& s, double x_hi) {
  json j = {{"quantity", s.quantity},
            {"variable", s.variable},
            {"ok", s.status.ok()},
            {"status", std::string(s.status.message())},
            {"n", s.n},
            {"groups_used", s.groups_used},
            {"left_out", s.left_out},
            {"caveat", s.caveat}};
  if (s.status.ok()) {
    j["exponent"] = Num(s.exponent);
    j["exponent_se"] = Num(s.exponent_se);
    j["exponent_ci"] = Pair(s.exponent_ci);
    j["prefactor"] = Num(s.prefactor);
    j["prefactor_ci"] = Log10PairAsLr(s.log10_prefactor_ci);
    j["r2"] = Num(s.r2);
    j["x_range"] = json::array({Num(s.x_min), Num(s.x_max)});
    j["band"] = Band(s, std::max(s.x_max, x_hi));
  }
  return j;
}

// ----- Text ------------------------------------------------------------------------------

size_t DisplayWidth(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;  // count UTF-8 code points
  return n;
}

class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  std::string Render() const {
    std::vector<size_t> width;
    for (const auto& row : rows_) {
      if (width.size() < row.size()) width.resize(row.size(), 0);
      for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], DisplayWidth(row[i]));
    }
    std::string out;
    for (const auto& row : rows_) {
      std::string line = "  ";
      for (size_t i = 0; i < row.size(); ++i) {
        line += row[i];
        if (i + 1 < row.size()) line += std::string(width[i] - DisplayWidth(row[i]) + 2, ' ');
      }
      while (!line.empty() && line.back() == ' ') line.pop_back();
      out += line + "\n";
    }
    return out;
  }

 private:
  std::vector<std::vector<std::string>> rows_;
};

std::string Sci(double v) {
  if (!std::isfinite(v)) return v > 0 ? "inf" : "-";
  if (v != 0 && (std::abs(v) >= 1e4 || std::abs(v) < 1e-2)) return FormatLr(v);
  return absl::StrFormat("%.3g", v);
}
// Three decimals, without a "-0.000".
std::string Fixed3(double v) {
  const std::string s = absl::StrFormat("%.3f", v);
  return s == "-0.000" ? "0.000" : s;
}
std::string Opt(const std::optional<double>& v) { return v ? Sci(*v) : "-"; }
std::string LrOpt(const std::optional<double>& v) { return v ? FormatLr(*v) : "-"; }

std::string LrRange(const Interval& i) {
  const std::string lo = i.lo > 0 && std::isfinite(i.lo) ? FormatLr(i.lo) : "0";
  const std::string hi = std::isfinite(i.hi) ? FormatLr(i.hi) : "inf";
  return absl::StrCat(lo, "–", hi);
}

std::string Log10AsLrRange(const Interval& i) {
  const std::string lo = std::isfinite(i.lo) ? FormatLr(std::pow(10.0, i.lo)) : "0";
  const std::string hi = std::isfinite(i.hi) ? FormatLr(std::pow(10.0, i.hi)) : "inf";
  return absl::StrCat(lo, "–", hi);
}

std::string Range(const Interval& i) {
  auto end = [](double v) {
    return std::isfinite(v) ? absl::StrFormat("%.3g", v) : std::string(v > 0 ? "inf" : "-inf");
  };
  return absl::StrCat("[", end(i.lo), ", ", end(i.hi), "]");
}

std::string OptimumCell(const LrOptimum& o) {
  if (!o.lr) return "-";
  switch (o.kind) {
    case LrOptimum::Kind::kVertex:
      return FormatLr(*o.lr);
    case LrOptimum::Kind::kAtLowEdge:
      return FormatLr(*o.lr) + " (low edge)";
    case LrOptimum::Kind::kAtHighEdge:
      return FormatLr(*o.lr) + " (high edge)";
    case LrOptimum::Kind::kGridOnly:
      return FormatLr(*o.lr) + " (grid)";
    case LrOptimum::Kind::kNone:
      return "-";
  }
  return "-";
}

std::string MaxStableCell(const MaxStableLr& m) {
  switch (m.kind) {
    case MaxStableLr::Kind::kFound:
      return FormatLr(*m.lr);
    case MaxStableLr::Kind::kAboveGrid:
      return "≥ " + FormatLr(*m.lr);
    case MaxStableLr::Kind::kBelowGrid:
      return "< " + FormatLr(*m.first_unstable_lr);
    case MaxStableLr::Kind::kUnknown:
      return "?";
  }
  return "?";
}

// "Lingua llama_1B" -> ("Lingua", "llama_1B"): rows of the side-by-side table by source.
std::pair<std::string, std::string> SplitSource(const std::string& source) {
  const size_t space = source.find(' ');
  if (space == std::string::npos) return {source, ""};
  return {source.substr(0, space), source.substr(space + 1)};
}

}  // namespace

json ToJson(const SweepAnalysis& a) {
  json groups = json::array();
  for (const GroupResult& g : a.groups) groups.push_back(GroupJson(g));
  json scaling = json::array();
  for (const ScalingFit& s : a.scaling) {
    double x_hi = s.x_max;
    for (const Extrapolation& e : a.extrapolations) {
      for (const Prediction& p : e.predictions) {
        if (p.fit == s.Label() && p.status.ok()) x_hi = std::max(x_hi, p.x);
      }
    }
    scaling.push_back(ScalingJson(s, x_hi));
  }
  json extrapolations = json::array();
  for (const Extrapolation& e : a.extrapolations) {
    json predictions = json::array();
    for (const Prediction& p : e.predictions) {
      json j = {{"fit", p.fit}, {"ok", p.status.ok()}, {"x", Num(p.x)}};
      if (p.status.ok()) {
        j["lr"] = Num(p.lr);
        j["ci"] = Log10PairAsLr(p.log10_ci);
        j["decades_beyond"] = Num(p.decades_beyond);
        j["warning"] = p.warning;
      } else {
        j["status"] = std::string(p.status.message());
      }
      predictions.push_back(j);
    }
    json published = json::array();
    for (const PublishedLr& p : e.published) {
      published.push_back({{"source", p.source}, {"lr", p.lr}, {"note", p.note}});
    }
    extrapolations.push_back({{"target", e.target},
                              {"non_embedding_params", e.n_params},
                              {"n_layers", e.n_layers},
                              {"compute", Num(e.compute)},
                              {"predictions", predictions},
                              {"deepseek_lr", Num(e.deepseek_lr)},
                              {"published", published},
                              {"warnings", e.warnings}});
  }
  json batch = {{"ok", a.batch.status.ok()},
                {"status", std::string(a.batch.status.message())},
                {"sqrt_rule", a.batch.sqrt_rule}};
  if (a.batch.status.ok()) {
    batch["n"] = a.batch.n;
    batch["families"] = a.batch.families;
    batch["exponent"] = Num(a.batch.exponent);
    batch["exponent_se"] = Num(a.batch.exponent_se);
    batch["exponent_ci"] = Pair(a.batch.exponent_ci);
  }
  json critical = {{"ok", a.critical_batch.status.ok()},
                   {"status", std::string(a.critical_batch.status.message())},
                   {"groups", json::array()}};
  for (const CriticalBatch::Row& r : a.critical_batch.rows) {
    critical["groups"].push_back({{"group", r.group},
                                  {"tokens_per_step", Num(r.tokens_per_step)},
                                  {"noise_scale", Num(r.noise_scale)},
                                  {"trials", r.trials}});
  }
  json wd = json::array();
  for (const WeightDecayFamily& f : a.weight_decay_families) {
    wd.push_back({{"family", f.label},
                  {"lr", f.lr},
                  {"weight_decay", f.weight_decay},
                  {"metric", Num(f.metric)},
                  {"lr_wd", Num(f.lr_wd)},
                  {"tau_steps", Num(f.tau_steps)},
                  {"tau_fraction", Num(f.tau_fraction)},
                  {"weight_decays", f.weight_decays}});
  }
  return {{"sweep_id", a.sweep_id},
          {"sweep", a.sweep_name},
          {"metric", a.metric_name},
          {"goal", a.minimize ? "minimize" : "maximize"},
          {"group_by", a.group_by},
          {"trials", a.trials},
          {"confidence", a.confidence},
          {"spike_source", a.spike_source},
          {"groups", groups},
          {"scaling", scaling},
          {"extrapolations", extrapolations},
          {"batch_size", batch},
          {"critical_batch", critical},
          {"weight_decay_families", wd},
          {"notes", a.notes}};
}

std::string RenderText(const SweepAnalysis& a) {
  const std::string pct = absl::StrFormat("%.0f %%", a.confidence * 100);
  std::string out;
  absl::StrAppend(&out, "Sweep ", a.sweep_name.empty() ? "(unnamed)" : a.sweep_name);
  if (a.sweep_id != 0) absl::StrAppend(&out, " (id ", a.sweep_id, ")");
  absl::StrAppend(&out, ": ", a.trials, " trials, metric ", a.metric_name, " (",
                  a.minimize ? "minimize" : "maximize", "), grouped by ",
                  a.group_by.empty() ? "nothing" : absl::StrJoin(a.group_by, ", "), "\n");
  absl::StrAppend(&out, "Spikes: ", a.spike_source, "\n\n");

  // Per group.
  {
    Table t({"group", "N", "D", "best lr", pct + " CI", "near-optimal", "max stable",
             "first unstable", "LR sens.", "lr·wd", "τ steps", "τ/run"});
    for (const GroupResult& g : a.groups) {
      const std::string ci = g.optimum.ci ? LrRange(*g.optimum.ci) : "-";
      const std::string band = g.near_optimal_band ? LrRange(*g.near_optimal_band) : "-";
      std::string unstable = "-";
      if (g.max_stable.first_unstable_lr) {
        unstable = absl::StrCat(FormatLr(*g.max_stable.first_unstable_lr), " (",
                                g.max_stable.first_unstable_why, ")");
      }
      t.Add({g.label, g.n_params ? Sci(static_cast<double>(*g.n_params)) : "?",
             g.tokens > 0 ? Sci(g.tokens) : "?", OptimumCell(g.optimum), ci, band,
             MaxStableCell(g.max_stable), unstable, Opt(g.lr_sensitivity), LrOpt(g.lr_wd),
             g.tau_steps ? absl::StrFormat("%.0f", *g.tau_steps) : "-",
             g.tau_fraction ? absl::StrFormat("%.2g", *g.tau_fraction) : "-"});
    }
    absl::StrAppend(&out,
                    "Per group (best lr: vertex of a quadratic in log10 lr; near-optimal: "
                    "within 0.25 % of the best)\n",
                    t.Render(), "\n");
  }

  // The metric per group and lr.
  {
    std::set<double> lrs;
    for (const GroupResult& g : a.groups) {
      for (const Cell& c : g.cells) lrs.insert(c.lr);
    }
    std::vector<std::string> header = {"group \\ lr"};
    for (double lr : lrs) header.push_back(FormatLr(lr));
    Table t(header);
    for (const GroupResult& g : a.groups) {
      std::vector<std::string> row = {g.label};
      for (double lr : lrs) {
        const Cell* cell = nullptr;
        for (const Cell& c : g.cells) {
          if (c.lr == lr) cell = &c;
        }
        if (cell == nullptr) {
          row.push_back("");
          continue;
        }
        std::string text = cell->mean_metric    ? absl::StrFormat("%.4f", *cell->mean_metric)
                           : cell->diverged > 0 ? "div"
                                                : "-";
        if (cell->in_near_optimal_band) text += "*";
        if (cell->diverged > 0) absl::StrAppend(&text, " D", cell->diverged, "/", cell->trials);
        if (cell->spiking > 0) absl::StrAppend(&text, " S", cell->spiking, "/", cell->trials);
        row.push_back(text);
      }
      t.Add(row);
    }
    absl::StrAppend(&out, a.metric_name,
                    " by group and lr (mean over seeds; * near-optimal; Dk/n diverged, Sk/n "
                    "spiked after warmup)\n",
                    t.Render(), "\n");
  }

  // Per trial.
  {
    Table t({"group", "lr", "trial", "state", a.metric_name, "spikes after warmup", "first at",
             "in warmup", "peak grad norm after warmup"});
    for (const GroupResult& g : a.groups) {
      for (const TrialSummary& s : g.trials) {
        std::string peak = Opt(s.peak_grad_norm_after_warmup);
        if (s.nonfinite_grad_norm) peak += " (non-finite seen)";
        t.Add({g.label, FormatLr(s.lr), absl::StrCat(s.trial_id),
               s.diverged_step ? absl::StrCat(s.state, " @", *s.diverged_step) : s.state,
               s.final_metric ? absl::StrFormat("%.4f", *s.final_metric) : "-",
               absl::StrCat(s.spikes_after_warmup),
               s.first_spike_after_warmup ? absl::StrCat(*s.first_spike_after_warmup) : "-",
               absl::StrCat(s.spikes_in_warmup), peak});
      }
    }
    absl::StrAppend(&out, "Trials\n", t.Render(), "\n");
  }

  // Scaling fits.
  {
    Table t({"fit", "n", "exponent", pct + " CI", "prefactor", "R²", "x range", "status"});
    for (const ScalingFit& s : a.scaling) {
      if (!s.status.ok()) {
        t.Add({s.Label(), absl::StrCat(s.n), "-", "-", "-", "-", "-",
               std::string(s.status.message())});
        continue;
      }
      t.Add({s.Label(), absl::StrCat(s.n), Fixed3(s.exponent), Range(s.exponent_ci),
             Sci(s.prefactor), Fixed3(s.r2), absl::StrCat(Sci(s.x_min), "–", Sci(s.x_max)),
             s.exponent_ci.bounded() ? "ok" : "ok (interval unbounded: too few groups)"});
    }
    absl::StrAppend(&out, "Scaling fits (y = a·x^b, log-log least squares; ", pct,
                    " residual-bootstrap-t intervals)\n", t.Render());
    for (const ScalingFit& s : a.scaling) {
      if (!s.left_out.empty() && s.status.ok()) {
        absl::StrAppend(&out, "  ", s.Label(), " leaves out ", absl::StrJoin(s.left_out, "; "),
                        "\n");
      }
      if (!s.caveat.empty()) absl::StrAppend(&out, "  ", s.Label(), ": ", s.caveat, "\n");
    }
    absl::StrAppend(&out, "\n");
  }

  // Extrapolation, side by side with published settings.
  if (!a.extrapolations.empty()) {
    std::vector<std::string> header = {"rule"};
    for (const Extrapolation& e : a.extrapolations) {
      header.push_back(absl::StrCat(e.target, " (N ", Sci(static_cast<double>(e.n_params)), ", ",
                                    e.n_layers, " layers, C ", Sci(e.compute), ")"));
    }
    Table t(header);
    const size_t fits = a.extrapolations.front().predictions.size();
    for (size_t i = 0; i < fits; ++i) {
      std::vector<std::string> row = {a.extrapolations.front().predictions[i].fit};
      for (const Extrapolation& e : a.extrapolations) {
        const Prediction& p = e.predictions[i];
        if (!p.status.ok()) {
          row.push_back("no fit");
          continue;
        }
        row.push_back(absl::StrCat(FormatLr(p.lr), " (", Log10AsLrRange(p.log10_ci), ")",
                                   p.warning ? " !" : ""));
      }
      t.Add(row);
    }
    std::vector<std::string> deepseek = {"DeepSeek 0.3118·C^-0.125"};
    for (const Extrapolation& e : a.extrapolations) deepseek.push_back(FormatLr(e.deepseek_lr));
    t.Add(deepseek);
    std::vector<std::string> sources;  // first-seen order
    for (const Extrapolation& e : a.extrapolations) {
      for (const PublishedLr& p : e.published) {
        const std::string s = SplitSource(p.source).first;
        if (std::find(sources.begin(), sources.end(), s) == sources.end()) sources.push_back(s);
      }
    }
    for (const std::string& source : sources) {
      std::vector<std::string> row = {source + " (published)"};
      for (const Extrapolation& e : a.extrapolations) {
        std::string cell = "-";
        for (const PublishedLr& p : e.published) {
          const auto [name, model] = SplitSource(p.source);
          if (name == source) cell = absl::StrCat(FormatLr(p.lr), " (", model, ")");
        }
        row.push_back(cell);
      }
      t.Add(row);
    }
    absl::StrAppend(&out, "Extrapolation to Lingua's shapes (", pct,
                    " interval of the fitted law; ! more than the warning span beyond the data)\n",
                    t.Render());
    for (const Extrapolation& e : a.extrapolations) {
      for (const std::string& w : e.warnings)
        absl::StrAppend(&out, "  warning: ", e.target, ": ", w, "\n");
    }
    absl::StrAppend(&out,
                    "  The depth rules ignore width; published settings come with their own batch, "
                    "schedule and run length.\n\n");
  }

  // Batch size and weight decay.
  if (a.batch.status.ok()) {
    absl::StrAppend(
        &out, absl::StrFormat("Batch size: optimal lr ∝ (tokens per step)^%.2f, %s CI %s, over %d "
                              "groups in %d families; Adam's square-root rule: 0.5\n",
                              a.batch.exponent, pct, Range(a.batch.exponent_ci), a.batch.n,
                              a.batch.families));
  } else {
    absl::StrAppend(&out, "Batch size: no fit (", a.batch.status.message(), ")\n");
  }
  if (a.critical_batch.status.ok()) {
    Table t({"group", "tokens/step", "B_noise (tokens)", "batch / B_noise", "trials"});
    for (const CriticalBatch::Row& r : a.critical_batch.rows) {
      t.Add({r.group, absl::StrFormat("%.0f", r.tokens_per_step), absl::StrFormat("%.3g", r.noise_scale),
             r.tokens_per_step > 0 ? absl::StrFormat("%.2g", r.tokens_per_step / r.noise_scale) : "?",
             absl::StrCat(r.trials)});
    }
    absl::StrAppend(&out,
                    "Critical batch (gradient noise scale B_simple, late in training; below it a "
                    "larger batch trains nearly proportionally faster, above it returns diminish)\n",
                    t.Render());
  }
  if (!a.weight_decay_families.empty()) {
    Table t({"family", "best lr", "best wd", "lr·wd", "τ steps", "τ/run"});
    for (const WeightDecayFamily& f : a.weight_decay_families) {
      t.Add({f.label, FormatLr(f.lr), Sci(f.weight_decay), FormatLr(f.lr_wd),
             absl::StrFormat("%.0f", f.tau_steps), absl::StrFormat("%.2g", f.tau_fraction)});
    }
    absl::StrAppend(&out, "Weight decay (best cell over the weight decays tried; τ = 1/(lr·wd))\n",
                    t.Render());
  }
  absl::StrAppend(&out, "\n");

  absl::StrAppend(&out, "Verdicts\n");
  for (const GroupResult& g : a.groups) absl::StrAppend(&out, "  ", g.verdict, "\n");
  std::vector<std::string> notes = a.notes;
  for (const GroupResult& g : a.groups) {
    for (const std::string& n : g.notes) notes.push_back(absl::StrCat(g.label, ": ", n));
  }
  if (!notes.empty()) {
    absl::StrAppend(&out, "\nNotes\n");
    for (const std::string& n : notes) absl::StrAppend(&out, "  ", n, "\n");
  }
  return out;
}

}  // namespace sweep::analysis
