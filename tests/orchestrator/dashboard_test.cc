// The dashboard's JSON API over real HTTP (HttpServer on loopback) on a database written by the
// real store, scheduler and monitor: every endpoint's answer, downsampling that keeps spikes,
// 400/404/405 for bad requests, the token rules, static files, and that nothing ever writes.
#include "orchestrator/dashboard.h"

#include <gtest/gtest.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "orchestrator/http_server.h"
#include "orchestrator/monitor.h"
#include "orchestrator/scheduler.h"
#include "orchestrator/store.h"
#include "tests/orchestrator/fake_clock.h"
#include "tests/testing/sqlite.h"
#include "tests/testing/status.h"

namespace sweep::orchestrator {
namespace {

namespace fs = std::filesystem;
namespace http = boost::beast::http;
using json = nlohmann::json;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Reply {
  int status = 0;
  std::string body;
  std::string content_type;
  std::string set_cookie;
  std::string content_length;
  json Json() const { return json::parse(body, nullptr, false); }
};

// One HTTP/1.1 request on a fresh connection.
Reply Request(int port, const std::string& target, http::verb method = http::verb::get,
              const std::vector<std::pair<std::string, std::string>>& headers = {}) {
  boost::asio::io_context ioc;
  boost::beast::tcp_stream stream(ioc);
  stream.connect(boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"),
                                                static_cast<unsigned short>(port)));
  http::request<http::empty_body> request(method, target, 11);
  request.set(http::field::host, "127.0.0.1");
  for (const auto& [name, value] : headers) request.set(name, value);
  http::write(stream, request);
  boost::beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 << 20);
  if (method == http::verb::head) parser.skip(true);
  http::read(stream, buffer, parser);
  const auto& response = parser.get();
  Reply reply;
  reply.status = response.result_int();
  reply.body = response.body();
  reply.content_type = std::string(response[http::field::content_type]);
  reply.set_cookie = std::string(response[http::field::set_cookie]);
  reply.content_length = std::string(response[http::field::content_length]);
  return reply;
}

