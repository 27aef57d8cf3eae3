#include "orchestrator/http_server.h"

#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/url/parse.hpp>
#include <boost/version.hpp>
#if BOOST_VERSION < 108300
// Up to Boost 1.82 (Debian 12: 1.81) Boost.URL is used header-only: its sources compile here,
// once. From 1.83 it is a compiled library, which CMakeLists.txt links.
#include <boost/url/src.hpp>
#endif
#include <chrono>
#include <optional>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace sweep::orchestrator {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

constexpr auto kTimeout = std::chrono::seconds(30);
constexpr size_t kHeaderLimit = 16 * 1024;
constexpr size_t kBodyLimit = 64 * 1024;

const char* ReasonJson(int status) {
  switch (status) {
    case 400: return R"({"error": "bad request"})";
    case 405: return R"({"error": "only GET and HEAD are served"})";
    case 503: return R"({"error": "too many connections; try again"})";
    default: return R"({"error": "internal error"})";
  }
}

}  // namespace

struct HttpServer::Impl {
  HttpServerOptions options;
  HttpHandler handler;
  asio::io_context ioc;
  tcp::acceptor acceptor{ioc};
  std::atomic<int> connections{0};
  std::vector<std::thread> threads;
  int port = 0;

  void Accept();
};

namespace {

// One connection: read a request, answer it, and again while the client keeps it alive.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, HttpServer::Impl* server)
      : stream_(std::move(socket)), server_(server) {
    server_->connections.fetch_add(1);
  }
  ~Session() { server_->connections.fetch_sub(1); }

  void Start(bool overloaded) {
    asio::dispatch(stream_.get_executor(), [self = shared_from_this(), overloaded] {
      if (overloaded) {
        self->Answer(Plain(503, false), /*keep_alive=*/false);
      } else {
        self->Read();
      }
    });
  }

 private:
  static http::response<http::string_body> Plain(int status, bool head) {
    http::response<http::string_body> response(static_cast<http::status>(status), 11);
    response.set(http::field::content_type, "application/json");
    if (status == 405) response.set(http::field::allow, "GET, HEAD");
    response.body() = head ? "" : ReasonJson(status);
    response.prepare_payload();
    return response;
  }

  void Read() {
    parser_.emplace();
    parser_->header_limit(kHeaderLimit);
    parser_->body_limit(kBodyLimit);
    stream_.expires_after(kTimeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
        ec == asio::error::operation_aborted || ec == asio::error::connection_reset ||
        ec == asio::error::eof) {
      return Close();
    }
    if (ec) return Answer(Plain(400, false), /*keep_alive=*/false);  // unparseable or too large
    http::request<http::string_body> request = parser_->release();
    const bool keep_alive = request.keep_alive();
    Answer(Handle(request), keep_alive);
  }

  http::response<http::string_body> Handle(const http::request<http::string_body>& request) {
    const bool head = request.method() == http::verb::head;
    if (request.method() != http::verb::get && !head) return Plain(405, false);
    auto url = boost::urls::parse_origin_form(
        std::string_view(request.target().data(), request.target().size()));
    if (!url) return Plain(400, head);
    HttpRequest in;
    in.method = head ? "HEAD" : "GET";
    in.path = url->path();
    for (const auto& param : url->params()) in.query[std::string(param.key)] = std::string(param.value);
    if (auto it = request.find(http::field::authorization); it != request.end()) {
      in.authorization = std::string(it->value());
    }
    if (auto it = request.find(http::field::cookie); it != request.end()) in.cookie = std::string(it->value());

    HttpResponse out;
    try {
      out = server_->handler(in);
    } catch (const std::exception& e) {
      out = HttpResponse{500, "application/json", absl::StrCat(R"({"error": "internal error: )", e.what(), R"("})")};
    }
    http::response<http::string_body> response(static_cast<http::status>(out.status), 11);
    response.set(http::field::server, "sweepd");
    response.set(http::field::content_type, out.content_type);
    for (const auto& [name, value] : out.headers) response.set(name, value);
    response.content_length(out.body.size());
    if (!head) response.body() = std::move(out.body);
    return response;
  }

  void Answer(http::response<http::string_body> response, bool keep_alive) {
    response.keep_alive(keep_alive);
    response_ = std::make_shared<http::response<http::string_body>>(std::move(response));
    stream_.expires_after(kTimeout);
    http::async_write(stream_, *response_,
                      [self = shared_from_this(), keep_alive](beast::error_code ec, size_t) {
                        if (ec || !keep_alive) return self->Close();
                        self->response_.reset();
                        self->Read();
                      });
  }

  void Close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }

  beast::tcp_stream stream_;
  HttpServer::Impl* const server_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<http::response<http::string_body>> response_;
};

}  // namespace

void HttpServer::Impl::Accept() {
  acceptor.async_accept(asio::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
    if (!ec) {
      const bool overloaded = connections.load() >= options.max_connections;
      std::make_shared<Session>(std::move(socket), this)->Start(overloaded);
    }
    Accept();
  });
}

bool SplitHostPort(const std::string& address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  std::string h = address.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  int p = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &p) || p < 0 || p > 65535) return false;
  *host = h;
  *port = p;
  return true;
}

bool IsLoopbackAddress(const std::string& address) {
  std::string host;
  int port = 0;
  if (!SplitHostPort(address, &host, &port)) return false;
  if (host == "localhost") return true;
  beast::error_code ec;
  const asio::ip::address ip = asio::ip::make_address(host, ec);
  return !ec && ip.is_loopback();
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() {
  asio::post(impl_->ioc, [impl = impl_.get()] {
    beast::error_code ignored;
    impl->acceptor.close(ignored);
  });
  impl_->ioc.stop();
  for (std::thread& t : impl_->threads) t.join();
}

int HttpServer::port() const { return impl_->port; }

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options,
                                                             HttpHandler handler) {
  std::string host;
  int port = 0;
  if (!SplitHostPort(options.address, &host, &port)) {
    return absl::InvalidArgumentError(absl::StrCat("--http '", options.address, "': expected HOST:PORT"));
  }
  if (host == "localhost") host = "127.0.0.1";
  beast::error_code ec;
  const asio::ip::address ip = asio::ip::make_address(host, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("--http '", options.address, "': '", host, "' is not an IP address"));
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->handler = std::move(handler);
  const tcp::endpoint endpoint(ip, static_cast<unsigned short>(port));
  auto fail = [&](const char* what) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.address, ": ", what, ": ", ec.message()));
  };
  if (impl->acceptor.open(endpoint.protocol(), ec)) return fail("open");
  if (impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec)) return fail("SO_REUSEADDR");
  if (impl->acceptor.bind(endpoint, ec)) return fail("bind");
  if (impl->acceptor.listen(asio::socket_base::max_listen_connections, ec)) return fail("listen");
  impl->port = impl->acceptor.local_endpoint().port();
  impl->Accept();
  for (int i = 0; i < std::max(1, options.threads); ++i) {
    impl->threads.emplace_back([ioc = &impl->ioc] { ioc->run(); });
  }
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

}  // namespace sweep::orchestrator
