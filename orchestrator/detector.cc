#include "orchestrator/detector.h"

#include <algorithm>
#include <cmath>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace sweep::orchestrator {
namespace {

std::string NonFiniteText(double value) {
  return std::isnan(value) ? "nan" : value > 0 ? "inf" : "-inf";
}

}  // namespace

std::string Divergence::Describe() const {
  const std::string shown =
      std::isfinite(value) ? absl::StrFormat("%.4g", value) : NonFiniteText(value);
  return absl::StrCat(name, " = ", shown, " at step ", step, ": ", reason);
}

TraceWindow::TraceWindow(int window) : window_(static_cast<size_t>(std::max(window, 1))) {}

size_t TraceWindow::LowerBound(int64_t step) const {
  return static_cast<size_t>(
      std::lower_bound(values_.begin(), values_.end(), step,
                       [](const std::pair<int64_t, double>& kept, int64_t s) { return kept.first < s; }) -
      values_.begin());
}

TraceWindow::Stats TraceWindow::Before(int64_t step, bool with_median) const {
  Stats stats;
  const size_t end = LowerBound(step);
  const size_t begin = end > window_ ? end - window_ : 0;
  if (begin == end) return stats;
  stats.n = static_cast<int>(end - begin);
  const auto first = values_.begin() + static_cast<std::ptrdiff_t>(begin);
  const auto last = values_.begin() + static_cast<std::ptrdiff_t>(end);
  double sum = 0;
  for (auto it = first; it != last; ++it) sum += it->second;
  stats.mean = sum / stats.n;
  double squares = 0;
  for (auto it = first; it != last; ++it) squares += (it->second - stats.mean) * (it->second - stats.mean);
  stats.std = std::sqrt(squares / stats.n);
  if (!with_median) return stats;
  std::vector<double> window;
  window.reserve(end - begin);
  for (auto it = first; it != last; ++it) window.push_back(it->second);
  const size_t half = window.size() / 2;
  std::nth_element(window.begin(), window.begin() + static_cast<std::ptrdiff_t>(half),
                   window.end());
  stats.median = window[half];
  if (window.size() % 2 == 0) {
    // The lower middle is the largest value of the lower half.
    const double lower =
        *std::max_element(window.begin(), window.begin() + static_cast<std::ptrdiff_t>(half));
    stats.median = (stats.median + lower) / 2;
  }
  return stats;
}

bool TraceWindow::Knows(int64_t step) const { return !dropped_ || LowerBound(step) >= window_; }

void TraceWindow::Add(int64_t step, double value) {
  if (!std::isfinite(value)) return;
  if (dropped_ && !values_.empty() && step < values_.front().first) return;
  if (values_.empty() || step > values_.back().first) {
    values_.emplace_back(step, value);
  } else {
    const size_t at = LowerBound(step);
    if (values_[at].first == step) return;  // Kept already.
    values_.emplace(values_.begin() + static_cast<std::ptrdiff_t>(at), step, value);
  }
  last_step_ = std::max(last_step_, step);
  while (values_.size() > 2 * window_) {
    values_.pop_front();
    dropped_ = true;
  }
}

TrialDetector::TrialDetector(const DetectionOptions& options, int64_t warmup)
    : options_(options), warmup_(warmup), loss_(options.window), grad_norm_(options.window) {}

TrialDetector::Findings TrialDetector::Observe(const std::string& name, int64_t step,
                                               double value) {
  return Process(name, step, value, /*judge=*/true);
}

void TrialDetector::Replay(const std::string& name, int64_t step, double value) {
  (void)Process(name, step, value, /*judge=*/false);
}

void TrialDetector::SetInitialLoss(double mean) {
  initial_loss_ = mean;
  first_losses_.clear();
}

TrialDetector::Findings TrialDetector::Process(const std::string& name, int64_t step, double value,
                                               bool judge) {
  Findings found;
  Trace* trace = name == kLossMetric ? &loss_ : name == kGradNormMetric ? &grad_norm_ : nullptr;
  if (trace == nullptr) return found;
  const bool extends = step > trace->values.last_step();
  if (!std::isfinite(value)) {
    if (extends) trace->run = 0;
    if (judge && !diverged_) {
      diverged_ = true;
      found.divergence = Divergence{name, step, value, "not a finite number"};
    }
    return found;
  }
  if (!trace->values.Knows(step)) return found;  // Older than every kept value.
  if (trace == &loss_ && !initial_loss_) {
    first_losses_.push_back(value);
    if (static_cast<int>(first_losses_.size()) >= options_.initial_steps) {
      double sum = 0;
      for (double v : first_losses_) sum += v;
      SetInitialLoss(sum / static_cast<double>(first_losses_.size()));
    }
  }
  // Only the grad-norm rule below reads the median.
  const TraceWindow::Stats window = trace->values.Before(step, trace == &grad_norm_ && extends);
  if (judge && window.n >= options_.min_values && window.std > 0) {
    const double z = (value - window.mean) / window.std;
    if (z > options_.z)
      found.spikes.push_back({name, step, value, z, window.mean, step <= warmup_});
  }
  if (extends) {
    bool over = false;
    if (trace == &grad_norm_) {
      over = window.n >= options_.min_values && window.median > 0 &&
             value > options_.grad_norm_factor * window.median;
    } else if (initial_loss_ && step > warmup_) {
      over = value > *initial_loss_ + options_.loss_margin * std::fabs(*initial_loss_);
    }
    trace->run = over ? trace->run + 1 : 0;
    if (trace->run == 1) trace->run_start = step;
    if (judge && !diverged_ && over && trace->run >= options_.consecutive) {
      diverged_ = true;
      const std::string steps = trace->run == 1 ? std::string("1 step")
                                                : absl::StrCat(trace->run, " steps in a row (",
                                                               trace->run_start, "..", step, ")");
      std::string reason;
      if (trace == &grad_norm_) {
        reason = absl::StrFormat("above %g x its running median %.4g for %s",
                                 options_.grad_norm_factor, window.median, steps);
      } else {
        reason =
            absl::StrFormat("above the initial loss %.4g (+%g%%) after warmup (%d steps) for %s",
                            *initial_loss_, options_.loss_margin * 100, warmup_, steps);
      }
      found.divergence = Divergence{name, step, value, reason};
    }
  }
  trace->values.Add(step, value);
  return found;
}

}  // namespace sweep::orchestrator
