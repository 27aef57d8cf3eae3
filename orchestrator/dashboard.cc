#include "orchestrator/dashboard.h"

#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "analysis/analysis.h"
#include "orchestrator/auth.h"
#include "orchestrator/metric_blocks.h"
#include "orchestrator/sql.h"

namespace sweep::orchestrator {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kStates[] = {"pending", "leased",  "running", "completed",
                                   "diverged", "failed", "stopped", "cancelled"};
constexpr int kDefaultPoints = 1000;
constexpr int kMaxPoints = 100000;
constexpr int64_t kDefaultLogBytes = 64 * 1024;
constexpr int64_t kMaxLogBytes = 4 * 1024 * 1024;

// --- Answers. ---

HttpResponse JsonAnswer(const json& body, int status = 200) {
  HttpResponse response;
  response.status = status;
  response.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  response.headers.push_back({"Cache-Control", "no-store"});
  return response;
}

HttpResponse ErrorAnswer(int status, const std::string& message) {
  return JsonAnswer(json{{"error", message}}, status);
}

HttpResponse StatusAnswer(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument: return ErrorAnswer(400, std::string(status.message()));
    case absl::StatusCode::kNotFound: return ErrorAnswer(404, std::string(status.message()));
    default: return ErrorAnswer(500, std::string(status.message()));
  }
}

// A column that may be NULL, as JSON (null, or a number; non-finite numbers are null too).
json Real(Statement& st, int col) {
  if (st.IsNull(col)) return nullptr;
  const double v = st.Double(col);
  return std::isfinite(v) ? json(v) : json(nullptr);
}
json Integer(Statement& st, int col) { return st.IsNull(col) ? json(nullptr) : json(st.Int(col)); }
json TextOrNull(Statement& st, int col) { return st.IsNull(col) ? json(nullptr) : json(st.Text(col)); }

json ParseObject(const std::string& text) {
  json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
  return value.is_discarded() ? json::object() : value;
}

std::string CookieValue(const std::string& header, const std::string& name) {
  for (absl::string_view part : absl::StrSplit(header, ';')) {
    part = absl::StripAsciiWhitespace(part);
    if (absl::StartsWith(part, name + "=")) return std::string(part.substr(name.size() + 1));
  }
  return "";
}

// --- Query parameters. ---

absl::StatusOr<int64_t> IntParam(const HttpRequest& request, const std::string& name, int64_t fallback,
                                 int64_t lo, int64_t hi) {
  auto it = request.query.find(name);
  if (it == request.query.end() || it->second.empty()) return fallback;
  int64_t value = 0;
  if (!absl::SimpleAtoi(it->second, &value) || value < lo || value > hi) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": '", it->second, "' is not an integer in [", lo,
                                                   ", ", hi, "]"));
  }
  return value;
}

std::string StringParam(const HttpRequest& request, const std::string& name, const std::string& fallback = "") {
  auto it = request.query.find(name);
  return it == request.query.end() || it->second.empty() ? fallback : it->second;
}

absl::StatusOr<int64_t> TrialId(const std::string& text) {
  int64_t id = 0;
  if (!absl::SimpleAtoi(text, &id) || id <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("trial id '", text, "' is not a positive integer"));
  }
  return id;
}

// --- Reading. ---

// Names of the metrics a trial logged: one index seek per name (a loose index scan), so a
// trial with a million rows answers as fast as one with a hundred.
absl::StatusOr<std::vector<std::string>> MetricNames(sqlite3* db, int64_t trial_id) {
  Statement st(db,
               "WITH RECURSIVE names(name) AS ("
               "  SELECT (SELECT MIN(name) FROM metrics WHERE trial_id = ?1)"
               "  UNION ALL"
               "  SELECT (SELECT MIN(name) FROM metrics WHERE trial_id = ?1 AND name > names.name)"
               "  FROM names WHERE names.name IS NOT NULL)"
               "SELECT name FROM names WHERE name IS NOT NULL");
  if (!st.status().ok()) return st.status();
  st.Bind(1, trial_id);
  std::vector<std::string> names;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) names.push_back(st.Text(0));
  if (rc != SQLITE_DONE) return st.Error("metric names");
  return names;
}

