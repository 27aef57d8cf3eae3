// Resource faults with the real sweepd, sweep-worker and sweep-train:
//   * sweepd's database lives on a small tmpfs that fills up mid-sweep: sweepd says so in its
//     log, stays up, keeps every lease (no trial is requeued), does not corrupt the file, and
//     once space returns the workers' retried rows land: every step exactly once;
//   * a worker whose trial folders are on a full disk fails those trials with the reason and
//     keeps running; after space returns, a retried trial completes on it.
// A tmpfs needs root (CI runs as root). Without it the database test limits sweepd's file
// size instead (prlimit RLIMIT_FSIZE, raised again to recover), and the folder test blocks
// the folder with a file.
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/testing/cluster.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/tiny_spec.h"

namespace sweep {
namespace {

namespace fs = std::filesystem;
using sweep::testing::Cluster;
using sweep::testing::MakeTempDir;
using sweep::testing::ReadFileOrEmpty;
using sweep::testing::Run;
using sweep::testing::WaitFor;
using std::chrono::seconds;

// The tiny builtin trial (tests/testing/tiny_spec.h), a checkpoint every 50 steps.
std::string Spec(const std::string& name, int steps, const std::string& lrs, int max_attempts = 3) {
  sweep::testing::TinySpec spec;
  spec.name = name;
  spec.steps = steps;
  spec.lrs = lrs;
  spec.checkpoint_every = 50;
  spec.header = "max_attempts: " + std::to_string(max_attempts) + "\n";
  return sweep::testing::TinyBuiltinSpec(spec);
}

// A small file system we can fill and empty: a tmpfs when we may mount one.
class SmallDisk {
 public:
  SmallDisk(const std::string& path, const std::string& size) : path_(path) {
    fs::create_directories(path);
    try {
      mounted_ = Run({"/bin/mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", path}, "/dev/null",
                     "/dev/null") == 0;
    } catch (const std::exception&) {  // no mount(8) here: the caller falls back to prlimit
      mounted_ = false;
    }
  }
  ~SmallDisk() {
    if (mounted_) Run({"/bin/umount", "-l", path_}, "/dev/null", "/dev/null");
  }
  bool mounted() const { return mounted_; }

  // Writes a filler file until not one more byte fits.
  void Fill() {
    std::FILE* filler = std::fopen((path_ + "/filler").c_str(), "wb");
    std::setvbuf(filler, nullptr, _IONBF, 0);
    const std::string block(1 << 16, 'x');
    for (size_t size : {size_t{1} << 16, size_t{4096}, size_t{64}, size_t{1}}) {
      while (std::fwrite(block.data(), 1, size, filler) == size) {
      }
    }
    std::fclose(filler);
  }
  void Free() { fs::remove(path_ + "/filler"); }

 private:
  const std::string path_;
  bool mounted_ = false;
};

class DiskFullTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir("disk-full"); }
  void TearDown() override {
    if (HasFailure() && cluster_) std::cerr << cluster_->Logs();
    cluster_.reset();
    disk_.reset();
    fs::remove_all(dir_);
  }

  std::string Log() const {
    std::string out;
    for (int i = 1; i <= 3; ++i) out += ReadFileOrEmpty(dir_ + "/sweepd-" + std::to_string(i) + ".log");
    return out;
  }

  std::string dir_;
  std::unique_ptr<SmallDisk> disk_;
  std::unique_ptr<Cluster> cluster_;
};