std::string FileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// A finished 2 depths × 3 lrs sweep ("dash", 200 steps; depth 4 at lr 0.1 spikes at step 150
// and diverges at 180), and a sweep "long" whose one trial has 100,000 steps of grad norm with
// one spike and one NaN. Written by the real store, scheduler and monitor; then closed, so the
// dashboard is the only thing that opens the file.
class DashboardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string dir = fs::temp_directory_path() / "sweep-dashboard-XXXXXX";
    dir_ = mkdtemp(dir.data());
    path_ = dir_ + "/sweep.db";
    {
      std::unique_ptr<Store> store = *Store::Open(path_);
      Scheduler scheduler(store.get(), &clock_, SchedulerOptions{60, 5});
      Monitor monitor(store.get(), &clock_);
      const int64_t worker =
          *scheduler.RegisterWorker({"w1", "host", 0, 8, json{{"workdir", dir_ + "/work"}}.dump()});
      WriteDash(store.get(), &scheduler, &monitor, worker);
      WriteLong(store.get(), &scheduler, worker);
    }
    StartServer("");
  }

  void TearDown() override {
    server_.reset();
    dashboard_.reset();
    fs::remove_all(dir_);
  }

  void StartServer(const std::string& token, const std::string& assets = "") {
    server_.reset();
    dashboard_ = std::make_unique<Dashboard>(DashboardOptions{path_, token, assets, [this] { return now_; }});
    absl::StatusOr<std::unique_ptr<HttpServer>> server = HttpServer::Start(
        {"127.0.0.1:0", 2}, [d = dashboard_.get()](const HttpRequest& r) { return d->Handle(r); });
    ASSERT_OK(server.status());
    server_ = *std::move(server);
  }

  void WriteDash(Store* store, Scheduler* scheduler, Monitor* monitor, int64_t worker) {
    SweepSpec spec = *ParseSweepSpec(
        "name: dash\nmethod: grid\nbase: {steps: 200, optim: {warmup: 10}, data: {sources: {kjv: 1}}}\n"
        "parameters: {model.n_layers: {values: [2, 4]}, optim.lr: {values: [0.001, 0.01, 0.1]}}\n",
        "dash.yaml");
    ASSERT_OK(store->SubmitSweep(spec, *ExpandSweep(spec), clock_.Now()));
    std::vector<Lease> leases = *scheduler->LeaseTrials(worker, 0, 6, 6);
    ASSERT_EQ(leases.size(), 6u);
    for (const Lease& l : leases) {
      ASSERT_OK(scheduler->MarkRunning(l.trial_id, l.attempt));
      const json params = json::parse(l.params_json);
      const int layers = params["model.n_layers"];
      const double lr = params["optim.lr"];
      const bool bad = layers == 4 && lr == 0.1;
      std::vector<MetricRow> rows;
      double final_val = 0;
      for (int64_t step = 1; step <= 200; ++step) {
        if (bad && step > 180) break;
        const double floor = 3.0 + 0.3 * std::pow(std::log10(lr) + 2.0 + 0.2 * layers / 4, 2);
        const double loss = bad && step == 180 ? kNaN : floor + 5.0 / std::sqrt(step);
        const double grad = (bad && step == 150) ? 40.0 : 0.5 + 0.01 * (step % 7);
        rows.push_back({l.trial_id, l.attempt, "loss/out", step, loss, clock_.Now()});
        rows.push_back({l.trial_id, l.attempt, "optim/grad_norm", step, grad, clock_.Now()});
        rows.push_back({l.trial_id, l.attempt, "optim/lr", step, lr, clock_.Now()});
        for (int i = 0; i < layers; ++i) {
          rows.push_back({l.trial_id, l.attempt, "grad_norm/layers." + std::to_string(i) + ".attention", step,
                          grad / layers, clock_.Now()});
        }
        if (step % 100 == 0) {
          final_val = loss + 0.05;
          rows.push_back({l.trial_id, l.attempt, "loss/val", step, final_val, clock_.Now()});
        }
      }
      ASSERT_OK(monitor->Ingest(rows).status());
      clock_.Advance(60);
      Completion done;
      done.last_step = bad ? 180 : 200;
      if (bad) {
        done.outcome = Outcome::kDiverged;
        done.diverged_step = 180;
      } else {
        done.final_metric = final_val;
        done.best_metric = final_val;
      }
      ASSERT_OK(scheduler->Complete(l.trial_id, l.attempt, done));
      trials_[layers * 1000 + static_cast<int>(std::round(std::log10(lr)))] = l.trial_id;
    }
  }

  void WriteLong(Store* store, Scheduler* scheduler, int64_t worker) {
    SweepSpec spec = *ParseSweepSpec(
        "name: long\nmethod: grid\nbase: {steps: 100000, data: {sources: {kjv: 1}}}\n"
        "parameters: {optim.lr: {values: [0.01]}}\n",
        "long.yaml");
    ASSERT_OK(store->SubmitSweep(spec, *ExpandSweep(spec), clock_.Now()));
    std::vector<Lease> leases = *scheduler->LeaseTrials(worker, 0, 1, 1);
    ASSERT_EQ(leases.size(), 1u);
    long_trial_ = leases[0].trial_id;
    std::vector<MetricRow> rows;
    for (int64_t step = 1; step <= 100000; ++step) {
      double value = 1.0 + 0.1 * std::sin(static_cast<double>(step) / 1000);
      if (step == 54321) value = 100;
      if (step == 70000) value = kNaN;
      rows.push_back({long_trial_, leases[0].attempt, "optim/grad_norm", step, value, clock_.Now()});
    }
    ASSERT_OK(store->InsertMetrics(rows).status());
  }

  int64_t TrialAt(int layers, int log10_lr) { return trials_.at(layers * 1000 + log10_lr); }
  Reply Get(const std::string& target) { return Request(server_->port(), target); }

  FakeClock clock_;
  double now_ = 1'000'000 + 3600;
  std::string dir_, path_;
  std::map<int, int64_t> trials_;  // layers * 1000 + log10(lr) → trial id
  int64_t long_trial_ = 0;
  std::unique_ptr<Dashboard> dashboard_;
  std::unique_ptr<HttpServer> server_;
};

