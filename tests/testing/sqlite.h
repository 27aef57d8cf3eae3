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

// QueryScalar on a read-only connection to the database at `path` (which a live sweepd may be
// writing: WAL, and a busy timeout).
inline std::string QueryScalarAt(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
  sqlite3_busy_timeout(db, 2000);
  const std::string out = QueryScalar(db, sql);
  sqlite3_close(db);
  return out;
}

}  // namespace sweep::testing

#endif  // SWEEP_TESTS_TESTING_SQLITE_H_
