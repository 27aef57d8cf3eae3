#include "tools/sweep_db_gen.h"

#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "orchestrator/monitor.h"
#include "orchestrator/scheduler.h"
#include "orchestrator/spec.h"
#include "orchestrator/store.h"
#include "worker/trainer/config.h"
#include "worker/trainer/schedule.h"

namespace sweep::tools {
namespace {

using orchestrator::Completion;
using orchestrator::Lease;
using orchestrator::MetricRow;
using orchestrator::Outcome;
using orchestrator::Store;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kLrRef = 0.01;          // The learning rate curves are scaled against.
constexpr double kStartupSeconds = 1.5;  // sweep-worker start-up before the first step.
constexpr double kEvalSeconds = 0.2;
constexpr int64_t kProgressRows = 100000;

absl::Status Annotate(const absl::Status& s, const std::string& what) {
  return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
}

// The shortest decimal text that reads back as the same double.
std::string ShortestDouble(double v) {
  for (int precision = 1; precision <= 17; ++precision) {
    std::string text = absl::StrFormat("%.*g", precision, v);
    if (std::strtod(text.c_str(), nullptr) == v) return text;
  }
  return absl::StrFormat("%.17g", v);
}

// Time moves only when the simulation says so.
class SimClock : public orchestrator::Clock {
 public:
  explicit SimClock(double now) : now_(now) {}
  double Now() override { return now_; }
  void Set(double now) { now_ = now; }

 private:
  double now_;
};

// xoshiro256** seeded by splitmix64: the same numbers on every platform and library.
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (uint64_t& s : s_) s = SplitMix(seed);
  }
  uint64_t Next() {
    const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = Rotl(s_[3], 45);
    return result;
  }
  // Uniform in [0, 1).
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  // Standard normal (Box-Muller; one draw per call keeps the stream simple).
  double Normal() {
    const double u = 1.0 - Uniform();  // (0, 1]
    return std::sqrt(-2.0 * std::log(u)) * std::cos(2.0 * M_PI * Uniform());
  }
  // Standard normal restricted to [-2.5, 2.5] (redrawn outside): bounded noise, so that
  // only injected spikes can reach the detector's z = 6.
  double Bounded() {
    for (;;) {
      const double x = Normal();
      if (std::fabs(x) <= 2.5) return x;
    }
  }

