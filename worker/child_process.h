// How sweep starts the processes it supervises (trials in sweep-worker; sweepd and workers
// in `sweepctl run`): a Boost.Process initializer, applied in the child between fork and exec.
//   * Its own process group: a stop (kill(-pid, SIGTERM)) reaches everything it starts, and a
//     Ctrl-C on the terminal reaches only the supervisor, which decides what to stop and how.
//   * PR_SET_PDEATHSIG: it dies with its supervisor, so nothing trains or serves unseen. If the
//     supervisor died before prctl took effect, the child is already an orphan and exits.
//   * An empty signal mask: supervisors block SIGTERM/SIGINT (a thread sigwaits for them) and
//     a mask survives exec; a child with SIGTERM blocked could never be stopped.
//   * Only stdin, stdout and stderr survive exec. Boost.Process makes its pipes without
//     O_CLOEXEC, so a trial forked while another thread read nvidia-smi through a pipe kept
//     that pipe's write end for its whole life, and the reader waited for the trial's end to
//     see EOF (GPU telemetry went missing for such trials; tests/worker).
// It is also where sweep includes Boost.Process (version 1) and names it `sweep::bp`.
#ifndef SWEEP_WORKER_CHILD_PROCESS_H_
#define SWEEP_WORKER_CHILD_PROCESS_H_

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>

#if __has_include(<boost/process/v1.hpp>)
// From Boost 1.86 version 2 of Boost.Process has the plain names; version 1, which sweep
// uses, lives on under v1/ (Debian unstable's Boost 1.92 has nothing else).
#include <boost/process/v1.hpp>
#include <boost/process/v1/extend.hpp>
namespace sweep {
namespace bp = boost::process::v1;
}  // namespace sweep
#else
#include <boost/process.hpp>
#include <boost/process/extend.hpp>
namespace sweep {
namespace bp = boost::process;
}  // namespace sweep
#endif

namespace sweep {

// Marks every descriptor above stderr close-on-exec (rather than closing it: Boost.Process
// reports a failed exec through a pipe of its own that must stay open until exec). Called in
// the child between fork and exec, so only async-signal-safe calls.
inline void CloseInheritedFdsOnExec() {
  if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) == 0) return;
  // Kernels before 5.11: one fcntl per possible descriptor, bounded.
  const long limit = std::min(sysconf(_SC_OPEN_MAX), 1L << 16);
  for (int fd = 3; fd < limit; ++fd) {
    const int flags = fcntl(fd, F_GETFD);
    if (flags >= 0 && !(flags & FD_CLOEXEC)) fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
  }
}

// For short helper commands (nvidia-smi): only their stdio is inherited.
struct OnlyStdioInherited : bp::extend::handler {
  template <typename Executor>
  void on_exec_setup(Executor&) const {
    CloseInheritedFdsOnExec();
  }
};

struct SupervisedChild : bp::extend::handler {
  pid_t parent = getpid();
  template <typename Executor>
  void on_exec_setup(Executor&) const {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    CloseInheritedFdsOnExec();
  }
};

}  // namespace sweep

#endif  // SWEEP_WORKER_CHILD_PROCESS_H_
