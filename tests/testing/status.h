// Test helpers for absl::Status and absl::StatusOr<T>: ASSERT_OK(expr) works with both and
// prints the message on failure.
#ifndef SWEEP_TESTS_TESTING_STATUS_H_
#define SWEEP_TESTS_TESTING_STATUS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sweep::testing {

inline const absl::Status& StatusOf(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

}  // namespace sweep::testing

#define ASSERT_OK(expr)                                                          \
  do {                                                                           \
    const auto& _status_or = (expr);                                             \
    ASSERT_TRUE(::sweep::testing::StatusOf(_status_or).ok())                     \
        << ::sweep::testing::StatusOf(_status_or).message();                     \
  } while (0)

#endif  // SWEEP_TESTS_TESTING_STATUS_H_