  static uint64_t SplitMix(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

 private:
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

// Where a trial sits in the grid, as fractions: 0 for the lowest lr (shallowest depth), 1
// for the highest (deepest); 0 when the grid has one value.
double Rank(const std::vector<double>& values, double v) {
  std::vector<double> sorted(values);
  std::sort(sorted.begin(), sorted.end());
  sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
  if (sorted.size() < 2) return 0;
  size_t best = 0;
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (std::fabs(std::log(sorted[i] / v)) < std::fabs(std::log(sorted[best] / v))) best = i;
  }
  return static_cast<double>(best) / static_cast<double>(sorted.size() - 1);
}

// What the trainer of one trial does, decided before it runs.
struct TrialPlan {
  int64_t trial_id = 0;
  trainer::TrainConfig config;
  double lr_rank = 0;     // 0 .. 1 across the grid's lrs.
  double depth_rank = 0;  // 0 .. 1 across the grid's depths.
  bool diverges = false;
  uint64_t seed = 0;  // The trial's own random stream.
};

// The metric names a trial logs, in the order of a trainer record, and which are written.
struct Names {
  std::vector<std::string> groups;  // grad_norm/<group>
  std::vector<std::string> probes;  // probe/layers.<i>.attn_logit_max, then output_logsumexp
};

Names NamesFor(int n_layers) {
  Names names;
  names.groups.push_back("grad_norm/tok_embeddings");
  for (int i = 0; i < n_layers; ++i) {
    names.groups.push_back(absl::StrCat("grad_norm/layers.", i, ".attention"));
    names.groups.push_back(absl::StrCat("grad_norm/layers.", i, ".feed_forward"));
  }
  names.groups.push_back("grad_norm/norm");
  names.groups.push_back("grad_norm/output");
  for (int i = 0; i < n_layers; ++i) {
    names.probes.push_back(absl::StrCat("probe/layers.", i, ".attn_logit_max"));
  }
  names.probes.push_back("probe/output_logsumexp");
  return names;
}

const char* const kCoreNames[] = {
    "loss/out",  "optim/grad_norm",     "optim/lr", "optim/total_tokens", "optim/param_norm",
    "speed/wps", "speed/curr_iter_time"};
constexpr char kValName[] = "loss/val";

// One trial's trainer, step by step: the curves of the file comment.
class TrialSim {
 public:
  TrialSim(const SweepDbOptions& options, const TrialPlan& plan, const Lease& lease, double start,
           int64_t hold_at)
      : plan_(plan),
        attempt_(lease.attempt),
        options_(options),
        rng_(plan.seed),
        time_(start + kStartupSeconds) {
    const trainer::TrainConfig& c = plan.config;
    steps_ = c.steps;
    depth_ = c.model.n_layers;
    lr_ = c.optim.lr;
    names_ = NamesFor(depth_);
    const std::set<std::string> only(options.only_metrics.begin(), options.only_metrics.end());
    auto wanted = [&](const std::string& name) { return only.empty() || only.count(name) > 0; };
    for (const char* name : kCoreNames) core_wanted_.push_back(wanted(name));
    for (const std::string& name : names_.groups) {
      group_wanted_.push_back(options.layer_metrics && wanted(name));
    }
    for (const std::string& name : names_.probes) probe_wanted_.push_back(wanted(name));
    val_wanted_ = wanted(kValName);

    // The cell's shape, plus a little seed-to-seed variation.
    const double optimum = std::log10(0.03) - 0.55 * std::log10(depth_ / 2.0);
    const double curvature = 0.25 + 0.04 * depth_;
    const double off = std::log10(lr_) - optimum;
    loss0_ = 5.58 + 0.02 * rng_.Bounded();
    floor_ = 1.55 - 0.12 * std::log2(depth_ / 2.0) + curvature * off * off + 0.01 * rng_.Bounded();
    loss_sigma_ = 0.015 + 0.015 * plan.lr_rank;
    lr_speed_ = std::pow(lr_ / kLrRef, 0.3);
    grad_floor_ =
        0.22 * (1 + 0.6 * plan.lr_rank) * (1 + 0.03 * depth_) * std::exp(0.05 * rng_.Bounded());
    grad_start_ = 2.0 * std::exp(0.1 * rng_.Bounded());
    spike_p_ = 0.02 * std::max(0.0, 2 * plan.lr_rank - 1) * plan.depth_rank;
    param_norm0_ = 16 + 3.0 * depth_;
    step_seconds_ = 0.012 + 0.0138 * depth_;
    tokens_per_step_ = static_cast<int64_t>(c.data.batch_size) * c.data.seq_len * c.grad_acc_steps;
    // Squared shares of the total grad norm per group (Σ = 1 after normalising).
    shares_.push_back(0.15);
    for (int i = 0; i < depth_; ++i) {
      shares_.push_back(0.30 / depth_ * (i == 0 ? 1.5 : 1.0));
      shares_.push_back(0.35 / depth_);
    }
    shares_.push_back(0.005);
    shares_.push_back(0.20);
    if (plan.diverges) {
      const int64_t warmup = std::max<int64_t>(c.optim.warmup, 4);
      diverge_at_ =
          warmup + 1 + static_cast<int64_t>((steps_ - warmup - 1) * (0.15 + 0.5 * rng_.Uniform()));
      diverge_at_ = std::clamp<int64_t>(diverge_at_, 1, steps_);
    }
    hold_at_ = hold_at;
    if (hold_at_ > 0 && diverge_at_ > 0) {
      hold_at_ = std::max<int64_t>(1, std::min(hold_at_, diverge_at_ - 4));
    }
    next_dt_ = StepSeconds();
  }

  int64_t trial_id() const { return plan_.trial_id; }
  int attempt() const { return attempt_; }
  int64_t step() const { return step_; }
  bool finished() const { return finished_; }
  bool diverged() const { return diverged_; }
  bool held() const { return hold_at_ > 0 && step_ >= hold_at_; }
  std::optional<double> final_val() const { return final_val_; }
  std::optional<double> best_val() const { return best_val_; }
  const std::string& checkpoint() const { return checkpoint_; }

