#include "tools/sweepctl/commands.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "tools/sweepctl/sweep_view.h"

namespace sweep::ctl {
namespace {
namespace fs = std::filesystem;

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "sweepctl: %s\n", std::string(status.message()).c_str());
  return ExitCodeFor(status);
}

int Fail(const grpc::Status& status, const std::string& what) { return Fail(FromGrpc(status, what)); }

void Print(const Table& table, Format format) {
  std::fputs(Render(table, format).c_str(), stdout);
  if (table.truncated) {
    std::fprintf(stderr, "sweepctl: only the first %zu rows (sweepd's query row limit)\n", table.rows.size());
  }
}

std::string Time(double unix_seconds) {
  if (unix_seconds <= 0) return "";
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", std::localtime(&t));
  return buf;
}

absl::StatusOr<v1::Trial> GetTrial(Client& client, int64_t id) {
  v1::TrialRef ref;
  ref.set_trial_id(id);
  v1::Trial trial;
  grpc::Status s = client.stub().GetTrial(client.Context().get(), ref, &trial);
  if (!s.ok()) return FromGrpc(s, absl::StrCat("trial ", id));
  return trial;
}

// A metric value as Python's json writes it (Lingua's metrics.jsonl): NaN, Infinity.
std::string JsonNumber(const std::string& value, const std::string& nonfinite) {
  if (nonfinite == "nan") return "NaN";
  if (nonfinite == "inf") return "Infinity";
  if (nonfinite == "-inf") return "-Infinity";
  double v;
  if (!absl::SimpleAtod(value, &v)) return "null";
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

}  // namespace

int Submit(Client& client, const std::string& spec_path, Format format) {
  std::ifstream in(spec_path);
  if (!in) return Fail(absl::InvalidArgumentError(spec_path + ": cannot read the spec"));
  std::stringstream text;
  text << in.rdbuf();
  v1::SubmitSweepRequest req;
  req.set_spec_yaml(text.str());
  req.set_origin(spec_path);
  v1::SubmitSweepResponse resp;
  grpc::Status s = client.stub().SubmitSweep(client.Context().get(), req, &resp);
  if (!s.ok()) return Fail(s, "submit " + spec_path);
  int64_t total = 0;
  for (const auto& [state, n] : resp.sweep().trials_by_state()) total += n;
  if (format == Format::kJson) {
    std::printf("%s\n", nlohmann::json({{"id", resp.sweep().id()},
                                        {"name", resp.sweep().name()},
                                        {"created", resp.created()},
                                        {"trials", total}})
                            .dump()
                            .c_str());
  } else {
    std::printf("%s sweep %s (id %lld): %lld trials\n", resp.created() ? "submitted" : "already there:",
                resp.sweep().name().c_str(), static_cast<long long>(resp.sweep().id()),
                static_cast<long long>(total));
  }
  return kExitOk;
}

int ListSweeps(Client& client, Format format) {
  v1::ListSweepsResponse resp;
  grpc::Status s = client.stub().ListSweeps(client.Context().get(), {}, &resp);
  if (!s.ok()) return Fail(s, "list sweeps");
  Table t;
  t.columns = {"id", "name", "state", "method", "metric", "done", "running", "pending", "trials", "created"};
  for (const v1::Sweep& sweep : resp.sweeps()) {
    int64_t total = 0, done = 0, running = 0, pending = 0;
    for (const auto& [state, n] : sweep.trials_by_state()) {
      total += n;
      if (state == "running" || state == "leased") running += n;
      else if (state == "pending") pending += n;
      else done += n;
    }
    t.rows.push_back({std::to_string(sweep.id()), sweep.name(), sweep.state(), sweep.method(),
                      sweep.metric_name() + (sweep.minimize() ? " (min)" : " (max)"), std::to_string(done),
                      std::to_string(running), std::to_string(pending), std::to_string(total),
                      Time(sweep.created_at())});
  }
  Print(t, format);
  return kExitOk;
}

