// bench_dashboard: the latency of the dashboard's JSON API (docs/dashboard.md) on the real
// sweepd, over a database the size of a large sweep.
//
//   1. A database with >= --rows metric rows over >= --trials trials: a depth x lr x seed sweep
//      written by tools/sweep_db_gen.h (the real store, scheduler and monitor), plus two
//      one-trial sweeps of optim/grad_norm only, --trace-steps (1,000,000) and 1,000 steps.
//      --db reuses a file that already holds them (and generates what is missing into it).
//   2. sweepd --db F --http 127.0.0.1:0 as a child process.
//   3. One Boost.Beast HTTP/1.1 keep-alive connection; per API call behind a page, --warmup
//      unmeasured requests, then --requests measured ones (trial ids drawn at random for the
//      trial calls): p50 / p95 / p99 / max, the first request's time, the answer's size, and
//      whether p95 meets the goal of 100 ms.
//   4. The long trace: series latency of the long trial over the 1,000-step one (downsampled
//      to the same 1,000 points, so the ratio shows what the server pays for the length).
//
//   bench_dashboard [--db F] [--rows 10000000] [--trials 2000] [--requests 200] [--warmup 20]
//                   [--trace-steps 1000000] [--seed 1] [--keep] [--sweepd PATH]
#include <signal.h>
#include <sqlite3.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "orchestrator/store.h"
#include "tests/testing/subprocess.h"
#include "tools/sweep_db_gen.h"

namespace {

namespace fs = std::filesystem;
namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using sweep::tools::SweepDbOptions;

constexpr char kSweep[] = "bench_depth_lr";
constexpr char kLongTrace[] = "bench_trace_long";
constexpr char kShortTrace[] = "bench_trace_1k";
constexpr double kGoalMs = 100;

double Ms(Clock::time_point since) {
  return std::chrono::duration<double, std::milli>(Clock::now() - since).count();
}

// --- The database. ---

// The grid sweep: 12 cells x ceil(trials / 12) seeds, with the fewest steps that give at
// least `rows` rows even if every diverging trial stops as early as it can (15 % of the way).
SweepDbOptions GridSweep(int64_t rows, int64_t trials, uint64_t seed) {
  SweepDbOptions o;
  o.sweep = kSweep;
  o.seed = seed;
  o.seeds = static_cast<int>((trials + 11) / 12);
  auto expected = [&](int64_t steps) {
    SweepDbOptions sized = o;
    sized.steps = steps;
    double total = 0;
    for (int depth : o.depths) {
      for (size_t lr = 0; lr < o.lrs.size(); ++lr) {
        const bool diverges = depth == o.depths.back() && lr + 1 == o.lrs.size();
        total += sweep::tools::RowsPerCompletedTrial(sized, depth) * (diverges ? 0.15 : 1.0);
      }
    }
    return total * o.seeds;
  };
  int64_t lo = 20, hi = 20;
  while (expected(hi) < static_cast<double>(rows)) hi *= 2;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (expected(mid) < static_cast<double>(rows)) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  o.steps = lo;
  return o;
}

SweepDbOptions TraceSweep(const std::string& name, int64_t steps, uint64_t seed) {
  SweepDbOptions o;
  o.sweep = name;
  o.seed = seed;
  o.depths = {2};
  o.lrs = {0.01};
  o.seeds = 1;
  o.steps = steps;
  o.eval_every = 0;
  o.probe_every = 0;
  o.layer_metrics = false;
  o.only_metrics = {"optim/grad_norm"};
  o.workers = 1;
  return o;
}

bool HasSweep(const std::string& path, const std::string& name) {
  if (!fs::exists(path)) return false;
  absl::StatusOr<std::unique_ptr<sweep::orchestrator::Store>> store =
      sweep::orchestrator::Store::OpenReadOnly(path);
  return store.ok() && (*store)->GetSweep(name).ok();
}

// Generates the sweeps the file does not hold yet; false on error.
bool Prepare(const std::string& path, const std::vector<SweepDbOptions>& sweeps) {
  const bool tty = isatty(STDERR_FILENO);
  for (const SweepDbOptions& options : sweeps) {
    if (HasSweep(path, options.sweep)) {
      std::fprintf(stderr, "bench_dashboard: %s already holds %s: reused\n", path.c_str(),
                   options.sweep.c_str());
      continue;
    }
    std::fprintf(stderr, "bench_dashboard: generating %s (%d x %zu x %d trials, %lld steps)\n",
                 options.sweep.c_str(), static_cast<int>(options.depths.size()), options.lrs.size(),
                 options.seeds, static_cast<long long>(options.steps));
    auto progress = [tty](const sweep::tools::SweepDbProgress& p) {
      std::fprintf(stderr, "%s  trials %lld/%lld  rows %.2f M  %.0f rows/s  %.0f s%s",
                   tty ? "\r" : "", static_cast<long long>(p.trials_done),
                   static_cast<long long>(p.trials), p.rows / 1e6,
                   p.seconds > 0 ? p.rows / p.seconds : 0.0, p.seconds, tty ? "   " : "\n");
    };
    absl::StatusOr<sweep::tools::SweepDbStats> stats =
        sweep::tools::GenerateSweepDb(path, options, progress);
    if (tty) std::fprintf(stderr, "\n");
    if (!stats.ok()) {
      std::fprintf(stderr, "bench_dashboard: %s\n", std::string(stats.status().message()).c_str());
      return false;
    }
    std::fprintf(stderr,
                 "bench_dashboard: %s: %lld trials (%lld diverged), %lld rows, %lld spikes in "
                 "%.1f s (%.0f rows/s)\n",
                 options.sweep.c_str(), static_cast<long long>(stats->trials),
                 static_cast<long long>(stats->diverged), static_cast<long long>(stats->rows),
                 static_cast<long long>(stats->spikes), stats->seconds,
                 stats->seconds > 0 ? stats->rows / stats->seconds : 0.0);
  }
  return true;
}

// One integer from SQL on a read-only connection (-1 on error).
int64_t QueryInt(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  int64_t out = -1;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
      out = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
  return out;
}

// --- The client. ---

// A synchronous HTTP/1.1 client on one keep-alive connection; reconnects when the server
// closed it (its idle timeout, or an answer without keep-alive).
class HttpClient {
 public:
  HttpClient(std::string host, int port) : host_(std::move(host)), port_(port) {}

