// sweep_db_gen: writes a finished (or partly running) synthetic LR sweep into a sweep database
// through the real orchestrator code, in-process: fixtures for the dashboard and its benchmark.
//
//   sweep::tools::SweepDbOptions options;   // depth 2, 6, 10 x lr 3e-3 .. 1e-1 x 4 seeds
//   absl::StatusOr<SweepDbStats> stats = sweep::tools::GenerateSweepDb("sweep.db", options);
//
// Contract
//   * The database is what sweepd would have written had it run the sweep: the spec is a
//     generated YAML text parsed and expanded by orchestrator/spec.h and submitted through
//     Store::SubmitSweep; simulated workers register, lease, start, heartbeat, report
//     checkpoints and complete trials through orchestrator/scheduler.h; every metric row goes
//     through Monitor::Ingest (orchestrator/monitor.h) in batches of at most `batch_rows`, so
//     spikes, divergences and their events are the real detector's findings.
//   * Deterministic: time is a simulated clock starting at `start_time`, and every random
//     number comes from `seed` (its own generator, not the standard library's distributions),
//     so the same options give a database with the same content, row for row.
//   * The curves look like a real LR sweep of a small Transformer (metric names and meanings
//     as docs/trainer.md): `loss/out` decays like a power law in the training progress (the
//     schedule's cumulative factor, weakly faster at higher lr) toward a floor that is
//     U-shaped in log lr, with the optimum lower and the high-lr penalty larger for deeper
//     models (at 500 steps: best lr 3e-2 at depth 2 and 6, 1e-2 at depth 10);
//     `optim/lr` is the trainer's own schedule (worker/trainer/schedule.h); `optim/grad_norm`
//     has bounded noise and, in the high-lr half of the grid at the deeper depths, injected
//     spikes (carried by `grad_norm/tok_embeddings` and `grad_norm/layers.0.attention`, so
//     Σ group² = total² still holds); at the highest lr and the deepest depth (grids with at
//     least two of each) every seed blows up and logs NaN, and the trial ends through the
//     diverged outcome. Cells with neither spikes nor divergence never trip the detector:
//     their noise is truncated at 2.5 sigma, far below its z = 6.
//   * `running` > 0: the last `running` trials to be leased stop part-way (at about 60 % of
//     their steps, before any divergence) and stay `running` with live leases; the sweep stays
//     `running`. Their leases expire `lease_ttl` seconds after the simulated end, so a real
//     sweepd opened later requeues them at once unless `lease_ttl` is large.
//   * The database may already hold other sweeps; a sweep of the same name is AlreadyExists.
//     Errors are the orchestrator's statuses, with what was being done prepended.
//
// Thread-safety: GenerateSweepDb() opens its own Store; calls on different files may run in
// parallel.
#ifndef SWEEP_TOOLS_SWEEP_DB_GEN_H_
#define SWEEP_TOOLS_SWEEP_DB_GEN_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sweep::tools {

struct SweepDbOptions {
  std::string sweep = "depth_lr_synth";                // The sweep's name.
  std::vector<int> depths = {2, 6, 10};                // model.n_layers values.
  std::vector<double> lrs = {0.003, 0.01, 0.03, 0.1};  // optim.lr values.
  int seeds = 4;                                       // seed values 0 .. seeds - 1.
  int64_t steps = 500;                                 // Trainer steps per trial.
  bool layer_metrics = true;  // grad_norm/<group> for every parameter group, every step.
  int eval_every = 50;        // loss/val every K steps and at the end (0: at the end only).
  int probe_every = 10;       // probe/* every K steps (0: no probes).
  int running = 0;            // Trials left running part-way (see above).
  uint64_t seed = 1;          // Everything random derives from it.
  // Only these metric names are written (empty: all of the above). For traces of one
  // metric, e.g. {"optim/grad_norm"}; the sweep's metric (loss/val) may be left out.
  std::vector<std::string> only_metrics;

  // Simulation. Defaults are sweepd's and sweep-worker's.
  int workers = 8;                 // Simulated workers, one CPU slot each.
  double start_time = 1767225600;  // Unix seconds of the submit (2026-01-01 00:00 UTC).
  double lease_ttl = 60;           // The scheduler's lease lifetime.
  double heartbeat_interval = 5;   // Seconds between heartbeats (and metric flushes).
  size_t batch_rows = 4000;        // At most this many rows per Monitor::Ingest call.
  int64_t max_trials = 100000;     // The spec limit the expansion is checked against.
};

// Progress, reported whenever a trial ends and about every 100,000 rows.
struct SweepDbProgress {
  int64_t trials_done = 0;  // Completed, diverged or left running.
  int64_t trials = 0;
  int64_t rows = 0;    // Metric rows stored so far.
  double seconds = 0;  // Wall time so far.
};

struct SweepDbStats {
  int64_t sweep_id = 0;
  int64_t trials = 0;
  int64_t completed = 0;
  int64_t diverged = 0;
  int64_t running = 0;
  int64_t rows = 0;              // Metric rows stored (Monitor::Ingest's count of new rows).
  int64_t spikes = 0;            // Rows of `spikes` for this sweep.
  double seconds = 0;            // Wall time of the generation.
  double simulated_seconds = 0;  // From the submit to the last simulated event.
};

using SweepDbProgressFn = std::function<void(const SweepDbProgress&)>;

// The sweep spec text the generator submits (YAML, sweeps/*.yaml's layout).
std::string SweepDbSpecText(const SweepDbOptions& options);

// Checks the options (InvalidArgument naming the option) without touching any file.
absl::Status ValidateSweepDbOptions(const SweepDbOptions& options);

// Generates the sweep into the database at `path` (created when missing).
absl::StatusOr<SweepDbStats> GenerateSweepDb(const std::string& path, const SweepDbOptions& options,
                                             const SweepDbProgressFn& progress = nullptr);

// Metric rows a trial of `n_layers` that runs all `steps` steps writes with these options
// (a diverged or running trial writes fewer). For tests and for sizing a database.
int64_t RowsPerCompletedTrial(const SweepDbOptions& options, int n_layers);

}  // namespace sweep::tools

#endif  // SWEEP_TOOLS_SWEEP_DB_GEN_H_
