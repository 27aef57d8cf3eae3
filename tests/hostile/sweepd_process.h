// The real sweepd on a fresh database in a temp folder, for the hostile-input tests: started with
// a token and the given flags, a stub with the token, and the checks every hostile test ends
// with (still alive and answering, database intact).
#ifndef SWEEP_TESTS_HOSTILE_SWEEPD_PROCESS_H_
#define SWEEP_TESTS_HOSTILE_SWEEPD_PROCESS_H_

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "proto/sweep.grpc.pb.h"
#include "tests/testing/sqlite.h"
#include "tests/testing/subprocess.h"

namespace sweep::hostile {

inline constexpr char kToken[] = "hostile-token-0123456789abcdef";

class SweepdProcess {
 public:
  explicit SweepdProcess(std::vector<std::string> flags = {})
      : dir_(testing::MakeTempDir("hostile")), flags_(std::move(flags)) {
    std::ofstream(dir_ + "/token") << kToken << "\n";
  }

  // Starts sweepd and waits until it serves (ASSERTs: call under ASSERT_NO_FATAL_FAILURE).
  void Start() {
    std::vector<std::string> argv = {SWEEPD_BIN,     "--db",         db_path(),
                                     "--listen",     "127.0.0.1:0",  "--port-file",
                                     dir_ + "/port", "--token-file", dir_ + "/token"};
    argv.insert(argv.end(), flags_.begin(), flags_.end());
    process_ = std::make_unique<testing::Subprocess>(argv, "", log_path());
    ASSERT_TRUE(testing::WaitFor([&] { return std::filesystem::exists(dir_ + "/port"); },
                                 std::chrono::seconds(30)))
        << testing::ReadFileOrEmpty(log_path());
    const int port = std::stoi(testing::ReadFileOrEmpty(dir_ + "/port"));
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    stub_ = v1::Orchestrator::NewStub(grpc::CreateCustomChannel(
        "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials(), args));
  }

  // A context with the token and a deadline.
  static std::unique_ptr<grpc::ClientContext> Context(
      std::chrono::milliseconds deadline = std::chrono::seconds(20)) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->AddMetadata("authorization", std::string("Bearer ") + kToken);
    context->set_deadline(std::chrono::system_clock::now() + deadline);
    return context;
  }

  v1::Orchestrator::Stub* stub() { return stub_.get(); }
  bool Running() { return process_ != nullptr && !process_->Poll().has_value(); }
  std::string Log() const { return testing::ReadFileOrEmpty(log_path()); }
  std::string db_path() const { return dir_ + "/sweep.db"; }
  std::string Scalar(const std::string& sql) const {
    return testing::QueryScalarAt(db_path(), sql);
  }

  // Alive, answering an RPC, and the database passes SQLite's integrity check.
  void ExpectHealthy() {
    EXPECT_TRUE(Running()) << "sweepd died:\n" << Log();
    v1::ListSweepsResponse sweeps;
    const grpc::Status s = stub_->ListSweeps(Context(std::chrono::seconds(5)).get(), {}, &sweeps);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(Scalar("PRAGMA integrity_check"), "ok");
  }

  // SIGTERM; sweepd exits 0 after a clean shutdown.
  int Stop() {
    process_->Signal(SIGTERM);
    return process_->Wait();
  }

 private:
  std::string log_path() const { return dir_ + "/sweepd.log"; }

  const std::string dir_;
  const std::vector<std::string> flags_;
  std::unique_ptr<testing::Subprocess> process_;
  std::unique_ptr<v1::Orchestrator::Stub> stub_;
};

}  // namespace sweep::hostile

#endif  // SWEEP_TESTS_HOSTILE_SWEEPD_PROCESS_H_
