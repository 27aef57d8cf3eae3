// A small HTTP/1.1 server (Boost.Beast) for sweepd's dashboard: GET and HEAD only, keep-alive,
// a handler function per request. No Beast types here, so includers compile quickly.
//
// Contract
//   * Start() binds `address` ("127.0.0.1:8080", "[::1]:0", "0.0.0.0:80"; port 0 picks a free
//     one) and serves on `threads` threads until the server is destroyed.
//   * The handler runs on one of those threads and may block (it reads SQLite); requests of
//     one connection are handled one after another, connections in parallel.
//   * Requests are bounded: headers 16 KiB, body 64 KiB (a dashboard sends none), 30 s to
//     read a request or write an answer, idle keep-alive connections close after 30 s, at most
//     `max_connections` at once (more are answered 503 and closed).
//   * The path and query are percent-decoded (Boost.URL); a target that does not parse is
//     answered 400 without calling the handler. A method other than GET or HEAD is 405.
//     HEAD answers GET's headers without the body.
//
// Thread-safety: the handler is called concurrently from several threads.
#ifndef SWEEP_ORCHESTRATOR_HTTP_SERVER_H_
#define SWEEP_ORCHESTRATOR_HTTP_SERVER_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace sweep::orchestrator {

struct HttpRequest {
  std::string method;                         // GET or HEAD
  std::string path;                           // decoded, e.g. /api/sweeps/depth_lr
  std::map<std::string, std::string> query;   // decoded; a repeated key keeps the last value
  std::string authorization;                  // the Authorization header, verbatim
  std::string cookie;                         // the Cookie header, verbatim
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers (Set-Cookie, ...)
};

using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

struct HttpServerOptions {
  std::string address = "127.0.0.1:8080";
  int threads = 4;
  int max_connections = 256;
};

class HttpServer {
 public:
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpServerOptions& options,
                                                           HttpHandler handler);
  ~HttpServer();  // Stops accepting, closes connections, joins the threads.
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const;

  struct Impl;

 private:
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// "host:port" → host and port; brackets around an IPv6 host are removed. False if malformed.
bool SplitHostPort(const std::string& address, std::string* host, int* port);

// Whether an address ("127.0.0.1:7070", "localhost:0", "[::1]:80") is loopback only.
bool IsLoopbackAddress(const std::string& address);

}  // namespace sweep::orchestrator

#endif  // SWEEP_ORCHESTRATOR_HTTP_SERVER_H_
