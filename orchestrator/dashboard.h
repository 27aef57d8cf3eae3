// The dashboard: sweepd's web pages (static files built from dashboard/) and the read-only JSON
// API behind them (docs/dashboard.md has every endpoint and its answer).
//
// Contract
//   * Never writes. Every query runs on a connection opened SQLITE_OPEN_READONLY with
//     `PRAGMA query_only`; the analysis is computed on such a connection and kept in memory,
//     never stored. Connections are pooled (one per concurrent request).
//   * With a token, every request (pages and API) needs it: `Authorization: Bearer T`, the
//     cookie `sweep_token=T`, or `?token=T` (which sets the cookie). Otherwise 401.
//   * Bad parameters are 400 with a message naming the parameter; an unknown sweep or trial
//     is 404; answers are JSON objects, errors `{"error": "..."}`.
//   * Static files come from `assets_dir` (index.html, app.js, app.css, ...); a path that
//     leaves it is 404.
//
// Thread-safety: Handle() may be called from several threads at once.
#ifndef SWEEP_ORCHESTRATOR_DASHBOARD_H_
#define SWEEP_ORCHESTRATOR_DASHBOARD_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "orchestrator/http_server.h"
#include "orchestrator/store.h"

namespace sweep::orchestrator {

struct DashboardOptions {
  std::string db_path;
  std::string token;       // Empty: no authentication.
  std::string assets_dir;  // The built front end; empty or missing: the API only.
  // The clock for elapsed time and ETA (Unix seconds); tests pass their own.
  std::function<double()> now;
};

class Dashboard {
 public:
  explicit Dashboard(DashboardOptions options);
  ~Dashboard();
  Dashboard(const Dashboard&) = delete;
  Dashboard& operator=(const Dashboard&) = delete;

  HttpResponse Handle(const HttpRequest& request);

  // Where sweepd looks for the front end by default: next to the executable
  // (<dir>/dashboard, the build tree) or the installed share folder (<dir>/../share/sweep/dashboard).
  static std::string DefaultAssetsDir();

 private:
  struct CachedAnalysis {
    std::string key;   // what it was computed from (finished trials and their latest time)
    std::string json;  // the answer
  };

  std::unique_ptr<Store> Acquire(std::string* error);
  void Release(std::unique_ptr<Store> store);

  HttpResponse Api(Store& store, const HttpRequest& request, const std::vector<std::string>& parts);
  HttpResponse Static(const std::string& path);
  HttpResponse Analysis(Store& store, int64_t sweep_id);

  const DashboardOptions options_;
  std::mutex mu_;
  std::vector<std::unique_ptr<Store>> pool_;        // GUARDED_BY(mu_)
  std::map<int64_t, CachedAnalysis> analyses_;      // GUARDED_BY(mu_)
};

}  // namespace sweep::orchestrator

#endif  // SWEEP_ORCHESTRATOR_DASHBOARD_H_