  // Appends the rows of the steps that ended by `now`; each checkpoint written on the way is
  // appended to `checkpoints` as (step, path).
  void EmitUntil(double now, std::vector<MetricRow>* rows,
                 std::vector<std::pair<int64_t, std::string>>* checkpoints) {
    while (!finished_ && !held() && time_ + next_dt_ <= now) {
      const double dt = next_dt_;
      time_ += dt;
      Step(dt, rows);
      next_dt_ = StepSeconds();
      if (finished_) break;
      const int every = plan_.config.checkpoint.every;
      if (every > 0 && step_ % every == 0) {
        checkpoint_ = CheckpointPath(step_);
        checkpoints->emplace_back(step_, checkpoint_);
      }
    }
  }

  // What the worker reports when the trainer exits.
  Completion Outcome() const {
    Completion c;
    c.outcome = diverged_ ? Outcome::kDiverged : Outcome::kCompleted;
    c.last_step = step_;
    c.diverged_step = diverged_ ? step_ : 0;
    c.final_metric = final_val_;
    c.best_metric = best_val_;
    c.checkpoint = checkpoint_;
    c.exit_code = diverged_ ? 3 : 0;  // sweep-train's exit codes (worker/trainer/exit_codes.h)
    return c;
  }

 private:
  double StepSeconds() { return step_seconds_ * std::exp(0.05 * rng_.Bounded()); }

  void Add(std::vector<MetricRow>* rows, const std::string& name, double value) {
    rows->push_back({plan_.trial_id, attempt_, name, step_, value, time_});
  }

  std::string CheckpointPath(int64_t step) const {
    return absl::StrFormat("/srv/sweep-work/%s/%d/attempt-%d/checkpoints/%010d", options_.sweep,
                           plan_.trial_id, attempt_, step);
  }

  void Step(double dt, std::vector<MetricRow>* rows) {
    ++step_;
    const int64_t k = step_;
    const trainer::TrainConfig& c = plan_.config;
    const double lr = trainer::LearningRateForStep(c.optim, k, steps_);
    // Progress grows with the schedule but only weakly with the peak lr, so that a short run
    // at a too-high lr does not win by training faster: the floor decides.
    progress_ += lr / c.optim.lr * lr_speed_;
    const double decay = std::pow(1 + progress_ / 4.0, -0.6);
    const double smooth = floor_ + (loss0_ - floor_) * decay;

    // Grad norm: a fast fall from its start, bounded multiplicative noise, and spikes.
    const double base = (grad_floor_ + grad_start_ * std::exp(-static_cast<double>(k) / 15.0)) *
                        std::exp(0.08 * rng_.Bounded());
    double grad = base;
    double spike_energy = 0;  // grad² - base², carried by the embeddings and layer 0.
    const bool spike = k > 5 && rng_.Uniform() < spike_p_;
    const double spike_size = 3 + 9 * rng_.Uniform() * (0.5 + plan_.depth_rank);
    if (spike) {
      grad = base * spike_size;
      pending_bump_ += 0.04 * spike_size;
    }
    double loss = smooth + bump_ + loss_sigma_ * rng_.Bounded();
    bump_ = 0.6 * bump_ + pending_bump_;
    pending_bump_ = 0;
    bool blown = false;
    if (diverge_at_ > 0 && k >= diverge_at_ - 3) {
      static const double kGrad[] = {8, 40, 200};
      static const double kLoss[] = {0.3, 1.2, 3.0};
      if (k == diverge_at_) {
        blown = true;
      } else {
        grad = base * kGrad[k - (diverge_at_ - 3)];
        loss += kLoss[k - (diverge_at_ - 3)];
      }
    }
    spike_energy = grad * grad - base * base;

    if (core_wanted_[0]) Add(rows, kCoreNames[0], blown ? kNaN : loss);
    if (core_wanted_[1]) Add(rows, kCoreNames[1], blown ? kNaN : grad);
    if (core_wanted_[2]) Add(rows, kCoreNames[2], lr);
    if (core_wanted_[3]) Add(rows, kCoreNames[3], static_cast<double>(k * tokens_per_step_));
    if (core_wanted_[4]) {
      Add(rows, kCoreNames[4],
          param_norm0_ * (1 + 0.3 * (1 - std::exp(-progress_ / 300))) *
              (1 + 0.001 * rng_.Bounded()));
    }
    if (core_wanted_[5]) Add(rows, kCoreNames[5], tokens_per_step_ / dt);
    if (core_wanted_[6]) Add(rows, kCoreNames[6], dt);
    Groups(base, spike_energy, blown, rows);
    if (c.probe_freq > 0 && k % c.probe_freq == 0) Probes(decay, rows);

    if (blown) {
      diverged_ = true;
      finished_ = true;
      return;
    }
    const bool last = k == steps_;
    if ((c.eval.every > 0 && k % c.eval.every == 0) || last) {
      time_ += kEvalSeconds;
      const double val = smooth + 0.05 + 0.5 * bump_ + 0.003 * rng_.Bounded();
      if (val_wanted_) {
        Add(rows, kValName, val);
        final_val_ = val;
        if (!best_val_ || val < *best_val_) best_val_ = val;
      }
    }
    if (last) {
      checkpoint_ = CheckpointPath(k);  // sweep-train's final checkpoint.
      finished_ = true;
    }
  }