// The summary of one sweep: counts by state, best, times, ETA (docs/dashboard.md).
absl::StatusOr<json> SweepSummary(sqlite3* db, const SweepRow& sweep, double now) {
  json out = {{"id", sweep.id},         {"name", sweep.name},
              {"state", sweep.state},   {"method", sweep.method},
              {"metric", sweep.metric_name}, {"goal", sweep.minimize ? "minimize" : "maximize"},
              {"created_at", sweep.created_at}};
  json counts = json::object();
  for (const char* state : kStates) counts[state] = 0;
  Statement st(db,
               "SELECT state, COUNT(*), MIN(started_at), MAX(finished_at),"
               "       SUM(finished_at - started_at), COUNT(finished_at - started_at)"
               " FROM trials WHERE sweep_id = ?1 GROUP BY state");
  if (!st.status().ok()) return st.status();
  st.Bind(1, sweep.id);
  int64_t total = 0, finished = 0, remaining = 0, active = 0;
  double started = std::numeric_limits<double>::infinity(), last_finish = 0, busy_seconds = 0;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) {
    const std::string state = st.Text(0);
    const int64_t n = st.Int(1);
    counts[state] = n;
    total += n;
    if (!st.IsNull(2)) started = std::min(started, st.Double(2));
    if (!st.IsNull(3)) last_finish = std::max(last_finish, st.Double(3));
    if (state == "pending" || state == "leased" || state == "running") {
      remaining += n;
      if (state != "pending") active += n;
    } else if (state != "cancelled") {
      busy_seconds += st.IsNull(4) ? 0 : st.Double(4);
      finished += st.Int(5);
    }
  }
  if (rc != SQLITE_DONE) return st.Error("trial counts");
  out["trials"] = total;
  out["counts"] = counts;
  out["started_at"] = std::isfinite(started) ? json(started) : json(nullptr);
  const bool over = sweep.state == "completed" || sweep.state == "cancelled";
  out["finished_at"] = over && last_finish > 0 ? json(last_finish) : json(nullptr);
  const double begin = std::isfinite(started) ? started : sweep.created_at;
  const double end = over && last_finish > 0 ? last_finish : now;
  out["elapsed_s"] = std::max(0.0, end - begin);
  out["eta_s"] = nullptr;
  if (sweep.state == "running" && finished > 0 && remaining > 0) {
    out["eta_s"] = static_cast<double>(remaining) * (busy_seconds / finished) /
                   static_cast<double>(std::max<int64_t>(active, 1));
  }

  Statement best(db, sweep.minimize
                         ? "SELECT id, final_metric, params FROM trials WHERE sweep_id = ?1 AND state = "
                           "'completed' AND final_metric IS NOT NULL ORDER BY final_metric, id LIMIT 1"
                         : "SELECT id, final_metric, params FROM trials WHERE sweep_id = ?1 AND state = "
                           "'completed' AND final_metric IS NOT NULL ORDER BY final_metric DESC, id LIMIT 1");
  if (!best.status().ok()) return best.status();
  best.Bind(1, sweep.id);
  out["best"] = nullptr;
  if (best.Step() == SQLITE_ROW) {
    out["best"] = {{"trial_id", best.Int(0)}, {"value", Real(best, 1)}, {"params", ParseObject(best.Text(2))}};
  }
  return out;
}

absl::StatusOr<json> SweepDetail(sqlite3* db, const SweepRow& sweep, double now) {
  absl::StatusOr<json> out = SweepSummary(db, sweep, now);
  if (!out.ok()) return out.status();
  (*out)["spec"] = sweep.spec_text;

  // Parameters that vary, with their values sorted (numbers numerically).
  Statement st(db, "SELECT params, attempt FROM trials WHERE sweep_id = ?1 ORDER BY id");
  if (!st.status().ok()) return st.status();
  st.Bind(1, sweep.id);
  std::map<std::string, std::vector<json>> values;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) {
    const json trial_params = ParseObject(st.Text(0));  // outlives the loop over its items
    for (const auto& [key, value] : trial_params.items()) {
      std::vector<json>& list = values[key];
      if (std::find(list.begin(), list.end(), value) == list.end()) list.push_back(value);
    }
  }
  if (rc != SQLITE_DONE) return st.Error("parameters");
  // Only the keys that vary, unless none does.
  const bool any_varies =
      std::any_of(values.begin(), values.end(), [](const auto& entry) { return entry.second.size() > 1; });
  json params = json::array();
  for (auto& [key, list] : values) {
    const bool numeric = std::all_of(list.begin(), list.end(), [](const json& v) { return v.is_number(); });
    std::sort(list.begin(), list.end(), [numeric](const json& a, const json& b) {
      return numeric ? a.get<double>() < b.get<double>() : a.dump() < b.dump();
    });
    if (list.size() > 1 || !any_varies) {
      params.push_back({{"key", key}, {"values", list}, {"numeric", numeric}});
    }
  }
  (*out)["params"] = params;

  // Metric names: those of the first few trials that ran.
  Statement first(db, "SELECT id FROM trials WHERE sweep_id = ?1 AND attempt > 0 ORDER BY id LIMIT 5");
  if (!first.status().ok()) return first.status();
  first.Bind(1, sweep.id);
  std::vector<std::string> names;
  while (first.Step() == SQLITE_ROW) {
    absl::StatusOr<std::vector<std::string>> more = MetricNames(db, first.Int(0));
    if (!more.ok()) return more.status();
    names.insert(names.end(), more->begin(), more->end());
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  (*out)["metrics"] = names;

  Statement rules(db, "SELECT early_terminate FROM sweeps WHERE id = ?1");
  if (!rules.status().ok()) return rules.status();
  rules.Bind(1, sweep.id);
  (*out)["early_terminate"] = rules.Step() == SQLITE_ROW ? json::parse(rules.Text(0), nullptr, false) : json::array();
  if ((*out)["early_terminate"].is_discarded()) (*out)["early_terminate"] = json::array();

  Statement events(db,
                   "SELECT id, time, kind, trial_id, detail FROM events WHERE sweep_id = ?1 "
                   "ORDER BY id DESC LIMIT 50");
  if (!events.status().ok()) return events.status();
  events.Bind(1, sweep.id);
  json list = json::array();
  while (events.Step() == SQLITE_ROW) {
    list.push_back({{"id", events.Int(0)}, {"time", events.Double(1)}, {"kind", events.Text(2)},
                    {"trial_id", Integer(events, 3)}, {"detail", events.Text(4)}});
  }
  (*out)["events"] = list;
  return out;
}

