// make_sweep_db: writes a synthetic, finished depth x lr sweep into a sweep database through
// the real orchestrator code (tools/sweep_db_gen.h), for the dashboard and its benchmark.
//
//   make_sweep_db --db /tmp/sweep.db [--sweep NAME] [--depths 2,6,10]
//                 [--lrs 0.003,0.01,0.03,0.1] [--seeds 4] [--steps 500] [--eval-every 50]
//                 [--probe-every 10] [--no-layers-metrics] [--running N] [--seed 1] [--force]
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <string>
#include <system_error>

#include "tools/sweep_db_gen.h"

namespace {
namespace fs = std::filesystem;

// Removes the database and its WAL and shared-memory files.
bool RemoveDatabase(const std::string& path) {
  std::error_code ec;
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
    fs::remove(path + suffix, ec);
    if (ec) {
      std::fprintf(stderr, "make_sweep_db: cannot remove %s%s: %s\n", path.c_str(), suffix,
                   ec.message().c_str());
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "make_sweep_db: writes a synthetic depth x lr x seed sweep into a sweep database, through\n"
      "sweepd's own store, scheduler and monitor (so spikes and divergences are the real\n"
      "detector's). Deterministic: the same options and --seed give the same content.\n\n"
      "Examples:\n"
      "  make_sweep_db --db /tmp/sweep.db\n"
      "  make_sweep_db --db /tmp/big.db --seeds 167 --steps 500     # 2,004 trials, ~23 M rows\n"
      "  make_sweep_db --db /tmp/live.db --running 3 --lease-ttl 1e9  # 3 trials left running\n"
      "  sweepd --db /tmp/sweep.db --http 127.0.0.1:8080",
      "make_sweep_db"};
  sweep::tools::SweepDbOptions options;
  std::string db;
  bool force = false, quiet = false;
  app.add_option("--db", db, "Database file to write")->required();
  app.add_flag("--force", force, "Overwrite an existing database file");
  app.add_option("--sweep", options.sweep, "Sweep name")->capture_default_str();
  app.add_option("--depths", options.depths, "model.n_layers values")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--lrs", options.lrs, "optim.lr values")->delimiter(',')->capture_default_str();
  app.add_option("--seeds", options.seeds, "Seeds per (depth, lr) cell")->capture_default_str();
  app.add_option("--steps", options.steps, "Trainer steps per trial")->capture_default_str();
  app.add_flag("--layers-metrics,!--no-layers-metrics", options.layer_metrics,
               "Per-group grad norms (grad_norm/layers.<i>.attention, ...) every step "
               "(default: on)");
  app.add_option("--eval-every", options.eval_every,
                 "loss/val every K steps and at the end (0: at the end only)")
      ->capture_default_str();
  app.add_option("--probe-every", options.probe_every, "probe/* every K steps (0: no probes)")
      ->capture_default_str();
  app.add_option("--running", options.running,
                 "Leave the last N trials to start running part-way (live views)")
      ->capture_default_str();
  app.add_option("--seed", options.seed, "Random seed of the whole database")
      ->capture_default_str();
  app.add_option("--workers", options.workers, "Simulated workers (one CPU slot each)")
      ->capture_default_str();
  app.add_option("--lease-ttl", options.lease_ttl,
                 "Lease lifetime in seconds; the running trials' leases end this long after the "
                 "simulated end, so a real sweepd requeues them then (1e9 keeps them running)")
      ->capture_default_str();
  app.add_option("--start-time", options.start_time,
                 "Unix time of the simulated submit (default: 2026-01-01 00:00 UTC)");
  app.add_option("--only", options.only_metrics,
                 "Write only these metric names (e.g. optim/grad_norm)")
      ->delimiter(',');
  app.add_flag("--quiet", quiet, "No progress line");
  CLI11_PARSE(app, argc, argv);

  if (absl::Status s = sweep::tools::ValidateSweepDbOptions(options); !s.ok()) {
    std::fprintf(stderr, "make_sweep_db: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (fs::exists(db)) {
    if (!force) {
      std::fprintf(stderr, "make_sweep_db: %s exists (--force overwrites it)\n", db.c_str());
      return 1;
    }
    if (!RemoveDatabase(db)) return 1;
  }

  const bool tty = !quiet && isatty(STDERR_FILENO);
  sweep::tools::SweepDbProgressFn progress;
  if (!quiet) {
    progress = [tty](const sweep::tools::SweepDbProgress& p) {
      std::fprintf(stderr, "%strials %lld/%lld  rows %.2f M  %.0f rows/s  %.1f s%s",
                   tty ? "\r" : "", static_cast<long long>(p.trials_done),
                   static_cast<long long>(p.trials), p.rows / 1e6,
                   p.seconds > 0 ? p.rows / p.seconds : 0.0, p.seconds, tty ? "   " : "\n");
    };
  }
  absl::StatusOr<sweep::tools::SweepDbStats> stats =
      sweep::tools::GenerateSweepDb(db, options, progress);
  if (tty) std::fprintf(stderr, "\n");
  if (!stats.ok()) {
    std::fprintf(stderr, "make_sweep_db: %s\n", std::string(stats.status().message()).c_str());
    return 1;
  }
  std::printf(
      "%s: sweep '%s' (id %lld): %lld trials (%lld completed, %lld diverged, %lld running), "
      "%lld metric rows, %lld spikes, %.1f s (%.0f rows/s), %.1f h simulated\n",
      db.c_str(), options.sweep.c_str(), static_cast<long long>(stats->sweep_id),
      static_cast<long long>(stats->trials), static_cast<long long>(stats->completed),
      static_cast<long long>(stats->diverged), static_cast<long long>(stats->running),
      static_cast<long long>(stats->rows), static_cast<long long>(stats->spikes), stats->seconds,
      stats->seconds > 0 ? stats->rows / stats->seconds : 0.0, stats->simulated_seconds / 3600);
  return 0;
}
