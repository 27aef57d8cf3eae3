// A child process for end-to-end tests: started with an argv list (no shell), its output
// redirected to files, signalled and waited for. POSIX only.
#ifndef SWEEP_TESTS_TESTING_SUBPROCESS_H_
#define SWEEP_TESTS_TESTING_SUBPROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace sweep::testing {

class Subprocess {
 public:
  // Starts argv[0] with `argv`; stdout and stderr go to the given files ("" keeps ours).
  Subprocess(const std::vector<std::string>& argv, const std::string& stdout_path,
             const std::string& stderr_path);
  ~Subprocess();  // Kills (SIGKILL) and reaps a child still running.
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  void Signal(int sig);
  // Waits for exit. Returns the exit code, or 128 + signal number if a signal ended it.
  int Wait();
  // Wait()'s code if the child has exited, without blocking; nullopt while it runs.
  std::optional<int> Poll();

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int exit_code_ = -1;
};

// Runs argv to completion; returns Subprocess::Wait()'s code.
int Run(const std::vector<std::string>& argv, const std::string& stdout_path = "",
        const std::string& stderr_path = "");

// Polls `condition` every few milliseconds until it holds or `timeout` passes.
bool WaitFor(const std::function<bool()>& condition, std::chrono::milliseconds timeout);

std::string ReadFileOrEmpty(const std::string& path);

// A fresh empty directory under the test temp dir.
std::string MakeTempDir(const std::string& prefix);

// Writes <dir>/cert.pem and <dir>/key.pem, a self-signed certificate for 127.0.0.1 and
// localhost (openssl); returns false, with openssl's output in <dir>/openssl.log, if it fails.
bool MakeSelfSignedCertificate(const std::string& dir);

// Live (not zombie) processes whose command line contains `text` and not `ignore` (when
// given): what a test checks to prove nothing outlived its supervisor.
int LiveProcessesMentioning(const std::string& text, const std::string& ignore = "");

}  // namespace sweep::testing

#endif  // SWEEP_TESTS_TESTING_SUBPROCESS_H_