absl::StatusOr<json> SweepTrials(sqlite3* db, const SweepRow& sweep) {
  // A trial that has not finished shows its latest value of the sweep's metric (one seek).
  Statement st(db,
               "SELECT t.id, t.trial_key, t.params, t.state, t.attempt, t.last_step,"
               "       COALESCE(t.final_metric, (SELECT m.value FROM metrics m WHERE m.trial_id = t.id"
               "                 AND m.name = ?2 ORDER BY m.step DESC LIMIT 1)),"
               "       t.best_metric, COALESCE(t.diverged_step, t.divergence_step), t.divergence_reason,"
               "       t.stop_reason, (SELECT COUNT(*) FROM spikes sp WHERE sp.trial_id = t.id),"
               "       t.started_at, t.finished_at, COALESCE(t.error, '')"
               " FROM trials t WHERE t.sweep_id = ?1 ORDER BY t.id");
  if (!st.status().ok()) return st.status();
  st.Bind(1, sweep.id);
  st.Bind(2, sweep.metric_name);
  json trials = json::array();
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) {
    trials.push_back({{"id", st.Int(0)},
                      {"key", st.Text(1)},
                      {"params", ParseObject(st.Text(2))},
                      {"state", st.Text(3)},
                      {"attempt", st.Int(4)},
                      {"last_step", Integer(st, 5)},
                      {"final", Real(st, 6)},
                      {"best", Real(st, 7)},
                      {"diverged_step", Integer(st, 8)},
                      {"divergence_reason", TextOrNull(st, 9)},
                      {"stop_reason", TextOrNull(st, 10)},
                      {"spikes", st.Int(11)},
                      {"started_at", Real(st, 12)},
                      {"finished_at", Real(st, 13)},
                      {"error", st.Text(14)}});
  }
  if (rc != SQLITE_DONE) return st.Error("trials");
  return json{{"metric", sweep.metric_name}, {"goal", sweep.minimize ? "minimize" : "maximize"},
              {"trials", trials}};
}

// Orders parameter values: numbers numerically, then everything else by its JSON text.
bool ValueLess(const json& a, const json& b) {
  if (a.is_number() && b.is_number()) return a.get<double>() < b.get<double>();
  if (a.is_number() != b.is_number()) return a.is_number();
  return a.dump() < b.dump();
}

absl::StatusOr<json> SweepGrid(sqlite3* db, const SweepRow& sweep, const HttpRequest& request) {
  const std::string x = StringParam(request, "x");
  const std::string y = StringParam(request, "y");
  const std::string metric = StringParam(request, "metric", sweep.metric_name);
  const std::string agg = StringParam(request, "agg", "mean");
  if (x.empty()) return absl::InvalidArgumentError("x: missing (a parameter key, e.g. x=optim.lr)");
  if (agg != "mean" && agg != "median" && agg != "min" && agg != "max") {
    return absl::InvalidArgumentError(absl::StrCat("agg: '", agg, "' is not one of mean, median, min, max"));
  }
  Statement st(db,
               "SELECT t.id, t.params, t.state, t.divergence_step,"
               "       CASE WHEN ?2 = s.metric_name AND t.final_metric IS NOT NULL THEN t.final_metric"
               "       ELSE (SELECT m.value FROM metrics m WHERE m.trial_id = t.id AND m.name = ?2"
               "             ORDER BY m.step DESC LIMIT 1) END"
               " FROM trials t JOIN sweeps s ON s.id = t.sweep_id WHERE t.sweep_id = ?1 ORDER BY t.id");
  if (!st.status().ok()) return st.status();
  st.Bind(1, sweep.id);
  st.Bind(2, metric);

  struct Cell {
    json x, y;
    std::vector<double> values;
    int64_t diverged = 0;
    std::vector<int64_t> trials;
  };
  std::map<std::string, Cell> cells;  // by "x json|y json"
  std::vector<json> xs, ys;
  std::set<std::string> keys;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) {
    const json params = ParseObject(st.Text(1));
    for (const auto& [key, _] : params.items()) keys.insert(key);
    if (!params.contains(x) || (!y.empty() && !params.contains(y))) continue;
    const json xv = params[x];
    const json yv = y.empty() ? json(nullptr) : params[y];
    Cell& cell = cells[xv.dump() + "|" + yv.dump()];
    cell.x = xv;
    cell.y = yv;
    cell.trials.push_back(st.Int(0));
    if (st.Text(2) == "diverged" || !st.IsNull(3)) {
      ++cell.diverged;
    } else if (!st.IsNull(4) && std::isfinite(st.Double(4))) {
      cell.values.push_back(st.Double(4));
    }
    if (std::find(xs.begin(), xs.end(), xv) == xs.end()) xs.push_back(xv);
    if (std::find(ys.begin(), ys.end(), yv) == ys.end()) ys.push_back(yv);
  }
  if (rc != SQLITE_DONE) return st.Error("grid");
  for (const std::string& key : {x, y}) {
    if (!key.empty() && !keys.empty() && keys.count(key) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(key == x ? "x" : "y", ": '", key, "' is not a parameter of sweep ",
                                                     sweep.name, " (its parameters: ", absl::StrJoin(keys, ", "),
                                                     ")"));
    }
  }
  std::sort(xs.begin(), xs.end(), ValueLess);
  std::sort(ys.begin(), ys.end(), ValueLess);
  json out_cells = json::array();
  for (const json& yv : ys) {
    for (const json& xv : xs) {
      auto it = cells.find(xv.dump() + "|" + yv.dump());
      if (it == cells.end()) continue;
      Cell& cell = it->second;
      json value = nullptr;
      std::vector<double>& v = cell.values;
      if (!v.empty()) {
        if (agg == "mean") {
          double sum = 0;
          for (double d : v) sum += d;
          value = sum / static_cast<double>(v.size());
        } else if (agg == "min") {
          value = *std::min_element(v.begin(), v.end());
        } else if (agg == "max") {
          value = *std::max_element(v.begin(), v.end());
        } else {
          std::sort(v.begin(), v.end());
          const size_t n = v.size();
          value = n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
        }
      }
      out_cells.push_back({{"x", cell.x}, {"y", cell.y}, {"value", value}, {"n", v.size()},
                           {"diverged", cell.diverged}, {"trials", cell.trials}});
    }
  }
  return json{{"x", x},   {"y", y.empty() ? json(nullptr) : json(y)}, {"metric", metric}, {"agg", agg},
              {"xs", xs}, {"ys", ys}, {"cells", out_cells}};
}