  // Per-group grad norms: jittered shares of base², plus the spike's energy on the embeddings
  // (55 %) and layer 0's attention (45 %), so that Σ group² = total².
  void Groups(double base, double spike_energy, bool blown, std::vector<MetricRow>* rows) {
    std::vector<double> sq(shares_.size());
    double sum = 0;
    for (size_t i = 0; i < shares_.size(); ++i) {
      sq[i] = shares_[i] * std::exp(0.2 * rng_.Bounded());
      sum += sq[i];
    }
    for (double& v : sq) v = v / sum * base * base;
    sq[0] += 0.55 * spike_energy;
    sq[1] += 0.45 * spike_energy;
    for (size_t i = 0; i < sq.size(); ++i) {
      if (group_wanted_[i]) Add(rows, names_.groups[i], blown ? kNaN : std::sqrt(sq[i]));
    }
  }

  // Attention logits grow with lr and training (Wortsman et al. 2023); the output
  // log-sum-exp drifts up from ln(vocab).
  void Probes(double decay, std::vector<MetricRow>* rows) {
    const double frac = static_cast<double>(step_) / static_cast<double>(steps_);
    const double growth = 30 * std::pow(lr_ / kLrRef, 1.3) * std::pow(frac, 1.5);
    for (int i = 0; i < depth_; ++i) {
      const double layer = 1 + 0.4 * (i == 0 ? 1.0 : static_cast<double>(i) / depth_);
      const double v = (4 + growth * layer) * std::exp(0.05 * rng_.Bounded());
      if (probe_wanted_[i]) Add(rows, names_.probes[i], v);
    }
    const double lse =
        5.55 + 1.5 * (1 - decay) * std::pow(lr_ / kLrRef, 0.3) + 0.02 * rng_.Bounded();
    if (probe_wanted_[depth_]) Add(rows, names_.probes[depth_], lse);
  }

  const TrialPlan plan_;
  const int attempt_;
  const SweepDbOptions& options_;
  Rng rng_;
  double time_;         // When the current step ended.
  double next_dt_ = 0;  // How long the next step takes.
  int64_t steps_ = 0;
  int depth_ = 0;
  double lr_ = 0;
  Names names_;
  std::vector<bool> core_wanted_, group_wanted_, probe_wanted_;
  bool val_wanted_ = true;
  double loss0_ = 0, floor_ = 0, loss_sigma_ = 0, lr_speed_ = 1;
  double grad_floor_ = 0, grad_start_ = 0, spike_p_ = 0;
  double param_norm0_ = 0, step_seconds_ = 0;
  int64_t tokens_per_step_ = 0;
  std::vector<double> shares_;
  int64_t diverge_at_ = 0;  // 0: never.
  int64_t hold_at_ = 0;     // 0: never; else the trial stops advancing at this step.
  int64_t step_ = 0;
  double progress_ = 0;                 // Σ schedule factor × lr_speed_.
  double bump_ = 0, pending_bump_ = 0;  // The loss's response to a grad spike.
  bool finished_ = false, diverged_ = false;
  std::optional<double> final_val_, best_val_;
  std::string checkpoint_;
};

}  // namespace

