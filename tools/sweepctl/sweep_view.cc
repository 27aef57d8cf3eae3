#include "tools/sweepctl/sweep_view.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sweep::ctl {
namespace {

double UnixNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

double ToDouble(const std::string& s, double fallback = 0) {
  double v;
  return absl::SimpleAtod(s, &v) ? v : fallback;
}

int64_t ToInt(const std::string& s) {
  int64_t v;
  return absl::SimpleAtoi(s, &v) ? v : 0;
}

// A key of the trainer config (YAML), e.g. "optim.warmup"; nullopt when absent.
std::optional<double> ConfigNumber(const std::string& yaml, const std::string& dotted) {
  try {
    YAML::Node node = YAML::Load(yaml);
    size_t start = 0;
    while (true) {
      const size_t dot = dotted.find('.', start);
      node = node[dotted.substr(start, dot == std::string::npos ? std::string::npos : dot - start)];
      if (!node) return std::nullopt;
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
    return node.as<double>();
  } catch (const YAML::Exception&) {
    return std::nullopt;
  }
}

const std::set<std::string>& FinishedStates() {
  static const std::set<std::string> kStates = {"completed", "diverged", "failed", "stopped", "cancelled"};
  return kStates;
}

std::string Clock() {
  std::time_t now = std::time(nullptr);
  char buf[16];
  std::strftime(buf, sizeof(buf), "%H:%M:%S", std::localtime(&now));
  return buf;
}

}  // namespace

int64_t Progress::Count(const std::string& state) const {
  auto it = sweep.trials_by_state().find(state);
  return it == sweep.trials_by_state().end() ? 0 : it->second;
}

absl::StatusOr<v1::Sweep> GetSweep(Client& client, const std::string& sweep) {
  v1::SweepRef ref;
  ref.set_sweep(sweep);
  v1::Sweep out;
  grpc::Status s = client.stub().GetSweep(client.Context().get(), ref, &out);
  if (!s.ok()) return FromGrpc(s, "sweep " + sweep);
  return out;
}

absl::StatusOr<Progress> GetProgress(Client& client, const std::string& sweep) {
  Progress p;
  absl::StatusOr<v1::Sweep> got = GetSweep(client, sweep);
  if (!got.ok()) return got.status();
  p.sweep = *got;
  for (const auto& [state, n] : p.sweep.trials_by_state()) {
    p.total += n;
    if (FinishedStates().count(state)) p.finished += n;
  }
  const std::string id = std::to_string(p.sweep.id());
  absl::StatusOr<Table> running = client.Query(
      "SELECT id, COALESCE(last_step, 0), config FROM trials WHERE sweep_id = " + id +
      " AND state IN ('leased', 'running') ORDER BY id LIMIT 32");
  if (!running.ok()) return running.status();
  for (const auto& row : running->rows) {
    p.running.push_back({ToInt(row[0]), ToInt(row[1]),
                         static_cast<int64_t>(ConfigNumber(row[2], "steps").value_or(0))});
  }
  absl::StatusOr<Table> best = client.Query(
      "SELECT trial_id, trial_key, final_metric FROM sweep_best WHERE sweep_id = " + id);
  if (!best.ok()) return best.status();
  if (!best->rows.empty()) {
    p.best_trial = ToInt(best->rows[0][0]);
    p.best_key = best->rows[0][1];
    p.best_metric = ToDouble(best->rows[0][2]);
  }
  absl::StatusOr<Table> times = client.Query(
      "SELECT MIN(started_at), AVG(CASE WHEN finished_at IS NOT NULL THEN finished_at - started_at END) "
      "FROM trials WHERE sweep_id = " + id);
  if (!times.ok()) return times.status();
  if (!times->rows.empty() && !times->nulls[0][0]) {
    p.elapsed = UnixNow() - ToDouble(times->rows[0][0]);
    if (!times->nulls[0][1]) {
      const double per_trial = ToDouble(times->rows[0][1]);
      const double lanes = std::max<double>(1, static_cast<double>(p.running.size()));
      const double left = static_cast<double>(p.Count("pending")) + 0.5 * static_cast<double>(p.running.size());
      p.eta = per_trial * left / lanes;
    }
  }
  return p;
}

std::string ProgressLine(const Progress& p, bool terminal) {
  const double fraction = p.total > 0 ? static_cast<double>(p.finished) / static_cast<double>(p.total) : 0;
  std::string line = terminal ? Bar(fraction, 24) + " " : "";
  absl::StrAppend(&line, p.finished, "/", p.total, " done");
  if (!p.running.empty()) {
    std::vector<std::string> steps;
    for (size_t i = 0; i < p.running.size() && i < 4; ++i) {
      const RunningTrial& r = p.running[i];
      steps.push_back(absl::StrCat("#", r.id, " ", r.step, r.steps ? absl::StrCat("/", r.steps) : ""));
    }
    absl::StrAppend(&line, " · ", p.running.size(), " running (", absl::StrJoin(steps, ", "),
                    p.running.size() > 4 ? ", ..." : "", ")");
  }
  for (const char* state : {"diverged", "failed", "stopped", "cancelled"}) {
    if (p.Count(state) > 0) absl::StrAppend(&line, " · ", p.Count(state), " ", state);
  }
  if (p.best_trial) {
    absl::StrAppend(&line, " · best ", p.sweep.metric_name(), " ", Number(p.best_metric), " (#",
                    *p.best_trial, ")");
  }
  if (p.elapsed > 0) absl::StrAppend(&line, " · ", Duration(p.elapsed));
  if (p.eta && p.finished < p.total) absl::StrAppend(&line, " · ETA ", Duration(*p.eta));
  if (p.sweep.state() != "running") absl::StrAppend(&line, " · ", p.sweep.state());
  return line;
}

absl::StatusOr<std::string> FollowSweep(Client& client, const std::string& sweep,
                                        const std::atomic<int>& interrupts) {
  const bool terminal = StdoutIsTerminal();
  // The watch stream, read on its own thread; the main loop prints and redraws.
  std::mutex mu;
  std::deque<v1::Event> events;
  std::atomic<bool> stream_done{false};
  auto ctx = client.Context(/*timeout_seconds=*/0);
  v1::WatchSweepRequest req;
  req.set_sweep(sweep);
  // Only what happens from now on: a resumed run does not replay its history.
  absl::StatusOr<Table> last = client.Query("SELECT COALESCE(MAX(id), 0) FROM events");
  if (last.ok() && !last->rows.empty()) req.set_after_event_id(ToInt(last->rows[0][0]));
  std::thread reader([&] {
    auto stream = client.stub().WatchSweep(ctx.get(), req);
    for (v1::Event event; stream->Read(&event);) {
      std::lock_guard<std::mutex> lock(mu);
      events.push_back(event);
    }
    stream->Finish();
    stream_done = true;
  });
  std::map<int64_t, std::string> keys;
  auto key_of = [&](int64_t trial) -> std::string {
    auto it = keys.find(trial);
    if (it != keys.end()) return it->second;
    v1::TrialRef ref;
    ref.set_trial_id(trial);
    v1::Trial t;
    const bool ok = client.stub().GetTrial(client.Context().get(), ref, &t).ok();
    return keys[trial] = ok ? t.trial_key() : "";
  };
  static const std::set<std::string> kShown = {"completed", "diverged", "failed", "stopped",
                                               "cancelled", "requeued", "released",
                                               "divergence_detected", "early_stop"};
  std::string state = "running";
  double last_line = 0;
  int64_t last_finished = -1;
  while (true) {
    std::vector<v1::Event> batch;
    {
      std::lock_guard<std::mutex> lock(mu);
      batch.assign(events.begin(), events.end());
      events.clear();
    }
    for (const v1::Event& e : batch) {
      if (!kShown.count(e.kind()) || e.trial_id() == 0) continue;
      std::string detail = e.detail();
      if (detail.size() > 160) detail = detail.substr(0, 157) + "...";
      std::printf("%s%s trial %lld (%s) %s%s%s\n", terminal ? "\r\033[K" : "", Clock().c_str(),
                  static_cast<long long>(e.trial_id()), key_of(e.trial_id()).c_str(), e.kind().c_str(),
                  detail.empty() ? "" : ": ", detail.c_str());
    }
    absl::StatusOr<Progress> p = GetProgress(client, sweep);
    if (!p.ok()) {
      ctx->TryCancel();
      reader.join();
      return p.status();
    }
    state = p->sweep.state();
    const bool ended = state == "completed" || state == "cancelled";
    if (terminal) {
      std::printf("\r\033[K%s", ProgressLine(*p, true).c_str());
    } else if (p->finished != last_finished || UnixNow() - last_line > 10 || ended) {
      std::printf("%s %s\n", Clock().c_str(), ProgressLine(*p, false).c_str());
      last_line = UnixNow();
      last_finished = p->finished;
    }
    std::fflush(stdout);
    if (ended || interrupts.load() > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  if (terminal) std::printf("\n");
  ctx->TryCancel();
  reader.join();
  return state;
}

absl::Status PrintSummary(Client& client, const std::string& sweep, Format format) {
  absl::StatusOr<Progress> p = GetProgress(client, sweep);
  if (!p.ok()) return p.status();
  const std::string id = std::to_string(p->sweep.id());
  const std::string metric = p->sweep.metric_name();
  std::vector<std::string> counts;
  for (const auto& [state, n] : p->sweep.trials_by_state()) counts.push_back(absl::StrCat(n, " ", state));
  std::printf("sweep %s (id %s): %s; %s\n", p->sweep.name().c_str(), id.c_str(), p->sweep.state().c_str(),
              absl::StrJoin(counts, ", ").c_str());
  if (p->best_trial) {
    std::printf("best %s %s: trial %lld (%s)\n", metric.c_str(), Number(p->best_metric).c_str(),
                static_cast<long long>(*p->best_trial), p->best_key.c_str());
  }

  absl::StatusOr<Table> trials = client.Query(
      "SELECT id, params, state, final_metric, diverged_step, config FROM trials WHERE sweep_id = " + id +
      " ORDER BY id");
  if (!trials.ok()) return trials.status();
  if (trials->rows.empty()) return absl::OkStatus();
  // Peak grad norm after each trial's warmup, in one query (warmups passed as a VALUES list).
  std::string warmups;
  for (const auto& row : trials->rows) {
    absl::StrAppend(&warmups, warmups.empty() ? "" : ",", "(", row[0], ",",
                    static_cast<int64_t>(ConfigNumber(row[5], "optim.warmup").value_or(0)), ")");
  }
  absl::StatusOr<Table> peaks = client.Query(
      "WITH w(trial_id, warmup) AS (VALUES " + warmups + ") SELECT m.trial_id, MAX(m.value), "
      "SUM(m.nonfinite IS NOT NULL) FROM metrics m JOIN w ON w.trial_id = m.trial_id "
      "WHERE m.name = 'optim/grad_norm' AND m.step > w.warmup GROUP BY m.trial_id");
  if (!peaks.ok()) return peaks.status();
  std::map<int64_t, double> peak;
  for (const auto& row : peaks->rows) {
    if (!row[1].empty()) peak[ToInt(row[0])] = ToDouble(row[1]);
  }

  std::set<int64_t> spiking_trials;
  absl::StatusOr<Table> spiking = client.Query(
      "SELECT DISTINCT s.trial_id FROM spikes s JOIN trials t ON t.id = s.trial_id WHERE t.sweep_id = " + id +
      " AND s.name = 'optim/grad_norm' AND s.in_warmup = 0");
  if (spiking.ok()) {
    for (const auto& row : spiking->rows) spiking_trials.insert(ToInt(row[0]));
  }

  // Cells: every parameter but the lr and the seed; columns: the lr; seeds fold into a cell.
  struct Cell {
    std::vector<double> finals;
    int diverged = 0, failed = 0, n = 0;
    std::vector<double> peaks;  // per trial
    int spiking = 0;            // trials with a post-warmup spike (sweepd's detector)
  };
  const std::string lr_key = "optim.lr";
  std::vector<std::string> row_keys;
  std::set<double> lrs;
  // Rows in numeric order where the values are numbers (2, 6, 10; not "10", "2", "6").
  struct NumericOrder {
    bool operator()(const std::vector<std::string>& a, const std::vector<std::string>& b) const {
      for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
        double x, y;
        const bool numbers = absl::SimpleAtod(a[i], &x) && absl::SimpleAtod(b[i], &y);
        if (numbers ? x != y : a[i] != b[i]) return numbers ? x < y : a[i] < b[i];
      }
      return a.size() < b.size();
    }
  };
  std::map<std::vector<std::string>, std::map<double, Cell>, NumericOrder> cells;
  bool has_lr = false;
  int seeds = 0;
  std::set<std::string> seen_seeds;
  for (size_t r = 0; r < trials->rows.size(); ++r) {
    const auto& row = trials->rows[r];
    nlohmann::json params = nlohmann::json::parse(row[1], nullptr, false);
    if (!params.is_object()) continue;
    if (row_keys.empty()) {
      for (const auto& [k, v] : params.items()) {
        if (k == lr_key) has_lr = true;
        if (k != lr_key && k != "seed") row_keys.push_back(k);
      }
    }
    std::vector<std::string> rk;
    for (const std::string& k : row_keys) rk.push_back(params.contains(k) ? params[k].dump() : "");
    const double lr = params.contains(lr_key) && params[lr_key].is_number() ? params[lr_key].get<double>() : 0;
    if (params.contains("seed")) seen_seeds.insert(params["seed"].dump());
    lrs.insert(lr);
    Cell& cell = cells[rk][lr];
    ++cell.n;
    const std::string& state = row[2];
    if (state == "diverged") ++cell.diverged;
    if (state == "failed") ++cell.failed;
    if (state == "completed" && !trials->nulls[r][3]) cell.finals.push_back(ToDouble(row[3]));
    auto pk = peak.find(ToInt(row[0]));
    if (pk != peak.end()) cell.peaks.push_back(pk->second);
    if (spiking_trials.count(ToInt(row[0]))) ++cell.spiking;
  }
  seeds = static_cast<int>(seen_seeds.size());
  if (has_lr && !cells.empty()) {
    Table finals, peaks_table, spikes_table;
    finals.columns = row_keys;
    for (double lr : lrs) finals.columns.push_back("lr=" + Number(lr, 3));
    peaks_table.columns = finals.columns;
    spikes_table.columns = finals.columns;
    for (const auto& [rk, by_lr] : cells) {
      std::vector<std::string> f = rk, g = rk, s = rk;
      for (double lr : lrs) {
        auto it = by_lr.find(lr);
        if (it == by_lr.end()) {
          f.push_back("");
          g.push_back("");
          s.push_back("");
          continue;
        }
        const Cell& c = it->second;
        std::string text;
        if (!c.finals.empty()) {
          double sum = 0;
          for (double v : c.finals) sum += v;
          text = Number(sum / static_cast<double>(c.finals.size()));
        }
        if (c.diverged > 0) {
          text += c.diverged == c.n ? "diverged" : absl::StrCat(" (", c.diverged, "/", c.n, " div)");
        } else if (c.failed > 0) {
          text += absl::StrCat(text.empty() ? "" : " ", "(", c.failed, "/", c.n, " failed)");
        }
        f.push_back(text);
        if (c.peaks.empty()) {
          g.push_back("");
        } else {
          std::vector<double> sorted = c.peaks;
          std::sort(sorted.begin(), sorted.end());
          const double median = sorted.size() % 2 ? sorted[sorted.size() / 2]
                                                   : 0.5 * (sorted[sorted.size() / 2 - 1] + sorted[sorted.size() / 2]);
          g.push_back(sorted.size() > 1 ? absl::StrCat(Number(median, 3), " / ", Number(sorted.back(), 3))
                                        : Number(median, 3));
        }
        s.push_back(absl::StrCat(c.spiking, "/", c.n));
      }
      finals.rows.push_back(f);
      peaks_table.rows.push_back(g);
      spikes_table.rows.push_back(s);
    }
    const std::string folded = seeds > 1 ? absl::StrCat(", mean over ", seeds, " seeds") : "";
    std::printf("\nfinal %s by %s x lr%s:\n%s", metric.c_str(),
                row_keys.empty() ? "trial" : absl::StrJoin(row_keys, ", ").c_str(), folded.c_str(),
                Render(finals, format).c_str());
    std::printf("\npeak grad norm after warmup%s:\n%s",
                seeds > 1 ? absl::StrCat(", median / max over ", seeds, " seeds").c_str() : "",
                Render(peaks_table, format).c_str());
    std::printf("\ntrials with a grad-norm spike after warmup (sweepd's detector):\n%s",
                Render(spikes_table, format).c_str());
  }

  // The spikes sweepd detected on ingest (its `detection:` rule; by default > 6 sigma over the
  // previous 128 steps, as OLMo-core).
  absl::StatusOr<Table> spikes = client.Query(
      "SELECT s.trial_id AS trial, t.trial_key, s.step, CASE s.in_warmup WHEN 1 THEN 'yes' ELSE 'no' END "
      "AS in_warmup, printf('%.3g', s.value) AS grad_norm, printf('%.1f', s.z) AS z FROM spikes s "
      "JOIN trials t ON t.id = s.trial_id WHERE t.sweep_id = " + id +
      " AND s.name = 'optim/grad_norm' ORDER BY s.z DESC LIMIT 10");
  absl::StatusOr<Table> spike_count = client.Query(
      "SELECT COUNT(*), COUNT(DISTINCT s.trial_id), COALESCE(SUM(s.in_warmup = 0), 0) FROM spikes s "
      "JOIN trials t ON t.id = s.trial_id WHERE t.sweep_id = " + id + " AND s.name = 'optim/grad_norm'");
  if (spikes.ok() && spike_count.ok() && !spike_count->rows.empty()) {
    std::printf("\ngrad-norm spikes: %s in %s trial(s), %s of them after warmup\n",
                spike_count->rows[0][0].c_str(), spike_count->rows[0][1].c_str(),
                spike_count->rows[0][2].c_str());
    if (!spikes->rows.empty()) std::printf("%s", Render(*spikes, format).c_str());
  }
  return absl::OkStatus();
}

}  // namespace sweep::ctl
