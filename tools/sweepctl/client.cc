#include "tools/sweepctl/client.h"

#include <chrono>

#include "absl/strings/str_cat.h"

namespace sweep::ctl {

Client::Client(const Connection& connection) : connection_(connection) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!connection.tls_ca_pem.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = connection.tls_ca_pem;
    credentials = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  stub_ = v1::Orchestrator::NewStub(grpc::CreateCustomChannel(connection.address, credentials, args));
}

std::unique_ptr<grpc::ClientContext> Client::Context(double timeout_seconds) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!connection_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + connection_.token);
  if (timeout_seconds > 0) {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(timeout_seconds * 1000)));
  }
  return ctx;
}

absl::StatusOr<Table> Client::Query(const std::string& sql, int max_rows) {
  v1::QueryRequest req;
  req.set_sql(sql);
  req.set_max_rows(max_rows);
  v1::QueryResponse resp;
  grpc::Status s = stub_->Query(Context().get(), req, &resp);
  if (!s.ok()) return FromGrpc(s, "query");
  Table table;
  table.truncated = resp.truncated();
  table.columns.assign(resp.columns().begin(), resp.columns().end());
  for (const auto& row : resp.rows()) {
    table.rows.emplace_back(row.values().begin(), row.values().end());
    table.nulls.emplace_back(row.is_null().begin(), row.is_null().end());
  }
  return table;
}

absl::Status FromGrpc(const grpc::Status& status, const std::string& what) {
  const std::string message = absl::StrCat(what, ": ", status.error_message());
  switch (status.error_code()) {
    case grpc::StatusCode::OK:
      return absl::OkStatus();
    case grpc::StatusCode::INVALID_ARGUMENT:
      return absl::InvalidArgumentError(status.error_message());
    case grpc::StatusCode::NOT_FOUND:
      return absl::NotFoundError(message);
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return absl::UnavailableError(absl::StrCat(message, " (is sweepd running? --orchestrator / SWEEP_ORCHESTRATOR)"));
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::PERMISSION_DENIED:
      return absl::PermissionDeniedError(absl::StrCat(message, " (--token-file / SWEEP_TOKEN_FILE)"));
    case grpc::StatusCode::FAILED_PRECONDITION:
      return absl::FailedPreconditionError(message);
    default:
      return absl::UnknownError(message);
  }
}

int ExitCodeFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return kExitOk;
    case absl::StatusCode::kInvalidArgument:
      return kExitUsage;
    case absl::StatusCode::kNotFound:
      return kExitNotFound;
    case absl::StatusCode::kUnavailable:
      return kExitUnavailable;
    default:
      return kExitError;
  }
}

std::string SqlQuote(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

}  // namespace sweep::ctl
