#include "worker/worker.h"

#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <cerrno>
#include <condition_variable>
#include <mutex>
#include <cmath>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "proto/sweep.grpc.pb.h"
#include "worker/child_process.h"
#include "worker/metrics_file.h"
#include "worker/resources.h"
#include "worker/trainer/exit_codes.h"

namespace sweep::worker {
namespace {
namespace fs = std::filesystem;
using Steady = std::chrono::steady_clock;

double UnixNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

double SecondsSince(Steady::time_point since) {
  return std::chrono::duration<double>(Steady::now() - since).count();
}

// A live process's start time (field 22 of /proc/PID/stat), or -1 when it is gone or a zombie.
// With the pid it identifies a process across pid reuse.
int64_t ProcessStartTime(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return -1;
  std::istringstream fields(stat.substr(paren + 2));
  std::string state;
  fields >> state;  // field 3
  if (state == "Z" || state == "X") return -1;
  std::string field;
  for (int i = 4; i <= 22 && fields >> field; ++i) {
  }
  return field.empty() ? -1 : std::stoll(field);
}

std::string Tail(const std::string& path, size_t bytes) {
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return text.size() > bytes ? "..." + text.substr(text.size() - bytes) : text;
}

// Writes a whole file; the error names the file and why (a full disk, a read-only folder), so
// the trial fails with that reason instead of starting on a truncated config.
absl::Status WriteWholeFile(const std::string& path, const std::string& text) {
  errno = 0;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.flush();
  if (!out) {
    return absl::UnavailableError(
        absl::StrCat("cannot write ", path, ": ", errno != 0 ? std::strerror(errno) : "write failed"));
  }
  return absl::OkStatus();
}

bool Unreachable(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
         s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

// Why the worker stops a trial; decides the outcome it reports.
enum class Stop {
  kNone,
  kRequested,  // sweepd asked (pause, cancel, early termination): STOPPED
  kShutdown,   // the worker is shutting down: RELEASED
  kRestart,    // found after a worker restart: RELEASED
  kLeaseLost,  // sweepd gave the trial to another attempt: report nothing
};

// One metric row or one checkpoint, in the order the trial wrote them.
struct Pending {
  bool is_checkpoint = false;
  v1::Metric metric;
  std::string checkpoint;
  int64_t step = 0;
};

// One process of a trial: rank r of a data-parallel trial, or the trial's only process.
struct Rank {
  int rank = 0;
  std::unique_ptr<bp::child> child;
  pid_t pid = 0;
  bool exited = false;
  int exit_code = 0;    // 128 + signal when a signal ended it.
  int exit_signal = 0;
  double exited_at = 0;

  bool live() const { return child != nullptr && !exited; }
  bool failed() const { return exited && (exit_code != 0 || exit_signal != 0); }
};

// Where rank r's output goes: rank 0 keeps the one-process names.
std::string RankLog(int rank, const char* stream) {
  return rank == 0 ? absl::StrCat(stream, ".log") : absl::StrCat("rank", rank, ".", stream, ".log");
}

struct Trial {
  v1::Lease lease;
  std::string dir;
  bool builtin = true;
  std::vector<int> gpus;
  int cpu_slots = 0;
  int world_size = 1;

  std::vector<Rank> ranks;  // Rank r at index r; empty until spawned.
  bool exited = false;  // Every rank was reaped (or none started).
  // The trial's exit: that of the first rank to exit non-zero or by a signal (`failed_rank`),
  // else rank 0's.
  int exit_code = 0;
  int exit_signal = 0;
  int failed_rank = -1;
  double spawned_at = 0;
  double exited_at = 0;
  std::string start_error;  // Set when the child could not be started.
  nlohmann::json info;      // attempt.json
  int64_t telemetry_step = 0;  // The step the last GPU telemetry rows went to.

  std::unique_ptr<MetricsFile> metrics;
  bool drained = false;  // metrics.jsonl read to its end after the child exited.
  std::deque<Pending> pending;
  int64_t step = 0;
  int64_t metric_step = -1;
  std::optional<double> final_metric;
  std::optional<double> best_metric;
  std::string checkpoint;  // The last one sweepd stored.
  int64_t diverged_step = 0;

  Stop stop = Stop::kNone;
  std::string stop_reason;
  Steady::time_point stop_at;
  bool killed = false;

  bool live() const {
    for (const Rank& r : ranks) {
      if (r.live()) return true;
    }
    return false;
  }
  // Rank 0's pid: the trial's process for logs and one-process tools.
  pid_t pid() const { return ranks.empty() ? 0 : ranks[0].pid; }
};

// A TCP port on loopback that was free a moment ago, for MASTER_PORT (torchrun-style
// rendezvous of command trials); 0 if none could be found.
int FreeLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

// One nvidia-smi sample: each GPU's figures and the processes holding GPU memory.
struct GpuReading {
  std::map<int, GpuSample> gpus;      // By GPU index.
  std::vector<GpuProcess> processes;  // Empty when that query failed.
};

// Samples `nvidia-smi` every `interval` seconds on a thread of its own (a slow or stuck
// nvidia-smi never holds up the worker's loop). Latest() is the newest sample and its number.
class GpuTelemetry {
 public:
  explicit GpuTelemetry(double interval) : interval_(interval) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~GpuTelemetry() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  GpuTelemetry(const GpuTelemetry&) = delete;
  GpuTelemetry& operator=(const GpuTelemetry&) = delete;

  // The newest sample and its sequence number (0: none yet).
  std::pair<int64_t, GpuReading> Latest() const {
    std::lock_guard<std::mutex> lock(mu_);
    return {sequence_, latest_};
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      lock.unlock();
      std::vector<GpuSample> samples = QueryGpus();
      std::vector<GpuProcess> processes;
      if (!samples.empty()) processes = QueryGpuProcesses();
      lock.lock();
      if (sequence_ == 0 && !reported_) {
        reported_ = true;
        if (samples.empty()) {
          spdlog::warn("GPU telemetry: nvidia-smi gave no reading; trying again every {} s", interval_);
        } else {
          spdlog::info("GPU telemetry: {} GPU(s) every {} s", samples.size(), interval_);
        }
      }
      if (!samples.empty()) {
        latest_.gpus.clear();
        for (const GpuSample& g : samples) latest_.gpus[g.index] = g;
        latest_.processes = std::move(processes);
        ++sequence_;
      }
      wake_.wait_for(lock, std::chrono::milliseconds(static_cast<int64_t>(interval_ * 1000)),
                     [this] { return stop_; });
    }
  }

  const double interval_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;                   // GUARDED_BY(mu_)
  int64_t sequence_ = 0;                // GUARDED_BY(mu_)
  bool reported_ = false;               // GUARDED_BY(mu_): the first sample was logged
  GpuReading latest_;                   // GUARDED_BY(mu_)
  std::thread thread_;
};

class Worker {
 public:
  explicit Worker(const WorkerOptions& options) : options_(options) {
    options_.workdir = fs::absolute(options_.workdir).string();
    grpc::ChannelArguments args;
    // Reconnect quickly after sweepd restarts (gRPC's default backoff grows to minutes). Not
    // GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: gRPC takes it as the connect timeout (grpc/grpc#12830),
    // and at 200 ms a loaded machine's connects to a freshly restarted sweepd were cut off
    // ("tcp handshaker shutdown") for seconds, long enough for leases to run out: tests/chaos.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    args.SetMaxReceiveMessageSize(64 << 20);
    channel_ = grpc::CreateCustomChannel(options_.orchestrator, Credentials(), args);
    stub_ = v1::Orchestrator::NewStub(channel_);
    options_.trials_per_gpu = std::max(options_.trials_per_gpu, 1);
    if (!options_.gpus.empty() && options_.gpu_telemetry_seconds > 0 &&
        !bp::search_path("nvidia-smi").empty()) {
      telemetry_ = std::make_unique<GpuTelemetry>(options_.gpu_telemetry_seconds);
    }
  }