TEST_F(DiskFullTest, DatabaseDiskFillsUpMidSweepAndNothingIsLost) {
  disk_ = std::make_unique<SmallDisk>(dir_ + "/db", "16m");
  cluster_ = std::make_unique<Cluster>(testing::ClusterBinaries{SWEEPD_BIN, WORKER_BIN, SWEEP_TRAIN_BIN}, dir_,
                                       dir_ + "/db/sweep.db");
  Cluster& c = *cluster_;
  ASSERT_TRUE(c.StartSweepd({"--lease-ttl", "10"})) << c.Logs();
  // Heartbeats every 3 s: after space returns, lease expiry (every second) gets its chance to
  // run before the next heartbeat renews, so only sweepd's hold keeps the leases.
  c.set_heartbeat(3);
  c.StartWorker("w1");
  c.StartWorker("w2");
  ASSERT_TRUE(c.Submit(Spec("full", 400, "1e-3, 2e-3")).ok());
  ASSERT_TRUE(WaitFor([&] { return std::stoi("0" + c.Db("SELECT COUNT(*) FROM metrics WHERE name = 'loss/out'")) >= 100; },
                      seconds(120)))
      << "no rows arrived";

  // The disk fills up (or, without a tmpfs, sweepd may not grow any file).
  if (disk_->mounted()) {
    disk_->Fill();
  } else {
    const auto size = [](const std::string& p) { return fs::exists(p) ? fs::file_size(p) : 0; };
    const auto limit = std::max(size(c.db_path()), size(c.db_path() + "-wal"));
    ASSERT_EQ(sweep::testing::Run({"/usr/bin/prlimit", "--pid", std::to_string(c.sweepd_pid()),
                   "--fsize=" + std::to_string(limit) + ":unlimited"}),
              0);
  }
  ASSERT_TRUE(WaitFor([&] { return Log().find("cannot write the database") != std::string::npos; }, seconds(60)))
      << Log();
  const std::string during = c.Db("SELECT COUNT(*) FROM metrics");
  std::this_thread::sleep_for(seconds(12));  // longer than the lease TTL: no lease may expire
  EXPECT_TRUE(c.sweepd_running());
  EXPECT_EQ(c.Db("PRAGMA integrity_check"), "ok");
  EXPECT_EQ(c.Db("SELECT COUNT(*) FROM metrics"), during) << "rows stored while the disk was full?";
  EXPECT_EQ(c.Db("SELECT COUNT(*) FROM events WHERE detail = 'lease expired'"), "0");

  // Space returns: the rows the workers kept arrive, the sweep ends.
  if (disk_->mounted()) {
    disk_->Free();
  } else {
    ASSERT_EQ(sweep::testing::Run({"/usr/bin/prlimit", "--pid", std::to_string(c.sweepd_pid()), "--fsize=unlimited"}), 0);
  }
  ASSERT_TRUE(c.SweepEnds("full", seconds(240))) << c.Logs();
  EXPECT_NE(Log().find("writable again"), std::string::npos) << Log();
  EXPECT_EQ(c.Db("SELECT COUNT(*) FROM trials WHERE state = 'completed' AND attempt = 1"), "2")
      << "a trial was requeued or failed";
  for (const std::string name : {"loss/out", "optim/grad_norm", "optim/lr"}) {
    EXPECT_EQ(c.Db("SELECT COUNT(*) FROM metrics WHERE name = '" + name + "'"), "800") << name;
    EXPECT_EQ(c.Db("SELECT COUNT(DISTINCT trial_id || ':' || step) FROM metrics WHERE name = '" + name + "'"), "800");
  }
  EXPECT_EQ(c.Db("PRAGMA integrity_check"), "ok");
}

TEST_F(DiskFullTest, TrialFolderOnAFullDiskFailsTheTrialNotTheWorker) {
  disk_ = std::make_unique<SmallDisk>(dir_ + "/work-disk", "1m");
  cluster_ = std::make_unique<Cluster>(testing::ClusterBinaries{SWEEPD_BIN, WORKER_BIN, SWEEP_TRAIN_BIN}, dir_);
  Cluster& c = *cluster_;
  ASSERT_TRUE(c.StartSweepd()) << c.Logs();
  const std::string workdir = dir_ + "/work-disk";
  std::string reason;
  if (disk_->mounted()) {
    disk_->Fill();
    reason = "No space left on device";
  } else {
    fs::create_directories(workdir);
    std::ofstream(workdir + "/folder") << "a file where the sweep's folder should be\n";
    reason = "cannot create trial directory";
  }
  c.set_workdir(workdir);
  testing::Subprocess& worker = c.StartWorker("w1");
  ASSERT_TRUE(c.Submit(Spec("folder", 30, "1e-3, 2e-3", /*max_attempts=*/2)).ok());
  ASSERT_TRUE(WaitFor([&] { return c.Db("SELECT COUNT(*) FROM trials WHERE state = 'failed'") == "2"; }, seconds(60)))
      << c.Logs();
  EXPECT_NE(c.Db("SELECT error FROM trials ORDER BY id LIMIT 1").find(reason), std::string::npos)
      << c.Db("SELECT error FROM trials ORDER BY id LIMIT 1");
  EXPECT_FALSE(worker.Poll().has_value()) << "the worker died";
  EXPECT_EQ(c.Db("SELECT state FROM workers WHERE name = 'w1'"), "active");

  // Space returns; a retried trial completes on the same worker.
  if (disk_->mounted()) {
    disk_->Free();
  } else {
    fs::remove(workdir + "/folder");
  }
  const std::string first = c.Db("SELECT id FROM trials ORDER BY id LIMIT 1");
  v1::TrialRef ref;
  ref.set_trial_id(std::stoll(first));
  v1::Trial trial;
  grpc::ClientContext context;
  ASSERT_TRUE(c.stub().RetryTrial(&context, ref, &trial).ok());
  ASSERT_TRUE(WaitFor([&] { return c.Db("SELECT state FROM trials WHERE id = " + first) == "completed"; }, seconds(90)))
      << c.Logs();
  EXPECT_FALSE(worker.Poll().has_value());
}

}  // namespace
}  // namespace sweep
