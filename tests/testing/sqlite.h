// Reads one value with SQL, for tests that check the database directly.
#ifndef SWEEP_TESTS_TESTING_SQLITE_H_
#define SWEEP_TESTS_TESTING_SQLITE_H_

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <string>

namespace sweep::testing {

// The first column of the first row as text; "" for NULL or no row.
inline std::string QueryScalar(sqlite3* db, const std::string& sql) {
  sqlite3_stmt* st = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  std::string out;
  if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
    out = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
  }
  sqlite3_finalize(st);
  return out;
}

}  // namespace sweep::testing

#endif  // SWEEP_TESTS_TESTING_SQLITE_H_