TEST_F(DashboardTest, SweepsListCountsBestAndTimes) {
  Reply reply = Get("/api/sweeps");
  ASSERT_EQ(reply.status, 200) << reply.body;
  EXPECT_EQ(reply.content_type, "application/json");
  const json sweeps = reply.Json()["sweeps"];
  ASSERT_EQ(sweeps.size(), 2u);
  const json& dash = sweeps[0];
  EXPECT_EQ(dash["name"], "dash");
  EXPECT_EQ(dash["state"], "completed");
  EXPECT_EQ(dash["trials"], 6);
  EXPECT_EQ(dash["counts"]["completed"], 5);
  EXPECT_EQ(dash["counts"]["diverged"], 1);
  EXPECT_EQ(dash["counts"]["pending"], 0);
  // Best: the optimum at lr 0.01 for the shallow model (its floor is lowest there).
  EXPECT_EQ(dash["best"]["trial_id"], TrialAt(2, -2));
  EXPECT_EQ(dash["best"]["params"]["optim.lr"], 0.01);
  EXPECT_GT(dash["elapsed_s"].get<double>(), 0);
  EXPECT_TRUE(dash["eta_s"].is_null());  // finished
  const json& running = sweeps[1];
  EXPECT_EQ(running["name"], "long");
  EXPECT_EQ(running["counts"]["leased"], 1);
  EXPECT_TRUE(running["best"].is_null());
}

TEST_F(DashboardTest, SweepDetailHasParametersMetricsAndEvents) {
  const json dash = Get("/api/sweeps/dash").Json();
  ASSERT_EQ(dash["params"].size(), 2u);
  EXPECT_EQ(dash["params"][0]["key"], "model.n_layers");
  EXPECT_EQ(dash["params"][0]["values"], json::array({2, 4}));
  EXPECT_EQ(dash["params"][1]["values"], json::array({0.001, 0.01, 0.1}));
  EXPECT_TRUE(dash["params"][1]["numeric"].get<bool>());
  const std::vector<std::string> metrics = dash["metrics"];
  for (const char* name : {"loss/out", "loss/val", "optim/grad_norm", "optim/lr", "grad_norm/layers.0.attention",
                           "grad_norm/layers.3.attention"}) {
    EXPECT_NE(std::find(metrics.begin(), metrics.end(), name), metrics.end()) << name;
  }
  EXPECT_FALSE(dash["events"].empty());
  EXPECT_NE(dash["spec"].get<std::string>().find("name: dash"), std::string::npos);
  // By id as well as by name.
  EXPECT_EQ(Get("/api/sweeps/" + dash["id"].dump()).Json()["name"], "dash");
}

TEST_F(DashboardTest, TrialTableHasEveryTrialWithSpikesAndFinalValues) {
  const json answer = Get("/api/sweeps/dash/trials").Json();
  EXPECT_EQ(answer["metric"], "loss/val");
  ASSERT_EQ(answer["trials"].size(), 6u);
  int spiky = 0;
  for (const json& t : answer["trials"]) {
    const std::string spikes = sweep::testing::QueryScalarAt(
        path_, "SELECT COUNT(*) FROM spikes WHERE trial_id = " + t["id"].dump());
    EXPECT_EQ(t["spikes"].dump(), spikes);
    if (t["id"] == TrialAt(4, -1)) {
      EXPECT_EQ(t["state"], "diverged");
      EXPECT_EQ(t["diverged_step"], 180);
      EXPECT_GE(t["spikes"].get<int>(), 1);  // the real detector saw the step-150 spike
      spiky = t["spikes"];
    } else {
      EXPECT_EQ(t["state"], "completed");
      EXPECT_TRUE(t["final"].is_number());
      EXPECT_EQ(t["spikes"], 0);
    }
  }
  EXPECT_GE(spiky, 1);
}

