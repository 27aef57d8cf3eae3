#include "worker/worker.h"

#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <boost/process.hpp>
#include <boost/process/extend.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "proto/sweep.grpc.pb.h"
#include "worker/trainer/exit_codes.h"

namespace sweep::worker {
namespace {
namespace bp = boost::process;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// In the child between fork and exec: its own process group (so a stop reaches everything it
// starts) and death with the worker (no orphan trains unseen).
struct ChildSetup : bp::extend::handler {
  template <typename Executor>
  void on_exec_setup(Executor&) const {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
  }
};

// One trial being run by a child process.
struct Trial {
  v1::Lease lease;
  std::string dir;
  bp::ipstream out;
  std::unique_ptr<bp::child> child;
  std::thread reader;

  std::mutex mu;                              // Guards the fields below.
  std::vector<v1::Metric> pending;            // Rows not yet stored by sweepd.
  std::vector<std::pair<std::string, int64_t>> checkpoints;  // To report.
  int64_t step = 0;
  bool has_val = false;
  double last_val = 0;
  int64_t diverged_step = 0;
  bool stop_sent = false;
};

std::string Tail(const std::string& path, size_t bytes) {
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return text.size() > bytes ? text.substr(text.size() - bytes) : text;
}

// Reads the child's JSON lines until it closes stdout.
void ReadMetrics(Trial* trial) {
  const double now = std::chrono::duration<double>(
                         std::chrono::system_clock::now().time_since_epoch()).count();
  for (std::string line; std::getline(trial->out, line);) {
    nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (record.is_discarded() || !record.is_object()) continue;  // e.g. a torn last line
    const int64_t step = record.value("global_step", int64_t{0});
    std::lock_guard<std::mutex> lock(trial->mu);
    if (record.contains("event")) {
      const std::string event = record["event"].get<std::string>();
      if ((event == "checkpoint" || event == "preempted" || event == "completed") &&
          record.contains("checkpoint") && record["checkpoint"].is_string() &&
          !record["checkpoint"].get<std::string>().empty()) {
        trial->checkpoints.emplace_back(record["checkpoint"].get<std::string>(), step);
      }
      if (event == "diverged") trial->diverged_step = step;
      continue;
    }
    trial->step = std::max(trial->step, step);
    for (const auto& [key, value] : record.items()) {
      if (!value.is_number() || key == "global_step" || key == "acc_step") continue;
      v1::Metric m;
      m.set_name(key);
      m.set_step(step);
      m.set_value(value.get<double>());
      m.set_time(now);
      trial->pending.push_back(std::move(m));
      if (key == "loss/val") {
        trial->has_val = true;
        trial->last_val = value.get<double>();
      }
    }
  }
}

class Worker {
 public:
  explicit Worker(const WorkerOptions& options)
      : options_(options),
        stub_(v1::Orchestrator::NewStub(
            grpc::CreateChannel(options.orchestrator, grpc::InsecureChannelCredentials()))) {}

  int Run(const std::atomic<bool>& stop) {
    while (!stop.load() && !Register()) std::this_thread::sleep_for(std::chrono::seconds(1));
    Clock::time_point last_flush = Clock::now(), last_heartbeat = Clock::now();
    while (!stop.load()) {
      const int free = options_.cpu_slots - static_cast<int>(trials_.size());
      if (free > 0) Lease(free, trials_.empty() ? 1000 : 0);
      if (Seconds(last_flush) >= options_.flush_seconds) {
        Flush();
        last_flush = Clock::now();
      }
      if (Seconds(last_heartbeat) >= options_.heartbeat_seconds) {
        Heartbeat();
        last_heartbeat = Clock::now();
      }
      Reap();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    // Stop: the children checkpoint (SIGTERM) and exit; their leases requeue in sweepd.
    for (auto& trial : trials_) Signal(*trial, SIGTERM);
    for (auto& trial : trials_) {
      trial->child->wait();
      if (trial->reader.joinable()) trial->reader.join();
    }
    Flush();
    for (auto& trial : trials_) ReportCheckpoints(*trial);
    return 0;
  }

 private:
  static double Seconds(Clock::time_point since) {
    return std::chrono::duration<double>(Clock::now() - since).count();
  }

  std::unique_ptr<grpc::ClientContext> Ctx(int timeout_ms = 10000) const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!options_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.token);
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
    return ctx;
  }