absl::StatusOr<json> TrialDetail(Store& store, int64_t trial_id) {
  absl::StatusOr<TrialRow> trial = store.GetTrial(trial_id);
  if (!trial.ok()) return trial.status();
  sqlite3* db = store.db();
  absl::StatusOr<SweepRow> sweep = store.GetSweep(std::to_string(trial->sweep_id));
  if (!sweep.ok()) return sweep.status();
  Statement st(db,
               "SELECT checkpoint_step, COALESCE(diverged_step, divergence_step), divergence_reason, stop_reason,"
               "       started_at, finished_at FROM trials WHERE id = ?1");
  if (!st.status().ok()) return st.status();
  st.Bind(1, trial_id);
  if (st.Step() != SQLITE_ROW) return st.Error("trial");
  json out = {{"id", trial->id},
              {"sweep", sweep->name},
              {"sweep_id", trial->sweep_id},
              {"metric", sweep->metric_name},
              {"key", trial->trial_key},
              {"params", ParseObject(trial->params_json)},
              {"config", trial->config},
              {"state", trial->state},
              {"attempt", trial->attempt},
              {"last_step", trial->last_step},
              {"final", trial->final_metric && std::isfinite(*trial->final_metric) ? json(*trial->final_metric) : json(nullptr)},
              {"best", trial->best_metric && std::isfinite(*trial->best_metric) ? json(*trial->best_metric) : json(nullptr)},
              {"checkpoint", trial->checkpoint ? json(*trial->checkpoint) : json(nullptr)},
              {"checkpoint_step", Integer(st, 0)},
              {"error", trial->error},
              {"divergence_step", Integer(st, 1)},
              {"divergence_reason", TextOrNull(st, 2)},
              {"stop_reason", TextOrNull(st, 3)},
              {"started_at", Real(st, 4)},
              {"finished_at", Real(st, 5)},
              {"attempt_errors", json::parse(trial->attempt_errors_json, nullptr, false)}};
  if (out["attempt_errors"].is_discarded()) out["attempt_errors"] = json::array();

  absl::StatusOr<std::vector<std::string>> names = MetricNames(db, trial_id);
  if (!names.ok()) return names.status();
  out["metrics"] = *names;

  Statement events(db,
                   "SELECT e.id, e.time, e.kind, e.detail, COALESCE(w.name, '') FROM events e"
                   " LEFT JOIN workers w ON w.id = e.worker_id WHERE e.trial_id = ?1 ORDER BY e.id LIMIT 1000");
  if (!events.status().ok()) return events.status();
  events.Bind(1, trial_id);
  json list = json::array();
  while (events.Step() == SQLITE_ROW) {
    list.push_back({{"id", events.Int(0)}, {"time", events.Double(1)}, {"kind", events.Text(2)},
                    {"detail", events.Text(3)}, {"worker", events.Text(4)}});
  }
  out["events"] = list;

  Statement spikes(db,
                   "SELECT name, step, value, z, mean, in_warmup FROM spikes WHERE trial_id = ?1 ORDER BY name, step");
  if (!spikes.status().ok()) return spikes.status();
  spikes.Bind(1, trial_id);
  json spike_list = json::array();
  while (spikes.Step() == SQLITE_ROW) {
    spike_list.push_back({{"name", spikes.Text(0)}, {"step", spikes.Int(1)}, {"value", Real(spikes, 2)},
                          {"z", Real(spikes, 3)}, {"mean", Real(spikes, 4)}, {"in_warmup", spikes.Int(5) != 0}});
  }
  out["spikes"] = spike_list;
  return out;
}