TEST_F(DashboardTest, GridAggregatesEveryCellAndCountsDivergence) {
  const json grid = Get("/api/sweeps/dash/grid?x=optim.lr&y=model.n_layers").Json();
  EXPECT_EQ(grid["xs"], json::array({0.001, 0.01, 0.1}));
  EXPECT_EQ(grid["ys"], json::array({2, 4}));
  ASSERT_EQ(grid["cells"].size(), 6u);
  for (const json& cell : grid["cells"]) {
    if (cell["x"] == 0.1 && cell["y"] == 4) {
      EXPECT_TRUE(cell["value"].is_null());
      EXPECT_EQ(cell["diverged"], 1);
      EXPECT_EQ(cell["n"], 0);
    } else {
      EXPECT_TRUE(cell["value"].is_number()) << cell.dump();
      EXPECT_EQ(cell["n"], 1);
    }
  }
  // One key only: cells per lr, every depth folded in.
  const json curve = Get("/api/sweeps/dash/grid?x=optim.lr&agg=min").Json();
  EXPECT_EQ(curve["ys"], json::array({nullptr}));
  ASSERT_EQ(curve["cells"].size(), 3u);
  EXPECT_EQ(curve["cells"][1]["trials"].size(), 2u);
  // Another metric: the last value of each trial.
  const json by_grad = Get("/api/sweeps/dash/grid?x=optim.lr&y=model.n_layers&metric=optim/grad_norm").Json();
  EXPECT_EQ(by_grad["metric"], "optim/grad_norm");
  EXPECT_NEAR(by_grad["cells"][0]["value"].get<double>(), 0.5 + 0.01 * (200 % 7), 1e-12);
}

TEST_F(DashboardTest, SeriesDownsamplesALongTraceAndKeepsTheSpikeAndTheNaN) {
  const json answer =
      Get("/api/trials/" + std::to_string(long_trial_) + "/series?names=optim/grad_norm&points=1000").Json();
  ASSERT_EQ(answer["series"].size(), 1u);
  const json& s = answer["series"][0];
  EXPECT_EQ(s["rows"], 100000);
  EXPECT_TRUE(s["downsampled"].get<bool>());
  const std::vector<int64_t> steps = s["steps"];
  EXPECT_LE(steps.size(), 1000u + 500u);  // min and max per bucket, plus a non-finite row where there is one
  EXPECT_GE(steps.size(), 900u);
  EXPECT_TRUE(std::is_sorted(steps.begin(), steps.end()));
  auto at = [&](int64_t step) -> json {
    auto it = std::find(steps.begin(), steps.end(), step);
    return it == steps.end() ? json("absent") : s["values"][it - steps.begin()];
  };
  EXPECT_EQ(at(54321), 100.0);  // the one-step spike survives
  EXPECT_TRUE(at(70000).is_null());  // the NaN is drawn as a gap
  ASSERT_EQ(s["nonfinite"].size(), 1u);
  EXPECT_EQ(s["nonfinite"][0]["step"], 70000);
  EXPECT_EQ(s["nonfinite"][0]["kind"], "nan");

  // A window and enough points: every row, as stored.
  const json window = Get("/api/trials/" + std::to_string(long_trial_) +
                          "/series?names=optim/grad_norm&from=54300&to=54399&points=1000").Json()["series"][0];
  EXPECT_FALSE(window["downsampled"].get<bool>());
  EXPECT_EQ(window["steps"].size(), 100u);
  EXPECT_EQ(window["steps"][0], 54300);
  EXPECT_EQ(window["values"][21], 100.0);
}