  int Run(const std::atomic<bool>& stop, const std::atomic<bool>& hard_stop) {
    while (!stop.load() && !Register()) Pause(std::chrono::seconds(1));
    Steady::time_point last_flush = Steady::now(), last_heartbeat = Steady::now();
    Steady::time_point last_lease = Steady::now() - std::chrono::hours(1);
    bool shutting_down = false;
    Steady::time_point shutdown_deadline;
    while (true) {
      if (hard_stop.load()) {
        for (auto& t : trials_) Kill(*t, SIGKILL);
        spdlog::warn("second signal: trials killed without a checkpoint");
        return 130;
      }
      if (stop.load() && !shutting_down) {
        shutting_down = true;
        shutdown_deadline = Steady::now() + std::chrono::milliseconds(static_cast<int64_t>(
                                                (options_.stop_grace_seconds + 30) * 1000));
        for (auto& t : trials_) RequestStop(*t, Stop::kShutdown, "worker shutting down");
      }
      bool finished_one = false;
      for (auto& t : trials_) Supervise(*t);
      AttachTelemetry();
      if (SecondsSince(last_flush) >= options_.flush_seconds) {
        for (auto& t : trials_) Flush(*t);
        last_flush = Steady::now();
      }
      for (auto it = trials_.begin(); it != trials_.end();) {
        if ((*it)->drained && Finish(**it)) {
          it = trials_.erase(it);
          finished_one = true;
        } else {
          ++it;
        }
      }
      if (SecondsSince(last_heartbeat) >= options_.heartbeat_seconds) {
        Heartbeat();
        last_heartbeat = Steady::now();
      }
      if (shutting_down) {
        if (trials_.empty()) return 0;
        if (Steady::now() > shutdown_deadline) {
          spdlog::error("shutdown: {} trial(s) could not be handed back in time; sweepd requeues "
                        "them when their leases expire",
                        trials_.size());
          for (auto& t : trials_) Kill(*t, SIGKILL);
          return 1;
        }
      } else if (FreeCpuSlots() > 0 || FreeGpuCount() > 0) {
        // Long-poll only when nothing runs (no child to watch meanwhile); otherwise poll at once
        // after a trial ended (the slot's idle gap) and every second.
        if (trials_.empty()) {
          Lease(500);
          last_lease = Steady::now();
          continue;
        }
        if (finished_one || SecondsSince(last_lease) >= 1.0) {
          Lease(0);
          last_lease = Steady::now();
        }
      }
      Pause(std::chrono::milliseconds(20));
    }
  }

 private:
  std::shared_ptr<grpc::ChannelCredentials> Credentials() const {
    if (options_.tls_ca_pem.empty()) return grpc::InsecureChannelCredentials();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options_.tls_ca_pem;
    return grpc::SslCredentials(ssl);
  }

  std::unique_ptr<grpc::ClientContext> Ctx(int timeout_ms = 10000) const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!options_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.token);
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
    return ctx;
  }

  // Waits `wait`. While the channel to sweepd is not connected it waits on the channel: gRPC
  // completes a reconnection only while something polls the channel, else its backup poller
  // notices up to 5 s later (calls fail at once meanwhile), and a lease may be shorter than
  // that: after a 0.5 s sweepd outage the workers were back only after 5 s (tests/chaos).
  void Pause(std::chrono::milliseconds wait) {
    const auto until = std::chrono::system_clock::now() + wait;
    if (channel_->GetState(/*try_to_connect=*/false) != GRPC_CHANNEL_READY) {
      channel_->WaitForConnected(until);
    }
    std::this_thread::sleep_until(until);
  }