// The rows of one metric of one trial in [from, to], in step order; NaN where the stored value
// was not finite (its kind in `kinds`, by step).
absl::Status ReadRows(sqlite3* db, int64_t trial_id, const std::string& name, int64_t from, int64_t to,
                      std::vector<int64_t>* steps, std::vector<double>* values, std::map<int64_t, std::string>* kinds) {
  Statement st(db,
               "SELECT step, value, nonfinite FROM metrics WHERE trial_id = ?1 AND name = ?2"
               " AND step BETWEEN ?3 AND ?4 ORDER BY step");
  if (!st.status().ok()) return st.status();
  st.Bind(1, trial_id);
  st.Bind(2, name);
  st.Bind(3, from);
  st.Bind(4, to);
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) {
    steps->push_back(st.Int(0));
    if (st.IsNull(1)) {
      const std::string kind = st.IsNull(2) ? "nan" : st.Text(2);
      values->push_back(kind == "inf" ? std::numeric_limits<double>::infinity()
                        : kind == "-inf" ? -std::numeric_limits<double>::infinity()
                                         : std::numeric_limits<double>::quiet_NaN());
      (*kinds)[st.Int(0)] = kind;
    } else {
      values->push_back(st.Double(1));
    }
  }
  return rc == SQLITE_DONE ? absl::OkStatus() : st.Error("series");
}

// A trace as min/max per bucket: at most `points` points (two per bucket, plus the bucket's
// first non-finite row), so a one-step spike survives any zoom. Two ways to the same answer:
//   * from the rows: `points / 2` buckets of equal step width;
//   * for long traces (at least one whole block per bucket), from metric_blocks: buckets of
//     whole blocks, reading only the block summaries and the raw rows of the two edge blocks
//     that [from, to] cuts. A million steps is then ~4,000 block rows instead of 10^6 rows.
absl::StatusOr<json> Series(sqlite3* db, int64_t trial_id, const std::string& name, int64_t from, int64_t to,
                            int points) {
  const int64_t buckets = points / 2;
  std::vector<int64_t> steps;
  std::vector<double> values;               // NaN/±Inf where the stored value was not finite
  std::map<int64_t, std::string> kinds;     // step -> nan | inf | -inf
  int64_t rows = 0;
  bool downsampled = false;

  absl::StatusOr<std::vector<MetricBlock>> blocks =
      ReadMetricBlocks(db, trial_id, name, from / kMetricBlockSteps, to / kMetricBlockSteps);
  if (!blocks.ok()) return blocks.status();
  int64_t block_rows = 0;
  for (const MetricBlock& b : *blocks) block_rows += b.rows;
  if (static_cast<int64_t>(blocks->size()) >= buckets && block_rows > points) {
    // Blocks that [from, to] cuts are summarised again from their rows in range.
    for (MetricBlock* edge : {&blocks->front(), &blocks->back()}) {
      if (edge->first_step >= from && edge->last_step <= to) continue;
      std::vector<int64_t> s;
      std::vector<double> v;
      std::map<int64_t, std::string> k;
      const int64_t lo = std::max(from, edge->block * kMetricBlockSteps);
      const int64_t hi = std::min(to, edge->block * kMetricBlockSteps + kMetricBlockSteps - 1);
      if (absl::Status st = ReadRows(db, trial_id, name, lo, hi, &s, &v, &k); !st.ok()) return st;
      MetricBlock again;
      again.block = edge->block;
      for (size_t i = 0; i < s.size(); ++i) again.Add(s[i], v[i]);
      *edge = again;
      if (blocks->size() == 1) break;
    }
    const size_t per_bucket = (blocks->size() + buckets - 1) / buckets;
    for (size_t i = 0; i < blocks->size(); i += per_bucket) {
      MetricBlock bucket;
      for (size_t j = i; j < std::min(blocks->size(), i + per_bucket); ++j) bucket.Merge((*blocks)[j]);
      rows += bucket.rows;
      std::map<int64_t, double> keep;  // step -> value, in step order
      if (bucket.min_step) keep[*bucket.min_step] = bucket.min_value;
      if (bucket.max_step) keep[*bucket.max_step] = bucket.max_value;
      if (bucket.nonfinite_step) {
        keep[*bucket.nonfinite_step] = std::numeric_limits<double>::quiet_NaN();
        kinds[*bucket.nonfinite_step] = bucket.nonfinite;
      }
      for (const auto& [step, value] : keep) {
        steps.push_back(step);
        values.push_back(value);
      }
    }
    downsampled = true;
  } else {
    if (absl::Status st = ReadRows(db, trial_id, name, from, to, &steps, &values, &kinds); !st.ok()) return st;
    rows = static_cast<int64_t>(steps.size());
    if (rows > points) {
      // `buckets` buckets of equal step width; each keeps its min and its max (in step order)
      // and its first non-finite row.
      std::vector<int64_t> all_steps = std::move(steps);
      std::vector<double> all_values = std::move(values);
      steps.clear();
      values.clear();
      const double first = static_cast<double>(all_steps.front());
      const double width = (static_cast<double>(all_steps.back()) - first + 1) / static_cast<double>(buckets);
      auto bucket_of = [&](size_t i) { return static_cast<int64_t>((static_cast<double>(all_steps[i]) - first) / width); };
      size_t i = 0;
      while (i < all_steps.size()) {
        const int64_t bucket = bucket_of(i);
        size_t lo = SIZE_MAX, hi = SIZE_MAX, bad = SIZE_MAX, j = i;
        for (; j < all_steps.size() && bucket_of(j) == bucket; ++j) {
          if (!std::isfinite(all_values[j])) {
            if (bad == SIZE_MAX) bad = j;
            continue;
          }
          if (lo == SIZE_MAX || all_values[j] < all_values[lo]) lo = j;
          if (hi == SIZE_MAX || all_values[j] > all_values[hi]) hi = j;
        }
        std::vector<size_t> keep;
        for (size_t k : {lo, hi, bad}) {
          if (k != SIZE_MAX && std::find(keep.begin(), keep.end(), k) == keep.end()) keep.push_back(k);
        }
        std::sort(keep.begin(), keep.end());
        for (size_t k : keep) {
          steps.push_back(all_steps[k]);
          values.push_back(all_values[k]);
        }
        i = j;
      }
      // Only the kept non-finite rows are listed.
      std::map<int64_t, std::string> kept;
      for (size_t k = 0; k < steps.size(); ++k) {
        if (auto it = kinds.find(steps[k]); it != kinds.end()) kept.insert(*it);
      }
      kinds = std::move(kept);
      downsampled = true;
    }
  }

  json out_steps = json::array(), out_values = json::array(), nonfinite = json::array();
  for (size_t i = 0; i < steps.size(); ++i) {
    out_steps.push_back(steps[i]);
    out_values.push_back(std::isfinite(values[i]) ? json(values[i]) : json(nullptr));
  }
  for (const auto& [step, kind] : kinds) nonfinite.push_back({{"step", step}, {"kind", kind}});

  Statement spikes(db,
                   "SELECT step, value, z FROM spikes WHERE trial_id = ?1 AND name = ?2 AND step BETWEEN ?3 AND ?4"
                   " ORDER BY step");
  if (!spikes.status().ok()) return spikes.status();
  spikes.Bind(1, trial_id);
  spikes.Bind(2, name);
  spikes.Bind(3, from);
  spikes.Bind(4, to);
  json spike_list = json::array();
  while (spikes.Step() == SQLITE_ROW) {
    spike_list.push_back({{"step", spikes.Int(0)}, {"value", Real(spikes, 1)}, {"z", Real(spikes, 2)}});
  }
  return json{{"name", name},       {"rows", rows},         {"downsampled", downsampled},
              {"steps", out_steps}, {"values", out_values}, {"nonfinite", nonfinite},
              {"spikes", spike_list}};
}

