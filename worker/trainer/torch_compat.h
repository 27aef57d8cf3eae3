// What differs between the LibTorch versions sweep-train builds against: Debian 12's 1.13
// (the CPU build, CI) and the 2.x that ships inside a CUDA PyTorch install (the GPU build,
// tools/gpu_check.sh). Code that needs a 2.x API tests SWEEP_TORCH_AT_LEAST and keeps a path
// for 1.13. tools/check_torch2.sh compiles the trainer against Debian trixie's 2.6 headers, so
// the 2.x paths are type-checked without a GPU machine.
#ifndef SWEEP_WORKER_TRAINER_TORCH_COMPAT_H_
#define SWEEP_WORKER_TRAINER_TORCH_COMPAT_H_

#include <torch/version.h>

#define SWEEP_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||        \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

#endif  // SWEEP_WORKER_TRAINER_TORCH_COMPAT_H_