int Status(Client& client, const std::string& sweep, Format format) {
  absl::StatusOr<Progress> p = GetProgress(client, sweep);
  if (!p.ok()) return Fail(p.status());
  if (format == Format::kJson || format == Format::kCsv) {
    nlohmann::json out = {{"id", p->sweep.id()},
                          {"name", p->sweep.name()},
                          {"state", p->sweep.state()},
                          {"trials", p->total},
                          {"finished", p->finished},
                          {"trials_by_state", nlohmann::json::object()},
                          {"elapsed_seconds", p->elapsed}};
    for (const auto& [state, n] : p->sweep.trials_by_state()) out["trials_by_state"][state] = n;
    if (p->eta) out["eta_seconds"] = *p->eta;
    if (p->best_trial) {
      out["best"] = {{"trial", *p->best_trial}, {"trial_key", p->best_key},
                     {"metric", p->sweep.metric_name()}, {"value", p->best_metric}};
    }
    std::printf("%s\n", out.dump(2).c_str());
    return kExitOk;
  }
  std::vector<std::string> counts;
  for (const auto& [state, n] : p->sweep.trials_by_state()) counts.push_back(absl::StrCat(n, " ", state));
  std::printf("sweep %s (id %lld): %s\n  trials: %lld (%s)\n  %s\n", p->sweep.name().c_str(),
              static_cast<long long>(p->sweep.id()), p->sweep.state().c_str(),
              static_cast<long long>(p->total), absl::StrJoin(counts, ", ").c_str(),
              ProgressLine(*p, StdoutIsTerminal()).c_str());
  if (p->best_trial) {
    std::printf("  best %s %s: trial %lld (%s)\n", p->sweep.metric_name().c_str(),
                Number(p->best_metric).c_str(), static_cast<long long>(*p->best_trial), p->best_key.c_str());
  }
  return kExitOk;
}

int Watch(Client& client, const std::string& sweep, const std::atomic<int>& interrupts) {
  absl::StatusOr<std::string> state = FollowSweep(client, sweep, interrupts);
  const bool interrupted = interrupts.load() > 0;
  if (!state.ok()) return Fail(state.status());
  return interrupted ? kExitInterrupted : kExitOk;
}

int Summary(Client& client, const std::string& sweep, Format format) {
  absl::Status s = PrintSummary(client, sweep, format);
  return s.ok() ? kExitOk : Fail(s);
}

int Analyze(Client& client, const std::string& sweep, const std::string& group_by, bool json) {
  v1::AnalyzeSweepRequest req;
  req.set_sweep(sweep);
  for (absl::string_view key : absl::StrSplit(group_by, ',', absl::SkipEmpty())) {
    req.add_group_by(std::string(absl::StripAsciiWhitespace(key)));
  }
  v1::AnalyzeSweepResponse resp;
  grpc::Status s = client.stub().AnalyzeSweep(client.Context(120).get(), req, &resp);
  if (!s.ok()) return Fail(s, "analyze " + sweep);
  std::fputs((json ? resp.json() + "\n" : resp.text()).c_str(), stdout);
  return kExitOk;
}

int Trials(Client& client, const std::string& sweep, const std::string& state,
           const std::string& sort_metric, Format format) {
  absl::StatusOr<v1::Sweep> got = GetSweep(client, sweep);
  if (!got.ok()) return Fail(got.status());
  std::string sql =
      "SELECT t.id, t.trial_key, t.state, t.attempt, t.last_step AS step, t.final_metric AS " +
      SqlQuote("final " + got->metric_name()) + ", t.best_metric AS " + SqlQuote("best " + got->metric_name());
  std::string metric = sort_metric;
  bool descending = !got->minimize();
  if (!metric.empty() && metric[0] == '-') {
    metric = metric.substr(1);
    descending = true;
  } else if (!metric.empty() && metric != got->metric_name()) {
    descending = false;
  }
  if (!metric.empty()) {
    sql += ", (SELECT COALESCE(CAST(value AS TEXT), nonfinite) FROM metrics m WHERE m.trial_id = t.id AND "
           "m.name = " + SqlQuote(metric) + " ORDER BY step DESC LIMIT 1) AS " + SqlQuote("last " + metric);
  }
  sql += " FROM trials t WHERE t.sweep_id = " + std::to_string(got->id());
  if (!state.empty()) sql += " AND t.state = " + SqlQuote(state);
  if (!metric.empty()) {
    // Non-finite and missing values sort last whatever the direction: NaN is never compared.
    const std::string last = "(SELECT value FROM metrics m WHERE m.trial_id = t.id AND m.name = " +
                             SqlQuote(metric) + " ORDER BY step DESC LIMIT 1)";
    sql += " ORDER BY " + last + " IS NULL, " + last + (descending ? " DESC" : " ASC") + ", t.id";
  } else {
    sql += " ORDER BY t.id";
  }
  absl::StatusOr<Table> t = client.Query(sql);
  if (!t.ok()) return Fail(t.status());
  Print(*t, format);
  return kExitOk;
}

