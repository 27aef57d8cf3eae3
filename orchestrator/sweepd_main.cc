// sweepd: the sweep orchestrator. Owns the SQLite database and serves sweep.v1 over gRPC, and
// with --http the dashboard and its read-only JSON API (docs/dashboard.md).
//
//   sweepd --db sweep.db [--listen 127.0.0.1:7070] [--token-file F] [--port-file F]
//          [--http 127.0.0.1:8080] [--http-port-file F] [--dashboard-dir DIR]
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <condition_variable>
#include <fstream>
#include <grpcpp/grpcpp.h>
#include <mutex>
#include <sstream>
#include <thread>

#include "orchestrator/dashboard.h"
#include "orchestrator/http_server.h"
#include "orchestrator/scheduler.h"
#include "orchestrator/service.h"
#include "orchestrator/store.h"

namespace {
using namespace sweep::orchestrator;

std::string ReadToken(const std::string& path, std::string* error) {
  std::ifstream in(path);
  if (!in) {
    *error = path + ": cannot read token file";
    return "";
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string token = buffer.str();
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) {
    token.pop_back();
  }
  if (token.size() < 16) *error = path + ": token must be at least 16 characters";
  return token;
}

int Main(int argc, char** argv) {
  CLI::App app{
      "sweepd: the sweep orchestrator. Owns the SQLite database (the only writer) and serves\n"
      "sweepctl and sweep-worker over gRPC (sweep.v1, proto/sweep.proto).\n\n"
      "Examples:\n"
      "  sweepd --db runs/sweep.db\n"
      "  sweepd --db sweep.db --listen 0.0.0.0:7070 --token-file /etc/sweep/token",
      "sweepd"};
  std::string db = "sweep.db", listen = "127.0.0.1:7070", token_file, port_file;
  bool insecure = false;
  double lease_ttl = 60;
  int quarantine_after = 5;
  int64_t max_trials = 10000;
  app.add_option("--db", db, "SQLite database file (created if missing)")->capture_default_str();
  app.add_option("--listen", listen, "Address to serve on; port 0 picks a free port")
      ->capture_default_str();
  app.add_option("--token-file", token_file, "Require 'authorization: Bearer <token>' on every call");
  app.add_flag("--insecure", insecure, "Allow a non-loopback address without a token");
  std::string tls_cert, tls_key;
  app.add_option("--tls-cert", tls_cert, "Serve TLS with this PEM certificate (with --tls-key)")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-key", tls_key, "PEM private key for --tls-cert")->check(CLI::ExistingFile);
  app.add_option("--port-file", port_file, "Write the port actually bound here once serving");
  app.add_option("--lease-ttl", lease_ttl, "Seconds a lease lives without a heartbeat")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--quarantine-after", quarantine_after,
                 "Failed trials in a row that quarantine a worker")
      ->capture_default_str();
  app.add_option("--max-trials", max_trials, "Refuse sweeps larger than this")->capture_default_str();
  std::string http, http_port_file, dashboard_dir = Dashboard::DefaultAssetsDir();
  int http_threads = 4;
  app.add_option("--http", http,
                 "Serve the dashboard and its read-only JSON API on HOST:PORT (port 0: a free one)");
  app.add_option("--http-port-file", http_port_file, "Write the HTTP port actually bound here");
  app.add_option("--dashboard-dir", dashboard_dir, "The built dashboard (index.html, app.js)")
      ->capture_default_str();
  app.add_option("--http-threads", http_threads, "Threads answering HTTP requests")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  std::string token;
  if (!token_file.empty()) {
    std::string error;
    token = ReadToken(token_file, &error);
    if (!error.empty()) {
      spdlog::error("{}", error);
      return 2;
    }
  } else if (!insecure) {
    for (const std::string& address : {listen, http}) {
      if (!address.empty() && !IsLoopbackAddress(address)) {
        spdlog::error("refusing to listen on {} without --token-file (add --insecure to insist)", address);
        return 2;
      }
    }
  }

  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(db);
  if (!store.ok()) {
    spdlog::error("{}", std::string(store.status().message()));
    return 1;
  }
  SystemClock clock;
  Scheduler scheduler(store->get(), &clock, {lease_ttl, quarantine_after});
  ServiceOptions options;
  options.db_path = db;
  options.token = token;
  options.spec_limits.max_trials = max_trials;
  OrchestratorService service(store->get(), &scheduler, &clock, options);
  // Leases that ran out while sweepd was down are held for one lease TTL from now, for their
  // workers to heartbeat again (OrchestratorService::ExpireLeases); then the expiry below
  // requeues those whose workers did not.

  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (tls_cert.empty() != tls_key.empty()) {
    spdlog::error("--tls-cert and --tls-key go together");
    return 2;
  }
  if (!tls_cert.empty()) {
    auto read = [](const std::string& path) {
      std::ifstream in(path);
      std::stringstream buffer;
      buffer << in.rdbuf();
      return buffer.str();
    };
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({read(tls_key), read(tls_cert)});
    credentials = grpc::SslServerCredentials(ssl);
  }
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, credentials, &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(64 << 20);
  // Keep idle threads for the next requests: with gRPC's default (at most 2 idle pollers) a
  // synchronous server starts and ends a thread for most calls once hundreds of workers
  // heartbeat and stream at once (tools/load_orchestrator).
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, 32);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    spdlog::error("cannot listen on {}", listen);
    return 1;
  }
  spdlog::info("sweepd serving {} on port {} (db {}, {}, {})", listen, port, db,
               token.empty() ? "no token" : "token required", tls_cert.empty() ? "plaintext" : "TLS");
  if (!port_file.empty()) {
    std::ofstream(port_file + ".tmp") << port << "\n";
    std::rename((port_file + ".tmp").c_str(), port_file.c_str());
  }

  // The dashboard: its own read-only connections, never the writer's.
  std::unique_ptr<Dashboard> dashboard;
  std::unique_ptr<HttpServer> http_server;
  if (!http.empty()) {
    dashboard = std::make_unique<Dashboard>(DashboardOptions{db, token, dashboard_dir, nullptr});
    absl::StatusOr<std::unique_ptr<HttpServer>> started = HttpServer::Start(
        {http, http_threads}, [d = dashboard.get()](const HttpRequest& r) { return d->Handle(r); });
    if (!started.ok()) {
      spdlog::error("{}", std::string(started.status().message()));
      return 1;
    }
    http_server = *std::move(started);
    std::string host;
    int unused = 0;
    SplitHostPort(http, &host, &unused);
    spdlog::info("dashboard on http://{}:{}/ (assets {})", host.find(':') != std::string::npos ? "[" + host + "]" : host,
                 http_server->port(), dashboard_dir);
    if (!http_port_file.empty()) {
      std::ofstream(http_port_file + ".tmp") << http_server->port() << "\n";
      std::rename((http_port_file + ".tmp").c_str(), http_port_file.c_str());
    }
  }

  // Lease expiry every second; SIGTERM/SIGINT shut down cleanly.
  std::atomic<bool> stopping{false};
  std::thread expiry([&] {
    while (!stopping.load()) {
      std::this_thread::sleep_for(std::chrono::seconds(1));
      service.ExpireLeases();
    }
  });
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("signal {}: shutting down", sig);
  stopping.store(true);
  http_server.reset();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  expiry.join();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Block the stop signals in every thread; Main waits for them with sigwait.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // A file-size limit (ulimit -f) must fail a write, which SQLite reports, not kill sweepd.
  signal(SIGXFSZ, SIG_IGN);
  spdlog::set_default_logger(spdlog::stderr_color_mt("sweepd"));
  spdlog::set_pattern("[%H:%M:%S.%e] %^%l%$ %v");
  return Main(argc, argv);
}