  // While sweepd is unreachable, calls back off (0.25 s doubling to 5 s) instead of spinning,
  // but never longer than the heartbeat interval: a restarted sweepd holds the leases for one
  // lease TTL, which the heartbeat interval is chosen well within (and a 5 s wait outlived the
  // 3 s leases of tests/chaos).
  bool Reachable() const { return Steady::now() >= retry_at_; }
  void Failed(const grpc::Status& s, const char* what) {
    if (!Unreachable(s)) {
      spdlog::warn("{}: {}", what, s.error_message());
      return;
    }
    if (backoff_ == 0) spdlog::warn("sweepd unreachable ({}: {}); training goes on", what, s.error_message());
    backoff_ = std::min({std::max(backoff_ * 2, 0.25), 5.0, options_.heartbeat_seconds});
    retry_at_ = Steady::now() + std::chrono::milliseconds(static_cast<int64_t>(backoff_ * 1000));
  }
  void Succeeded() {
    if (backoff_ != 0) spdlog::info("sweepd reachable again");
    backoff_ = 0;
  }

  bool Register() {
    v1::RegisterWorkerRequest req;
    req.set_name(options_.name);
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    req.set_host(host);
    req.set_gpus(static_cast<int>(options_.gpus.size()));
    req.set_cpu_slots(options_.cpu_slots);
    (*req.mutable_labels())["workdir"] = options_.workdir;
    if (!options_.gpus.empty()) {
      (*req.mutable_labels())["gpu_indices"] = JoinGpus(options_.gpus);
      (*req.mutable_labels())["trials_per_gpu"] = std::to_string(options_.trials_per_gpu);
    }
    v1::RegisterWorkerResponse resp;
    grpc::Status s = stub_->RegisterWorker(Ctx().get(), req, &resp);
    if (!s.ok()) {
      spdlog::warn("register with {}: {}", options_.orchestrator, s.error_message());
      return false;
    }
    worker_id_ = resp.worker_id();
    spdlog::info("registered as {} (id {}): {} GPU(s) [{}] x {} trial(s) each, {} CPU slot(s), "
                 "workdir {}{}",
                 options_.name, worker_id_, options_.gpus.size(), JoinGpus(options_.gpus),
                 options_.trials_per_gpu, options_.cpu_slots, options_.workdir,
                 telemetry_ ? ", GPU telemetry from nvidia-smi" : "");
    for (const v1::Lease& held : resp.held()) Reconcile(held);
    return true;
  }

  std::string DirFor(const v1::Lease& lease) const {
    return (fs::path(options_.workdir) / lease.sweep_name() / std::to_string(lease.trial_id()) /
            ("attempt-" + std::to_string(lease.attempt())))
        .string();
  }

  // A trial sweepd says this worker holds, found at registration. If it is one of ours (a
  // re-registration), nothing to do. Otherwise the worker restarted: a child that survived is
  // stopped (SIGTERM: it checkpoints), then the attempt's metrics.jsonl is replayed (rows and
  // checkpoints) and the trial released, all through the normal path.
  void Reconcile(const v1::Lease& lease) {
    for (const auto& t : trials_) {
      if (t->lease.trial_id() == lease.trial_id() && t->lease.attempt() == lease.attempt()) return;
    }
    auto t = std::make_unique<Trial>();
    t->lease = lease;
    t->dir = DirFor(lease);
    t->builtin = lease.command().empty();
    t->exited = true;
    t->stop = Stop::kRestart;
    t->stop_reason = "worker restarted";
    std::ifstream in(t->dir + "/attempt.json");
    nlohmann::json info = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    // Every rank's (pid, start time); attempt.json from before ranks names only the one pid.
    std::vector<std::pair<pid_t, int64_t>> processes;
    if (info.is_object() && info.contains("ranks") && info["ranks"].is_array()) {
      for (const nlohmann::json& r : info["ranks"]) {
        if (r.is_object() && r.contains("pid") && r.contains("pid_start_time") &&
            r["pid"].is_number_integer() && r["pid_start_time"].is_number_integer()) {
          processes.emplace_back(r["pid"].get<pid_t>(), r["pid_start_time"].get<int64_t>());
        }
      }
    } else if (info.is_object() && info.contains("pid") && info.contains("pid_start_time") &&
               info["pid"].is_number_integer() && info["pid_start_time"].is_number_integer()) {
      processes.emplace_back(info["pid"].get<pid_t>(), info["pid_start_time"].get<int64_t>());
    }
    auto survivors = [&] {
      std::vector<pid_t> alive;
      for (const auto& [pid, start] : processes) {
        if (pid > 0 && ProcessStartTime(pid) == start) alive.push_back(pid);
      }
      return alive;
    };
    if (std::vector<pid_t> alive = survivors(); !alive.empty()) {
      spdlog::warn("trial {} attempt {}: {} of its processes survived the worker; stopping them",
                   lease.trial_id(), lease.attempt(), alive.size());
      for (pid_t pid : alive) ::kill(-pid, SIGTERM);
      const Steady::time_point begin = Steady::now();
      while (!survivors().empty() && SecondsSince(begin) < options_.stop_grace_seconds) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      for (pid_t pid : survivors()) ::kill(-pid, SIGKILL);
      t->stop_reason = "worker restarted; its surviving process was stopped";
    }
    t->metrics = std::make_unique<MetricsFile>(t->dir + "/metrics.jsonl");
    spdlog::info("trial {} attempt {}: held from before a restart; delivering what {} holds and "
                 "handing it back",
                 lease.trial_id(), lease.attempt(), t->dir);
    trials_.push_back(std::move(t));
  }

  int FreeCpuSlots() const {
    int used = 0;
    for (const auto& t : trials_) used += t->live() ? t->cpu_slots : 0;
    return options_.cpu_slots - used;
  }

  // Per GPU (options_.gpus order), how many more trials it takes: --trials-per-gpu minus the
  // live trials on it.
  std::vector<int> FreeGpuShares() const {
    std::vector<int> shares;
    for (int gpu : options_.gpus) {
      int used = 0;
      for (const auto& t : trials_) {
        if (t->live() && std::find(t->gpus.begin(), t->gpus.end(), gpu) != t->gpus.end()) ++used;
      }
      shares.push_back(std::max(options_.trials_per_gpu - used, 0));
    }
    return shares;
  }