namespace {

bool Wanted(const SweepDbOptions& options, const std::string& name) {
  return options.only_metrics.empty() ||
         std::find(options.only_metrics.begin(), options.only_metrics.end(), name) !=
             options.only_metrics.end();
}

int64_t Warmup(const SweepDbOptions& options) {
  return std::clamp<int64_t>(options.steps / 10, 1, 2000);
}

int64_t CheckpointEvery(const SweepDbOptions& options) {
  return options.eval_every > 0 ? options.eval_every : std::max<int64_t>(1, options.steps / 4);
}

std::string ValueList(const std::vector<std::string>& values) {
  return absl::StrCat("[", absl::StrJoin(values, ", "), "]");
}

// The trial plans, by trial id, from the stored trials (their resolved configs).
absl::StatusOr<std::map<int64_t, TrialPlan>> PlanTrials(Store& store, int64_t sweep_id,
                                                        const SweepDbOptions& options) {
  absl::StatusOr<std::vector<orchestrator::TrialRow>> rows = store.ListTrials(sweep_id);
  if (!rows.ok()) return Annotate(rows.status(), "listing the trials");
  const std::vector<double> depths(options.depths.begin(), options.depths.end());
  std::map<int64_t, TrialPlan> plans;
  uint64_t index = 0;
  for (const orchestrator::TrialRow& row : *rows) {
    absl::StatusOr<trainer::TrainConfig> config =
        trainer::ParseTrainConfig(row.config, absl::StrCat("trial ", row.id, " config"));
    if (!config.ok()) return config.status();
    TrialPlan plan;
    plan.trial_id = row.id;
    plan.config = *config;
    plan.lr_rank = Rank(options.lrs, config->optim.lr);
    plan.depth_rank = Rank(depths, config->model.n_layers);
    plan.diverges = options.lrs.size() > 1 && options.depths.size() > 1 && plan.lr_rank == 1 &&
                    plan.depth_rank == 1;
    uint64_t x = options.seed * 0x9e3779b97f4a7c15ULL + index++;
    plan.seed = Rng::SplitMix(x);
    plans.emplace(row.id, std::move(plan));
  }
  return plans;
}

// A simulated sweep-worker with one CPU slot.
struct Worker {
  int64_t id = 0;
  std::unique_ptr<TrialSim> trial;
};

// Runs the whole sweep; `clock` is the scheduler's and monitor's.
class Simulation {
 public:
  Simulation(Store* store, SimClock* clock, const SweepDbOptions& options,
             std::map<int64_t, TrialPlan> plans, const SweepDbProgressFn& progress)
      : store_(store),
        clock_(clock),
        options_(options),
        scheduler_(store, clock, {options.lease_ttl, 5}),
        monitor_(store, clock),
        plans_(std::move(plans)),
        progress_(progress) {}

  absl::Status Run() {
    const int n = std::max(options_.workers, options_.running);
    for (int i = 0; i < n; ++i) {
      orchestrator::WorkerInfo info;
      info.name = absl::StrFormat("%s-worker-%02d", options_.sweep, i);
      info.host = absl::StrFormat("gen-host-%d", i / 4);
      info.cpu_slots = 1;
      info.labels_json = R"({"workdir": "/srv/sweep-work"})";
      absl::StatusOr<int64_t> id = scheduler_.RegisterWorker(info);
      if (!id.ok()) return Annotate(id.status(), "registering a worker");
      workers_.push_back(Worker{*id, nullptr});
    }
    for (;;) {
      if (absl::Status s = LeaseIdle(); !s.ok()) return s;
      const bool active = std::any_of(workers_.begin(), workers_.end(), [](const Worker& w) {
        return w.trial != nullptr && !w.trial->held();
      });
      if (!active) return absl::OkStatus();
      clock_->Set(clock_->Now() + options_.heartbeat_interval);
      for (Worker& worker : workers_) {
        if (absl::Status s = Advance(worker); !s.ok()) return s;
      }
      for (Worker& worker : workers_) {
        if (absl::Status s = Heartbeat(worker); !s.ok()) return s;
      }
      if (absl::StatusOr<int> expired = scheduler_.ExpireLeases(); !expired.ok()) {
        return Annotate(expired.status(), "expiring leases");
      }
      Report(false);
    }
  }

  int64_t rows() const { return rows_; }

