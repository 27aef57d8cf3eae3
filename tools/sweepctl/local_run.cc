#include "tools/sweepctl/local_run.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "orchestrator/spec.h"
#include "tools/sweepctl/client.h"
#include "tools/sweepctl/sweep_view.h"
#include "worker/child_process.h"

namespace sweep::ctl {
namespace {
namespace fs = std::filesystem;
using Steady = std::chrono::steady_clock;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// 32 random bytes as hex, kept in <dir>/token (mode 0600) so a resumed run reuses it.
std::string RunToken(const std::string& path) {
  std::string token = ReadFile(path);
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
  if (!token.empty()) return token;
  std::ifstream random("/dev/urandom", std::ios::binary);
  unsigned char bytes[32];
  random.read(reinterpret_cast<char*>(bytes), sizeof(bytes));
  for (unsigned char b : bytes) absl::StrAppend(&token, absl::Hex(b, absl::kZeroPad2));
  const mode_t old = umask(077);
  std::ofstream(path) << token << "\n";
  umask(old);
  return token;
}

// A supervised child: sweepd or a worker. Stopping sends SIGTERM, then SIGKILL after `grace`.
class Child {
 public:
  Child(const std::string& name, const std::string& program, const std::vector<std::string>& args,
        const std::string& log)
      : name_(name),
        child_(program, bp::args(args), bp::std_out > log, bp::std_err > log, bp::std_in < bp::null,
               SupervisedChild{}) {}
  ~Child() { Stop(5); }

  bool running() {
    std::error_code ec;
    return child_.running(ec);
  }
  void Stop(double grace_seconds) {
    if (!running()) return;
    ::kill(child_.id(), SIGTERM);
    const Steady::time_point begin = Steady::now();
    while (running() && std::chrono::duration<double>(Steady::now() - begin).count() < grace_seconds) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (running()) {
      std::fprintf(stderr, "sweepctl: %s did not stop in %.0f s; killing it\n", name_.c_str(), grace_seconds);
      ::kill(-child_.id(), SIGKILL);
      std::error_code ec;
      child_.wait(ec);
    }
  }