absl::StatusOr<json> TrialSeries(Store& store, int64_t trial_id, const HttpRequest& request) {
  if (absl::StatusOr<TrialRow> trial = store.GetTrial(trial_id); !trial.ok()) return trial.status();
  const std::string names_param = StringParam(request, "names");
  if (names_param.empty()) return absl::InvalidArgumentError("names: missing (e.g. names=loss/out,optim/grad_norm)");
  absl::StatusOr<int64_t> points = IntParam(request, "points", kDefaultPoints, 10, kMaxPoints);
  if (!points.ok()) return points.status();
  absl::StatusOr<int64_t> from = IntParam(request, "from", 0, 0, std::numeric_limits<int64_t>::max());
  if (!from.ok()) return from.status();
  absl::StatusOr<int64_t> to =
      IntParam(request, "to", std::numeric_limits<int64_t>::max(), 0, std::numeric_limits<int64_t>::max());
  if (!to.ok()) return to.status();
  if (*from > *to) return absl::InvalidArgumentError(absl::StrCat("from (", *from, ") is after to (", *to, ")"));

  std::vector<std::string> wanted;
  std::vector<std::string> logged;  // read only when a prefix asks for it
  bool have_logged = false;
  for (absl::string_view part : absl::StrSplit(names_param, ',', absl::SkipEmpty())) {
    if (!absl::EndsWith(part, "*")) {
      wanted.emplace_back(part);
      continue;
    }
    if (!have_logged) {
      absl::StatusOr<std::vector<std::string>> names = MetricNames(store.db(), trial_id);
      if (!names.ok()) return names.status();
      logged = *std::move(names);
      have_logged = true;
    }
    const absl::string_view prefix = part.substr(0, part.size() - 1);
    for (const std::string& name : logged) {
      if (absl::StartsWith(name, prefix)) wanted.push_back(name);
    }
  }
  if (wanted.size() > 512) return absl::InvalidArgumentError("names: more than 512 series");
  json series = json::array();
  for (const std::string& name : wanted) {
    absl::StatusOr<json> one = Series(store.db(), trial_id, name, *from, *to, static_cast<int>(*points));
    if (!one.ok()) return one.status();
    series.push_back(*std::move(one));
  }
  return json{{"trial", trial_id}, {"points", *points}, {"series", series}};
}

