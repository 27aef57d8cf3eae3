// A clock that moves only when told: lease expiry is tested without sleeping.
#ifndef SWEEP_TESTS_ORCHESTRATOR_FAKE_CLOCK_H_
#define SWEEP_TESTS_ORCHESTRATOR_FAKE_CLOCK_H_

#include "orchestrator/scheduler.h"

namespace sweep::orchestrator {

class FakeClock : public Clock {
 public:
  double Now() override { return now_; }
  void Advance(double seconds) { now_ += seconds; }

 private:
  double now_ = 1'000'000;
};

}  // namespace sweep::orchestrator

#endif  // SWEEP_TESTS_ORCHESTRATOR_FAKE_CLOCK_H_
