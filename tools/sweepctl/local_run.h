// `sweepctl run SPEC`: the whole system on one machine, for one sweep.
//
//   1. The spec is checked here first (errors at file:line:col, nothing started).
//   2. <dir> (default runs/<sweep name>/) holds sweep.db, a token generated for the run (0600),
//      the trial folders (work/) and the logs of sweepd and the workers (logs/).
//   3. sweepd starts on a free loopback port with that token, then N sweep-workers, each with
//      one CPU slot (or the GPUs, for a GPU sweep): all children in their own process groups,
//      killed if sweepctl dies, so nothing is left behind.
//   4. The spec is submitted (the same spec attaches to the sweep already in the database; a
//      paused sweep is resumed), progress is shown until it ends, then the summary.
//   5. Ctrl-C pauses the sweep: running trials checkpoint and wait as pending; the workers and
//      sweepd exit. Running the same command again resumes where it stopped; finished trials
//      are not run again. A second Ctrl-C stops at once (the trials still resume from their
//      last periodic checkpoint).
#ifndef SWEEP_TOOLS_SWEEPCTL_LOCAL_RUN_H_
#define SWEEP_TOOLS_SWEEPCTL_LOCAL_RUN_H_

#include <atomic>
#include <string>

#include "tools/sweepctl/output.h"

namespace sweep::ctl {

struct RunOptions {
  std::string spec_path;
  std::string dir;        // empty: runs/<sweep name>
  std::string db;         // empty: <dir>/sweep.db
  int workers = 0;        // 0: one per core / threads_per_trial
  int threads_per_trial = 1;
  std::string bin_dir;    // where sweepd, sweep-worker and sweep-train are
  std::string dashboard = "127.0.0.1:0";  // sweepd --http address; "off": none
  Format format = Format::kAuto;
};

// Returns the exit code: 0 when the sweep completed, 130 when paused by Ctrl-C.
int RunLocal(const RunOptions& options, const std::atomic<int>& interrupts);

}  // namespace sweep::ctl

#endif  // SWEEP_TOOLS_SWEEPCTL_LOCAL_RUN_H_
