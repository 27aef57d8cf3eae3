// Security checks that cannot forget a method: every RPC of sweep.v1.Orchestrator, enumerated
// from the proto descriptor and called with a generic stub, is refused without the token (and
// with a wrong one) and let through with it; and the real sweepd refuses to listen, gRPC or
// HTTP, on a non-loopback address without a token unless --insecure.
#include <google/protobuf/descriptor.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>
#include <fstream>

#include "orchestrator/service.h"
#include "tests/orchestrator/fake_clock.h"
#include "tests/testing/subprocess.h"

namespace sweep::orchestrator {
namespace {

namespace fs = std::filesystem;
using sweep::testing::MakeTempDir;
using sweep::testing::ReadFileOrEmpty;

constexpr char kToken[] = "0123456789abcdef-security-token";

// Calls `method` ("/pkg.Service/Method") with an empty message, whatever its streaming kind
// (a generic bidi call is what every kind looks like on the wire), and returns the status.
grpc::Status CallWithEmptyMessage(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                                  const std::string& token) {
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call = stub.PrepareCall(&context, method, &cq);
  auto wait = [&cq](intptr_t want) {
    void* tag = nullptr;
    bool ok = false;
    while (cq.Next(&tag, &ok)) {
      if (reinterpret_cast<intptr_t>(tag) == want) return ok;
    }
    return false;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  if (wait(1)) {
    grpc::Slice empty("");
    grpc::ByteBuffer request(&empty, 1);
    call->Write(request, reinterpret_cast<void*>(2));
    if (wait(2)) {
      call->WritesDone(reinterpret_cast<void*>(3));
      if (wait(3)) {
        grpc::ByteBuffer response;
        call->Read(&response, reinterpret_cast<void*>(4));
        wait(4);
      }
    }
  }
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  wait(5);
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
  return status;
}

TEST(SecurityTest, EveryRpcNeedsTheToken) {
  const std::string dir = MakeTempDir("sweep-security");
  FakeClock clock;
  std::unique_ptr<Store> store = *Store::Open(dir + "/sweep.db");
  Scheduler scheduler(store.get(), &clock, SchedulerOptions{30, 5});
  ServiceOptions options;
  options.db_path = dir + "/sweep.db";
  options.token = kToken;
  OrchestratorService service(store.get(), &scheduler, &clock, options);
  grpc::ServerBuilder builder;
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  std::shared_ptr<grpc::Channel> channel = server->InProcessChannel({});

  const google::protobuf::ServiceDescriptor* descriptor =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName("sweep.v1.Orchestrator");
  ASSERT_NE(descriptor, nullptr);
  ASSERT_GE(descriptor->method_count(), 20);  // the proto's whole surface, not a hand-kept list
  for (int i = 0; i < descriptor->method_count(); ++i) {
    const std::string method = "/" + descriptor->full_name() + "/" + descriptor->method(i)->name();
    for (const std::string bad : {"", "wrong-token-wrong-token-wrong"}) {
      const grpc::Status refused = CallWithEmptyMessage(channel, method, bad);
      EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAUTHENTICATED)
          << method << (bad.empty() ? " without a token: " : " with a wrong token: ") << refused.error_message();
    }
    // With the token the call gets past authentication (an empty message is then refused or
    // answered on its merits: NOT_FOUND, INVALID_ARGUMENT, ...).
    const grpc::Status allowed = CallWithEmptyMessage(channel, method, kToken);
    EXPECT_NE(allowed.error_code(), grpc::StatusCode::UNAUTHENTICATED) << method;
  }
  server->Shutdown();
  fs::remove_all(dir);
}

// sweepd with `args`: its exit code within 10 s (or -1 if it keeps running: then it is killed)
// and its log.
std::pair<int, std::string> RunSweepd(const std::vector<std::string>& extra) {
  const std::string dir = MakeTempDir("sweep-listen");
  std::vector<std::string> argv = {SWEEPD_BIN, "--db", dir + "/sweep.db", "--port-file", dir + "/port"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  sweep::testing::Subprocess sweepd(argv, dir + "/out.log", dir + "/err.log");
  int code = -1;
  sweep::testing::WaitFor([&] { return sweepd.Poll() || !ReadFileOrEmpty(dir + "/port").empty(); },
                          std::chrono::seconds(10));
  if (sweepd.Poll()) {
    code = *sweepd.Poll();
  } else {
    sweepd.Signal(SIGTERM);
    sweepd.Wait();
  }
  const std::string log = ReadFileOrEmpty(dir + "/err.log");
  fs::remove_all(dir);
  return {code, log};
}

TEST(SecurityTest, SweepdRefusesNonLoopbackWithoutAToken) {
  for (const std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {"--listen", "0.0.0.0:0"},
           {"--listen", "127.0.0.1:0", "--http", "0.0.0.0:0"},
           {"--listen", "[::]:0"}}) {
    const auto [code, log] = RunSweepd(args);
    EXPECT_EQ(code, 2) << log;
    EXPECT_NE(log.find("without --token-file"), std::string::npos) << log;
  }
  // Loopback needs nothing; --insecure insists; a token allows any address.
  EXPECT_EQ(RunSweepd({"--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"}).first, -1);
  EXPECT_EQ(RunSweepd({"--listen", "0.0.0.0:0", "--http", "0.0.0.0:0", "--insecure"}).first, -1);
  const std::string dir = MakeTempDir("sweep-token");
  std::ofstream(dir + "/token") << kToken << "\n";
  EXPECT_EQ(RunSweepd({"--listen", "0.0.0.0:0", "--token-file", dir + "/token"}).first, -1);
  std::ofstream(dir + "/short") << "short\n";
  const auto [code, log] = RunSweepd({"--listen", "0.0.0.0:0", "--token-file", dir + "/short"});
  EXPECT_EQ(code, 2);
  EXPECT_NE(log.find("at least 16 characters"), std::string::npos) << log;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sweep::orchestrator