 private:
  std::string name_;
  bp::child child_;
};

}  // namespace

int RunLocal(const RunOptions& options, const std::atomic<int>& interrupts) {
  // 1. The spec, checked before anything starts.
  absl::StatusOr<orchestrator::SweepSpec> spec = orchestrator::LoadSweepSpec(options.spec_path);
  if (spec.ok()) {
    if (absl::StatusOr<std::vector<orchestrator::TrialSpec>> trials = orchestrator::ExpandSweep(*spec);
        !trials.ok()) {
      spec = trials.status();
    }
  }
  if (!spec.ok()) {
    std::fprintf(stderr, "sweepctl: %s\n", std::string(spec.status().message()).c_str());
    return kExitUsage;
  }
  const std::string spec_text = ReadFile(options.spec_path);
  const bool gpu = spec->gpus_per_trial > 0;

  // 2. The run's folder.
  const std::string dir = options.dir.empty() ? "runs/" + spec->name : options.dir;
  const std::string db = options.db.empty() ? dir + "/sweep.db" : options.db;
  std::error_code ec;
  fs::create_directories(dir + "/logs", ec);
  if (ec) {
    std::fprintf(stderr, "sweepctl: cannot create %s: %s\n", dir.c_str(), ec.message().c_str());
    return kExitError;
  }
  const std::string token = RunToken(dir + "/token");
  const std::string port_file = dir + "/port";
  const std::string http_port_file = dir + "/http.port";
  fs::remove(port_file, ec);
  fs::remove(http_port_file, ec);
  for (const char* binary : {"sweepd", "sweep-worker", "sweep-train"}) {
    if (!fs::exists(fs::path(options.bin_dir) / binary)) {
      std::fprintf(stderr, "sweepctl: %s not found in %s (build it, or pass --bin-dir)\n", binary,
                   options.bin_dir.c_str());
      return kExitError;
    }
  }

  // 3. sweepd on a free loopback port, then the workers.
  std::vector<std::string> sweepd_args = {"--db", db, "--listen", "127.0.0.1:0", "--port-file", port_file,
                                          "--token-file", dir + "/token", "--lease-ttl", "30"};
  const bool dashboard = options.dashboard != "off" && !options.dashboard.empty();
  if (dashboard) {
    sweepd_args.insert(sweepd_args.end(), {"--http", options.dashboard, "--http-port-file", http_port_file});
  }
  auto sweepd = std::make_unique<Child>("sweepd", (fs::path(options.bin_dir) / "sweepd").string(), sweepd_args,
                                        dir + "/logs/sweepd.log");
  const Steady::time_point begin = Steady::now();
  while (ReadFile(port_file).empty() || (dashboard && ReadFile(http_port_file).empty())) {
    if (!sweepd->running() || Steady::now() - begin > std::chrono::seconds(30) || interrupts.load()) {
      std::fprintf(stderr, "sweepctl: sweepd did not start; see %s/logs/sweepd.log:\n%s", dir.c_str(),
                   ReadFile(dir + "/logs/sweepd.log").c_str());
      return kExitError;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const std::string address = "127.0.0.1:" + std::to_string(std::stoi(ReadFile(port_file)));
  Client client({address, token, ""});
  std::string dashboard_url;
  if (dashboard) {
    const std::string host = options.dashboard.substr(0, options.dashboard.rfind(':'));
    dashboard_url = absl::StrCat("http://", host == "0.0.0.0" ? "127.0.0.1" : host, ":",
                                 std::stoi(ReadFile(http_port_file)), "/?token=", token);
  }

  // 4. Submit (or attach), resume if paused.
  v1::SubmitSweepRequest submit;
  submit.set_spec_yaml(spec_text);
  submit.set_origin(options.spec_path);
  v1::SubmitSweepResponse submitted;
  if (grpc::Status s = client.stub().SubmitSweep(client.Context().get(), submit, &submitted); !s.ok()) {
    absl::Status status = FromGrpc(s, "submit");
    std::fprintf(stderr, "sweepctl: %s\n", std::string(status.message()).c_str());
    return ExitCodeFor(status);
  }
  const v1::Sweep& sweep = submitted.sweep();
  int64_t total = 0;
  for (const auto& [state, n] : sweep.trials_by_state()) total += n;
  if (submitted.created()) {
    std::printf("sweep %s: %lld trials, database %s\n", sweep.name().c_str(), static_cast<long long>(total),
                db.c_str());
  } else {
    std::printf("sweep %s: resuming (%s), database %s\n", sweep.name().c_str(), sweep.state().c_str(),
                db.c_str());
  }
  if (sweep.state() == "paused") {
    v1::SweepRef ref;
    ref.set_sweep(sweep.name());
    v1::Sweep resumed;
    if (grpc::Status s = client.stub().ResumeSweep(client.Context().get(), ref, &resumed); !s.ok()) {
      std::fprintf(stderr, "sweepctl: resume: %s\n", s.error_message().c_str());
      return kExitError;
    }
  }
  // A CPU trial takes ranks x cpu_slots_per_trial slots (a data-parallel trial runs one
  // process per rank): each worker gets that many, so that it can run one trial.
  const int slots_per_trial = std::max(1, spec->ranks_per_trial * spec->cpu_slots_per_trial);
  int workers = options.workers;
  if (workers <= 0) {
    workers = gpu ? 1 : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) /
                                        std::max(1, options.threads_per_trial * slots_per_trial));
  }
  std::vector<std::unique_ptr<Child>> worker_processes;
  const bool finished = sweep.state() == "completed" || sweep.state() == "cancelled";
  for (int i = 1; i <= workers && !finished; ++i) {
    const std::string name = absl::StrCat("local-", i);
    std::vector<std::string> args = {"--orchestrator", address, "--name", name, "--workdir",
                                     dir + "/work", "--token-file", dir + "/token", "--heartbeat", "1",
                                     "--threads-per-trial", std::to_string(options.threads_per_trial),
                                     "--sweep-train", (fs::path(options.bin_dir) / "sweep-train").string()};
    if (gpu && i == 1) {
      args.insert(args.end(), {"--gpus", "auto", "--cpu-slots", "0"});
    } else {
      args.insert(args.end(), {"--gpus", "none", "--cpu-slots", std::to_string(slots_per_trial)});
    }
    worker_processes.push_back(std::make_unique<Child>(
        name, (fs::path(options.bin_dir) / "sweep-worker").string(), args,
        absl::StrCat(dir, "/logs/", name, ".log")));
  }
  if (!finished) {
    std::printf("%d worker(s), %d thread(s) per trial; logs in %s/logs; Ctrl-C pauses\n", workers,
                options.threads_per_trial, dir.c_str());
  }
  if (dashboard) std::printf("dashboard: %s\n", dashboard_url.c_str());

  // 5. Progress until the sweep ends or Ctrl-C.
  absl::StatusOr<std::string> state = FollowSweep(client, sweep.name(), interrupts);
  if (!state.ok()) {
    std::fprintf(stderr, "sweepctl: %s\n", std::string(state.status().message()).c_str());
    return ExitCodeFor(state.status());
  }

  if (interrupts.load() > 0 && *state != "completed" && *state != "cancelled") {
    std::printf("pausing %s: running trials write a checkpoint and stop (Ctrl-C again to stop at once)\n",
                sweep.name().c_str());
    v1::PauseSweepRequest pause;
    pause.set_sweep(sweep.name());
    pause.set_stop_running(true);
    v1::Sweep paused;
    grpc::Status s = client.stub().PauseSweep(client.Context().get(), pause, &paused);
    if (!s.ok()) std::fprintf(stderr, "sweepctl: pause: %s\n", s.error_message().c_str());
    const Steady::time_point since = Steady::now();
    while (s.ok() && interrupts.load() < 2 && Steady::now() - since < std::chrono::seconds(120)) {
      absl::StatusOr<v1::Sweep> now = GetSweep(client, sweep.name());
      if (!now.ok()) break;
      auto count = [&](const char* st) {
        auto it = now->trials_by_state().find(st);
        return it == now->trials_by_state().end() ? 0 : it->second;
      };
      if (count("leased") + count("running") == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    // Workers hand back anything still running (with a checkpoint) as they stop.
    for (auto& w : worker_processes) w->Stop(interrupts.load() >= 2 ? 1 : 60);
    worker_processes.clear();
    absl::StatusOr<Progress> progress = GetProgress(client, sweep.name());
    sweepd->Stop(10);
    std::printf("paused: %lld of %lld trials finished; run `sweepctl run %s` again to resume\n",
                progress.ok() ? static_cast<long long>(progress->finished) : 0LL,
                progress.ok() ? static_cast<long long>(progress->total) : 0LL, options.spec_path.c_str());
    return kExitInterrupted;
  }

  for (auto& w : worker_processes) w->Stop(60);
  worker_processes.clear();
  std::printf("\n");
  absl::Status summary = PrintSummary(client, sweep.name(), options.format);
  if (!summary.ok()) std::fprintf(stderr, "sweepctl: summary: %s\n", std::string(summary.message()).c_str());
  v1::AnalyzeSweepRequest analyze;
  analyze.set_sweep(sweep.name());
  v1::AnalyzeSweepResponse analysis;
  if (grpc::Status s = client.stub().AnalyzeSweep(client.Context(120).get(), analyze, &analysis); s.ok()) {
    std::printf("\nanalysis (sweepctl analyze %s):\n%s", sweep.name().c_str(), analysis.text().c_str());
  } else {
    std::fprintf(stderr, "sweepctl: analysis: %s\n", s.error_message().c_str());
  }
  std::printf("\ndatabase: %s (sqlite3 %s, or `sweepctl query` while sweepd runs)\n"
              "trial folders and logs: %s/work/<sweep>/<trial>/attempt-<n>/, %s/logs/\n"
              "dashboard afterwards: %s/sweepd --db %s --listen 127.0.0.1:0 --http 127.0.0.1:8080, "
              "then http://127.0.0.1:8080/\n",
              db.c_str(), db.c_str(), dir.c_str(), dir.c_str(), options.bin_dir.c_str(), db.c_str());
  sweepd->Stop(10);
  return *state == "completed" ? kExitOk : kExitError;
}

}  // namespace sweep::ctl