  bool Register() {
    v1::RegisterWorkerRequest req;
    req.set_name(options_.name);
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    req.set_host(host);
    req.set_cpu_slots(options_.cpu_slots);
    v1::RegisterWorkerResponse resp;
    grpc::Status s = stub_->RegisterWorker(Ctx().get(), req, &resp);
    if (!s.ok()) {
      spdlog::warn("register with {}: {}", options_.orchestrator, s.error_message());
      return false;
    }
    worker_id_ = resp.worker_id();
    spdlog::info("registered as {} (id {}), {} CPU slot(s)", options_.name, worker_id_, options_.cpu_slots);
    return true;
  }

  void Lease(int free, int wait_ms) {
    v1::LeaseTrialsRequest req;
    req.set_worker_id(worker_id_);
    req.set_free_cpu_slots(free);
    req.set_max_trials(free);
    req.set_wait_ms(wait_ms);
    v1::LeaseTrialsResponse resp;
    grpc::Status s = stub_->LeaseTrials(Ctx(wait_ms + 10000).get(), req, &resp);
    if (!s.ok()) {
      if (s.error_code() == grpc::StatusCode::NOT_FOUND) Register();  // sweepd lost us
      return;
    }
    for (const v1::Lease& lease : resp.leases()) Start(lease);
  }

  void Start(const v1::Lease& lease) {
    auto trial = std::make_unique<Trial>();
    trial->lease = lease;
    trial->dir = (fs::path(options_.workdir) / lease.sweep_name() / std::to_string(lease.trial_id()) /
                  ("attempt-" + std::to_string(lease.attempt())))
                     .string();
    fs::create_directories(trial->dir);
    const std::string config = trial->dir + "/config.yaml";
    std::ofstream(config) << lease.config_yaml();
    std::vector<std::string> args = {"--config", config, "--dump-dir", trial->dir, "--metrics", "-",
                                     "threads=" + std::to_string(options_.threads_per_trial)};
    if (!lease.resume_checkpoint().empty()) {
      // The previous attempt's trainer may have pruned the reported checkpoint (checkpoint.keep)
      // after writing newer ones that the worker died before reporting: resume from the newest
      // complete checkpoint in that folder, which is never older than the reported one.
      const fs::path reported(lease.resume_checkpoint());
      const fs::path folder = reported.parent_path();
      args.push_back("--resume");
      args.push_back(fs::is_directory(folder) && folder.filename() == "checkpoints"
                         ? folder.string()
                         : reported.string());
    }
    try {
      auto env = boost::this_process::environment();
      env["CUDA_VISIBLE_DEVICES"] = "";
      trial->child = std::make_unique<bp::child>(
          options_.sweep_train, bp::args(args), bp::std_out > trial->out,
          bp::std_err > (trial->dir + "/stderr.log"), bp::std_in < bp::null, env, ChildSetup{});
    } catch (const std::exception& e) {
      spdlog::error("trial {}: cannot start {}: {}", lease.trial_id(), options_.sweep_train, e.what());
      Complete(*trial, v1::CompleteTrialRequest::FAILED, std::string("cannot start trainer: ") + e.what());
      return;
    }
    v1::TrialAttempt start;
    start.set_trial_id(lease.trial_id());
    start.set_attempt(lease.attempt());
    v1::Ack ack;
    (void)stub_->StartTrial(Ctx().get(), start, &ack);
    spdlog::info("trial {} attempt {} ({}) started in {}", lease.trial_id(), lease.attempt(),
                 lease.trial_key(), trial->dir);
    trial->reader = std::thread(ReadMetrics, trial.get());
    trials_.push_back(std::move(trial));
  }

  void Signal(Trial& trial, int sig) {
    if (trial.child && trial.child->running()) ::kill(-trial.child->id(), sig);
  }

  // Sends every trial's pending rows; keeps them for a retry if sweepd is unreachable.
  void Flush() {
    for (auto& trial : trials_) {
      std::vector<v1::Metric> rows;
      {
        std::lock_guard<std::mutex> lock(trial->mu);
        rows.swap(trial->pending);
      }
      if (rows.empty()) continue;
      v1::StreamMetricsResponse resp;
      auto ctx = Ctx();
      auto writer = stub_->StreamMetrics(ctx.get(), &resp);
      v1::MetricsBatch batch;
      batch.set_trial_id(trial->lease.trial_id());
      batch.set_attempt(trial->lease.attempt());
      for (const v1::Metric& m : rows) *batch.add_metrics() = m;
      writer->Write(batch);
      writer->WritesDone();
      grpc::Status s = writer->Finish();
      if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
        spdlog::warn("trial {}: lease lost ({}); stopping it", trial->lease.trial_id(), s.error_message());
        Signal(*trial, SIGTERM);
      } else if (!s.ok()) {
        std::lock_guard<std::mutex> lock(trial->mu);  // Retry with the next flush.
        trial->pending.insert(trial->pending.begin(), rows.begin(), rows.end());
      }
      ReportCheckpoints(*trial);
    }
  }

