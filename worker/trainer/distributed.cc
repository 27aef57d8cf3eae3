#include "worker/trainer/distributed.h"

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <functional>
#include <string_view>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "absl/strings/str_cat.h"
#include "worker/trainer/torch_compat.h"

namespace sweep::trainer {
namespace {

// An integer environment variable: `fallback` when unset or empty.
absl::StatusOr<int> IntFromEnv(const char* name, int fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text, &end, 10);
  if (errno != 0 || *end != '\0' || value < 0 || value > INT_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": expected a non-negative integer, got '", text, "'"));
  }
  return static_cast<int>(value);
}

std::string StringFromEnv(const char* name) {
  const char* text = std::getenv(name);
  return text == nullptr ? "" : text;
}

std::string ErrorText(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) {
    return c10_error->what_without_backtrace();
  }
  return e.what();
}

// The store the ranks meet through at MASTER_ADDR:MASTER_PORT, served by rank 0.
c10::intrusive_ptr<c10d::Store> MakeTcpStore(const WorldInfo& world,
                                             std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<uint16_t>(world.master_port);
  options.isServer = world.rank == 0;
  options.numWorkers = world.world_size;
  options.waitWorkers = true;
  options.timeout = timeout;
#if SWEEP_TORCH_AT_LEAST(2, 4)
  // From 2.4 the store asks for its libuv backend by default and throws where LibTorch was built
  // without libuv (Debian's is); the classic backend serves a few ranks on one machine as well.
  try {
    return c10::make_intrusive<c10d::TCPStore>(world.master_addr, options);
  } catch (const std::exception& e) {
    if (std::string_view(e.what()).find("libuv") == std::string_view::npos) throw;
    options.useLibUV = false;
  }
#endif
  return c10::make_intrusive<c10d::TCPStore>(world.master_addr, options);
}

}  // namespace

absl::StatusOr<WorldInfo> WorldInfoFromEnvironment() {
  WorldInfo world;
  absl::StatusOr<int> size = IntFromEnv("WORLD_SIZE", 1);
  if (!size.ok()) return size.status();
  if (*size < 1) return absl::InvalidArgumentError("WORLD_SIZE: must be >= 1, got 0");
  world.world_size = *size;
  if (world.world_size == 1) return world;

  absl::StatusOr<int> rank = IntFromEnv("RANK", -1);
  if (!rank.ok()) return rank.status();
  if (*rank < 0 || *rank >= world.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RANK: expected 0 to ", world.world_size - 1, " with WORLD_SIZE=", world.world_size,
        ", got ", StringFromEnv("RANK").empty() ? "nothing" : StringFromEnv("RANK")));
  }
  world.rank = *rank;
  absl::StatusOr<int> local_rank = IntFromEnv("LOCAL_RANK", world.rank);
  if (!local_rank.ok()) return local_rank.status();
  absl::StatusOr<int> local_size = IntFromEnv("LOCAL_WORLD_SIZE", world.world_size);
  if (!local_size.ok()) return local_size.status();
  if (*local_size < 1 || *local_rank >= *local_size) {
    return absl::InvalidArgumentError(absl::StrCat("LOCAL_RANK: expected 0 to ", *local_size - 1,
                                                   " (LOCAL_WORLD_SIZE=", *local_size, "), got ",
                                                   *local_rank));
  }
  world.local_rank = *local_rank;
  world.local_world_size = *local_size;

  world.rendezvous_file = StringFromEnv("SWEEP_RENDEZVOUS");
  if (world.rendezvous_file.empty()) {
    world.master_addr = StringFromEnv("MASTER_ADDR");
    absl::StatusOr<int> port = IntFromEnv("MASTER_PORT", 0);
    if (!port.ok()) return port.status();
    if (world.master_addr.empty() || *port <= 0 || *port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("WORLD_SIZE=", world.world_size,
                       " needs a rendezvous: SWEEP_RENDEZVOUS=<file> (all ranks on one machine) or "
                       "MASTER_ADDR and MASTER_PORT (1-65535)"));
    }
    world.master_port = *port;
  }
  return world;
}

absl::StatusOr<std::string> BackendFor(torch::Device device) {
  if (device.is_cuda()) {
#ifdef USE_C10D_NCCL
    return std::string("nccl");
#else
    return absl::InvalidArgumentError(
        "device: 'cuda' with WORLD_SIZE > 1 needs NCCL, and this sweep-train was built against "
        "a LibTorch without it (or without nccl.h); see docs/data_parallel.md");
#endif
  }
#ifdef USE_C10D_GLOO
  return std::string("gloo");
#else
  return absl::InvalidArgumentError(
      "WORLD_SIZE > 1 on CPU needs Gloo, and this sweep-train was built without the Gloo "
      "headers (gloo/algorithm.h); see docs/data_parallel.md");
#endif
}

// What Communicator needs of c10d, erased: in LibTorch 1.x process groups derive from
// c10d::ProcessGroup, in 2.x from c10d::Backend; both have this allreduce.
struct Communicator::Impl {
  c10::intrusive_ptr<c10d::Store> store;  // Outlives the group, which talks through it.
  c10::intrusive_ptr<torch::CustomClassHolder> group;
  std::function<c10::intrusive_ptr<c10d::Work>(std::vector<at::Tensor>&,
                                               const c10d::AllreduceOptions&)>
      allreduce;