  // GPUs with room for one more trial.
  int FreeGpuCount() const {
    const std::vector<int> shares = FreeGpuShares();
    return static_cast<int>(std::count_if(shares.begin(), shares.end(), [](int s) { return s > 0; }));
  }

  void Lease(int wait_ms) {
    if (!Reachable()) {
      Pause(std::chrono::milliseconds(std::min(wait_ms, 200)));
      return;
    }
    const std::vector<int> shares = FreeGpuShares();
    int free_gpus = 0, free_shares = 0;
    for (int share : shares) {
      free_gpus += share > 0 ? 1 : 0;
      free_shares += share;
    }
    const int free_cpu = FreeCpuSlots();
    v1::LeaseTrialsRequest req;
    req.set_worker_id(worker_id_);
    req.set_free_gpus(free_gpus);  // What an older sweepd reads: one trial per free GPU.
    for (int share : shares) req.add_free_gpu_shares(share);
    req.set_free_cpu_slots(free_cpu);
    req.set_max_trials(free_shares + free_cpu);
    req.set_wait_ms(wait_ms);
    v1::LeaseTrialsResponse resp;
    grpc::Status s = stub_->LeaseTrials(Ctx(wait_ms + 10000).get(), req, &resp);
    if (!s.ok()) {
      if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
        Register();  // sweepd lost us (a new database)
      } else {
        Failed(s, "lease");
        if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
          std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));  // quarantined
        }
      }
      return;
    }
    Succeeded();
    for (const v1::Lease& lease : resp.leases()) Start(lease);
  }

  void Start(const v1::Lease& lease) {
    auto t = std::make_unique<Trial>();
    t->lease = lease;
    t->dir = DirFor(lease);
    t->builtin = lease.command().empty();
    t->cpu_slots = lease.cpu_slots();
    t->world_size = std::max(lease.ranks(), 1);
    if (lease.gpus() > 0) {
      // The trials of one reply fit together (sweepd places them by PickGpus' rule), and each
      // one started counts against the shares of the next.
      const std::vector<size_t> picked = PickGpus(FreeGpuShares(), lease.gpus());
      if (picked.empty()) {
        t->start_error = absl::StrCat("worker has ", FreeGpuCount(), " GPU(s) with room for another trial, lease needs ",
                                      lease.gpus());
      }
      for (size_t i : picked) t->gpus.push_back(options_.gpus[i]);
    }
    std::error_code ec;
    fs::create_directories(t->dir, ec);
    if (ec && t->start_error.empty()) {
      t->start_error = absl::StrCat("cannot create trial directory ", t->dir, ": ", ec.message());
    }
    if (t->start_error.empty()) Spawn(*t);
    if (!t->start_error.empty()) {
      spdlog::error("trial {} attempt {}: {}", lease.trial_id(), lease.attempt(), t->start_error);
      t->exited = true;
      t->drained = true;
    } else {
      v1::TrialAttempt start;
      start.set_trial_id(lease.trial_id());
      start.set_attempt(lease.attempt());
      v1::Ack ack;
      grpc::Status s = stub_->StartTrial(Ctx().get(), start, &ack);
      if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
        LeaseLost(*t, s.error_message());
      } else if (!s.ok()) {
        Failed(s, "start trial");  // It stays 'leased' in sweepd; heartbeats keep the lease.
      }
    }
    trials_.push_back(std::move(t));
  }

  // The checkpoint to resume from, as this machine sees it. The previous attempt's trainer may
  // have pruned the reported checkpoint (checkpoint.keep) after writing newer ones it did not
  // live to report: its `checkpoints` folder resumes from the newest complete one, never older
  // than the reported one. Without a shared filesystem the folder may not exist here: the
  // trial then starts over (same seed, so the rows it re-sends are the stored ones).
  std::string ResumeFrom(const v1::Lease& lease) const {
    if (lease.resume_checkpoint().empty()) return "";
    const fs::path reported(lease.resume_checkpoint());
    const fs::path folder = reported.parent_path();
    if (folder.filename() == "checkpoints" && fs::is_directory(folder)) return folder.string();
    if (fs::exists(reported)) return reported.string();
    spdlog::warn("trial {}: checkpoint {} is not visible on this worker (no shared filesystem?); "
                 "starting from step 0",
                 lease.trial_id(), reported.string());
    return "";
  }

  void Spawn(Trial& t) {
    const v1::Lease& lease = t.lease;
    const std::string config = t.dir + "/config.yaml";
    const std::string threads = std::to_string(options_.threads_per_trial);
    const std::string resume = ResumeFrom(lease);
    std::string program;
    std::vector<std::string> args;
    try {
      if (t.builtin) {
        if (absl::Status s = WriteWholeFile(config, lease.config_yaml()); !s.ok()) {
          t.start_error = std::string(s.message());
          return;
        }
        program = options_.sweep_train;
        args = {"--config", config, "--dump-dir", t.dir, "threads=" + threads};
        if (!t.gpus.empty()) args.push_back("device=cuda");
        if (!resume.empty()) {
          args.push_back("--resume");
          args.push_back(resume);
        }
      } else {
        // Lingua's layout, with dump_dir pointing at the trial directory.
        YAML::Node node = YAML::Load(lease.config_yaml());
        node["dump_dir"] = t.dir;
        YAML::Emitter out;
        out << node;
        if (absl::Status s = WriteWholeFile(config, std::string(out.c_str()) + "\n"); !s.ok()) {
          t.start_error = std::string(s.message());
          return;
        }
        const std::map<std::string, std::string> vars = {
            {"config", config},
            {"trial_dir", t.dir},
            {"params", lease.params_json().empty() ? "{}" : lease.params_json()},
            {"gpus", JoinGpus(t.gpus)},
            {"threads", threads},
            {"resume", resume},
            {"trial_id", std::to_string(lease.trial_id())},
            {"attempt", std::to_string(lease.attempt())},
            {"sweep", lease.sweep_name()},
        };
        absl::StatusOr<std::vector<std::string>> command =
            ExpandCommand({lease.command().begin(), lease.command().end()}, vars);
        if (!command.ok()) {
          t.start_error = std::string(command.status().message());
          return;
        }
        program = (*command)[0];
        args.assign(command->begin() + 1, command->end());
        if (program.find('/') == std::string::npos) {
          const auto found = bp::search_path(program);  // a Boost or std path, by Boost version
          if (found.empty()) {
            t.start_error = absl::StrCat("trainer.command: ", program, ": not found on PATH");
            return;
          }
          program = found.string();
        }
      }
    } catch (const std::exception& e) {
      t.start_error = absl::StrCat("cannot start ", program.empty() ? "the trainer" : program, ": ", e.what());
      return;
    }
    SpawnRanks(t, program, args, threads);
    if (!t.start_error.empty()) return;
    t.spawned_at = UnixNow();
    t.metrics = std::make_unique<MetricsFile>(t.dir + "/metrics.jsonl");  // Rank 0 writes it.
    nlohmann::json argv = nlohmann::json::array({program});
    for (const std::string& a : args) argv.push_back(a);
    nlohmann::json ranks = nlohmann::json::array();
    for (const Rank& r : t.ranks) {
      ranks.push_back({{"rank", r.rank},
                       {"pid", r.pid},
                       {"pid_start_time", ProcessStartTime(r.pid)},
                       {"stdout", RankLog(r.rank, "stdout")},
                       {"stderr", RankLog(r.rank, "stderr")}});
    }
    t.info = {{"trial_id", lease.trial_id()},
              {"attempt", lease.attempt()},
              {"sweep", lease.sweep_name()},
              {"worker", options_.name},
              {"pid", t.pid()},  // Rank 0's; every rank's is under "ranks".
              {"pid_start_time", ranks[0]["pid_start_time"]},
              {"world_size", t.world_size},
              {"ranks", ranks},
              {"gpus", t.gpus},
              {"argv", argv},
              {"spawned_at", t.spawned_at}};
    WriteAttemptInfo(t);
    spdlog::info("trial {} attempt {} ({}) started: pid {}{}{}, {}", lease.trial_id(),
                 lease.attempt(), lease.trial_key(), t.pid(),
                 t.world_size > 1 ? absl::StrCat(" and ", t.world_size - 1, " more rank(s)") : "",
                 t.gpus.empty() ? "" : ", GPUs " + JoinGpus(t.gpus),
                 resume.empty() ? "from scratch" : "resuming from " + resume);
  }

  // Starts the trial's processes: one, or one per rank with torchrun's environment (WORLD_SIZE,
  // RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and SWEEP_RENDEZVOUS, the
  // c10d FileStore file of this attempt (removed first: a store left by an earlier start would
  // hold its keys). Every rank gets the same argv, all of the trial's GPUs and
  // threads_per_trial threads; rank r > 0 writes rank<r>.stdout.log and rank<r>.stderr.log.
  // If a rank cannot be started, those already started are killed and reaped.
  void SpawnRanks(Trial& t, const std::string& program, const std::vector<std::string>& args,
                  const std::string& threads) {
    const v1::Lease& lease = t.lease;
    const std::string rendezvous = t.dir + "/rendezvous";
    std::error_code ec;
    fs::remove(rendezvous, ec);
    const int master_port = t.world_size > 1 ? FreeLoopbackPort() : 0;
    for (int r = 0; r < t.world_size; ++r) {
      Rank rank;
      rank.rank = r;
      try {
        auto env = boost::this_process::environment();
        env["CUDA_VISIBLE_DEVICES"] = JoinGpus(t.gpus);  // Empty: a CPU trial sees no GPU.
        env["OMP_NUM_THREADS"] = threads;
        env["MKL_NUM_THREADS"] = threads;
        env["SWEEP_TRIAL_ID"] = std::to_string(lease.trial_id());
        env["SWEEP_ATTEMPT"] = std::to_string(lease.attempt());
        env["SWEEP_TRIAL_DIR"] = t.dir;
        if (t.world_size > 1) {
          env["WORLD_SIZE"] = std::to_string(t.world_size);
          env["RANK"] = std::to_string(r);
          env["LOCAL_RANK"] = std::to_string(r);
          env["LOCAL_WORLD_SIZE"] = std::to_string(t.world_size);
          env["SWEEP_RENDEZVOUS"] = rendezvous;
          env["MASTER_ADDR"] = "127.0.0.1";
          env["MASTER_PORT"] = std::to_string(master_port);
        } else {
          // A one-process trial is not distributed, whatever the worker's own environment
          // (started by torchrun or Slurm) says.
          for (const char* name : {"WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                   "SWEEP_RENDEZVOUS", "MASTER_ADDR", "MASTER_PORT"}) {
            if (env.find(name) != env.end()) env.erase(name);
          }
        }
        rank.child = std::make_unique<bp::child>(
            program, bp::args(args), bp::std_out > (t.dir + "/" + RankLog(r, "stdout")),
            bp::std_err > (t.dir + "/" + RankLog(r, "stderr")), bp::std_in < bp::null,
            bp::start_dir(t.dir), env, SupervisedChild{});
        rank.pid = rank.child->id();
      } catch (const std::exception& e) {
        t.start_error = absl::StrCat("cannot start ", program,
                                     t.world_size > 1 ? absl::StrCat(" (rank ", r, ")") : "",
                                     ": ", e.what());
        for (Rank& started : t.ranks) {
          ::kill(-started.pid, SIGKILL);
          std::error_code wait_ec;
          started.child->wait(wait_ec);
          started.exited = true;
        }
        return;
      }
      t.ranks.push_back(std::move(rank));
    }
  }

  // attempt.json: who ran the attempt and how it ended (read after a restart and by tools).
  void WriteAttemptInfo(const Trial& t) {
    if (t.info.is_null()) return;
    const std::string tmp = t.dir + "/attempt.json.tmp";
    std::ofstream(tmp) << t.info.dump(2) << "\n";
    std::error_code ec;
    fs::rename(tmp, t.dir + "/attempt.json", ec);
  }

  // Signals the process group of every rank still running.
  void Kill(Trial& t, int sig) {
    for (Rank& r : t.ranks) {
      if (r.live() && r.pid > 0) ::kill(-r.pid, sig);
    }
  }

  void RequestStop(Trial& t, Stop why, const std::string& reason) {
    if (t.stop == Stop::kLeaseLost || t.stop == Stop::kRestart) return;
    if (t.stop != Stop::kNone && why != Stop::kLeaseLost) return;
    t.stop = why;
    t.stop_reason = reason;
    t.stop_at = Steady::now();
    if (t.live()) {
      spdlog::info("trial {} attempt {}: stopping ({})", t.lease.trial_id(), t.lease.attempt(), reason);
      Kill(t, SIGTERM);
    }
  }

  void LeaseLost(Trial& t, const std::string& why) {
    if (t.stop == Stop::kLeaseLost) return;
    spdlog::warn("trial {} attempt {}: lease lost ({}); stopping it without reporting",
                 t.lease.trial_id(), t.lease.attempt(), why);
    RequestStop(t, Stop::kLeaseLost, why);
    t.pending.clear();
  }

  // Reaps exited ranks, takes the trial down when one fails, escalates a stop past its grace
  // period, reads new metric lines.
  void Supervise(Trial& t) {
    if (t.live()) {
      for (Rank& r : t.ranks) {
        std::error_code ec;
        if (!r.live() || r.child->running(ec)) continue;
        const int status = r.child->native_exit_code();
        r.exited = true;
        r.exited_at = UnixNow();
        if (WIFSIGNALED(status)) {
          r.exit_signal = WTERMSIG(status);
          r.exit_code = 128 + r.exit_signal;
        } else {
          r.exit_code = WEXITSTATUS(status);
        }
        if (!t.info.is_null() && t.info["ranks"].size() > static_cast<size_t>(r.rank)) {
          nlohmann::json& rank_info = t.info["ranks"][r.rank];
          rank_info["exited_at"] = r.exited_at;
          rank_info["exit_code"] = r.exit_code;
          if (r.exit_signal) rank_info["exit_signal"] = r.exit_signal;
        }
        if (r.failed() && t.failed_rank < 0) {
          // The first rank to fail decides the trial's exit. The others would wait in their
          // next collective: stop them now (SIGTERM: rank 0 may still checkpoint).
          t.failed_rank = r.rank;
          if (t.live()) {
            if (t.stop == Stop::kNone) {
              spdlog::warn("trial {} attempt {}: rank {} {}; stopping the other rank(s)",
                           t.lease.trial_id(), t.lease.attempt(), r.rank,
                           r.exit_signal ? absl::StrCat("was killed by signal ", r.exit_signal)
                                         : absl::StrCat("exited with status ", r.exit_code));
              t.stop_at = Steady::now();
              Kill(t, SIGTERM);
            }
          }
        }
      }
      if (!t.live()) {
        const Rank& decisive = t.ranks[t.failed_rank >= 0 ? t.failed_rank : 0];
        t.exited = true;
        t.exited_at = UnixNow();
        t.exit_code = decisive.exit_code;
        t.exit_signal = decisive.exit_signal;
        if (!t.info.is_null()) {
          t.info["exited_at"] = t.exited_at;
          t.info["exit_code"] = t.exit_code;
          if (t.exit_signal) t.info["exit_signal"] = t.exit_signal;
          if (t.world_size > 1 && t.failed_rank >= 0) t.info["failed_rank"] = t.failed_rank;
          WriteAttemptInfo(t);
        }
      } else if ((t.stop != Stop::kNone || t.failed_rank >= 0) && !t.killed &&
                 SecondsSince(t.stop_at) > options_.stop_grace_seconds) {
        spdlog::warn("trial {}: no exit {} s after SIGTERM; SIGKILL", t.lease.trial_id(),
                     options_.stop_grace_seconds);
        Kill(t, SIGKILL);
        t.killed = true;
      }
    }
    if (!t.metrics) {
      t.drained = t.exited;
      return;
    }
    constexpr size_t kChunk = 4096;
    while (t.pending.size() < options_.max_buffered_rows) {
      const bool at_end = t.exited;
      std::vector<std::string> lines = t.metrics->ReadLines(kChunk, at_end);
      for (const std::string& line : lines) Parse(t, line);
      if (lines.size() < kChunk) {
        t.drained = at_end;
        break;
      }
    }
  }

  void Parse(Trial& t, const std::string& line) {
    std::optional<MetricsLine> parsed = ParseMetricsLine(line);
    if (!parsed || t.stop == Stop::kLeaseLost) return;
    if (!parsed->event.empty()) {
      if (parsed->event == "resumed") Backfill(t, parsed->checkpoint, parsed->step);
      const bool names_checkpoint = parsed->event == "checkpoint" ||
                                    parsed->event == "preempted" || parsed->event == "completed";
      if (names_checkpoint && !parsed->checkpoint.empty()) {
        Pending p;
        p.is_checkpoint = true;
        p.checkpoint = fs::absolute(fs::path(t.dir) / parsed->checkpoint).lexically_normal().string();
        p.step = parsed->step;
        t.pending.push_back(std::move(p));
      }
      if (parsed->event == "diverged") t.diverged_step = parsed->step;
      return;
    }
    t.step = std::max(t.step, parsed->step);
    const std::string& metric = t.lease.metric_name().empty() ? "loss/val" : t.lease.metric_name();
    const double now = UnixNow();
    for (const MetricRow& row : parsed->rows) {
      if (row.name == metric && row.step >= t.metric_step) {
        t.metric_step = row.step;
        t.final_metric = row.value;
        // NaN never competes: a diverged value is not a best value.
        if (std::isfinite(row.value) &&
            (!t.best_metric || (t.lease.minimize() ? row.value < *t.best_metric : row.value > *t.best_metric))) {
          t.best_metric = row.value;
        }
      }
      Queue(t, row, now);
    }
  }

  static void Queue(Trial& t, const MetricRow& row, double now) {
    Pending p;
    p.metric.set_name(row.name);
    p.metric.set_step(row.step);
    p.metric.set_value(row.value);
    p.metric.set_time(now);
    t.pending.push_back(std::move(p));
  }

  // GPU telemetry: on each new nvidia-smi sample, every running GPU trial that reached a step
  // beyond the one its last telemetry went to gets, at its latest step:
  //   gpu/mem_used_mib  memory in use on its GPUs (summed over them; with several trials on a
  //                     GPU, the whole GPU's figure, shared by them)
  //   gpu/util_pct      utilisation, the mean over its GPUs (likewise the whole GPU's)
  //   gpu/trial_mem_mib the memory held by the trial's own processes (every process in the
  //                     process group of one of its ranks), when nvidia-smi lists any of them
  // through the same queue as the trainer's rows. One row per name and step: sweepd keeps the
  // first row of a (trial, name, step), so a second sample at the same step is not sent.
  void AttachTelemetry() {
    if (!telemetry_) return;
    auto [sequence, reading] = telemetry_->Latest();
    if (sequence == telemetry_sequence_) return;
    telemetry_sequence_ = sequence;
    const double now = UnixNow();
    // Each GPU process's group: a trial's ranks lead their own (SupervisedChild), so anything
    // they start (a launcher's workers, data loaders) counts as theirs.
    std::map<pid_t, double> memory_by_group;
    for (const GpuProcess& p : reading.processes) {
      const pid_t group = ::getpgid(p.pid);
      if (group > 0) memory_by_group[group] += p.memory_used_mib;
    }
    for (auto& t : trials_) {
      if (!t->live() || t->gpus.empty() || t->stop == Stop::kLeaseLost ||
          t->step <= t->telemetry_step) {
        continue;
      }
      double memory = 0, utilization = 0;
      size_t seen = 0;
      for (int gpu : t->gpus) {
        auto it = reading.gpus.find(gpu);
        if (it == reading.gpus.end()) continue;
        memory += it->second.memory_used_mib;
        utilization += it->second.utilization_pct;
        ++seen;
      }
      if (seen == 0) continue;
      t->telemetry_step = t->step;
      Queue(*t, {"gpu/mem_used_mib", t->step, memory}, now);
      Queue(*t, {"gpu/util_pct", t->step, utilization / static_cast<double>(seen)}, now);
      double own = 0;
      bool listed = false;
      for (const Rank& r : t->ranks) {
        auto it = memory_by_group.find(r.pid);
        if (it == memory_by_group.end()) continue;
        own += it->second;
        listed = true;
      }
      if (listed) Queue(*t, {"gpu/trial_mem_mib", t->step, own}, now);
    }
  }

  // The trainer resumed at `step` from `checkpoint`, in an earlier attempt's folder. That
  // checkpoint can be newer than the one sweepd recorded (the earlier worker died between
  // writing it and reporting it), and the rows before it may never have been delivered: send
  // the earlier attempt's rows up to `step` again under this attempt, so the stored trace has
  // no hole. Rows already stored are ignored by the store's key.
  void Backfill(Trial& t, const std::string& checkpoint, int64_t step) {
    const fs::path folder = fs::path(checkpoint).parent_path();
    if (folder.filename() != "checkpoints") return;
    MetricsFile previous((folder.parent_path() / "metrics.jsonl").string());
    const double now = UnixNow();
    size_t rows = 0;
    for (;;) {
      std::vector<std::string> lines = previous.ReadLines(4096, /*at_end=*/true);
      if (lines.empty()) break;
      for (const std::string& line : lines) {
        std::optional<MetricsLine> parsed = ParseMetricsLine(line);
        if (!parsed || !parsed->event.empty() || parsed->step > step) continue;
        for (const MetricRow& row : parsed->rows) Queue(t, row, now);
        rows += parsed->rows.size();
      }
    }
    spdlog::info("trial {} attempt {}: resumed at step {}; re-sending {} rows up to it from {}",
                 t.lease.trial_id(), t.lease.attempt(), step, rows, previous.path());
  }

  // Delivers the trial's pending rows and checkpoints in order. Returns true when none is left.
  bool Flush(Trial& t) {
    constexpr size_t kBatchRows = 5000;
    while (!t.pending.empty() && t.stop != Stop::kLeaseLost) {
      if (!Reachable()) return false;
      if (t.pending.front().is_checkpoint) {
        const Pending& p = t.pending.front();
        v1::ReportCheckpointRequest req;
        req.set_trial_id(t.lease.trial_id());
        req.set_attempt(t.lease.attempt());
        req.set_path(p.checkpoint);
        req.set_step(p.step);
        v1::Ack ack;
        grpc::Status s = stub_->ReportCheckpoint(Ctx().get(), req, &ack);
        if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
          LeaseLost(t, s.error_message());
          break;
        }
        if (!s.ok()) {
          Failed(s, "report checkpoint");
          return false;
        }
        Succeeded();
        t.checkpoint = p.checkpoint;
        t.pending.pop_front();
        continue;
      }
      v1::MetricsBatch batch;
      batch.set_trial_id(t.lease.trial_id());
      batch.set_attempt(t.lease.attempt());
      size_t n = 0;
      while (n < t.pending.size() && n < kBatchRows && !t.pending[n].is_checkpoint) {
        *batch.add_metrics() = t.pending[n].metric;
        ++n;
      }
      v1::StreamMetricsResponse resp;
      auto ctx = Ctx();
      auto writer = stub_->StreamMetrics(ctx.get(), &resp);
      writer->Write(batch);
      writer->WritesDone();
      grpc::Status s = writer->Finish();
      if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
        LeaseLost(t, s.error_message());
        break;
      }
      if (!s.ok()) {
        Failed(s, "stream metrics");
        return false;  // Kept; retried with the next flush.
      }
      Succeeded();
      t.pending.erase(t.pending.begin(), t.pending.begin() + static_cast<std::ptrdiff_t>(n));
    }
    return t.pending.empty();
  }

  // The child exited and its metrics were read: deliver them, then the outcome. Returns true
  // when the trial is done with (reported, refused by the fence, or its lease was lost).
  bool Finish(Trial& t) {
    if (t.stop == Stop::kLeaseLost) return true;
    if (!Flush(t)) return false;
    if (t.stop == Stop::kLeaseLost) return true;
    // A rate-limited reader may have stopped short of the end: read the rest first.
    if (t.metrics) {
      t.drained = false;
      Supervise(t);
      if (!t.pending.empty() || !t.drained) return false;
    }
    if (!Reachable()) return false;
    v1::CompleteTrialRequest req;
    req.set_trial_id(t.lease.trial_id());
    req.set_attempt(t.lease.attempt());
    std::string error;
    req.set_outcome(Outcome(t, &error));
    req.set_error(error);
    req.set_last_step(t.step);
    if (t.final_metric && std::isfinite(*t.final_metric)) {
      req.set_has_final_metric(true);
      req.set_final_metric(*t.final_metric);
    }
    if (t.best_metric) {
      req.set_has_best_metric(true);
      req.set_best_metric(*t.best_metric);
    }
    req.set_diverged_step(t.diverged_step);
    req.set_checkpoint(t.checkpoint);
    req.set_exit_code(t.exit_code);
    v1::Ack ack;
    grpc::Status s = stub_->CompleteTrial(Ctx().get(), req, &ack);
    if (!s.ok() && s.error_code() != grpc::StatusCode::FAILED_PRECONDITION &&
        s.error_code() != grpc::StatusCode::NOT_FOUND) {
      Failed(s, "complete trial");
      return false;
    }
    if (s.ok()) Succeeded();
    spdlog::info("trial {} attempt {}: {} (exit {}, step {}{}){}", t.lease.trial_id(),
                 t.lease.attempt(), v1::CompleteTrialRequest::Outcome_Name(req.outcome()),
                 t.exit_code, t.step,
                 req.has_final_metric() ? absl::StrCat(", ", MetricName(t), " ", req.final_metric()) : "",
                 s.ok() ? "" : " [not recorded: " + s.error_message() + "]");
    if (!t.info.is_null()) {
      t.info["outcome"] = v1::CompleteTrialRequest::Outcome_Name(req.outcome());
      WriteAttemptInfo(t);
    }
    return true;
  }

  static std::string MetricName(const Trial& t) {
    return t.lease.metric_name().empty() ? "loss/val" : t.lease.metric_name();
  }

  v1::CompleteTrialRequest::Outcome Outcome(const Trial& t, std::string* error) const {
    using O = v1::CompleteTrialRequest;
    if (!t.start_error.empty()) {
      *error = t.start_error;
      return O::FAILED;
    }
    if (t.stop == Stop::kRestart) {
      *error = t.stop_reason;
      return O::RELEASED;
    }
    if (t.exit_code == trainer::kExitCompleted && t.exit_signal == 0 &&
        (t.builtin || t.stop == Stop::kNone)) {
      return O::COMPLETED;
    }
    if (t.builtin && t.exit_code == trainer::kExitDiverged) return O::DIVERGED;
    if (t.stop == Stop::kShutdown) {
      *error = t.stop_reason;
      return O::RELEASED;
    }
    if (t.stop == Stop::kRequested) {
      *error = t.stop_reason;
      return O::STOPPED;
    }
    if (t.builtin && t.exit_code == trainer::kExitPreempted) {
      *error = "sweep-train was preempted (a stop signal from outside the worker)";
      return O::RELEASED;
    }
    // A data-parallel trial names the rank that failed first, with its own stderr.
    const int rank = std::max(t.failed_rank, 0);
    *error = (t.world_size > 1 ? absl::StrCat("rank ", rank, " of ", t.world_size, " ") : "") +
             (t.exit_signal ? absl::StrCat("killed by signal ", t.exit_signal)
                            : absl::StrCat("exited with status ", t.exit_code)) +
             "; stderr: " + Tail(t.dir + "/" + RankLog(rank, "stderr"), 2000);
    return O::FAILED;
  }

  void Heartbeat() {
    if (!Reachable()) return;
    v1::HeartbeatRequest req;
    req.set_worker_id(worker_id_);
    for (const auto& t : trials_) {
      if (t->stop == Stop::kLeaseLost) continue;
      auto* p = req.add_trials();
      p->set_trial_id(t->lease.trial_id());
      p->set_attempt(t->lease.attempt());
      p->set_step(t->step);
    }
    v1::HeartbeatResponse resp;
    grpc::Status s = stub_->Heartbeat(Ctx().get(), req, &resp);
    if (!s.ok()) {
      if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
        Register();
      } else {
        Failed(s, "heartbeat");
      }
      return;
    }
    Succeeded();
    for (const auto& stop : resp.stop()) {
      for (auto& t : trials_) {
        if (t->lease.trial_id() != stop.trial_id() || t->lease.attempt() != stop.attempt()) continue;
        if (stop.reason().rfind("lease lost", 0) == 0 || stop.reason() == "unknown trial") {
          LeaseLost(*t, stop.reason());
        } else {
          RequestStop(*t, Stop::kRequested, stop.reason());
        }
      }
    }
  }

  WorkerOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Orchestrator::Stub> stub_;
  int64_t worker_id_ = 0;
  std::vector<std::unique_ptr<Trial>> trials_;
  std::unique_ptr<GpuTelemetry> telemetry_;  // Null without GPUs or nvidia-smi.
  int64_t telemetry_sequence_ = 0;           // The sample AttachTelemetry last used.
  Steady::time_point retry_at_;
  double backoff_ = 0;
};

}  // namespace

int RunWorker(const WorkerOptions& options, const std::atomic<bool>& stop,
              const std::atomic<bool>& hard_stop) {
  Worker worker(options);
  return worker.Run(stop, hard_stop);
}

}  // namespace sweep::worker