  struct Answer {
    int status = 0;
    std::string body;
    std::string error;  // Transport error; status 0 then.
  };

  Answer Get(const std::string& target) {
    Answer answer;
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (!socket_.is_open() && !Connect(&answer.error)) return answer;
      beast::error_code ec;
      http::request<http::empty_body> request(http::verb::get, target, 11);
      request.set(http::field::host, host_);
      request.keep_alive(true);
      http::write(socket_, request, ec);
      http::response_parser<http::string_body> parser;
      parser.body_limit(1ULL << 30);
      if (!ec) http::read(socket_, buffer_, parser, ec);
      if (ec) {
        // A connection the server closed while idle: once more on a fresh one.
        Close();
        answer.error = ec.message();
        continue;
      }
      const http::response<http::string_body>& response = parser.get();
      answer.status = response.result_int();
      answer.body = response.body();
      answer.error.clear();
      if (!response.keep_alive()) Close();
      return answer;
    }
    return answer;
  }

  int connections() const { return connections_; }

 private:
  bool Connect(std::string* error) {
    beast::error_code ec;
    tcp::resolver resolver(io_);
    auto endpoints = resolver.resolve(host_, std::to_string(port_), ec);
    if (!ec) net::connect(socket_, endpoints, ec);
    if (ec) {
      *error = "connect: " + ec.message();
      return false;
    }
    socket_.set_option(tcp::no_delay(true));
    buffer_.clear();
    ++connections_;
    return true;
  }
  void Close() {
    beast::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
  }

  const std::string host_;
  const int port_;
  net::io_context io_;
  tcp::socket socket_{io_};
  beast::flat_buffer buffer_;
  int connections_ = 0;
};

// --- The measurements. ---

