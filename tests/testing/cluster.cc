#include "tests/testing/cluster.h"

#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "tests/testing/sqlite.h"

namespace sweep::testing {

namespace fs = std::filesystem;

Cluster::Cluster(ClusterBinaries binaries, std::string dir, std::string db_path)
    : binaries_(std::move(binaries)),
      dir_(std::move(dir)),
      db_path_(db_path.empty() ? dir_ + "/sweep.db" : std::move(db_path)),
      workdir_(dir_ + "/work") {}

Cluster::~Cluster() {
  for (auto& [name, worker] : workers_) worker.reset();  // SIGKILL and reap
  sweepd_.reset();
}

bool Cluster::StartSweepd(const std::vector<std::string>& extra) {
  sweepd_.reset();
  fs::remove(dir_ + "/port");
  // A restart listens on the first start's port, so the workers already running find it again.
  const std::string listen = target_.empty() ? "127.0.0.1:0" : target_;
  std::vector<std::string> argv = {binaries_.sweepd, "--db", db_path(), "--listen", listen,
                                   "--port-file", dir_ + "/port"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  // One log per start: sweepd-1.log, sweepd-2.log, ...
  sweepd_ = std::make_unique<Subprocess>(argv, "", absl::StrCat(dir_, "/sweepd-", ++sweepd_starts_, ".log"));
  WaitFor([&] { return !ReadFileOrEmpty(dir_ + "/port").empty() || sweepd_->Poll().has_value(); },
          std::chrono::seconds(30));
  if (ReadFileOrEmpty(dir_ + "/port").empty()) return false;
  target_ = "127.0.0.1:" + std::to_string(std::stoi(ReadFileOrEmpty(dir_ + "/port")));
  stub_ = v1::Orchestrator::NewStub(grpc::CreateChannel(target_, grpc::InsecureChannelCredentials()));
  return true;
}

int Cluster::StopSweepd(int sig) {
  if (!sweepd_) return -1;
  sweepd_->Signal(sig);
  const int code = sweepd_->Wait();
  sweepd_.reset();
  return code;
}

Subprocess& Cluster::StartWorker(const std::string& name, const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {binaries_.worker, "--orchestrator", target_,  "--name",        name,
                                   "--workdir",      workdir_,  "--sweep-train", binaries_.sweep_train,
                                   "--heartbeat",    absl::StrCat(heartbeat_),             "--gpus",        "none",
                                   "--cpu-slots",    "1"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  auto& slot = workers_[name];
  slot.reset();
  slot = std::make_unique<Subprocess>(argv, "", dir_ + "/" + name + ".log");
  return *slot;
}

int Cluster::SignalWorker(const std::string& name, int sig) {
  auto it = workers_.find(name);
  if (it == workers_.end()) return -1;
  it->second->Signal(sig);
  if (sig != SIGKILL && sig != SIGTERM) return -1;
  const int code = it->second->Wait();
  workers_.erase(it);
  return code;
}

std::vector<std::string> Cluster::worker_names() const {
  std::vector<std::string> names;
  for (const auto& [name, worker] : workers_) names.push_back(name);
  return names;
}

absl::Status Cluster::Submit(const std::string& spec_yaml) {
  v1::SubmitSweepRequest request;
  request.set_spec_yaml(spec_yaml);
  request.set_origin("test.yaml");
  v1::SubmitSweepResponse response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Status s = stub_->SubmitSweep(&context, request, &response);
  if (!s.ok()) return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  return absl::OkStatus();
}

bool Cluster::SweepEnds(const std::string& sweep, std::chrono::seconds timeout) {
  return WaitFor([&] { return Db("SELECT state FROM sweeps WHERE name = '" + sweep + "'") == "completed"; },
                 timeout);
}

std::string Cluster::Db(const std::string& sql) const { return QueryScalarAt(db_path(), sql); }

std::string Cluster::Logs() const {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir_)) {
    if (entry.path().extension() == ".log") names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  std::string out;
  for (const std::string& name : names) absl::StrAppend(&out, "--- ", name, "\n", ReadFileOrEmpty(dir_ + "/" + name));
  return out;
}

}  // namespace sweep::testing