// The end of the current attempt's log, when the trial folder is readable from here (the
// worker's workdir label, as `sweepctl logs` finds it).
absl::StatusOr<json> TrialLog(sqlite3* db, int64_t trial_id, const HttpRequest& request) {
  const std::string file = StringParam(request, "file", "stderr");
  if (file != "stderr" && file != "stdout") {
    return absl::InvalidArgumentError(absl::StrCat("file: '", file, "' is not one of stderr, stdout"));
  }
  absl::StatusOr<int64_t> bytes = IntParam(request, "bytes", kDefaultLogBytes, 1, kMaxLogBytes);
  if (!bytes.ok()) return bytes.status();
  Statement st(db,
               "SELECT t.attempt, s.name, COALESCE(json_extract(w.labels, '$.workdir'), '') FROM trials t"
               " JOIN sweeps s ON s.id = t.sweep_id LEFT JOIN workers w ON w.id ="
               " (SELECT worker_id FROM events WHERE trial_id = t.id AND kind = 'leased' ORDER BY id DESC LIMIT 1)"
               " WHERE t.id = ?1");
  if (!st.status().ok()) return st.status();
  st.Bind(1, trial_id);
  if (st.Step() != SQLITE_ROW) return absl::NotFoundError(absl::StrCat("no trial ", trial_id));
  json out = {{"file", file}, {"path", nullptr}, {"available", false}, {"text", ""}, {"reason", ""}};
  const int64_t attempt = st.Int(0);
  const std::string workdir = st.Text(2);
  if (attempt == 0) {
    out["reason"] = "the trial has not run yet";
    return out;
  }
  if (workdir.empty()) {
    out["reason"] = "its worker did not say where its files are";
    return out;
  }
  const std::string path = absl::StrCat(workdir, "/", st.Text(1), "/", trial_id, "/attempt-", attempt, "/", file, ".log");
  out["path"] = path;
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) {
    out["reason"] = "not readable from sweepd's machine (the trial ran elsewhere, or the folder is gone)";
    return out;
  }
  const int64_t size = static_cast<int64_t>(in.tellg());
  const int64_t start = std::max<int64_t>(0, size - *bytes);
  in.seekg(start);
  std::string text(static_cast<size_t>(size - start), '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  out["available"] = true;
  out["text"] = text;
  out["truncated"] = start > 0;
  return out;
}

std::string ContentType(const std::string& path) {
  static const std::map<std::string, std::string> kTypes = {
      {".html", "text/html; charset=utf-8"}, {".js", "text/javascript; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},   {".json", "application/json"},
      {".map", "application/json"},          {".svg", "image/svg+xml"},
      {".png", "image/png"},                 {".ico", "image/x-icon"},
      {".txt", "text/plain; charset=utf-8"}};
  auto it = kTypes.find(fs::path(path).extension().string());
  return it == kTypes.end() ? "application/octet-stream" : it->second;
}

}  // namespace

Dashboard::Dashboard(DashboardOptions options) : options_(std::move(options)) {}
Dashboard::~Dashboard() = default;

std::string Dashboard::DefaultAssetsDir() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return "";
  const fs::path dir = exe.parent_path();
  for (const fs::path& candidate : {dir / "dashboard", dir.parent_path() / "share" / "sweep" / "dashboard"}) {
    if (fs::exists(candidate / "index.html", ec)) return candidate.string();
  }
  return (dir / "dashboard").string();
}

std::unique_ptr<Store> Dashboard::Acquire(std::string* error) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!pool_.empty()) {
      std::unique_ptr<Store> store = std::move(pool_.back());
      pool_.pop_back();
      return store;
    }
  }
  absl::StatusOr<std::unique_ptr<Store>> store = Store::OpenReadOnly(options_.db_path);
  if (!store.ok()) {
    *error = std::string(store.status().message());
    return nullptr;
  }
  // Belt and braces: the connection is read-only, and query_only refuses writes even if a
  // future change opened it otherwise.
  if (absl::Status s = ExecSql((*store)->db(), "PRAGMA query_only = ON"); !s.ok()) {
    *error = std::string(s.message());
    return nullptr;
  }
  return *std::move(store);
}

void Dashboard::Release(std::unique_ptr<Store> store) {
  std::lock_guard<std::mutex> lock(mu_);
  if (pool_.size() < 16) pool_.push_back(std::move(store));
}

HttpResponse Dashboard::Handle(const HttpRequest& request) {
  std::vector<std::pair<std::string, std::string>> set_cookie;
  if (!options_.token.empty()) {
    const std::string bearer = absl::StartsWith(request.authorization, "Bearer ")
                                   ? request.authorization.substr(7)
                                   : std::string();
    const std::string from_query = StringParam(request, "token");
    const bool ok = ConstantTimeEquals(bearer, options_.token) ||
                    ConstantTimeEquals(CookieValue(request.cookie, "sweep_token"), options_.token) ||
                    ConstantTimeEquals(from_query, options_.token);
    if (!ok) {
      return ErrorAnswer(401,
                         "missing or wrong token: send 'Authorization: Bearer <token>', or open the dashboard "
                         "once with ?token=<token>");
    }
    if (!from_query.empty()) {
      set_cookie.push_back(
          {"Set-Cookie", absl::StrCat("sweep_token=", options_.token, "; Path=/; HttpOnly; SameSite=Strict")});
    }
  }
  HttpResponse response;
  if (request.path == "/api" || absl::StartsWith(request.path, "/api/")) {
    std::vector<std::string> parts = absl::StrSplit(request.path.substr(1), '/', absl::SkipEmpty());
    std::string error;
    std::unique_ptr<Store> store = Acquire(&error);
    if (store == nullptr) return ErrorAnswer(500, error);
    response = Api(*store, request, parts);
    Release(std::move(store));
  } else {
    response = Static(request.path);
  }
  response.headers.insert(response.headers.end(), set_cookie.begin(), set_cookie.end());
  return response;
}