struct Case {
  std::string name;  // The API call, as the table shows it.
  std::string page;  // The page that makes it.
  std::function<std::string()> target;
};

struct Result {
  std::string name, page;
  std::vector<double> ms;  // Measured requests, sorted.
  double first_ms = 0;
  double mean_kb = 0;
  int errors = 0;
  std::string error_sample;

  double Percentile(double q) const {
    if (ms.empty()) return NAN;
    const size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(ms.size())));
    return ms[std::min(ms.size() - 1, rank == 0 ? 0 : rank - 1)];
  }
};

Result Measure(HttpClient& client, const Case& c, int warmup, int requests) {
  Result r;
  r.name = c.name;
  r.page = c.page;
  double bytes = 0;
  for (int i = 0; i < warmup + requests; ++i) {
    const std::string target = c.target();
    const Clock::time_point start = Clock::now();
    HttpClient::Answer answer = client.Get(target);
    const double ms = Ms(start);
    if (answer.status != 200) {
      ++r.errors;
      if (r.error_sample.empty()) {
        r.error_sample =
            target + ": " +
            (answer.status == 0 ? answer.error
                                : std::to_string(answer.status) + " " + answer.body.substr(0, 200));
      }
    }
    if (i == 0) r.first_ms = ms;
    if (i < warmup) continue;
    r.ms.push_back(ms);
    bytes += static_cast<double>(answer.body.size());
  }
  std::sort(r.ms.begin(), r.ms.end());
  r.mean_kb = requests > 0 ? bytes / requests / 1024 : 0;
  return r;
}

void PrintRow(const Result& r) {
  const double p95 = r.Percentile(0.95);
  std::printf("| %s | %s | %zu | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %s |\n", r.name.c_str(),
              r.page.c_str(), r.ms.size(), r.Percentile(0.5), p95, r.Percentile(0.99),
              r.ms.empty() ? NAN : r.ms.back(), r.first_ms, r.mean_kb,
              r.errors > 0    ? "errors"
              : p95 < kGoalMs ? "met"
                              : "missed");
}

// The ids of a sweep's trials, from the API itself.
std::vector<int64_t> TrialIds(HttpClient& client, const std::string& sweep) {
  std::vector<int64_t> ids;
  HttpClient::Answer answer = client.Get("/api/sweeps/" + sweep + "/trials");
  if (answer.status != 200) return ids;
  nlohmann::json json = nlohmann::json::parse(answer.body, nullptr, false);
  if (!json.is_object() || !json.contains("trials")) return ids;
  for (const auto& t : json["trials"]) ids.push_back(t.value("id", int64_t{0}));
  return ids;
}

