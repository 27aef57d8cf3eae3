// sweepctl: the command line of sweep. `sweepctl --help` lists the verbs; each has --help.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "tools/sweepctl/client.h"
#include "tools/sweepctl/commands.h"
#include "tools/sweepctl/local_run.h"

namespace {

std::string ReadTrimmed(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace sweep::ctl;
  // Ctrl-C and SIGTERM are counted by a thread (the first pauses `run`, the second stops at once).
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  static std::atomic<int> interrupts{0};
  std::thread([signals] {
    for (;;) {
      int sig = 0;
      sigwait(&signals, &sig);
      ++interrupts;
    }
  }).detach();

  CLI::App app{
      "sweepctl: hyperparameter sweeps over Transformer training.\n\n"
      "Examples:\n"
      "  sweepctl run sweeps/depth_lr.yaml                # everything local, one command\n"
      "  sweepctl submit sweeps/depth_lr.yaml             # to a running sweepd\n"
      "  sweepctl watch depth_lr\n"
      "  sweepctl trials depth_lr --sort loss/val\n"
      "  sweepctl query \"SELECT * FROM trial_summary\" --format csv\n\n"
      "Exit codes: 0 ok, 1 error, 2 usage or invalid spec, 3 no such sweep or trial,\n"
      "4 sweepd unreachable, 130 interrupted (run: the sweep is paused; run it again to resume).",
      "sweepctl"};
  app.require_subcommand(1);
  app.fallthrough();
  Connection connection;
  std::string token_file, tls_ca, format_name = "auto";
  app.add_option("--orchestrator", connection.address, "sweepd address")
      ->envname("SWEEP_ORCHESTRATOR")
      ->capture_default_str();
  app.add_option("--token-file", token_file, "File holding sweepd's token")
      ->envname("SWEEP_TOKEN_FILE")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-ca", tls_ca, "Connect with TLS, trusting this PEM certificate")
      ->envname("SWEEP_TLS_CA")
      ->check(CLI::ExistingFile);
  app.add_option("--format", format_name,
                 "Output: auto (a table on a terminal, CSV when piped), table, csv, json")
      ->capture_default_str();

  const std::string bin_dir_default = [] {
    std::error_code ec;
    auto self = std::filesystem::canonical("/proc/self/exe", ec);
    return ec ? std::string(".") : self.parent_path().string();
  }();

  RunOptions run_options;
  run_options.bin_dir = bin_dir_default;
  CLI::App* run = app.add_subcommand(
      "run",
      "Run a sweep on this machine: starts sweepd and N workers on loopback, submits, shows\n"
      "progress and a summary. Ctrl-C pauses (trials checkpoint); the same command resumes.\n"
      "  sweepctl run sweeps/depth_lr.yaml --workers 2");
  run->add_option("spec", run_options.spec_path, "Sweep spec (YAML)")->required()->check(CLI::ExistingFile);
  run->add_option("--workers", run_options.workers, "Workers, one trial each (default: cores / (threads x ranks per trial))");
  run->add_option("--threads-per-trial", run_options.threads_per_trial, "Threads per trial")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  run->add_option("--dir", run_options.dir, "Run folder (default runs/<sweep name>)");
  run->add_option("--db", run_options.db, "Database (default <dir>/sweep.db)");
  run->add_option("--bin-dir", run_options.bin_dir, "Where sweepd, sweep-worker, sweep-train are")
      ->capture_default_str();
  run->add_option("--dashboard", run_options.dashboard,
                  "Serve the dashboard on HOST:PORT while the sweep runs (port 0: a free one; off: none)")
      ->capture_default_str();

  std::string spec_path, sweep, state, sort, sql, out = "export", export_format = "jsonl", log_file = "stderr";
  int64_t trial = 0;
  int max_rows = 0;
  bool follow = false, keep_running = false;
  CLI::App* submit = app.add_subcommand("submit", "Submit a sweep spec to sweepd (the same spec attaches)\n"
                                                  "  sweepctl submit sweeps/depth_lr.yaml");
  submit->add_option("spec", spec_path, "Sweep spec (YAML)")->required();
  CLI::App* ls = app.add_subcommand("ls", "List sweeps with their progress");
  CLI::App* status = app.add_subcommand("status", "A sweep's progress by state, best trial, ETA\n"
                                                  "  sweepctl status depth_lr");
  status->add_option("sweep", sweep, "Sweep name or id")->required();
  CLI::App* watch = app.add_subcommand("watch", "Follow a sweep live until it ends (Ctrl-C leaves it running)");
  watch->add_option("sweep", sweep, "Sweep name or id")->required();
  CLI::App* summary = app.add_subcommand(
      "summary", "Final metric and peak grad norm per parameter cell x lr, and the largest spikes");
  summary->add_option("sweep", sweep, "Sweep name or id")->required();
  std::string group_by;
  bool analyze_json = false;
  CLI::App* analyze = app.add_subcommand(
      "analyze",
      "Per group: best lr (quadratic fit, with its interval), near-optimal band, largest stable lr,\n"
      "spikes, LR sensitivity; power laws across groups extrapolated to Lingua's 1B/7B beside\n"
      "published settings; verdicts (docs/analysis.md). Stored for the dashboard.\n"
      "  sweepctl analyze depth_lr\n"
      "  sweepctl analyze width_lr --group-by model.dim --json");
  analyze->add_option("sweep", sweep, "Sweep name or id")->required();
  analyze->add_option("--group-by", group_by, "Comma-separated keys that make a group");
  analyze->add_flag("--json", analyze_json, "The whole result as JSON");
  CLI::App* trials = app.add_subcommand("trials", "A sweep's trials\n"
                                                  "  sweepctl trials depth_lr --state diverged\n"
                                                  "  sweepctl trials depth_lr --sort loss/val   (-NAME: descending)");
  trials->add_option("sweep", sweep, "Sweep name or id")->required();
  trials->add_option("--state", state, "Only trials in this state");
  trials->add_option("--sort", sort, "Sort by the last value of this metric");
  CLI::App* show = app.add_subcommand("show", "A trial: config, attempts, events, last metrics");
  show->add_option("trial", trial, "Trial id")->required();
  CLI::App* logs = app.add_subcommand("logs", "A trial's trainer log (from its attempt folder)\n"
                                              "  sweepctl logs 12 -f");
  logs->add_option("trial", trial, "Trial id")->required();
  logs->add_flag("-f,--follow", follow, "Keep printing until the trial ends");
  logs->add_option("--file", log_file, "stderr (the trainer's log), stdout, metrics, config")->capture_default_str();
  CLI::App* pause = app.add_subcommand("pause", "Pause a sweep: running trials checkpoint and wait");
  pause->add_option("sweep", sweep, "Sweep name or id")->required();
  pause->add_flag("--keep-running", keep_running, "Let running trials finish; only stop handing out new ones");
  CLI::App* resume = app.add_subcommand("resume", "Resume a paused sweep");
  resume->add_option("sweep", sweep, "Sweep name or id")->required();
  CLI::App* cancel = app.add_subcommand("cancel", "Cancel a sweep (or one trial with --trial)");
  cancel->add_option("sweep", sweep, "Sweep name or id");
  cancel->add_option("--trial", trial, "Cancel this trial only");
  CLI::App* retry = app.add_subcommand("retry", "Run a failed, diverged, stopped or cancelled trial again\n"
                                                "(from its last checkpoint)");
  retry->add_option("trial", trial, "Trial id")->required();
  CLI::App* workers = app.add_subcommand("workers", "Workers, their slots and state");
  CLI::App* query = app.add_subcommand("query", "Read-only SQL over the sweep database (docs/schema.md)\n"
                                                "  sweepctl query \"SELECT * FROM sweep_best\"");
  query->add_option("sql", sql, "SELECT statement")->required();
  query->add_option("--max-rows", max_rows, "Row limit (default: sweepd's)");
  CLI::App* export_cmd = app.add_subcommand(
      "export", "Export a sweep's metrics: trials.csv and per trial metrics.jsonl (Lingua's format) or .csv\n"
                "  sweepctl export depth_lr --out depth_lr-export");
  export_cmd->add_option("sweep", sweep, "Sweep name or id")->required();
  export_cmd->add_option("--as", export_format, "jsonl (Lingua's metrics.jsonl) or csv")->capture_default_str();
  export_cmd->add_option("--out", out, "Output folder")->capture_default_str();

  CLI11_PARSE(app, argc, argv);
  absl::StatusOr<Format> format = ParseFormat(format_name);
  if (!format.ok()) {
    std::fprintf(stderr, "sweepctl: %s\n", std::string(format.status().message()).c_str());
    return kExitUsage;
  }
  if (run->parsed()) {
    run_options.format = *format;
    return RunLocal(run_options, interrupts);
  }
  if (!token_file.empty()) connection.token = ReadTrimmed(token_file);
  if (!tls_ca.empty()) connection.tls_ca_pem = ReadTrimmed(tls_ca) + "\n";
  Client client(connection);
  if (submit->parsed()) return Submit(client, spec_path, *format);
  if (ls->parsed()) return ListSweeps(client, *format);
  if (status->parsed()) return Status(client, sweep, *format);
  if (watch->parsed()) return Watch(client, sweep, interrupts);
  if (summary->parsed()) return Summary(client, sweep, *format);
  if (analyze->parsed()) return Analyze(client, sweep, group_by, analyze_json || *format == Format::kJson);
  if (trials->parsed()) return Trials(client, sweep, state, sort, *format);
  if (show->parsed()) return Show(client, trial, *format);
  if (logs->parsed()) return Logs(client, trial, follow, log_file, interrupts);
  if (pause->parsed()) return SweepAction(client, "pause", sweep, !keep_running);
  if (resume->parsed()) return SweepAction(client, "resume", sweep, false);
  if (cancel->parsed()) {
    if (trial > 0) return TrialAction(client, "cancel", trial);
    if (sweep.empty()) {
      std::fprintf(stderr, "sweepctl cancel: name a sweep, or --trial ID\n");
      return kExitUsage;
    }
    return SweepAction(client, "cancel", sweep, false);
  }
  if (retry->parsed()) return TrialAction(client, "retry", trial);
  if (workers->parsed()) return Workers(client, *format);
  if (query->parsed()) return Query(client, sql, max_rows, *format);
  if (export_cmd->parsed()) return Export(client, sweep, export_format, out);
  return kExitUsage;
}