// Few points for a long trace: buckets of whole 256-step blocks from metric_blocks. The same
// guarantees as from the rows: every bucket's min and max, the spike, the NaN, nothing outside
// the window even where it cuts a block.
TEST_F(DashboardTest, SeriesFromBlocksKeepsMinMaxSpikeAndNaN) {
  const std::string base = "/api/trials/" + std::to_string(long_trial_) + "/series?names=optim/grad_norm";
  const json all = Get(base + "&points=100000").Json()["series"][0];  // every row
  ASSERT_FALSE(all["downsampled"].get<bool>());
  for (const auto& [from, to] : std::vector<std::pair<int64_t, int64_t>>{{0, 200000}, {1000, 90001}, {54000, 99999}}) {
    const json s = Get(base + "&points=100&from=" + std::to_string(from) + "&to=" + std::to_string(to))
                       .Json()["series"][0];
    ASSERT_TRUE(s["downsampled"].get<bool>()) << from;
    const std::vector<int64_t> steps = s["steps"];
    EXPECT_LE(steps.size(), 100u + s["nonfinite"].size());
    EXPECT_GE(steps.size(), 60u);
    EXPECT_TRUE(std::is_sorted(steps.begin(), steps.end()));
    EXPECT_GE(steps.front(), from);
    EXPECT_LE(steps.back(), to);
    // The extremes over the window are those of the rows.
    double lo = 1e300, hi = -1e300, want_lo = 1e300, want_hi = -1e300;
    int64_t rows = 0;
    for (size_t i = 0; i < all["steps"].size(); ++i) {
      const int64_t step = all["steps"][i];
      if (step < from || step > to) continue;
      ++rows;
      if (all["values"][i].is_null()) continue;
      want_lo = std::min(want_lo, all["values"][i].get<double>());
      want_hi = std::max(want_hi, all["values"][i].get<double>());
    }
    for (const json& v : s["values"]) {
      if (v.is_null()) continue;
      lo = std::min(lo, v.get<double>());
      hi = std::max(hi, v.get<double>());
    }
    EXPECT_EQ(s["rows"], rows) << from;
    EXPECT_EQ(lo, want_lo) << from;
    EXPECT_EQ(hi, want_hi) << from;
    if (from <= 54321 && 54321 <= to) EXPECT_NE(std::find(steps.begin(), steps.end(), 54321), steps.end());
    const bool has_nan = from <= 70000 && 70000 <= to;
    ASSERT_EQ(s["nonfinite"].size(), has_nan ? 1u : 0u) << from;
    if (has_nan) EXPECT_EQ(s["nonfinite"][0]["step"], 70000);
  }
}

TEST_F(DashboardTest, SeriesPrefixesAndSpikes) {
  const int64_t trial = TrialAt(4, -1);
  const json answer =
      Get("/api/trials/" + std::to_string(trial) + "/series?names=optim/grad_norm,grad_norm/*").Json();
  ASSERT_EQ(answer["series"].size(), 1u + 4u);  // the total and one per layer
  EXPECT_EQ(answer["series"][1]["name"], "grad_norm/layers.0.attention");
  const json& grad = answer["series"][0];
  EXPECT_EQ(grad["rows"], 180);
  ASSERT_FALSE(grad["spikes"].empty());
  EXPECT_EQ(grad["spikes"][0]["step"], 150);
  EXPECT_EQ(grad["spikes"][0]["value"], 40.0);
  const json detail = Get("/api/trials/" + std::to_string(trial)).Json();
  EXPECT_EQ(detail["state"], "diverged");
  EXPECT_EQ(detail["sweep"], "dash");
  EXPECT_EQ(detail["params"]["model.n_layers"], 4);
  size_t grad_spikes = 0;
  for (const json& spike : detail["spikes"]) grad_spikes += spike["name"] == "optim/grad_norm";
  EXPECT_EQ(grad_spikes, grad["spikes"].size());
  EXPECT_FALSE(detail["events"].empty());
  // loss/out, loss/val (step 100; it diverged at 180), optim/grad_norm, optim/lr, 4 layers.
  EXPECT_EQ(detail["metrics"].size(), 8u);
}