 private:
  absl::Status LeaseIdle() {
    for (Worker& worker : workers_) {
      if (worker.trial != nullptr || drained_) continue;
      absl::StatusOr<std::vector<Lease>> leases = scheduler_.LeaseTrials(worker.id, 0, 1, 1);
      if (!leases.ok()) return Annotate(leases.status(), "leasing a trial");
      if (leases->empty()) {
        // Nothing pending, and nothing here ever goes back to pending (no failures, releases
        // or pauses): stop asking, which is most of the cost of a one-trial sweep.
        drained_ = true;
        continue;
      }
      const Lease& lease = leases->front();
      auto plan = plans_.find(lease.trial_id);
      if (plan == plans_.end()) {
        return absl::InternalError(
            absl::StrCat("leased trial ", lease.trial_id, " is not one of the sweep's"));
      }
      ++leased_;
      const bool hold = leased_ > static_cast<int64_t>(plans_.size()) - options_.running;
      const int64_t hold_at =
          hold ? std::max<int64_t>(1, static_cast<int64_t>(0.6 * options_.steps)) : 0;
      if (absl::Status s = scheduler_.MarkRunning(lease.trial_id, lease.attempt); !s.ok()) {
        return Annotate(s, "starting a trial");
      }
      worker.trial =
          std::make_unique<TrialSim>(options_, plan->second, lease, clock_->Now(), hold_at);
    }
    return absl::OkStatus();
  }

  // The trainer runs until now: its rows (in batches), checkpoints and, when it exited, the
  // outcome.
  absl::Status Advance(Worker& worker) {
    if (worker.trial == nullptr) return absl::OkStatus();
    TrialSim& trial = *worker.trial;
    rows_buffer_.clear();
    checkpoints_.clear();
    trial.EmitUntil(clock_->Now(), &rows_buffer_, &checkpoints_);
    for (size_t begin = 0; begin < rows_buffer_.size(); begin += options_.batch_rows) {
      const size_t end = std::min(rows_buffer_.size(), begin + options_.batch_rows);
      batch_.assign(rows_buffer_.begin() + static_cast<std::ptrdiff_t>(begin),
                    rows_buffer_.begin() + static_cast<std::ptrdiff_t>(end));
      absl::StatusOr<int64_t> added = monitor_.Ingest(batch_);
      if (!added.ok()) return Annotate(added.status(), "ingesting metrics");
      rows_ += *added;
    }
    for (const auto& [step, path] : checkpoints_) {
      absl::Status s = scheduler_.ReportCheckpoint(trial.trial_id(), trial.attempt(), path, step);
      if (!s.ok()) return Annotate(s, "reporting a checkpoint");
    }
    if (!trial.finished()) return absl::OkStatus();
    return End(worker, trial.Outcome());
  }

  absl::Status End(Worker& worker, const Completion& completion) {
    TrialSim& trial = *worker.trial;
    absl::Status s = scheduler_.Complete(trial.trial_id(), trial.attempt(), completion);
    if (!s.ok()) return Annotate(s, absl::StrCat("completing trial ", trial.trial_id()));
    monitor_.Forget(trial.trial_id());
    worker.trial.reset();
    ++ended_;
    Report(true);
    return absl::OkStatus();
  }