HttpResponse Dashboard::Api(Store& store, const HttpRequest& request, const std::vector<std::string>& parts) {
  const double now = options_.now ? options_.now()
                                  : std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  sqlite3* db = store.db();
  auto answer = [](const absl::StatusOr<json>& result) {
    return result.ok() ? JsonAnswer(*result) : StatusAnswer(result.status());
  };
  // parts[0] == "api"
  if (parts.size() == 2 && parts[1] == "sweeps") {
    absl::StatusOr<std::vector<SweepRow>> sweeps = store.ListSweeps();
    if (!sweeps.ok()) return StatusAnswer(sweeps.status());
    json list = json::array();
    for (const SweepRow& sweep : *sweeps) {
      absl::StatusOr<json> summary = SweepSummary(db, sweep, now);
      if (!summary.ok()) return StatusAnswer(summary.status());
      list.push_back(*std::move(summary));
    }
    return JsonAnswer(json{{"sweeps", list}});
  }
  if (parts.size() >= 3 && parts.size() <= 4 && parts[1] == "sweeps") {
    absl::StatusOr<SweepRow> sweep = store.GetSweep(parts[2]);
    if (!sweep.ok()) return StatusAnswer(sweep.status());
    if (parts.size() == 3) return answer(SweepDetail(db, *sweep, now));
    if (parts[3] == "trials") return answer(SweepTrials(db, *sweep));
    if (parts[3] == "grid") return answer(SweepGrid(db, *sweep, request));
    if (parts[3] == "analysis") return Analysis(store, sweep->id);
  }
  if (parts.size() >= 3 && parts.size() <= 4 && parts[1] == "trials") {
    absl::StatusOr<int64_t> id = TrialId(parts[2]);
    if (!id.ok()) return StatusAnswer(id.status());
    if (parts.size() == 3) return answer(TrialDetail(store, *id));
    if (parts[3] == "series") return answer(TrialSeries(store, *id, request));
    if (parts[3] == "log") return answer(TrialLog(db, *id, request));
  }
  return ErrorAnswer(404, absl::StrCat("no such endpoint: ", request.path, " (see docs/dashboard.md)"));
}

HttpResponse Dashboard::Analysis(Store& store, int64_t sweep_id) {
  sqlite3* db = store.db();
  Statement latest(db, "SELECT COUNT(finished_at), COALESCE(MAX(finished_at), 0) FROM trials WHERE sweep_id = ?1");
  if (!latest.status().ok()) return StatusAnswer(latest.status());
  latest.Bind(1, sweep_id);
  if (latest.Step() != SQLITE_ROW) return StatusAnswer(latest.Error("analysis"));
  const std::string key = absl::StrCat(latest.Int(0), "@", latest.Double(1));
  const double last_finish = latest.Double(1);

  Statement stored(db, "SELECT created_at, group_by, result FROM analyses WHERE sweep_id = ?1 ORDER BY id DESC LIMIT 1");
  if (!stored.status().ok()) return StatusAnswer(stored.status());
  stored.Bind(1, sweep_id);
  if (stored.Step() == SQLITE_ROW && stored.Double(0) >= last_finish) {
    json out = {{"source", "stored"}, {"created_at", stored.Double(0)},
                {"group_by", ParseObject(stored.Text(1))}, {"result", ParseObject(stored.Text(2))}};
    return JsonAnswer(out);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = analyses_.find(sweep_id);
    if (it != analyses_.end() && it->second.key == key) {
      HttpResponse cached = JsonAnswer(json::object());
      cached.body = it->second.json;
      return cached;
    }
  }
  absl::StatusOr<analysis::SweepAnalysis> result = analysis::AnalyzeSweep(db, sweep_id, {});
  json out = {{"source", "computed"}, {"created_at", nullptr}, {"group_by", json::array()}};
  if (result.ok()) {
    out["result"] = analysis::ToJson(*result);
  } else {
    out["result"] = nullptr;
    out["error"] = std::string(result.status().message());
  }
  HttpResponse response = JsonAnswer(out);
  std::lock_guard<std::mutex> lock(mu_);
  analyses_[sweep_id] = CachedAnalysis{key, response.body};
  return response;
}

HttpResponse Dashboard::Static(const std::string& path) {
  std::string relative = path == "/" || path.empty() ? "index.html" : path.substr(1);
  for (absl::string_view segment : absl::StrSplit(relative, '/')) {
    if (segment == ".." || segment == "." || segment.empty() || absl::StrContains(segment, '\0') ||
        absl::StrContains(segment, '\\')) {
      return ErrorAnswer(404, absl::StrCat("no such file: ", path));
    }
  }
  if (options_.assets_dir.empty()) return ErrorAnswer(404, "this sweepd serves the API only (no --dashboard-dir)");
  const fs::path file = fs::path(options_.assets_dir) / relative;
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) {
    if (relative == "index.html") {
      return ErrorAnswer(404, absl::StrCat("the dashboard is not built: no ", file.string(),
                                           " (build the 'dashboard' target, which needs npm; see README)"));
    }
    return ErrorAnswer(404, absl::StrCat("no such file: ", path));
  }
  std::ifstream in(file, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  HttpResponse response;
  response.content_type = ContentType(file.string());
  response.body = buffer.str();
  response.headers.push_back({"Cache-Control", "no-cache"});
  return response;
}

}  // namespace sweep::orchestrator