TEST_F(DashboardTest, BadRequestsAreAnsweredWithTheReason) {
  struct Case {
    std::string target;
    int status;
    std::string says;
  } cases[] = {
      {"/api/sweeps/dash/grid?x=nope", 400, "'nope' is not a parameter"},
      {"/api/sweeps/dash/grid", 400, "x: missing"},
      {"/api/sweeps/dash/grid?x=optim.lr&agg=mode", 400, "agg"},
      {"/api/sweeps/dash/grid?x=optim.lr&y=nope", 400, "y: 'nope'"},
      {"/api/trials/1/series", 400, "names: missing"},
      {"/api/trials/1/series?names=loss/out&points=abc", 400, "points"},
      {"/api/trials/1/series?names=loss/out&points=5", 400, "points"},
      {"/api/trials/1/series?names=loss/out&from=10&to=5", 400, "from"},
      {"/api/trials/1/log?file=passwd", 400, "file"},
      {"/api/trials/abc", 400, "not a positive integer"},
      {"/api/trials/99999", 404, "no trial 99999"},
      {"/api/trials/99999/series?names=loss/out", 404, "no trial"},
      {"/api/sweeps/nope", 404, "no sweep"},
      {"/api/sweeps/dash/nope", 404, "no such endpoint"},
      {"/api/nope", 404, "no such endpoint"},
  };
  for (const Case& c : cases) {
    const Reply reply = Get(c.target);
    EXPECT_EQ(reply.status, c.status) << c.target << ": " << reply.body;
    const json body = reply.Json();
    ASSERT_TRUE(body.contains("error")) << c.target << ": " << reply.body;
    EXPECT_NE(body["error"].get<std::string>().find(c.says), std::string::npos) << c.target << ": " << reply.body;
  }
  EXPECT_EQ(Request(server_->port(), "/api/sweeps", http::verb::post).status, 405);
  EXPECT_EQ(Request(server_->port(), "/api/sweeps", http::verb::delete_).status, 405);
  const Reply head = Request(server_->port(), "/api/sweeps", http::verb::head);
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.content_length, std::to_string(Get("/api/sweeps").body.size()));
}

TEST_F(DashboardTest, AnalysisIsComputedWithoutBeingStored) {
  const json answer = Get("/api/sweeps/dash/analysis").Json();
  EXPECT_EQ(answer["source"], "computed");
  ASSERT_TRUE(answer["result"].is_object()) << answer.dump();
  EXPECT_TRUE(answer["result"].contains("groups"));
  EXPECT_EQ(sweep::testing::QueryScalarAt(path_, "SELECT COUNT(*) FROM analyses"), "0");
  EXPECT_EQ(Get("/api/sweeps/dash/analysis").body, Get("/api/sweeps/dash/analysis").body);  // cached
}

TEST_F(DashboardTest, LogTailComesFromTheTrialFolder) {
  const int64_t trial = TrialAt(2, -3);
  const fs::path folder = fs::path(dir_) / "work" / "dash" / std::to_string(trial) / "attempt-1";
  fs::create_directories(folder);
  std::string text;
  for (int i = 0; i < 10000; ++i) text += "line " + std::to_string(i) + "\n";
  std::ofstream(folder / "stderr.log") << text;
  const json log = Get("/api/trials/" + std::to_string(trial) + "/log?bytes=100").Json();
  EXPECT_TRUE(log["available"].get<bool>()) << log.dump();
  EXPECT_EQ(log["text"], text.substr(text.size() - 100));
  EXPECT_TRUE(log["truncated"].get<bool>());
  const json missing = Get("/api/trials/" + std::to_string(TrialAt(2, -2)) + "/log").Json();
  EXPECT_FALSE(missing["available"].get<bool>());
  EXPECT_NE(missing["reason"].get<std::string>().find("not readable"), std::string::npos);
}

TEST_F(DashboardTest, NeverWritesTheDatabase) {
  const std::string before = FileBytes(path_);
  for (const std::string target :
       {"/api/sweeps", "/api/sweeps/dash", "/api/sweeps/dash/trials", "/api/sweeps/dash/grid?x=optim.lr",
        "/api/sweeps/dash/analysis", "/api/sweeps/long/analysis", "/api/trials/1", "/api/trials/1/log",
        "/api/trials/1/series?names=loss/out,grad_norm/*", "/api/nope", "/"}) {
    EXPECT_LT(Get(target).status, 500) << target;
  }
  server_.reset();
  dashboard_.reset();
  EXPECT_TRUE(FileBytes(path_) == before) << "the database file changed";
  EXPECT_EQ(sweep::testing::QueryScalarAt(path_, "SELECT COUNT(*) FROM analyses"), "0");
  EXPECT_EQ(sweep::testing::QueryScalarAt(path_, "PRAGMA integrity_check"), "ok");
}