int Show(Client& client, int64_t id, Format format) {
  absl::StatusOr<v1::Trial> trial = GetTrial(client, id);
  if (!trial.ok()) return Fail(trial.status());
  const std::string where = " WHERE trial_id = " + std::to_string(id);
  absl::StatusOr<Table> config = client.Query("SELECT config, checkpoint_step FROM trials WHERE id = " + std::to_string(id));
  absl::StatusOr<Table> events = client.Query(
      "SELECT e.id, datetime(e.time, 'unixepoch', 'localtime') AS time, e.kind, COALESCE(w.name, '') AS worker, "
      "e.detail FROM events e LEFT JOIN workers w ON w.id = e.worker_id" + std::string(" WHERE e.trial_id = ") +
      std::to_string(id) + " ORDER BY e.id");
  absl::StatusOr<Table> metrics = client.Query(
      "SELECT name, step, COALESCE(CAST(value AS TEXT), nonfinite) AS value FROM metrics m" + where +
      " AND step = (SELECT MAX(step) FROM metrics m2 WHERE m2.trial_id = m.trial_id AND m2.name = m.name) "
      "ORDER BY name");
  for (const auto* q : {&config, &events, &metrics}) {
    if (!q->ok()) return Fail(q->status());
  }
  if (format == Format::kJson) {
    nlohmann::json out = {{"id", trial->id()},
                          {"sweep_id", trial->sweep_id()},
                          {"trial_key", trial->trial_key()},
                          {"params", nlohmann::json::parse(trial->params_json(), nullptr, false)},
                          {"state", trial->state()},
                          {"attempt", trial->attempt()},
                          {"last_step", trial->last_step()},
                          {"checkpoint", trial->checkpoint()},
                          {"error", trial->error()},
                          {"attempt_errors", nlohmann::json::parse(trial->attempt_errors_json(), nullptr, false)},
                          {"config", config->rows.empty() ? "" : config->rows[0][0]},
                          {"last_metrics", nlohmann::json::object()},
                          {"events", nlohmann::json::array()}};
    if (trial->has_final_metric()) out["final_metric"] = trial->final_metric();
    if (trial->has_best_metric()) out["best_metric"] = trial->best_metric();
    for (const auto& row : metrics->rows) out["last_metrics"][row[0]] = {{"step", std::stoll(row[1])}, {"value", row[2]}};
    for (const auto& row : events->rows) {
      out["events"].push_back({{"id", std::stoll(row[0])}, {"time", row[1]}, {"kind", row[2]},
                               {"worker", row[3]}, {"detail", row[4]}});
    }
    std::printf("%s\n", out.dump(2).c_str());
    return kExitOk;
  }
  std::printf("trial %lld (%s) of sweep %lld: %s, attempt %d, step %lld\n", static_cast<long long>(trial->id()),
              trial->trial_key().c_str(), static_cast<long long>(trial->sweep_id()), trial->state().c_str(),
              trial->attempt(), static_cast<long long>(trial->last_step()));
  if (trial->has_final_metric()) std::printf("final metric %s\n", Number(trial->final_metric(), 6).c_str());
  if (trial->has_best_metric()) std::printf("best metric  %s\n", Number(trial->best_metric(), 6).c_str());
  if (!trial->checkpoint().empty()) std::printf("checkpoint   %s\n", trial->checkpoint().c_str());
  if (!trial->error().empty()) std::printf("error        %s\n", trial->error().c_str());
  if (trial->attempt_errors_json() != "[]" && !trial->attempt_errors_json().empty()) {
    std::printf("attempt errors %s\n", trial->attempt_errors_json().c_str());
  }
  std::printf("\nconfig:\n%s\n", config->rows.empty() ? "" : config->rows[0][0].c_str());
  std::printf("\nevents:\n%s", Render(*events, format).c_str());
  std::printf("\nlast metrics:\n%s", Render(*metrics, format).c_str());
  return kExitOk;
}

