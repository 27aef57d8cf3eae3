// A prepared SQLite statement (RAII) for the orchestrator's own code. Internal: include it
// only from orchestrator/*.cc.
#ifndef SWEEP_ORCHESTRATOR_SQL_H_
#define SWEEP_ORCHESTRATOR_SQL_H_

#include <sqlite3.h>

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sweep::orchestrator {

// An SQLite failure as a status whose code says what a caller can do about it: a full disk
// (SQLITE_FULL) is ResourceExhausted and an I/O error or a busy database Unavailable (both
// pass; the caller retries), anything else Internal.
inline absl::Status SqliteError(int rc, const std::string& message) {
  switch (rc & 0xff) {
    case SQLITE_FULL:
      return absl::ResourceExhaustedError(absl::StrCat(message, " (the database's disk is full)"));
    case SQLITE_IOERR:
      return absl::UnavailableError(absl::StrCat(message, " (I/O error on the database file)"));
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

// Whether a status came from the database file failing (full disk, I/O error), not from a
// request: what sweepd watches to report the disk and to hold lease expiry.
inline bool IsStorageFailure(const absl::Status& s) {
  return absl::IsResourceExhausted(s) ||
         (absl::IsUnavailable(s) && s.message().find("I/O error on the database") != absl::string_view::npos);
}

// Prepared statements of one connection kept for reuse, keyed by their SQL text: the hot
// paths (a metrics batch, a heartbeat) run the same few statements thousands of times a
// second, and preparing one costs more than running it. Used through Statement(cache, sql).
// Not thread-safe: only under whatever serialises the connection. Clear() (or destruction)
// finalizes them all, which must happen before the connection is closed.
class StatementCache {
 public:
  explicit StatementCache(sqlite3* db) : db_(db) {}
  ~StatementCache() { Clear(); }
  StatementCache(const StatementCache&) = delete;
  StatementCache& operator=(const StatementCache&) = delete;

  sqlite3* db() const { return db_; }
  // An idle statement for `sql` (prepared now if none is), with its SQLite result code.
  sqlite3_stmt* Take(const char* sql, int* rc) {
    auto it = idle_.find(sql);
    if (it != idle_.end() && !it->second.empty()) {
      sqlite3_stmt* stmt = it->second.back();
      it->second.pop_back();
      *rc = SQLITE_OK;
      return stmt;
    }
    sqlite3_stmt* stmt = nullptr;
    *rc = sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
    return stmt;
  }
  // Gives a statement from Take() back, reset and unbound (a few per SQL text are kept).
  void Return(sqlite3_stmt* stmt) {
    if (stmt == nullptr) return;
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    std::vector<sqlite3_stmt*>& idle = idle_[sqlite3_sql(stmt)];
    if (idle.size() >= 4) {
      sqlite3_finalize(stmt);
    } else {
      idle.push_back(stmt);
    }
  }
  void Clear() {
    for (auto& [sql, stmts] : idle_) {
      for (sqlite3_stmt* stmt : stmts) sqlite3_finalize(stmt);
    }
    idle_.clear();
  }

 private:
  sqlite3* const db_;
  std::unordered_map<std::string, std::vector<sqlite3_stmt*>> idle_;
};

class Statement {
 public:
  Statement(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  Statement(sqlite3* db, const std::string& sql) : Statement(db, sql.c_str()) {}
  // Borrows the statement from `cache` and gives it back when destroyed.
  Statement(StatementCache* cache, const char* sql) : db_(cache->db()), cache_(cache) {
    stmt_ = cache->Take(sql, &rc_);
  }
  Statement(StatementCache* cache, const std::string& sql) : Statement(cache, sql.c_str()) {}
  ~Statement() {
    if (cache_ != nullptr) {
      cache_->Return(stmt_);
    } else {
      sqlite3_finalize(stmt_);
    }
  }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  absl::Status status() const {
    if (rc_ == SQLITE_OK) return absl::OkStatus();
    return SqliteError(rc_, absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
  }
  void Bind(int i, int64_t v) { sqlite3_bind_int64(stmt_, i, v); }
  void Bind(int i, int v) { sqlite3_bind_int64(stmt_, i, v); }
  void Bind(int i, double v) { sqlite3_bind_double(stmt_, i, v); }
  void Bind(int i, const std::string& v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  }
  void BindNull(int i) { sqlite3_bind_null(stmt_, i); }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int Step() { return sqlite3_step(stmt_); }
  void Reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  int64_t Int(int col) { return sqlite3_column_int64(stmt_, col); }
  double Double(int col) { return sqlite3_column_double(stmt_, col); }
  bool IsNull(int col) { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  std::string Text(int col) {
    const unsigned char* text = sqlite3_column_text(stmt_, col);
    return text == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(text));
  }
  absl::Status Error(const char* what) {
    return SqliteError(sqlite3_extended_errcode(db_), absl::StrCat(what, ": ", sqlite3_errmsg(db_)));
  }

 private:
  sqlite3* const db_;
  StatementCache* const cache_ = nullptr;  // Not owned; null: finalized here.
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

// Runs SQL without results (BEGIN, COMMIT, DDL).
inline absl::Status ExecSql(sqlite3* db, const std::string& sql) {
  char* error = nullptr;
  if (const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error); rc != SQLITE_OK) {
    absl::Status s = SqliteError(rc, absl::StrCat("sqlite: ", error != nullptr ? error : "?"));
    sqlite3_free(error);
    return s;
  }
  return absl::OkStatus();
}

// ExecSql for one statement without parameters or results, prepared once in `cache` (BEGIN
// and COMMIT on the paths that run per request).
inline absl::Status ExecCached(StatementCache* cache, const char* sql) {
  Statement st(cache, sql);
  if (!st.status().ok()) return st.status();
  if (const int rc = st.Step(); rc != SQLITE_DONE && rc != SQLITE_ROW) {
    return SqliteError(rc, absl::StrCat("sqlite: ", sqlite3_errmsg(cache->db())));
  }
  return absl::OkStatus();
}

}  // namespace sweep::orchestrator

#endif  // SWEEP_ORCHESTRATOR_SQL_H_