  // Renews the worker's lease; a trial sweepd asks to stop (early termination) stops, as
  // sweep-train does on SIGTERM, at the step it reached.
  absl::Status Heartbeat(Worker& worker) {
    std::vector<orchestrator::TrialProgress> progress;
    if (worker.trial != nullptr) {
      progress.push_back({worker.trial->trial_id(), worker.trial->attempt(), worker.trial->step()});
    }
    absl::StatusOr<std::vector<orchestrator::StopRequest>> stops =
        scheduler_.Heartbeat(worker.id, progress);
    if (!stops.ok()) return Annotate(stops.status(), "heartbeat");
    for (const orchestrator::StopRequest& stop : *stops) {
      if (worker.trial == nullptr || stop.trial_id != worker.trial->trial_id()) continue;
      Completion c;
      c.outcome = Outcome::kStopped;
      c.last_step = worker.trial->step();
      c.final_metric = worker.trial->final_val();
      c.best_metric = worker.trial->best_val();
      c.checkpoint = worker.trial->checkpoint();
      c.exit_code = 4;  // sweep-train preempted by the worker's SIGTERM.
      if (absl::Status s = End(worker, c); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  void Report(bool trial_ended) {
    if (!progress_) return;
    if (!trial_ended && rows_ - reported_rows_ < kProgressRows) return;
    reported_rows_ = rows_;
    const int64_t held = std::count_if(workers_.begin(), workers_.end(), [](const Worker& w) {
      return w.trial != nullptr && w.trial->held();
    });
    progress_({ended_ + held, static_cast<int64_t>(plans_.size()), rows_, 0});
  }

  Store* const store_;
  SimClock* const clock_;
  const SweepDbOptions& options_;
  orchestrator::Scheduler scheduler_;
  orchestrator::Monitor monitor_;
  const std::map<int64_t, TrialPlan> plans_;
  const SweepDbProgressFn& progress_;
  std::vector<Worker> workers_;
  std::vector<MetricRow> rows_buffer_, batch_;
  std::vector<std::pair<int64_t, std::string>> checkpoints_;
  int64_t leased_ = 0, ended_ = 0, rows_ = 0, reported_rows_ = 0;
  bool drained_ = false;  // LeaseTrials found nothing pending.
};

absl::StatusOr<int64_t> CountSpikes(Store& store, int64_t sweep_id) {
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(store.db(),
                         "SELECT COUNT(*) FROM spikes WHERE trial_id IN "
                         "(SELECT id FROM trials WHERE sweep_id = ?)",
                         -1, &st, nullptr) != SQLITE_OK) {
    return absl::InternalError(absl::StrCat("counting spikes: ", sqlite3_errmsg(store.db())));
  }
  sqlite3_bind_int64(st, 1, sweep_id);
  const int64_t n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
  sqlite3_finalize(st);
  if (n < 0) return absl::InternalError("counting spikes: no row");
  return n;
}

}  // namespace

std::string SweepDbSpecText(const SweepDbOptions& options) {
  std::vector<std::string> seeds, depths, lrs;
  for (int s = 0; s < options.seeds; ++s) seeds.push_back(absl::StrCat(s));
  for (int d : options.depths) depths.push_back(absl::StrCat(d));
  for (double lr : options.lrs) lrs.push_back(ShortestDouble(lr));
  const int depth0 = options.depths.empty() ? 2 : options.depths.front();
  const std::string lr0 = lrs.empty() ? "0.01" : lrs.front();
  return absl::StrFormat(
      R"(# Synthetic: written by tools/sweep_db_gen (seed %d), not a real run. Curves, spikes and
# divergences are simulated; the database is what sweepd would have stored for them.
name: %s
description: synthetic depth x lr sweep (tools/sweep_db_gen.h, seed %d)
method: grid
metric: {name: loss/val, goal: minimize}
trainer: builtin
base:
  steps: %d
  seed: 0
  probe_freq: %d
  model: {dim: 64, n_layers: %d, n_heads: 4, init_std_factor: disabled}
  optim: {lr: %s, weight_decay: 0.1, warmup: %d, clip: 1.0, scheduler: cosine}
  data: {sources: {kjv: 1.0}, batch_size: 16, seq_len: 64, tokenizer: bytes}
  eval: {every: %d, steps: 8}
  checkpoint: {every: %d}
parameters:
  seed: {values: %s}
  model.n_layers: {values: %s}
  optim.lr: {values: %s}
early_terminate: {type: divergence}
resources: {gpus_per_trial: 0}
max_attempts: 3
)",
      options.seed, options.sweep, options.seed, options.steps, options.probe_every, depth0, lr0,
      Warmup(options), options.eval_every, CheckpointEvery(options), ValueList(seeds),
      ValueList(depths), ValueList(lrs));
}

absl::Status ValidateSweepDbOptions(const SweepDbOptions& o) {
  auto bad = [](const std::string& what) { return absl::InvalidArgumentError(what); };
  if (o.sweep.empty()) return bad("--sweep: must not be empty");
  if (o.depths.empty()) return bad("--depths: at least one depth");
  for (int d : o.depths) {
    if (d < 1 || d > 256) return bad(absl::StrCat("--depths: ", d, " is not in 1..256"));
  }
  if (o.lrs.empty()) return bad("--lrs: at least one learning rate");
  for (double lr : o.lrs) {
    if (!(lr > 0) || !std::isfinite(lr)) return bad(absl::StrCat("--lrs: ", lr, " is not > 0"));
  }
  if (o.seeds < 1) return bad("--seeds: at least 1");
  if (o.steps < 1) return bad("--steps: at least 1");
  if (o.eval_every < 0) return bad("--eval-every: must be >= 0");
  if (o.probe_every < 0) return bad("--probe-every: must be >= 0");
  const int64_t trials =
      static_cast<int64_t>(o.depths.size()) * static_cast<int64_t>(o.lrs.size()) * o.seeds;
  if (o.running < 0 || o.running > trials) {
    return bad(absl::StrCat("--running: must be in 0..", trials, " (the sweep's trials)"));
  }
  if (o.workers < 1) return bad("--workers: at least 1");
  if (!(o.heartbeat_interval > 0)) return bad("heartbeat interval: must be > 0");
  if (!(o.lease_ttl > o.heartbeat_interval)) {
    return bad("--lease-ttl: must be longer than the heartbeat interval");
  }
  if (o.batch_rows < 1) return bad("batch rows: at least 1");
  return absl::OkStatus();
}

int64_t RowsPerCompletedTrial(const SweepDbOptions& options, int n_layers) {
  const Names names = NamesFor(n_layers);
  int64_t per_step = 0;
  for (const char* name : kCoreNames) per_step += Wanted(options, name) ? 1 : 0;
  if (options.layer_metrics) {
    for (const std::string& name : names.groups) per_step += Wanted(options, name) ? 1 : 0;
  }
  int64_t per_probe = 0;
  for (const std::string& name : names.probes) per_probe += Wanted(options, name) ? 1 : 0;
  const int64_t probes = options.probe_every > 0 ? options.steps / options.probe_every : 0;
  int64_t vals = 1;
  if (options.eval_every > 0) {
    vals = options.steps / options.eval_every + (options.steps % options.eval_every != 0 ? 1 : 0);
  }
  if (!Wanted(options, kValName)) vals = 0;
  return per_step * options.steps + per_probe * probes + vals;
}

absl::StatusOr<SweepDbStats> GenerateSweepDb(const std::string& path, const SweepDbOptions& options,
                                             const SweepDbProgressFn& progress) {
  if (absl::Status s = ValidateSweepDbOptions(options); !s.ok()) return s;
  const auto wall_start = std::chrono::steady_clock::now();
  auto wall = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  };
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  if (!store.ok()) return Annotate(store.status(), absl::StrCat("opening ", path));
  if ((*store)->GetSweep(options.sweep).ok()) {
    return absl::AlreadyExistsError(
        absl::StrCat(path, " already holds a sweep named '", options.sweep, "'"));
  }

