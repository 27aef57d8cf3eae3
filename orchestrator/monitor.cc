#include "orchestrator/monitor.h"

#include <sqlite3.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "orchestrator/sql.h"
#include "yaml-cpp/yaml.h"

namespace sweep::orchestrator {

std::vector<int64_t> RungSteps(int64_t min_steps, double eta, int64_t limit) {
  std::vector<int64_t> steps;
  if (min_steps <= 0 || !(eta > 1)) return steps;
  double at = static_cast<double>(min_steps);
  for (int k = 0; k < 64 && at < 9e18; ++k, at *= eta) {
    const int64_t step = std::llround(at);
    if (limit > 0 && step >= limit) break;
    if (!steps.empty() && step <= steps.back()) continue;
    steps.push_back(step);
  }
  return steps;
}

int HyperbandBrackets(int64_t min_steps, double eta, int64_t limit) {
  if (min_steps <= 0 || !(eta > 1) || limit <= min_steps) return 1;
  const double levels =
      std::log(static_cast<double>(limit) / static_cast<double>(min_steps)) / std::log(eta);
  // Clamp before the cast: an eta just above 1 makes `levels` larger than an int holds.
  return 1 + static_cast<int>(std::min(63.0, std::floor(levels + 1e-9)));
}

RungDecision DecideRung(const RungEntry& candidate, const std::vector<RungEntry>& others,
                        bool minimize, double eta) {
  // a strictly better than b. Values that are not finite, and trials that rank last, are
  // never better than anything: they are not compared as numbers at all.
  auto better = [minimize](const RungEntry& a, const RungEntry& b) {
    const bool a_counts = a.value.has_value() && !a.ranks_last;
    const bool b_counts = b.value.has_value() && !b.ranks_last;
    if (!a_counts) return false;
    if (!b_counts) return true;
    return minimize ? *a.value < *b.value : *a.value > *b.value;
  };
  RungDecision d;
  d.n = static_cast<int>(others.size()) + 1;
  d.allowed = std::max(1, static_cast<int>(std::ceil(d.n / eta - 1e-9)));
  d.rank =
      1 + static_cast<int>(std::count_if(others.begin(), others.end(),
                                         [&](const RungEntry& o) { return better(o, candidate); }));
  d.keep = candidate.value.has_value() && d.rank <= d.allowed;
  return d;
}

namespace {

std::string Number(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  return absl::StrFormat("%.6g", value);
}

// The trial's `steps` and `optim.warmup` from its config (Lingua's layout); 0 when absent.
void ReadSchedule(const std::string& config, int64_t* steps, int64_t* warmup) {
  *steps = 0;
  *warmup = 0;
  try {
    const YAML::Node root = YAML::Load(config);
    if (!root.IsMap()) return;
    if (root["steps"] && root["steps"].IsScalar()) *steps = root["steps"].as<int64_t>(0);
    const YAML::Node optim = root["optim"];
    if (optim && optim.IsMap() && optim["warmup"] && optim["warmup"].IsScalar()) {
      *warmup = optim["warmup"].as<int64_t>(0);
    }
  } catch (const YAML::Exception&) {
    // A config the trainer reads some other way: no schedule known.
  }
}

}  // namespace

struct Monitor::SweepSettings {
  int64_t id = 0;
  std::string metric;
  bool minimize = true;
  DetectionOptions detection;
  std::vector<EarlyTerminateRule> rules;
  bool stop_on_divergence = false;
};

struct Monitor::TrialState {
  int64_t id = 0;
  int64_t sweep_id = 0;
  int attempt = 0;
  const SweepSettings* sweep = nullptr;
  int64_t steps = 0;
  int64_t warmup = 0;
  std::unique_ptr<TrialDetector> detector;
  bool asha_exempt = false;
  bool stopping = false;  // An early stop was requested: no more rung decisions.
  // One per asha/hyperband rule: the bracket this trial is in and its rungs.
  struct Plan {
    int rule = 0;
    int bracket = 0;
    std::string label;  // "asha", "hyperband bracket 1"
    double eta = 3;
    std::vector<int64_t> steps;
    size_t next = 0;  // The first rung not decided yet.
  };
  std::vector<Plan> plans;
};

Monitor::Monitor(Store* store, Clock* clock) : store_(store), clock_(clock) {}
Monitor::~Monitor() = default;

void Monitor::Forget(int64_t trial_id) { trials_.erase(trial_id); }

absl::StatusOr<const Monitor::SweepSettings*> Monitor::Sweep(int64_t sweep_id) {
  auto it = sweeps_.find(sweep_id);
  if (it != sweeps_.end()) return it->second.get();
  Statement st(
      store_->db(),
      "SELECT metric_name, metric_goal, early_terminate, detection FROM sweeps WHERE id = ?");
  if (!st.status().ok()) return st.status();
  st.Bind(1, sweep_id);
  if (st.Step() != SQLITE_ROW) return absl::NotFoundError(absl::StrCat("no sweep ", sweep_id));
  auto settings = std::make_unique<SweepSettings>();
  settings->id = sweep_id;
  settings->metric = st.Text(0);
  settings->minimize = st.Text(1) == "minimize";
  // sweepd wrote both at submit; a damaged value falls back to the defaults and no rules
  // rather than refusing the trial's metrics.
  if (absl::StatusOr<std::vector<EarlyTerminateRule>> rules = EarlyTerminateFromJson(st.Text(2));
      rules.ok()) {
    settings->rules = *rules;
  }
  if (absl::StatusOr<DetectionOptions> detection = DetectionFromJson(st.Text(3)); detection.ok()) {
    settings->detection = *detection;
  }
  for (const EarlyTerminateRule& rule : settings->rules) {
    if (rule.type == "divergence") settings->stop_on_divergence = true;
  }
  const SweepSettings* out = settings.get();
  sweeps_[sweep_id] = std::move(settings);
  return out;
}

absl::StatusOr<Monitor::TrialState*> Monitor::State(int64_t trial_id, int attempt) {
  auto it = trials_.find(trial_id);
  if (it != trials_.end() && it->second->attempt == attempt) return it->second.get();
  sqlite3* db = store_->db();
  Statement st(db,
               "SELECT sweep_id, attempt, state IN ('leased', 'running'), config, "
               "divergence_step IS NOT NULL, asha_exempt, stop_requested FROM trials WHERE id = ?");
  if (!st.status().ok()) return st.status();
  st.Bind(1, trial_id);
  if (st.Step() != SQLITE_ROW || st.Int(1) != attempt || st.Int(2) == 0) {
    return static_cast<TrialState*>(nullptr);  // InsertMetrics refuses these rows.
  }
  auto trial = std::make_unique<TrialState>();
  trial->id = trial_id;
  trial->sweep_id = st.Int(0);
  trial->attempt = attempt;
  absl::StatusOr<const SweepSettings*> sweep = Sweep(trial->sweep_id);
  if (!sweep.ok()) return sweep.status();
  trial->sweep = *sweep;
  ReadSchedule(st.Text(3), &trial->steps, &trial->warmup);
  const DetectionOptions& options = trial->sweep->detection;
  trial->detector = std::make_unique<TrialDetector>(options, trial->warmup);
  if (st.Int(4) != 0) trial->detector->MarkDiverged();
  trial->asha_exempt = st.Int(5) != 0;
  trial->stopping = st.Int(6) == kStopDiverged || st.Int(6) == kStopEarly;

  // The initial loss, when the store holds enough of the trace's start.
  Statement first(db,
                  "SELECT value FROM metrics WHERE trial_id = ? AND name = ? AND value IS NOT NULL "
                  "ORDER BY step LIMIT ?");
  first.Bind(1, trial_id);
  first.Bind(2, std::string(kLossMetric));
  first.Bind(3, options.initial_steps);
  double sum = 0;
  int count = 0;
  while (first.Step() == SQLITE_ROW) {
    sum += first.Double(0);
    ++count;
  }
  if (count == options.initial_steps && count > 0) trial->detector->SetInitialLoss(sum / count);
  // The windows and the runs toward a divergence: replay the latest stored values.
  Statement latest(db,
                   "SELECT step, value FROM (SELECT step, value FROM metrics WHERE trial_id = ? "
                   "AND name = ? ORDER BY step DESC LIMIT ?) ORDER BY step");
  for (const char* name : {kLossMetric, kGradNormMetric}) {
    latest.Reset();
    latest.Bind(1, trial_id);
    latest.Bind(2, std::string(name));
    latest.Bind(3, static_cast<int64_t>(2) * options.window + options.consecutive);
    while (latest.Step() == SQLITE_ROW) {
      trial->detector->Replay(
          name, latest.Int(0),
          latest.IsNull(1) ? std::numeric_limits<double>::quiet_NaN() : latest.Double(1));
    }
  }

  // Rungs: the bracket of each asha/hyperband rule, and the first rung not decided yet.
  Statement decided(db,
                    "SELECT COALESCE(MAX(rung) + 1, 0) FROM rungs WHERE trial_id = ? AND rule = ?");
  for (size_t i = 0; i < trial->sweep->rules.size(); ++i) {
    const EarlyTerminateRule& rule = trial->sweep->rules[i];
    if (rule.type != "asha" && rule.type != "hyperband") continue;
    TrialState::Plan plan;
    plan.rule = static_cast<int>(i);
    plan.eta = rule.eta;
    int64_t limit = trial->steps;
    if (rule.max_steps > 0) limit = limit > 0 ? std::min(limit, rule.max_steps) : rule.max_steps;
    int64_t min_steps = rule.min_steps;
    plan.label = rule.type;
    if (rule.type == "hyperband") {
      const int brackets = HyperbandBrackets(rule.min_steps, rule.eta,
                                             rule.max_steps > 0 ? rule.max_steps : trial->steps);
      plan.bracket = static_cast<int>(trial_id % brackets);
      min_steps =
          std::llround(static_cast<double>(rule.min_steps) * std::pow(rule.eta, plan.bracket));
      plan.label = absl::StrCat("hyperband bracket ", plan.bracket);
    }
    plan.steps = RungSteps(min_steps, rule.eta, limit);
    decided.Reset();
    decided.Bind(1, trial_id);
    decided.Bind(2, plan.rule);
    if (decided.Step() != SQLITE_ROW) return decided.Error("reading rung decisions");
    plan.next = static_cast<size_t>(decided.Int(0));
    trial->plans.push_back(std::move(plan));
  }
  TrialState* out = trial.get();
  trials_[trial_id] = std::move(trial);
  return out;
}

absl::StatusOr<int64_t> Monitor::Ingest(const std::vector<MetricRow>& rows) {
  // Rebuild states before the rows are stored: a rebuild replays the store as it was, so the
  // new rows are examined once, below.
  std::set<std::pair<int64_t, int>> attempts;
  for (const MetricRow& row : rows) attempts.emplace(row.trial_id, row.attempt);
  for (const auto& [trial_id, attempt] : attempts) {
    if (absl::StatusOr<TrialState*> state = State(trial_id, attempt); !state.ok())
      return state.status();
  }
  absl::StatusOr<int64_t> added = store_->InsertMetrics(
      rows, [this](const std::vector<MetricRow>& rows) { return Examine(rows); });
  if (!added.ok()) {
    // Nothing was stored: states that saw these rows are ahead of the store. Rebuild later.
    for (const auto& [trial_id, attempt] : attempts) trials_.erase(trial_id);
  }
  return added;
}

absl::Status Monitor::Examine(const std::vector<MetricRow>& added) {
  for (const MetricRow& row : added) {
    absl::StatusOr<TrialState*> state = State(row.trial_id, row.attempt);
    if (!state.ok()) return state.status();
    if (*state == nullptr) continue;
    TrialState& trial = **state;
    TrialDetector::Findings found = trial.detector->Observe(row.name, row.step, row.value);
    for (const Spike& spike : found.spikes) {
      if (absl::Status s = RecordSpike(trial, spike); !s.ok()) return s;
    }
    if (found.divergence) {
      if (absl::Status s = RecordDivergence(trial, *found.divergence); !s.ok()) return s;
    }
    if (row.name == trial.sweep->metric) {
      if (absl::Status s = CheckRungs(trial, row); !s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

absl::Status Monitor::Event(const TrialState& trial, const std::string& kind,
                            const std::string& detail) {
  return store_->RecordEvent(clock_->Now(), trial.sweep_id, trial.id, 0, kind, detail);
}

absl::Status Monitor::RecordSpike(TrialState& trial, const Spike& spike) {
  Statement st(store_->db(),
               "INSERT OR IGNORE INTO spikes (trial_id, name, step, value, z, mean, in_warmup, "
               "attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
  if (!st.status().ok()) return st.status();
  st.Bind(1, trial.id);
  st.Bind(2, spike.name);
  st.Bind(3, spike.step);
  st.Bind(4, spike.value);
  st.Bind(5, spike.z);
  st.Bind(6, spike.mean);
  st.Bind(7, spike.in_warmup ? 1 : 0);
  st.Bind(8, trial.attempt);
  if (st.Step() != SQLITE_DONE) return st.Error("recording a spike");
  if (sqlite3_changes(store_->db()) == 0) return absl::OkStatus();
  return Event(trial, "spike",
               absl::StrFormat("%s = %s at step %d: %.1f sigma above the window mean %s%s",
                               spike.name, Number(spike.value), spike.step, spike.z,
                               Number(spike.mean), spike.in_warmup ? " (in warmup)" : ""));
}

absl::Status Monitor::RecordDivergence(TrialState& trial, const Divergence& divergence) {
  const std::string text = divergence.Describe();
  Statement st(store_->db(),
               "UPDATE trials SET divergence_step = ?, divergence_reason = ? "
               "WHERE id = ? AND divergence_step IS NULL");
  if (!st.status().ok()) return st.status();
  st.Bind(1, divergence.step);
  st.Bind(2, text);
  st.Bind(3, trial.id);
  if (st.Step() != SQLITE_DONE) return st.Error("recording a divergence");
  if (sqlite3_changes(store_->db()) == 0) return absl::OkStatus();
  if (absl::Status s = Event(trial, "divergence_detected", text); !s.ok()) return s;
  if (!trial.sweep->stop_on_divergence) return absl::OkStatus();
  absl::StatusOr<bool> stopped =
      RequestStop(trial, kStopDiverged, absl::StrCat("divergence: ", text));
  return stopped.status();
}

absl::StatusOr<bool> Monitor::RequestStop(TrialState& trial, int code, const std::string& reason) {
  // A cancel is never overridden; a divergence overrides a pause or an ASHA stop; an ASHA
  // stop overrides only a pause.
  Statement st(
      store_->db(),
      code == kStopDiverged
          ? "UPDATE trials SET stop_requested = ?1, stop_reason = ?2 WHERE id = ?3 "
            "AND attempt = ?4 AND state IN ('leased', 'running') AND stop_requested IN (0, 1, 4)"
          : "UPDATE trials SET stop_requested = ?1, stop_reason = ?2 WHERE id = ?3 "
            "AND attempt = ?4 AND state IN ('leased', 'running') AND stop_requested IN (0, 1)");
  if (!st.status().ok()) return st.status();
  st.Bind(1, code);
  st.Bind(2, reason);
  st.Bind(3, trial.id);
  st.Bind(4, trial.attempt);
  if (st.Step() != SQLITE_DONE) return st.Error("requesting a stop");
  if (sqlite3_changes(store_->db()) == 0) return false;
  trial.stopping = true;
  if (absl::Status s = Event(trial, "early_stop", reason); !s.ok()) return s;
  return true;
}

absl::Status Monitor::CheckRungs(TrialState& trial, const MetricRow& row) {
  if (trial.asha_exempt || trial.stopping) return absl::OkStatus();
  sqlite3* db = store_->db();
  for (TrialState::Plan& plan : trial.plans) {
    while (plan.next < plan.steps.size() && plan.steps[plan.next] <= row.step) {
      const int rung = static_cast<int>(plan.next++);
      const int64_t rung_step = plan.steps[rung];
      // The rung's value: the latest at or before the rung's step, else the first after it.
      Statement value(
          db,
          "SELECT * FROM (SELECT step, value, nonfinite, 0 FROM metrics "
          "WHERE trial_id = ?1 AND name = ?2 AND step <= ?3 ORDER BY step DESC LIMIT 1) "
          "UNION ALL SELECT * FROM (SELECT step, value, nonfinite, 1 FROM metrics "
          "WHERE trial_id = ?1 AND name = ?2 AND step > ?3 ORDER BY step LIMIT 1) "
          "ORDER BY 4 LIMIT 1");
      if (!value.status().ok()) return value.status();
      value.Bind(1, trial.id);
      value.Bind(2, trial.sweep->metric);
      value.Bind(3, rung_step);
      if (value.Step() != SQLITE_ROW) return value.Error("reading a rung value");
      const int64_t value_step = value.Int(0);
      RungEntry candidate;
      if (!value.IsNull(1)) candidate.value = value.Double(1);
      const std::string nonfinite = value.Text(2);
      candidate.ranks_last = trial.detector->diverged();

      Statement others(db,
                       "SELECT r.value, t.state IN ('diverged', 'stopped') OR t.stop_requested IN "
                       "(3, 4) OR t.divergence_step IS NOT NULL FROM rungs r JOIN trials t ON "
                       "t.id = r.trial_id WHERE r.sweep_id = ? AND r.rule = ? AND r.bracket = ? "
                       "AND r.rung = ? AND r.trial_id <> ?");
      if (!others.status().ok()) return others.status();
      others.Bind(1, trial.sweep_id);
      others.Bind(2, plan.rule);
      others.Bind(3, plan.bracket);
      others.Bind(4, rung);
      others.Bind(5, trial.id);
      std::vector<RungEntry> entries;
      while (others.Step() == SQLITE_ROW) {
        RungEntry e;
        if (!others.IsNull(0)) e.value = others.Double(0);
        e.ranks_last = others.Int(1) != 0;
        entries.push_back(e);
      }
      const RungDecision d = DecideRung(candidate, entries, trial.sweep->minimize, plan.eta);

      Statement insert(
          db,
          "INSERT OR IGNORE INTO rungs (sweep_id, trial_id, rule, bracket, rung, step, "
          "value_step, value, nonfinite, rank, n, decision, attempt, time) "
          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
      if (!insert.status().ok()) return insert.status();
      insert.Bind(1, trial.sweep_id);
      insert.Bind(2, trial.id);
      insert.Bind(3, plan.rule);
      insert.Bind(4, plan.bracket);
      insert.Bind(5, rung);
      insert.Bind(6, rung_step);
      insert.Bind(7, value_step);
      if (candidate.value) {
        insert.Bind(8, *candidate.value);
        insert.BindNull(9);
      } else {
        insert.BindNull(8);
        insert.Bind(9, nonfinite.empty() ? std::string("nan") : nonfinite);
      }
      insert.Bind(10, d.rank);
      insert.Bind(11, d.n);
      insert.Bind(12, std::string(d.keep ? "continue" : "stop"));
      insert.Bind(13, trial.attempt);
      insert.Bind(14, clock_->Now());
      if (insert.Step() != SQLITE_DONE) return insert.Error("recording a rung decision");
      if (sqlite3_changes(db) == 0) continue;  // Decided before (a rebuilt state).

      const std::string shown = candidate.value
                                    ? Number(*candidate.value)
                                    : (nonfinite.empty() ? std::string("nan") : nonfinite);
      const std::string eta = absl::StrFormat("%g", plan.eta);
      if (absl::Status s = Event(
              trial, "rung",
              absl::StrFormat("%s: rung %d at step %d, %s %s (step %d), rank %d of %d, top %d "
                              "continue: %s",
                              plan.label, rung, rung_step, trial.sweep->metric, shown, value_step,
                              d.rank, d.n, d.allowed, d.keep ? "continue" : "stop"));
          !s.ok()) {
        return s;
      }
      if (d.keep) continue;
      const std::string why =
          candidate.value ? absl::StrFormat("not in top 1/%s (rank %d of %d)", eta, d.rank, d.n)
                          : std::string("not a finite number");
      absl::StatusOr<bool> stopped =
          RequestStop(trial, kStopEarly,
                      absl::StrFormat("%s: rung %d at step %d, %s %s, %s", plan.label, rung,
                                      rung_step, trial.sweep->metric, shown, why));
      if (!stopped.ok()) return stopped.status();
      return absl::OkStatus();  // Stopped (or already being stopped): no more rungs.
    }
  }
  return absl::OkStatus();
}

}  // namespace sweep::orchestrator