TEST_F(DashboardTest, ATokenIsRequiredEverywhereWhenConfigured) {
  const std::string token = "0123456789abcdef0123";
  const std::string assets = dir_ + "/assets";
  fs::create_directories(assets);
  std::ofstream(assets + "/index.html") << "<!doctype html><title>sweep</title>";
  StartServer(token, assets);
  const int port = server_->port();
  for (const std::string target : {"/api/sweeps", "/api/trials/1", "/", "/index.html", "/api/nope"}) {
    const Reply reply = Request(port, target);
    EXPECT_EQ(reply.status, 401) << target;
    EXPECT_NE(reply.Json()["error"].get<std::string>().find("token"), std::string::npos);
  }
  EXPECT_EQ(Request(port, "/api/sweeps", http::verb::get, {{"Authorization", "Bearer wrong-token-0000000"}}).status,
            401);
  EXPECT_EQ(Request(port, "/api/sweeps", http::verb::get, {{"Authorization", "Bearer " + token}}).status, 200);
  // The first page load with ?token= sets an HttpOnly cookie, which then suffices.
  const Reply page = Request(port, "/?token=" + token);
  EXPECT_EQ(page.status, 200);
  EXPECT_EQ(page.content_type, "text/html; charset=utf-8");
  EXPECT_NE(page.set_cookie.find("sweep_token=" + token), std::string::npos);
  EXPECT_NE(page.set_cookie.find("HttpOnly"), std::string::npos);
  EXPECT_EQ(Request(port, "/api/sweeps", http::verb::get, {{"Cookie", "a=b; sweep_token=" + token}}).status, 200);
  EXPECT_EQ(Request(port, "/api/sweeps", http::verb::get, {{"Cookie", "sweep_token=nope"}}).status, 401);
}

TEST_F(DashboardTest, StaticFilesStayInsideTheAssetsFolder) {
  const std::string assets = dir_ + "/assets";
  fs::create_directories(assets);
  std::ofstream(assets + "/index.html") << "<!doctype html><title>sweep</title>";
  std::ofstream(assets + "/app.js") << "console.log(1)";
  std::ofstream(dir_ + "/secret.txt") << "secret";
  StartServer("", assets);
  EXPECT_EQ(Get("/").body, "<!doctype html><title>sweep</title>");
  const Reply js = Get("/app.js");
  EXPECT_EQ(js.status, 200);
  EXPECT_EQ(js.content_type, "text/javascript; charset=utf-8");
  for (const std::string target : {"/../secret.txt", "/%2e%2e/secret.txt", "/assets/../../secret.txt", "/nope.js",
                                   "//etc/passwd"}) {
    const Reply reply = Get(target);
    EXPECT_EQ(reply.status, 404) << target;
    EXPECT_EQ(reply.body.find("secret\""), std::string::npos);
  }
  // Without a built front end the API still answers, and / says what is missing.
  StartServer("", dir_ + "/no-such-folder");
  const Reply missing = Get("/");
  EXPECT_EQ(missing.status, 404);
  EXPECT_NE(missing.Json()["error"].get<std::string>().find("not built"), std::string::npos);
  EXPECT_EQ(Get("/api/sweeps").status, 200);
}

TEST(HttpServerTest, ParsesAddresses) {
  std::string host;
  int port = 0;
  EXPECT_TRUE(SplitHostPort("127.0.0.1:8080", &host, &port));
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_EQ(port, 8080);
  EXPECT_TRUE(SplitHostPort("[::1]:0", &host, &port));
  EXPECT_EQ(host, "::1");
  EXPECT_FALSE(SplitHostPort("localhost", &host, &port));
  EXPECT_FALSE(SplitHostPort("h:99999", &host, &port));
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:1"));
  EXPECT_TRUE(IsLoopbackAddress("127.3.2.1:1"));
  EXPECT_TRUE(IsLoopbackAddress("localhost:0"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:80"));
  EXPECT_FALSE(IsLoopbackAddress("0.0.0.0:80"));
  EXPECT_FALSE(IsLoopbackAddress("10.0.0.1:80"));
  EXPECT_FALSE(IsLoopbackAddress("127.0.0.1.evil.com:80"));
  EXPECT_FALSE(HttpServer::Start({"10.255.255.1:0", 1}, nullptr).ok());  // not this machine's address
  EXPECT_FALSE(HttpServer::Start({"not-an-ip:0", 1}, nullptr).ok());
}

}  // namespace
}  // namespace sweep::orchestrator