// "rows" and "downsampled" of the first series of a series answer, for the report.
std::string SeriesShape(HttpClient& client, const std::string& target) {
  HttpClient::Answer answer = client.Get(target);
  nlohmann::json json = nlohmann::json::parse(answer.body, nullptr, false);
  if (answer.status != 200 || !json.is_object() || !json.contains("series") ||
      json["series"].empty()) {
    return "status " + std::to_string(answer.status);
  }
  const nlohmann::json& s = json["series"][0];
  return std::to_string(s.value("rows", int64_t{0})) + " rows -> " +
         std::to_string(s.contains("steps") ? s["steps"].size() : 0) + " points" +
         (s.value("downsampled", false) ? " (downsampled)" : "");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "bench_dashboard: latency of the dashboard's JSON API on the real sweepd over a large\n"
      "sweep database (generated by tools/sweep_db_gen.h, or reused with --db).\n\n"
      "Examples:\n"
      "  bench_dashboard                                   # 10 M rows, 2,004 trials, temp dir\n"
      "  bench_dashboard --db /tmp/bench.db --keep         # generate once, reuse later\n"
      "  bench_dashboard --rows 200000 --trials 100 --trace-steps 20000 --requests 50   # quick",
      "bench_dashboard"};
  std::string sweepd = SWEEPD_BIN, db;
  int64_t rows = 10'000'000, trials = 2000, trace_steps = 1'000'000;
  int requests = 200, warmup = 20;
  uint64_t seed = 1;
  bool keep = false;
  app.add_option("--db", db,
                 "Database to use; generated (and kept) when missing, the sweeps it lacks added")
      ->capture_default_str();
  app.add_option("--rows", rows, "Metric rows of the grid sweep (at least)")->capture_default_str();
  app.add_option("--trials", trials, "Trials of the grid sweep (at least)")->capture_default_str();
  app.add_option("--requests", requests, "Measured requests per API call")->capture_default_str();
  app.add_option("--warmup", warmup, "Unmeasured requests per API call before them")
      ->capture_default_str();
  app.add_option("--trace-steps", trace_steps, "Steps of the long optim/grad_norm trace")
      ->capture_default_str();
  app.add_option("--seed", seed, "Seed of the generated database and of the trial draws")
      ->capture_default_str();
  app.add_flag("--keep", keep, "Keep the temporary folder (database, sweepd log)");
  app.add_option("--sweepd", sweepd, "sweepd binary")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (rows < 1 || trials < 1 || requests < 1 || warmup < 0 || trace_steps < 1000) {
    std::fprintf(stderr,
                 "bench_dashboard: --rows, --trials, --requests >= 1, --warmup >= 0, "
                 "--trace-steps >= 1000\n");
    return 2;
  }

  const std::string dir = sweep::testing::MakeTempDir("bench-dashboard");
  if (db.empty()) db = dir + "/sweep.db";
  const Clock::time_point generation = Clock::now();
  if (!Prepare(db, {GridSweep(rows, trials, seed), TraceSweep(kLongTrace, trace_steps, seed),
                    TraceSweep(kShortTrace, 1000, seed)})) {
    return 1;
  }
  const double generation_s = Ms(generation) / 1000;
  const int64_t total_rows = QueryInt(db, "SELECT COUNT(*) FROM metrics");
  const int64_t sweep_rows = QueryInt(
      db, std::string("SELECT COUNT(*) FROM metrics WHERE trial_id IN (SELECT t.id FROM trials t "
                      "JOIN sweeps s ON s.id = t.sweep_id WHERE s.name = '") +
              kSweep + "')");
  const int64_t sweep_trials =
      QueryInt(db, std::string("SELECT COUNT(*) FROM trials t JOIN sweeps s ON s.id = t.sweep_id "
                               "WHERE s.name = '") +
                       kSweep + "'");
  const int64_t spikes = QueryInt(db, "SELECT COUNT(*) FROM spikes");

  sweep::testing::Subprocess server(
      {sweepd, "--db", db, "--listen", "127.0.0.1:0", "--port-file", dir + "/port", "--http",
       "127.0.0.1:0", "--http-port-file", dir + "/http_port"},
      "", dir + "/sweepd.log");
  if (!sweep::testing::WaitFor([&] { return fs::exists(dir + "/http_port"); },
                               std::chrono::seconds(60))) {
    std::fprintf(stderr, "bench_dashboard: sweepd did not start:\n%s\n",
                 sweep::testing::ReadFileOrEmpty(dir + "/sweepd.log").c_str());
    return 1;
  }
  const int port = std::stoi(sweep::testing::ReadFileOrEmpty(dir + "/http_port"));
  HttpClient client("127.0.0.1", port);

  const std::vector<int64_t> ids = TrialIds(client, kSweep);
  const std::vector<int64_t> long_ids = TrialIds(client, kLongTrace);
  const std::vector<int64_t> short_ids = TrialIds(client, kShortTrace);
  if (ids.empty() || long_ids.size() != 1 || short_ids.size() != 1) {
    std::fprintf(stderr, "bench_dashboard: /api/sweeps/NAME/trials did not list the trials\n");
    return 1;
  }
  std::mt19937_64 rng(seed);
  auto random_trial = [&] { return std::to_string(ids[rng() % ids.size()]); };
  const std::string sweep = std::string("/api/sweeps/") + kSweep;
  const std::string trace_query = "/series?names=optim/grad_norm&points=1000";
  const std::vector<Case> cases = {
      {"/api/sweeps", "sweeps", [] { return std::string("/api/sweeps"); }},
      {"/api/sweeps/NAME", "sweep", [&] { return sweep; }},
      {"/api/sweeps/NAME/trials", "sweep", [&] { return sweep + "/trials"; }},
      {"/api/sweeps/NAME/grid?x=optim.lr&y=model.n_layers", "sweep",
       [&] { return sweep + "/grid?x=optim.lr&y=model.n_layers"; }},
      {"/api/sweeps/NAME/analysis", "sweep", [&] { return sweep + "/analysis"; }},
      {"/api/trials/ID", "trial", [&] { return "/api/trials/" + random_trial(); }},
      {"/api/trials/ID/series?names=loss/out,optim/grad_norm,optim/lr&points=1000", "trial",
       [&] {
         return "/api/trials/" + random_trial() +
                "/series?names=loss/out,optim/grad_norm,optim/lr&points=1000";
       }},
      {"/api/trials/ID/series?names=grad_norm/*", "trial",
       [&] { return "/api/trials/" + random_trial() + "/series?names=grad_norm/*"; }},
      {"series optim/grad_norm, 1,000 steps", "trial",
       [&] { return "/api/trials/" + std::to_string(short_ids[0]) + trace_query; }},
      {"series optim/grad_norm, " + std::to_string(trace_steps) + " steps", "trial",
       [&] { return "/api/trials/" + std::to_string(long_ids[0]) + trace_query; }},
  };
  std::vector<Result> results;
  for (const Case& c : cases) {
    std::fprintf(stderr, "bench_dashboard: %s ...\n", c.name.c_str());
    results.push_back(Measure(client, c, warmup, requests));
  }
  const std::string long_shape =
      SeriesShape(client, "/api/trials/" + std::to_string(long_ids[0]) + trace_query);
  server.Signal(SIGTERM);
  const int server_exit = server.Wait();

  std::printf(
      "| API call | page | requests | p50 ms | p95 ms | p99 ms | max ms | first ms | "
      "KB | goal p95 < 100 ms |\n|---|---|---|---|---|---|---|---|---|---|\n");
  int errors = 0;
  for (const Result& r : results) {
    PrintRow(r);
    errors += r.errors;
  }
  const Result& short_trace = results[results.size() - 2];
  const Result& long_trace = results.back();
  std::printf(
      "\nlong trace: optim/grad_norm at points=1000, %lld steps (%s) vs 1,000 steps: "
      "p50 %.1f / %.1f ms = %.1fx, p95 %.1f / %.1f ms = %.1fx\n",
      static_cast<long long>(trace_steps), long_shape.c_str(), long_trace.Percentile(0.5),
      short_trace.Percentile(0.5), long_trace.Percentile(0.5) / short_trace.Percentile(0.5),
      long_trace.Percentile(0.95), short_trace.Percentile(0.95),
      long_trace.Percentile(0.95) / short_trace.Percentile(0.95));
  std::printf(
      "database: %lld metric rows in all (%s: %lld rows, %lld trials), %lld spikes, "
      "%.0f MB; generated or checked in %.0f s\n",
      static_cast<long long>(total_rows), kSweep, static_cast<long long>(sweep_rows),
      static_cast<long long>(sweep_trials), static_cast<long long>(spikes), fs::file_size(db) / 1e6,
      generation_s);
  std::printf(
      "client: one keep-alive connection (%d opened), %d warm-up + %d measured requests "
      "per call, random trial ids; sweepd exit %d\n",
      client.connections(), warmup, requests, server_exit);
  for (const Result& r : results) {
    if (!r.error_sample.empty()) {
      std::printf("errors in %s: %d, e.g. %s\n", r.name.c_str(), r.errors, r.error_sample.c_str());
    }
  }
  std::printf("machine: %u CPUs; command: ", std::thread::hardware_concurrency());
  for (int i = 0; i < argc; ++i) std::printf("%s ", argv[i]);
  std::printf("\n");
  if (keep) {
    std::printf("kept: %s\n", dir.c_str());
  } else {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  return errors > 0 ? 1 : 0;
}