  void ReportCheckpoints(Trial& trial) {
    std::vector<std::pair<std::string, int64_t>> checkpoints;
    {
      std::lock_guard<std::mutex> lock(trial.mu);
      checkpoints.swap(trial.checkpoints);
    }
    for (const auto& [path, step] : checkpoints) {
      v1::ReportCheckpointRequest req;
      req.set_trial_id(trial.lease.trial_id());
      req.set_attempt(trial.lease.attempt());
      req.set_path(fs::absolute(path).string());
      req.set_step(step);
      v1::Ack ack;
      grpc::Status s = stub_->ReportCheckpoint(Ctx().get(), req, &ack);
      if (!s.ok() && s.error_code() != grpc::StatusCode::FAILED_PRECONDITION) {
        std::lock_guard<std::mutex> lock(trial.mu);
        trial.checkpoints.emplace_back(path, step);
      }
    }
  }

  void Heartbeat() {
    v1::HeartbeatRequest req;
    req.set_worker_id(worker_id_);
    for (auto& trial : trials_) {
      auto* p = req.add_trials();
      p->set_trial_id(trial->lease.trial_id());
      p->set_attempt(trial->lease.attempt());
      std::lock_guard<std::mutex> lock(trial->mu);
      p->set_step(trial->step);
    }
    v1::HeartbeatResponse resp;
    grpc::Status s = stub_->Heartbeat(Ctx().get(), req, &resp);
    if (!s.ok()) {
      if (s.error_code() == grpc::StatusCode::NOT_FOUND) Register();
      return;  // Training goes on while sweepd is away.
    }
    for (const auto& stop : resp.stop()) {
      for (auto& trial : trials_) {
        if (trial->lease.trial_id() == stop.trial_id() && !trial->stop_sent) {
          spdlog::info("trial {}: stopping ({})", stop.trial_id(), stop.reason());
          trial->stop_sent = true;
          Signal(*trial, SIGTERM);
        }
      }
    }
  }

  void Complete(Trial& trial, v1::CompleteTrialRequest::Outcome outcome, const std::string& error) {
    v1::CompleteTrialRequest req;
    req.set_trial_id(trial.lease.trial_id());
    req.set_attempt(trial.lease.attempt());
    req.set_outcome(outcome);
    {
      std::lock_guard<std::mutex> lock(trial.mu);
      req.set_last_step(trial.step);
      if (trial.has_val) {
        req.set_has_final_metric(true);
        req.set_final_metric(trial.last_val);
      }
      req.set_diverged_step(trial.diverged_step);
    }
    req.set_error(error);
    v1::Ack ack;
    for (int attempt = 0; attempt < 30; ++attempt) {  // sweepd may be restarting
      grpc::Status s = stub_->CompleteTrial(Ctx().get(), req, &ack);
      if (s.ok() || s.error_code() == grpc::StatusCode::FAILED_PRECONDITION) break;
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
  }

  // Finishes the trials whose child exited.
  void Reap() {
    for (auto it = trials_.begin(); it != trials_.end();) {
      Trial& trial = **it;
      if (trial.child->running()) {
        ++it;
        continue;
      }
      trial.child->wait();
      if (trial.reader.joinable()) trial.reader.join();
      Flush();  // The last rows before the outcome.
      ReportCheckpoints(trial);
      const int code = trial.child->exit_code();
      v1::CompleteTrialRequest::Outcome outcome = v1::CompleteTrialRequest::FAILED;
      std::string error;
      if (code == trainer::kExitCompleted) {
        outcome = v1::CompleteTrialRequest::COMPLETED;
      } else if (code == trainer::kExitDiverged) {
        outcome = v1::CompleteTrialRequest::DIVERGED;
      } else if (code == trainer::kExitPreempted) {
        outcome = v1::CompleteTrialRequest::STOPPED;
      } else {
        error = "sweep-train exited with " + std::to_string(code) + ": " +
                Tail(trial.dir + "/stderr.log", 2000);
      }
      spdlog::info("trial {} attempt {}: exit {}", trial.lease.trial_id(), trial.lease.attempt(), code);
      Complete(trial, outcome, error);
      it = trials_.erase(it);
    }
  }

  const WorkerOptions options_;
  std::unique_ptr<v1::Orchestrator::Stub> stub_;
  int64_t worker_id_ = 0;
  std::vector<std::unique_ptr<Trial>> trials_;
};

}  // namespace

int RunWorker(const WorkerOptions& options, const std::atomic<bool>& stop) {
  Worker worker(options);
  return worker.Run(stop);
}

}  // namespace sweep::worker
