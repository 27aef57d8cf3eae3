// sweepctl's connection to sweepd: address, token and TLS from flags or the environment
// (SWEEP_ORCHESTRATOR, SWEEP_TOKEN_FILE, SWEEP_TLS_CA), and the helpers every verb uses.
#ifndef SWEEP_TOOLS_SWEEPCTL_CLIENT_H_
#define SWEEP_TOOLS_SWEEPCTL_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/sweep.grpc.pb.h"
#include "tools/sweepctl/output.h"

namespace sweep::ctl {

// Exit codes scripts can rely on (also in `sweepctl --help`).
enum ExitCode {
  kExitOk = 0,
  kExitError = 1,         // the request failed (a refused write, a failed sweep, ...)
  kExitUsage = 2,         // bad flags, or a spec sweepd refused (file:line:col: key: why)
  kExitNotFound = 3,      // no such sweep or trial
  kExitUnavailable = 4,   // sweepd cannot be reached
  kExitInterrupted = 130  // Ctrl-C (`run`: the sweep is paused and resumable)
};

struct Connection {
  std::string address = "127.0.0.1:7070";
  std::string token;       // empty: none
  std::string tls_ca_pem;  // empty: plaintext
};

class Client {
 public:
  explicit Client(const Connection& connection);

  v1::Orchestrator::Stub& stub() { return *stub_; }
  std::unique_ptr<grpc::ClientContext> Context(double timeout_seconds = 30) const;

  // The read-only SQL RPC as a Table (NULLs marked).
  absl::StatusOr<Table> Query(const std::string& sql, int max_rows = 0);

 private:
  Connection connection_;
  std::unique_ptr<v1::Orchestrator::Stub> stub_;
};

// A gRPC failure as a Status that says what was being done.
absl::Status FromGrpc(const grpc::Status& status, const std::string& what);
int ExitCodeFor(const absl::Status& status);

// 'it''s' for SQL text (the Query RPC takes no parameters).
std::string SqlQuote(const std::string& text);

}  // namespace sweep::ctl

#endif  // SWEEP_TOOLS_SWEEPCTL_CLIENT_H_
