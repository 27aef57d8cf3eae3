// sweepctl's verbs against a running sweepd. Each returns a process exit code (client.h)
// and prints errors to stderr as "sweepctl: <what>: <why>".
#ifndef SWEEP_TOOLS_SWEEPCTL_COMMANDS_H_
#define SWEEP_TOOLS_SWEEPCTL_COMMANDS_H_

#include <atomic>
#include <string>

#include "tools/sweepctl/client.h"
#include "tools/sweepctl/output.h"

namespace sweep::ctl {

int Submit(Client& client, const std::string& spec_path, Format format);
int ListSweeps(Client& client, Format format);
int Status(Client& client, const std::string& sweep, Format format);
int Watch(Client& client, const std::string& sweep, const std::atomic<int>& interrupts);
int Summary(Client& client, const std::string& sweep, Format format);
// sweepd's analysis of the sweep (also stored for the dashboard): tables and verdicts, or the
// whole result as JSON. `group_by`: comma-separated keys (empty: all but the lr and the seed).
int Analyze(Client& client, const std::string& sweep, const std::string& group_by, bool json);
int Trials(Client& client, const std::string& sweep, const std::string& state,
           const std::string& sort_metric, Format format);
int Show(Client& client, int64_t trial, Format format);
// The trial's stderr log (the trainer's progress), read from the attempt folder of the worker
// that ran it: the same machine or a shared filesystem. With `follow`, until the trial ends.
int Logs(Client& client, int64_t trial, bool follow, const std::string& file,
         const std::atomic<int>& interrupts);
// pause | resume | cancel
int SweepAction(Client& client, const std::string& action, const std::string& sweep, bool stop_running);
// retry | cancel
int TrialAction(Client& client, const std::string& action, int64_t trial);
int Workers(Client& client, Format format);
int Query(Client& client, const std::string& sql, int max_rows, Format format);
// <out>/trials.csv (parameters, state, final metric) and per trial either <out>/<id>/metrics.jsonl
// (Lingua's format: one object per step with global_step and the flattened keys) or
// <out>/<id>/metrics.csv (step,name,value).
int Export(Client& client, const std::string& sweep, const std::string& format, const std::string& out);

}  // namespace sweep::ctl

#endif  // SWEEP_TOOLS_SWEEPCTL_COMMANDS_H_
