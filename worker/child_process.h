// How sweep starts the processes it supervises (trials in sweep-worker; sweepd and workers
// in `sweepctl run`): a Boost.Process initializer, applied in the child between fork and exec.
//   * Its own process group: a stop (kill(-pid, SIGTERM)) reaches everything it starts, and a
//     Ctrl-C on the terminal reaches only the supervisor, which decides what to stop and how.
//   * PR_SET_PDEATHSIG: it dies with its supervisor, so nothing trains or serves unseen. If the
//     supervisor died before prctl took effect, the child is already an orphan and exits.
//   * An empty signal mask: supervisors block SIGTERM/SIGINT (a thread sigwaits for them) and
//     a mask survives exec; a child with SIGTERM blocked could never be stopped.
#ifndef SWEEP_WORKER_CHILD_PROCESS_H_
#define SWEEP_WORKER_CHILD_PROCESS_H_

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <boost/process/extend.hpp>

namespace sweep {

struct SupervisedChild : boost::process::extend::handler {
  pid_t parent = getpid();
  template <typename Executor>
  void on_exec_setup(Executor&) const {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
  }
};

}  // namespace sweep

#endif  // SWEEP_WORKER_CHILD_PROCESS_H_
