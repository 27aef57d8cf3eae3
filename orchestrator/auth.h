// Token checks shared by sweepd's gRPC service and its dashboard.
#ifndef SWEEP_ORCHESTRATOR_AUTH_H_
#define SWEEP_ORCHESTRATOR_AUTH_H_

#include <algorithm>
#include <string>

namespace sweep::orchestrator {

// Compares in time that depends only on the lengths, so a wrong token's answer does not tell
// how many of its first characters were right.
inline bool ConstantTimeEquals(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? a[i] : 0;
    const unsigned char y = i < b.size() ? b[i] : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

}  // namespace sweep::orchestrator

#endif  // SWEEP_ORCHESTRATOR_AUTH_H_
