// A sweep cluster on loopback for end-to-end tests: the real sweepd and sweep-worker binaries
// (workers run the real sweep-train), started, killed and restarted as child processes, plus
// a gRPC stub and read-only SQL on the database.
//
//   Cluster cluster({SWEEPD_BIN, WORKER_BIN, SWEEP_TRAIN_BIN}, MakeTempDir("chaos"));
//   ASSERT_TRUE(cluster.StartSweepd({"--lease-ttl", "5"}));
//   cluster.StartWorker("w1");
//   ASSERT_TRUE(cluster.Submit(spec).ok());
//   ASSERT_TRUE(cluster.SweepEnds("name", std::chrono::seconds(120))) << cluster.Logs();
//
// Layout under dir: sweep.db, port, sweepd-<n>.log (one per start), <worker>.log, work/ (the
// workers' trial folders).
#ifndef SWEEP_TESTS_TESTING_CLUSTER_H_
#define SWEEP_TESTS_TESTING_CLUSTER_H_

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "proto/sweep.grpc.pb.h"
#include "tests/testing/subprocess.h"

namespace sweep::testing {

struct ClusterBinaries {
  std::string sweepd;
  std::string worker;
  std::string sweep_train;
};

class Cluster {
 public:
  // `db_path` empty: <dir>/sweep.db.
  Cluster(ClusterBinaries binaries, std::string dir, std::string db_path = "");
  ~Cluster();  // SIGKILLs the workers, then sweepd.
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // Starts sweepd on a free loopback port (restarts it on the same database and port after a
  // stop) and waits until it serves; false (with the log in Logs()) if it does not within 30 s.
  // `extra` is appended to its arguments (e.g. --lease-ttl 5).
  bool StartSweepd(const std::vector<std::string>& extra = {});
  // Signals sweepd and waits for it; returns its exit code.
  int StopSweepd(int sig);
  bool sweepd_running() const { return sweepd_ != nullptr; }
  pid_t sweepd_pid() const { return sweepd_ ? sweepd_->pid() : -1; }

  // Starts (or restarts) a worker with one CPU slot, heartbeating every `heartbeat` seconds
  // (default 1), on the current sweepd. `extra` is appended to its arguments.
  Subprocess& StartWorker(const std::string& name, const std::vector<std::string>& extra = {});
  // Signals a worker; with SIGKILL/SIGTERM waits for it and forgets it. Returns its exit code
  // (or -1 for other signals, which leave it running: SIGSTOP, SIGCONT).
  int SignalWorker(const std::string& name, int sig);
  std::vector<std::string> worker_names() const;

  absl::Status Submit(const std::string& spec_yaml);
  bool SweepEnds(const std::string& sweep, std::chrono::seconds timeout);

  // One value by SQL on a read-only connection ("" for NULL or no row).
  std::string Db(const std::string& sql) const;
  const std::string& db_path() const { return db_path_; }
  // Where workers started from now on keep their trial folders (default <dir>/work).
  void set_workdir(std::string workdir) { workdir_ = std::move(workdir); }
  void set_heartbeat(double seconds) { heartbeat_ = seconds; }

  v1::Orchestrator::Stub& stub() { return *stub_; }
  const std::string& dir() const { return dir_; }
  const std::string& target() const { return target_; }
  // Every log of this cluster, for a failure message.
  std::string Logs() const;

 private:
  const ClusterBinaries binaries_;
  const std::string dir_;
  const std::string db_path_;
  std::string workdir_;
  double heartbeat_ = 1;
  std::unique_ptr<Subprocess> sweepd_;
  int sweepd_starts_ = 0;
  std::map<std::string, std::unique_ptr<Subprocess>> workers_;
  std::string target_;
  std::unique_ptr<v1::Orchestrator::Stub> stub_;
};

}  // namespace sweep::testing

#endif  // SWEEP_TESTS_TESTING_CLUSTER_H_