  orchestrator::SpecLimits limits;
  limits.max_trials = options.max_trials;
  const std::string origin = options.sweep + ".yaml";
  absl::StatusOr<orchestrator::SweepSpec> spec =
      orchestrator::ParseSweepSpec(SweepDbSpecText(options), origin, limits);
  if (!spec.ok()) return Annotate(spec.status(), "the generated spec");
  absl::StatusOr<std::vector<orchestrator::TrialSpec>> trials =
      orchestrator::ExpandSweep(*spec, limits);
  if (!trials.ok()) return Annotate(trials.status(), "expanding the generated spec");

  SimClock clock(options.start_time);
  absl::StatusOr<orchestrator::SubmitResult> submitted =
      (*store)->SubmitSweep(*spec, *trials, clock.Now());
  if (!submitted.ok()) return Annotate(submitted.status(), "submitting the sweep");
  absl::StatusOr<std::map<int64_t, TrialPlan>> plans =
      PlanTrials(**store, submitted->sweep_id, options);
  if (!plans.ok()) return plans.status();

  SweepDbProgressFn timed;
  if (progress) {
    timed = [&](const SweepDbProgress& p) {
      SweepDbProgress with_time = p;
      with_time.seconds = wall();
      progress(with_time);
    };
  }
  Simulation simulation(store->get(), &clock, options, *std::move(plans), timed);
  if (absl::Status s = simulation.Run(); !s.ok()) return s;

  SweepDbStats stats;
  stats.sweep_id = submitted->sweep_id;
  stats.rows = simulation.rows();
  absl::StatusOr<std::vector<orchestrator::TrialRow>> rows =
      (*store)->ListTrials(submitted->sweep_id);
  if (!rows.ok()) return Annotate(rows.status(), "listing the trials");
  for (const orchestrator::TrialRow& row : *rows) {
    ++stats.trials;
    if (row.state == "completed") ++stats.completed;
    if (row.state == "diverged") ++stats.diverged;
    if (row.state == "running") ++stats.running;
  }
  absl::StatusOr<int64_t> spikes = CountSpikes(**store, submitted->sweep_id);
  if (!spikes.ok()) return spikes.status();
  stats.spikes = *spikes;
  stats.simulated_seconds = clock.Now() - options.start_time;
  store->reset();  // Closes the file: the last connection checkpoints the WAL into it.
  stats.seconds = wall();
  return stats;
}

}  // namespace sweep::tools