  // Keeps `group` and erases its type behind `allreduce`.
  template <typename Group>
  void Adopt(c10::intrusive_ptr<Group> created) {
    allreduce = [raw = created.get()](std::vector<at::Tensor>& tensors,
                                      const c10d::AllreduceOptions& opts) {
      return raw->allreduce(tensors, opts);
    };
    group = std::move(created);
  }
};

absl::StatusOr<std::unique_ptr<Communicator>> Communicator::Connect(
    const WorldInfo& world, torch::Device device, std::chrono::milliseconds timeout) {
  absl::StatusOr<std::string> backend = BackendFor(device);
  if (!backend.ok()) return backend.status();
  auto impl = std::make_unique<Impl>();
  const double seconds = timeout.count() / 1000.0;
  try {
    if (!world.rendezvous_file.empty()) {
      impl->store = c10::make_intrusive<c10d::FileStore>(world.rendezvous_file, world.world_size);
    } else {
      impl->store = MakeTcpStore(world, timeout);
    }
    impl->store->setTimeout(timeout);

    if (*backend == "gloo") {
#ifdef USE_C10D_GLOO
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      // Ranks that meet through a file are on one machine: loopback always works there.
      // Otherwise GLOO_SOCKET_IFNAME names the interface, as with torchrun.
      const std::string interface = StringFromEnv("GLOO_SOCKET_IFNAME");
      if (!interface.empty()) {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
      } else if (!world.rendezvous_file.empty()) {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, world.rank,
                                                               world.world_size, options);
      impl->Adopt(std::move(group));
#endif
    } else {
#ifdef USE_C10D_NCCL
      // Blocking wait: Work::wait() returns only when the collective finished, and throws
      // once `timeout` has passed (LibTorch 1.x reads the first name, 2.x the second).
      setenv("NCCL_BLOCKING_WAIT", "1", 0);
      setenv("TORCH_NCCL_BLOCKING_WAIT", "1", 0);
      c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->setDevice(device);
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      auto group = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl->store, world.rank,
                                                               world.world_size, options);
      impl->Adopt(std::move(group));
#endif
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(
        "rank ", world.rank, " of ", world.world_size, ": the ranks did not all meet within ",
        "distributed.timeout (", seconds, " s) through ",
        world.rendezvous_file.empty()
            ? absl::StrCat("MASTER_ADDR=", world.master_addr, " MASTER_PORT=", world.master_port)
            : absl::StrCat("SWEEP_RENDEZVOUS=", world.rendezvous_file),
        ": ", ErrorText(e)));
  }
  if (!impl->allreduce) return absl::InternalError("no c10d backend was built for " + *backend);
  spdlog::info("rank {} of {} ({} local of {}): {} process group ready", world.rank,
               world.world_size, world.local_rank, world.local_world_size, *backend);
  return std::unique_ptr<Communicator>(
      new Communicator(std::move(impl), world.rank, world.world_size, *backend, timeout));
}

Communicator::Communicator(std::unique_ptr<Impl> impl, int rank, int world_size,
                           std::string backend, std::chrono::milliseconds timeout)
    : impl_(std::move(impl)),
      rank_(rank),
      world_size_(world_size),
      backend_(std::move(backend)),
      timeout_(timeout) {}

Communicator::~Communicator() {
  if (failed_) (void)impl_.release();  // Deliberately leaked; see the header.
}

absl::Status Communicator::AllReduceSum(const std::vector<torch::Tensor>& tensors,
                                        const std::string& what) {
  return Run(tensors, /*max=*/false, what);
}

absl::Status Communicator::AllReduceMax(const torch::Tensor& tensor, const std::string& what) {
  return Run({tensor}, /*max=*/true, what);
}

absl::Status Communicator::Run(const std::vector<torch::Tensor>& tensors, bool max,
                               const std::string& what) {
  if (failed_) {
    return absl::FailedPreconditionError(
        absl::StrCat("rank ", rank_, ": ", what, ": an earlier collective failed"));
  }
  c10d::AllreduceOptions options;
  options.reduceOp = max ? c10d::ReduceOp::MAX : c10d::ReduceOp::SUM;
  options.timeout = timeout_;
  try {
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    works.reserve(tensors.size());
    for (const torch::Tensor& tensor : tensors) {
      std::vector<at::Tensor> one = {tensor};
      works.push_back(impl_->allreduce(one, options));
    }
    for (auto& work : works) {
      if (!work->wait(timeout_)) {
        throw std::runtime_error("the collective did not complete");
      }
    }
  } catch (const std::exception& e) {
    failed_ = true;
    return absl::UnavailableError(absl::StrCat(
        "rank ", rank_, " of ", world_size_, ": ", what, " (", backend_,
        " all-reduce) failed: a peer died, or did not answer within distributed.timeout (",
        timeout_.count() / 1000.0, " s): ", ErrorText(e)));
  }
  return absl::OkStatus();
}

}  // namespace sweep::trainer