int Logs(Client& client, int64_t id, bool follow, const std::string& file,
         const std::atomic<int>& interrupts) {
  static const std::map<std::string, std::string> kFiles = {
      {"stderr", "stderr.log"}, {"stdout", "stdout.log"}, {"metrics", "metrics.jsonl"}, {"config", "config.yaml"}};
  auto known = kFiles.find(file);
  if (known == kFiles.end()) {
    return Fail(absl::InvalidArgumentError("--file: '" + file + "' is not one of stderr, stdout, metrics, config"));
  }
  size_t offset = 0;
  int attempt = -1;
  while (true) {
    absl::StatusOr<Table> where = client.Query(
        "SELECT t.attempt, s.name, t.state, COALESCE(json_extract(w.labels, '$.workdir'), ''), COALESCE(w.name, ''), "
        "COALESCE(w.host, '') FROM trials t JOIN sweeps s ON s.id = t.sweep_id LEFT JOIN workers w ON w.id = "
        "(SELECT worker_id FROM events WHERE trial_id = t.id AND kind = 'leased' ORDER BY id DESC LIMIT 1) "
        "WHERE t.id = " + std::to_string(id));
    if (!where.ok()) return Fail(where.status());
    if (where->rows.empty()) return Fail(absl::NotFoundError(absl::StrCat("no trial ", id)));
    const auto& row = where->rows[0];
    const int now_attempt = std::stoi(row[0]);
    if (now_attempt == 0) return Fail(absl::NotFoundError(absl::StrCat("trial ", id, " has not run yet")));
    if (row[3].empty()) {
      return Fail(absl::NotFoundError(absl::StrCat("trial ", id, ": its worker did not say where its files are")));
    }
    const std::string path = absl::StrCat(row[3], "/", row[1], "/", id, "/attempt-", now_attempt, "/", known->second);
    if (now_attempt != attempt) {
      if (attempt != -1) std::printf("--- attempt %d\n", now_attempt);
      attempt = now_attempt;
      offset = 0;
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      if (!follow || row[2] != "leased") {
        return Fail(absl::NotFoundError(absl::StrCat("trial ", id, ": ", path, " is not readable here; it is on worker ",
                                                     row[4], " (host ", row[5], ")")));
      }
    } else {
      in.seekg(static_cast<std::streamoff>(offset));
      std::string chunk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      offset += chunk.size();
      std::fwrite(chunk.data(), 1, chunk.size(), stdout);
      std::fflush(stdout);
    }
    const bool live = row[2] == "leased" || row[2] == "running" || row[2] == "pending";
    if (!follow || !live) return kExitOk;
    if (interrupts.load() > 0) return kExitInterrupted;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
}

int SweepAction(Client& client, const std::string& action, const std::string& sweep, bool stop_running) {
  v1::Sweep out;
  grpc::Status s;
  if (action == "pause") {
    v1::PauseSweepRequest req;
    req.set_sweep(sweep);
    req.set_stop_running(stop_running);
    s = client.stub().PauseSweep(client.Context().get(), req, &out);
  } else {
    v1::SweepRef ref;
    ref.set_sweep(sweep);
    s = action == "resume" ? client.stub().ResumeSweep(client.Context().get(), ref, &out)
                           : client.stub().CancelSweep(client.Context().get(), ref, &out);
  }
  if (!s.ok()) return Fail(s, action + " " + sweep);
  std::printf("sweep %s: %s\n", out.name().c_str(), out.state().c_str());
  return kExitOk;
}

int TrialAction(Client& client, const std::string& action, int64_t id) {
  v1::TrialRef ref;
  ref.set_trial_id(id);
  v1::Trial out;
  grpc::Status s = action == "retry" ? client.stub().RetryTrial(client.Context().get(), ref, &out)
                                     : client.stub().CancelTrial(client.Context().get(), ref, &out);
  if (!s.ok()) return Fail(s, absl::StrCat(action, " trial ", id));
  std::printf("trial %lld (%s): %s\n", static_cast<long long>(out.id()), out.trial_key().c_str(), out.state().c_str());
  return kExitOk;
}

int Workers(Client& client, Format format) {
  v1::ListWorkersResponse resp;
  grpc::Status s = client.stub().ListWorkers(client.Context().get(), {}, &resp);
  if (!s.ok()) return Fail(s, "list workers");
  Table t;
  t.columns = {"id", "name", "host", "state", "gpus", "cpu_slots", "running", "failures_in_a_row", "last_seen"};
  for (const v1::Worker& w : resp.workers()) {
    t.rows.push_back({std::to_string(w.id()), w.name(), w.host(), w.state(), std::to_string(w.gpus()),
                      std::to_string(w.cpu_slots()), std::to_string(w.running_trials()),
                      std::to_string(w.consecutive_failures()), Time(w.last_seen())});
  }
  Print(t, format);
  return kExitOk;
}

int Query(Client& client, const std::string& sql, int max_rows, Format format) {
  absl::StatusOr<Table> t = client.Query(sql, max_rows);
  if (!t.ok()) return Fail(t.status());
  Print(*t, format);
  return kExitOk;
}

int Export(Client& client, const std::string& sweep, const std::string& format, const std::string& out) {
  if (format != "jsonl" && format != "csv") {
    return Fail(absl::InvalidArgumentError("--format: '" + format + "' is not csv or jsonl"));
  }
  absl::StatusOr<v1::Sweep> got = GetSweep(client, sweep);
  if (!got.ok()) return Fail(got.status());
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) return Fail(absl::InternalError("cannot create " + out + ": " + ec.message()));
  // Trials, a page at a time (the Query RPC caps rows).
  Table trials;
  for (int64_t after = 0;;) {
    absl::StatusOr<Table> page = client.Query(
        "SELECT id, trial_key, params, state, attempt, last_step, final_metric, best_metric, diverged_step, error "
        "FROM trials WHERE sweep_id = " + std::to_string(got->id()) + " AND id > " + std::to_string(after) +
        " ORDER BY id LIMIT 5000");
    if (!page.ok()) return Fail(page.status());
    if (trials.columns.empty()) trials.columns = page->columns;
    if (page->rows.empty()) break;
    trials.rows.insert(trials.rows.end(), page->rows.begin(), page->rows.end());
    trials.nulls.insert(trials.nulls.end(), page->nulls.begin(), page->nulls.end());
    after = std::stoll(page->rows.back()[0]);
  }
  std::ofstream(out + "/trials.csv") << Render(trials, Format::kCsv);
  int64_t rows = 0;
  for (const auto& trial : trials.rows) {
    const std::string id = trial[0];
    fs::create_directories(out + "/" + id, ec);
    // Every metric row of the trial, in primary-key order (name, step), a page at a time.
    std::map<int64_t, std::vector<std::pair<std::string, std::string>>> by_step;  // step -> (name, value)
    std::ofstream csv;
    if (format == "csv") {
      csv.open(out + "/" + id + "/metrics.csv");
      csv << "step,name,value\n";
    }
    std::string last_name;
    int64_t last_step = -1;
    for (bool first = true;; first = false) {
      std::string sql = "SELECT name, step, CAST(value AS TEXT), nonfinite FROM metrics WHERE trial_id = " + id;
      if (!first) {
        sql += " AND (name > " + SqlQuote(last_name) + " OR (name = " + SqlQuote(last_name) + " AND step > " +
               std::to_string(last_step) + "))";
      }
      absl::StatusOr<Table> page = client.Query(sql + " ORDER BY name, step LIMIT 10000");
      if (!page.ok()) return Fail(page.status());
      if (page->rows.empty()) break;
      for (size_t r = 0; r < page->rows.size(); ++r) {
        const auto& row = page->rows[r];
        const std::string nonfinite = page->nulls[r][3] ? "" : row[3];
        const std::string value = JsonNumber(row[2], nonfinite);
        if (format == "csv") {
          csv << row[1] << "," << row[0] << "," << (nonfinite.empty() ? row[2] : nonfinite) << "\n";
        } else {
          by_step[std::stoll(row[1])].emplace_back(row[0], value);
        }
        ++rows;
      }
      last_name = page->rows.back()[0];
      last_step = std::stoll(page->rows.back()[1]);
    }
    if (format == "jsonl") {
      std::ofstream jsonl(out + "/" + id + "/metrics.jsonl");
      for (const auto& [step, values] : by_step) {
        jsonl << "{\"global_step\": " << step;
        for (const auto& [name, value] : values) jsonl << ", " << nlohmann::json(name).dump() << ": " << value;
        jsonl << "}\n";
      }
    }
  }
  std::printf("exported sweep %s: %zu trials, %lld metric rows, to %s/ (trials.csv, <trial>/metrics.%s)\n",
              got->name().c_str(), trials.rows.size(), static_cast<long long>(rows), out.c_str(), format.c_str());
  return kExitOk;
}

}  // namespace sweep::ctl
