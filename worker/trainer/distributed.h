// Data-parallel trials: the ranks of one trial and the collectives between them (c10d: Gloo
// on CPU, NCCL on CUDA where this LibTorch has it).
//
// Launch contract (torchrun's environment; sweep-worker starts one process per rank, every
// one with the same argv):
//   WORLD_SIZE=N RANK=r LOCAL_RANK=r LOCAL_WORLD_SIZE=N
//   SWEEP_RENDEZVOUS=<file>            a c10d FileStore at that path (fresh for each attempt;
//                                       all ranks on one machine), or, when unset,
//   MASTER_ADDR=<host> MASTER_PORT=<p> a c10d TCPStore served by rank 0.
// WORLD_SIZE unset or 1 is a single-process run: nothing here is used.
//
// Every collective waits at most `timeout` (distributed.timeout): a peer that died or hangs
// makes the call fail with Unavailable (naming the collective and the rank) instead of
// blocking for ever. After a failure the communicator is unusable; the trainer exits.
//
// Not thread-safe; the training loop's thread only.
#ifndef SWEEP_WORKER_TRAINER_DISTRIBUTED_H_
#define SWEEP_WORKER_TRAINER_DISTRIBUTED_H_

#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sweep::trainer {

struct WorldInfo {
  int world_size = 1;
  int rank = 0;
  int local_rank = 0;
  int local_world_size = 1;
  std::string rendezvous_file;  // SWEEP_RENDEZVOUS
  std::string master_addr;      // MASTER_ADDR, when no rendezvous file
  int master_port = 0;          // MASTER_PORT

  bool distributed() const { return world_size > 1; }
};

// Reads the environment above. InvalidArgument (naming the variable) for a malformed or
// inconsistent value, or a missing rendezvous when WORLD_SIZE > 1.
absl::StatusOr<WorldInfo> WorldInfoFromEnvironment();

// "gloo" or "nccl" for `device`; an error when this build has no backend for it.
absl::StatusOr<std::string> BackendFor(torch::Device device);

class Communicator {
 public:
  // Meets the other ranks (waits at most `timeout` for all of them) and builds the process
  // group for `device` (Gloo on CPU, NCCL on CUDA). Unavailable when a peer does not come.
  static absl::StatusOr<std::unique_ptr<Communicator>> Connect(const WorldInfo& world,
                                                               torch::Device device,
                                                               std::chrono::milliseconds timeout);
  // After a failed collective the process group is left alone (its threads may still wait
  // on a dead peer, and joining them could block); the process is about to exit anyway.
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  const std::string& backend() const { return backend_; }

  // Sums each tensor across ranks, in place. The tensors go out as separate collectives that
  // are all in flight together (one round trip, not one per tensor); `what` names them in
  // errors. Tensors must be contiguous, on the communicator's device.
  absl::Status AllReduceSum(const std::vector<torch::Tensor>& tensors, const std::string& what);
  // Element-wise maximum across ranks, in place.
  absl::Status AllReduceMax(const torch::Tensor& tensor, const std::string& what);

 private:
  struct Impl;  // The c10d store and process group (their types differ between LibTorch 1.x
                // and 2.x).
  Communicator(std::unique_ptr<Impl> impl, int rank, int world_size, std::string backend,
               std::chrono::milliseconds timeout);
  absl::Status Run(const std::vector<torch::Tensor>& tensors, bool max, const std::string& what);

  std::unique_ptr<Impl> impl_;
  bool failed_ = false;  // A collective failed; impl_ must not be used (or destroyed) again.
  const int rank_;
  const int world_size_;
  const std::string backend_;
  const std::chrono::milliseconds timeout_;
};

}  // namespace sweep::trainer

#endif  // SWEEP_WORKER_TRAINER_DISTRIBUTED_H_
