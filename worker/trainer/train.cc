#include "worker/trainer/train.h"

#include <ATen/autocast_mode.h>
#include <dlfcn.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/str_cat.h"
#include "worker/trainer/checkpoint.h"
#include "worker/trainer/data.h"
#include "worker/trainer/distributed.h"
#include "worker/trainer/model.h"
#include "worker/trainer/noise_scale.h"
#include "worker/trainer/optimizer.h"
#include "worker/trainer/schedule.h"
#include "worker/trainer/torch_compat.h"

namespace sweep::trainer {
namespace fs = std::filesystem;
namespace {

std::atomic<int> g_stop_signal{0};

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

std::string UtcNow() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto micros =
      std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() %
      1000000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%06lld+00:00",
                tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<long long>(micros));
  return buf;
}

// One JSON object per line, flushed at once so a reader tailing the file sees every step.
class MetricsWriter {
 public:
  static absl::StatusOr<std::unique_ptr<MetricsWriter>> Open(const std::string& path) {
    if (path == "-") return std::unique_ptr<MetricsWriter>(new MetricsWriter(stdout, false));
    FILE* file = std::fopen(path.c_str(), "a");
    if (file == nullptr) {
      return absl::InternalError(absl::StrCat("cannot open metrics file ", path, ": ",
                                              std::strerror(errno)));
    }
    return std::unique_ptr<MetricsWriter>(new MetricsWriter(file, true));
  }
  ~MetricsWriter() {
    if (owned_) std::fclose(file_);
  }

  absl::Status Write(nlohmann::json record) {
    record["created_at"] = UtcNow();
    const std::string line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
      return absl::InternalError(absl::StrCat("cannot write metrics: ", std::strerror(errno)));
    }
    return absl::OkStatus();
  }

 private:
  MetricsWriter(FILE* file, bool owned) : file_(file), owned_(owned) {}
  FILE* const file_;
  const bool owned_;
};

std::string NonFiniteName(double v) {
  if (std::isnan(v)) return "nan";
  return v > 0 ? "inf" : "-inf";
}

// bf16 autocast for the forward pass on CUDA, as Lingua trains: matmuls in bf16, weights and
// optimizer state stay float32 (RMSNorm and the loss are computed in float32 regardless).
class CudaAutocast {
 public:
  explicit CudaAutocast(torch::Device device) : enabled_(device.is_cuda()) {
    if (!enabled_) return;
#if SWEEP_TORCH_AT_LEAST(2, 4)  // The per-device API; the CUDA-only one is deprecated there.
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
#else
    at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
    at::autocast::set_enabled(true);
#endif
    at::autocast::increment_nesting();
  }
  ~CudaAutocast() {
    if (!enabled_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
#if SWEEP_TORCH_AT_LEAST(2, 4)
    at::autocast::set_autocast_enabled(at::kCUDA, false);
#else
    at::autocast::set_enabled(false);
#endif
  }
  CudaAutocast(const CudaAutocast&) = delete;
  CudaAutocast& operator=(const CudaAutocast&) = delete;

 private:
  const bool enabled_;
};

// This rank's (B, S + 1) windows of a global batch of world · B rows -> int64 tensor on
// `device`. A single process (rank 0 of 1) takes the whole batch.
torch::Tensor ToTensor(const std::vector<int64_t>& tokens, int batch, int seq_len, int rank,
                       torch::Device device) {
  int64_t* rows = const_cast<int64_t*>(tokens.data()) + static_cast<size_t>(rank) * batch * (seq_len + 1);
  torch::Tensor host = torch::from_blob(rows, {batch, seq_len + 1}, torch::kInt64);
  if (!device.is_cuda()) return host.to(device, /*non_blocking=*/false, /*copy=*/true);
  // A copy from pageable memory would wait for the GPU to drain; from pinned memory it is
  // queued behind the previous step's kernels (the caching host allocator keeps the buffer
  // until the copy has run).
  torch::Tensor pinned = torch::empty({batch, seq_len + 1},
                                      torch::TensorOptions().dtype(torch::kInt64).pinned_memory(true));
  pinned.copy_(host);
  return pinned.to(device, /*non_blocking=*/true);
}

// The batch stream of the whole world: world_size · data.batch_size windows a step, from
// which each rank takes its slice; a 1-rank run with that batch size reads the same stream.
DataArgs GlobalDataArgs(const TrainConfig& config, int world_size) {
  DataArgs args = config.data;
  args.batch_size *= world_size;
  return args;
}

// Mean cross-entropy over eval.steps validation batches, read from the start each time.
// With several ranks each evaluates its slice of every batch and the means are averaged.
absl::StatusOr<double> Evaluate(const TrainConfig& config, Transformer& model,
                                torch::Device device, Communicator* comm) {
  const int rank = comm != nullptr ? comm->rank() : 0;
  const int world = comm != nullptr ? comm->world_size() : 1;
  absl::StatusOr<std::unique_ptr<BatchIterator>> val = BatchIterator::Open(
      GlobalDataArgs(config, world), static_cast<uint64_t>(config.DataSeed()), Split::kVal);
  if (!val.ok()) return val.status();
  torch::NoGradGuard no_grad;
  std::vector<int64_t> tokens;
  double total = 0;
  for (int i = 0; i < config.eval.steps; ++i) {
    absl::Status s = (*val)->Next(&tokens);
    if (!s.ok()) return s;
    torch::Tensor window =
        ToTensor(tokens, config.data.batch_size, config.data.seq_len, rank, device);
    const int64_t seq_len = config.data.seq_len;
    CudaAutocast autocast(device);
    torch::Tensor logits = model.Forward(window.narrow(1, 0, seq_len), nullptr);
    torch::Tensor loss =
        torch::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32),
                                  window.narrow(1, 1, seq_len).reshape({-1}));
    total += loss.item<double>();
  }
  if (comm != nullptr) {
    torch::Tensor sum = torch::tensor({total}, torch::kDouble).to(device);
    if (absl::Status s = comm->AllReduceSum({sum}, "the validation loss"); !s.ok()) return s;
    total = sum.cpu().item<double>() / world;
  }
  return total / config.eval.steps;
}

// Whether a validation split exists for every source (folders with *.val.jsonl).
bool HasValidationData(const TrainConfig& config) {
  return BatchIterator::Open(config.data, 0, Split::kVal).ok();
}

// Checks that every rank starts from the same step and the same parameters (a rank that
// found another checkpoint, or another config, would silently train something else).
absl::Status CheckRanksAgree(Communicator& comm, Transformer& model, int64_t step,
                             torch::Device device) {
  const double checksum = model.flat_params().detach().sum(torch::kDouble).item<double>();
  const double mine[] = {static_cast<double>(step), -static_cast<double>(step), checksum, -checksum};
  torch::Tensor agreed = torch::tensor({mine[0], mine[1], mine[2], mine[3]}, torch::kDouble).to(device);
  if (absl::Status s = comm.AllReduceMax(agreed, "the start-up check"); !s.ok()) return s;
  agreed = agreed.cpu();
  const double* a = agreed.data_ptr<double>();
  if (a[0] != mine[0] || a[1] != mine[1]) {
    return absl::FailedPreconditionError(absl::StrCat(
        "rank ", comm.rank(), " starts at step ", step, " but another rank does not (steps ",
        -a[1], " to ", a[0], "): the ranks found different checkpoints"));
  }
  if (a[2] != mine[2] || a[3] != mine[3]) {
    return absl::FailedPreconditionError(absl::StrCat(
        "rank ", comm.rank(), ": the ranks start from different parameters (another seed, "
        "model or checkpoint); every rank must get the same argv"));
  }
  return absl::OkStatus();
}

}  // namespace

void RequestStop(int signal_number) { g_stop_signal.store(signal_number); }

void InstallStopSignalHandlers() {
  struct sigaction action {};
  action.sa_handler = [](int sig) { RequestStop(sig); };
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGTERM, SIGUSR2, SIGINT}) sigaction(sig, &action, nullptr);
}

absl::StatusOr<TrainOutcome> Train(const TrainConfig& config, const TrainOptions& options) {
  if (absl::Status s = ValidateTrainConfig(config); !s.ok()) return s;
  absl::StatusOr<WorldInfo> world = WorldInfoFromEnvironment();
  if (!world.ok()) return world.status();
  torch::Device device(torch::kCPU);
  if (config.device == "cuda") {
    if (!torch::cuda::is_available()) {
      return absl::InvalidArgumentError(
          "device: 'cuda' asked for, but this LibTorch has no CUDA or no GPU is visible");
    }
    device = torch::Device(torch::kCUDA);
    if (world->distributed()) {  // Every rank sees all the trial's GPUs and takes its own.
      if (world->local_rank >= static_cast<int>(torch::cuda::device_count())) {
        return absl::InvalidArgumentError(absl::StrCat(
            "LOCAL_RANK=", world->local_rank, " but only ", torch::cuda::device_count(),
            " GPUs are visible (CUDA_VISIBLE_DEVICES)"));
      }
      device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(world->local_rank));
    }
  }
  const int threads =
      config.threads > 0 ? config.threads : static_cast<int>(std::thread::hardware_concurrency());
  at::set_num_threads(std::max(1, threads));
  // OpenBLAS keeps its own thread pool, sized from OMP_NUM_THREADS/OPENBLAS_NUM_THREADS or the
  // core count, and a GEMM split over another number of threads sums in another order. Size it
  // from `threads` too, so a run's numbers depend on its config alone, not on the environment
  // it was started in (a worker's trial and a hand-run of the same config agree to the bit).
  using SetBlasThreads = void (*)(int);
  if (auto set_blas_threads =
          reinterpret_cast<SetBlasThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
    set_blas_threads(std::max(1, threads));
  }

  // Data-parallel: meet the other ranks first, so that a missing peer is the first error.
  // Only rank 0 writes into dump_dir (config, metrics, checkpoints).
  std::unique_ptr<Communicator> comm;
  if (world->distributed()) {
    absl::StatusOr<std::unique_ptr<Communicator>> connected = Communicator::Connect(
        *world, device,
        std::chrono::milliseconds(static_cast<int64_t>(config.distributed.timeout * 1000)));
    if (!connected.ok()) return connected.status();
    comm = std::move(*connected);
  }
  const int rank = world->rank;
  const int world_size = world->world_size;
  const bool writer = rank == 0;

  if (writer) {
    std::error_code ec;
    fs::create_directories(config.dump_dir, ec);
    if (ec) {
      return absl::InternalError(absl::StrCat("dump_dir: cannot create ", config.dump_dir, ": ",
                                              ec.message()));
    }
    std::ofstream out(fs::path(config.dump_dir) / "config.yaml");
    out << TrainConfigToYaml(config);
  }
  const std::string checkpoints_dir = (fs::path(config.dump_dir) / "checkpoints").string();

  // Data first: a missing corpus is the most common mistake and costs nothing to report.
  // Every rank reads the global batch stream and trains on its slice of each batch.
  absl::StatusOr<std::unique_ptr<BatchIterator>> train_data = BatchIterator::Open(
      GlobalDataArgs(config, world_size), static_cast<uint64_t>(config.DataSeed()), Split::kTrain);
  if (!train_data.ok()) return train_data.status();
  BatchIterator& data = **train_data;
  const bool has_val = HasValidationData(config);
  if (config.eval.every > 0 && !has_val) {
    return absl::InvalidArgumentError(
        "eval.every: the sources have no validation split (*.val.jsonl); set eval.every: 0");
  }

  const int vocab_size = config.model.vocab_size > 0 ? config.model.vocab_size
                                                     : ByteTokenizer::kVocabSize;
  Transformer model(config.model, vocab_size, config.data.seq_len, device);
  model.InitWeights(config.ModelSeed());
  AdamW optimizer(model.flat_params(), model.flat_grads(), config.optim);
  TrainProgress progress;

  // Resume: an explicit checkpoint must exist; otherwise pick up <dump_dir>/checkpoints.
  // Every rank loads the same checkpoint (rank 0 wrote it; the folder is shared).
  std::string resumed_from;
  if (!options.resume.empty()) {
    absl::StatusOr<std::string> found = FindLatestCheckpoint(options.resume);
    if (!found.ok()) return found.status();
    resumed_from = *found;
  } else if (absl::StatusOr<std::string> found = FindLatestCheckpoint(checkpoints_dir); found.ok()) {
    resumed_from = *found;
  }
  if (!resumed_from.empty()) {
    if (absl::Status s = LoadCheckpoint(resumed_from, model, optimizer, &progress); !s.ok()) return s;
    if (absl::Status s = data.Restore(progress.data); !s.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          resumed_from, ": cannot restore the data position: ", s.message(),
          world_size > 1 ? absl::StrCat(" (with ", world_size, " ranks the stream's batch is ",
                                        world_size, " x data.batch_size)")
                         : ""));
    }
  }
  if (comm != nullptr) {
    if (absl::Status s = CheckRanksAgree(*comm, model, progress.step, device); !s.ok()) return s;
  }
  const int batch = config.data.batch_size;
  const int seq_len = config.data.seq_len;
  const int64_t tokens_per_rank = static_cast<int64_t>(batch) * seq_len * config.grad_acc_steps;
  const int64_t tokens_per_step = tokens_per_rank * world_size;
  GradientNoiseScale noise_scale(config.distributed.gns_ema);
  noise_scale.set_state(progress.noise_scale);
  // On CUDA the loop reads nothing back from the GPU except on sync steps (logging, eval,
  // checkpoint, probe and the last step), so the host runs ahead and queues kernels. Between
  // them each step's [|G_small|², |G_big|²] for the noise scale waits on the GPU here and is
  // added, in order, at the next sync: the averages are the same as with a sync every step.
  const bool defer_syncs = device.is_cuda();
  std::vector<torch::Tensor> pending_noise;  // (2) double tensors on the device
  auto flush_noise = [&]() {
    if (pending_noise.empty()) return;
    torch::Tensor values = torch::stack(pending_noise).cpu();
    const double* v = values.data_ptr<double>();
    for (size_t i = 0; i < pending_noise.size(); ++i) {
      noise_scale.Add(EstimateGradientNoise(v[2 * i], v[2 * i + 1], static_cast<double>(tokens_per_rank),
                                            static_cast<double>(tokens_per_step)));
    }
    pending_noise.clear();
  };

  std::unique_ptr<MetricsWriter> metrics;  // Rank 0's; other ranks report nothing.
  if (writer) {
    const std::string metrics_path = options.metrics_path.empty()
                                         ? (fs::path(config.dump_dir) / "metrics.jsonl").string()
                                         : options.metrics_path;
    absl::StatusOr<std::unique_ptr<MetricsWriter>> opened = MetricsWriter::Open(metrics_path);
    if (!opened.ok()) return opened.status();
    metrics = std::move(*opened);
  }
  auto emit = [&](nlohmann::json record) -> absl::Status {
    if (metrics == nullptr) return absl::OkStatus();
    return metrics->Write(std::move(record));
  };
  std::unique_ptr<FILE, int (*)(FILE*)> batch_dump(nullptr, &std::fclose);
  if (writer && !options.dump_batches_path.empty()) {  // The global batch, all ranks' rows.
    batch_dump.reset(std::fopen(options.dump_batches_path.c_str(), resumed_from.empty() ? "wb" : "ab"));
    if (!batch_dump) {
      return absl::InternalError(absl::StrCat("cannot open ", options.dump_batches_path));
    }
  }

  if (writer) {
    spdlog::info("model: {} parameters ({} non-embedding), {} layers, dim {}, {} threads",
                 model.num_params(), model.num_non_embedding_params(), config.model.n_layers,
                 config.model.dim, at::get_num_threads());
  }
  if (!resumed_from.empty()) {
    spdlog::info("resumed from {} at step {}", resumed_from, progress.step);
    if (absl::Status s = emit({{"event", "resumed"},
                               {"global_step", progress.step},
                               {"checkpoint", resumed_from}});
        !s.ok()) {
      return s;
    }
  }

  auto save = [&]() -> absl::StatusOr<std::string> {
    progress.data = data.State();
    flush_noise();
    progress.noise_scale = noise_scale.state();
    return SaveCheckpoint(checkpoints_dir, model, optimizer, progress, config,
                          config.checkpoint.keep);
  };
  // With several ranks: whether every rank got here with `ok` (rank 0 after writing a
  // checkpoint), so that no rank reports success for a checkpoint that was not written.
  auto agree = [&](bool ok, const std::string& what) -> absl::Status {
    if (comm == nullptr) return absl::OkStatus();
    torch::Tensor failures = torch::tensor({ok ? 0.0 : 1.0}, torch::kDouble).to(device);
    if (absl::Status s = comm->AllReduceSum({failures}, what); !s.ok()) return s;
    if (failures.cpu().item<double>() > 0) {
      return absl::InternalError(absl::StrCat("rank ", rank, ": ", what, " failed on rank 0"));
    }
    return absl::OkStatus();
  };
  auto diverged = [&](int64_t step, const std::string& reason, double value) -> TrainOutcome {
    spdlog::error("diverged at step {}: {} ({})", step, reason, value);
    nlohmann::json event = {{"event", "diverged"}, {"global_step", step}, {"reason", reason}};
    if (std::isfinite(value)) {
      event["value"] = value;
    } else {
      event["value"] = NonFiniteName(value);  // JSON has no NaN or Inf.
    }
    (void)emit(std::move(event));
    return TrainOutcome::kDiverged;
  };
  const double max_loss = config.divergence.loss_factor * std::log(static_cast<double>(vocab_size));

  const auto& group_names = model.group_names();
  const auto& group_ranges = model.group_ranges();
  std::vector<int64_t> tokens;
  int64_t tokens_since_log = 0;
  Clock::time_point last_log = Clock::now();
  int64_t last_saved = -1, last_eval = -1;
  std::string last_checkpoint;

  // The record a stop leaves: the step reached, the signal, the checkpoint to resume from.
  auto emit_preempted = [&](int sig, const std::string& checkpoint) {
    return emit({{"event", "preempted"},
                 {"global_step", progress.step},
                 {"signal", sig},
                 {"checkpoint", checkpoint}});
  };
  // AdamW with the scheduled lr (returned) on the clipped gradients; the step is then done.
  auto step_optimizer = [&](int64_t global_step) -> double {
    const double lr = LearningRateForStep(config.optim, global_step, config.steps);
    const double decay =
        config.optim.independent_wd
            ? LrFactor(config.optim, global_step - 1, config.steps) * config.optim.weight_decay
            : lr * config.optim.weight_decay;
    optimizer.Step(lr, decay);
    progress.step = global_step;
    progress.total_tokens += tokens_per_step;
    tokens_since_log += tokens_per_step;
    return lr;
  };

  while (progress.step < config.steps) {
    if (int sig = g_stop_signal.load(); sig != 0 && comm == nullptr) {
      absl::StatusOr<std::string> path = save();
      if (!path.ok()) return path.status();
      spdlog::warn("signal {}: checkpoint {} written, stopping", sig, *path);
      if (absl::Status s = emit_preempted(sig, *path); !s.ok()) return s;
      return TrainOutcome::kPreempted;
    }
    const int64_t global_step = progress.step + 1;
    const Clock::time_point step_start = Clock::now();
    const bool probe = config.probe_freq > 0 && global_step % config.probe_freq == 0;
    const bool sync_now = !defer_syncs || probe || global_step % config.logging.freq == 0 ||
                          global_step == config.steps ||
                          (config.eval.every > 0 && global_step % config.eval.every == 0) ||
                          (config.checkpoint.every > 0 && global_step % config.checkpoint.every == 0);
    // Ranks agree on stopping through the gradient all-reduce; read the flag before it.
    const bool stop_requested = g_stop_signal.load() != 0;
    ForwardProbes probes;
    double loss_sum = 0, z_sum = 0;
    torch::Tensor loss_sum_gpu, z_sum_gpu;  // defer_syncs: the same sums, left on the GPU

    model.ZeroGrad();
    for (int micro = 0; micro < config.grad_acc_steps; ++micro) {
      if (absl::Status s = data.Next(&tokens); !s.ok()) return s;
      if (batch_dump) std::fwrite(tokens.data(), sizeof(int64_t), tokens.size(), batch_dump.get());
      torch::Tensor window = ToTensor(tokens, batch, seq_len, rank, device);
      torch::Tensor input = window.narrow(1, 0, seq_len);   // (B, S)
      torch::Tensor target = window.narrow(1, 1, seq_len);  // (B, S)
      const bool probe_now = probe && micro == 0;
      torch::Tensor logits;  // (B, S, V)
      {
        CudaAutocast autocast(device);
        logits = model.Forward(input, probe_now ? &probes : nullptr);
      }
      torch::Tensor flat_logits = logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32);
      torch::Tensor ce = torch::cross_entropy_loss(flat_logits, target.reshape({-1}));
      torch::Tensor loss = ce;
      if (config.optim.z_loss > 0 || probe_now) {
        torch::Tensor lse = torch::logsumexp(flat_logits, -1);  // (B·S)
        if (probe_now) probes.output_logsumexp_mean = lse.detach().mean().item<double>();
        if (config.optim.z_loss > 0) {
          torch::Tensor z = lse.pow(2).mean();
          loss = ce + config.optim.z_loss * z;
          if (defer_syncs) {
            z_sum_gpu = z_sum_gpu.defined() ? z_sum_gpu + z.detach() : z.detach();
          } else {
            z_sum += z.item<double>();
          }
        }
      }
      (loss / config.grad_acc_steps).backward();
      if (defer_syncs) {
        loss_sum_gpu = loss_sum_gpu.defined() ? loss_sum_gpu + ce.detach() : ce.detach();
        continue;  // Read at the next sync step (non-finite values too).
      }
      const double ce_value = ce.item<double>();
      // With several ranks a non-finite loss is found after the all-reduce, on every rank.
      if (comm == nullptr && !std::isfinite(ce_value)) {
        return diverged(global_step, "non-finite loss", ce_value);
      }
      loss_sum += ce_value;
    }

    torch::Tensor grads = model.flat_grads();
    bool stop_agreed = false;
    double local_sq_norm = 0;  // Mean over ranks of |G_small|² (pre-clip), for the noise scale.
    torch::Tensor comm_scalars;  // The all-reduced [loss, z, stop, |G_small|²] sums.
    if (defer_syncs) {
      auto scalar = [&](const torch::Tensor& t) {
        return t.defined() ? t.to(torch::kDouble).reshape({1}) : torch::zeros({1}, grads.options().dtype(torch::kDouble));
      };
      loss_sum_gpu = scalar(loss_sum_gpu);
      z_sum_gpu = scalar(z_sum_gpu);
    }
    if (comm != nullptr) {
      // One round trip: the flat gradient buffer and [loss, z, stop, |G_small|²] are summed
      // together. Averaging the gradients makes every rank's clipping and AdamW identical.
      torch::Tensor head =
          defer_syncs
              ? torch::cat({loss_sum_gpu, z_sum_gpu,
                            torch::full({1}, stop_requested ? 1.0 : 0.0, grads.options().dtype(torch::kDouble))})
              : torch::tensor({loss_sum, z_sum, stop_requested ? 1.0 : 0.0}, torch::kDouble).to(device);
      torch::Tensor scalars = torch::cat({head, grads.norm().to(torch::kDouble).pow(2).reshape({1})});
      if (absl::Status s = comm->AllReduceSum({grads, scalars}, "the gradients"); !s.ok()) return s;
      grads.div_(world_size);
      comm_scalars = scalars;
      if (!sync_now) {
        // |G_small|² now, |G_big|² (the averaged gradient's) with it; the stop flag is read
        // at the next sync step (every rank syncs at the same steps, so they agree there).
        pending_noise.push_back(torch::cat({scalars.narrow(0, 3, 1) / world_size,
                                            grads.norm().to(torch::kDouble).pow(2).reshape({1})}));
      }
    }
    if (!sync_now) {
      // Clip on the GPU: grads · min(1, clip / (|g| + 1e-6)), no value read back.
      if (config.optim.clip > 0) {
        grads.mul_((config.optim.clip / (grads.norm() + 1e-6)).clamp_max(1.0));
      }
      step_optimizer(global_step);
      continue;
    }
    if (defer_syncs) {
      flush_noise();  // The steps since the last sync, in order, before this one.
      if (comm == nullptr) {
        loss_sum = loss_sum_gpu.item<double>();
        z_sum = z_sum_gpu.item<double>();
        if (!std::isfinite(loss_sum)) {
          return diverged(global_step, "non-finite loss", loss_sum / config.grad_acc_steps);
        }
      }
    }
    if (comm != nullptr) {
      torch::Tensor scalars = comm_scalars;
      scalars = scalars.cpu();
      const double* sum = scalars.data_ptr<double>();
      loss_sum = sum[0] / world_size;
      z_sum = sum[1] / world_size;
      stop_agreed = sum[2] > 0;
      local_sq_norm = sum[3] / world_size;
      if (!std::isfinite(loss_sum)) {
        return diverged(global_step, "non-finite loss", loss_sum / config.grad_acc_steps);
      }
    }
    const double loss_value = loss_sum / config.grad_acc_steps;
    if (max_loss > 0 && loss_value > max_loss) {
      return diverged(global_step,
                      absl::StrCat("loss above divergence.loss_factor x ln(vocab_size) = ", max_loss),
                      loss_value);
    }

    // Pre-clip norms: one per group, the total from them (Σ group² = total²).
    std::vector<torch::Tensor> norms;
    norms.reserve(group_ranges.size());
    for (const auto& [offset, numel] : group_ranges) norms.push_back(grads.narrow(0, offset, numel).norm());
    torch::Tensor group_norms = torch::stack(norms).to(torch::kCPU, torch::kDouble);
    const double* gn = group_norms.data_ptr<double>();
    double total_sq = 0;
    for (size_t i = 0; i < group_ranges.size(); ++i) total_sq += gn[i] * gn[i];
    const double grad_norm = std::sqrt(total_sq);
    if (!std::isfinite(grad_norm)) return diverged(global_step, "non-finite gradient norm", grad_norm);
    if (comm != nullptr) {
      noise_scale.Add(EstimateGradientNoise(local_sq_norm, total_sq,
                                            static_cast<double>(tokens_per_rank),
                                            static_cast<double>(tokens_per_step)));
    }
    if (config.optim.clip > 0) {
      const double coef = config.optim.clip / (grad_norm + 1e-6);
      if (coef < 1.0) grads.mul_(coef);
    }
    const double lr = step_optimizer(global_step);
    const double step_seconds = Seconds(step_start);

    if (writer && global_step % config.logging.freq == 0) {
      const double elapsed = Seconds(last_log);
      nlohmann::json record = {
          {"global_step", global_step},
          {"acc_step", 0},
          {"loss/out", loss_value},
          {"optim/grad_norm", grad_norm},
          {"optim/lr", lr},
          {"optim/total_tokens", progress.total_tokens},
          {"optim/param_norm", model.flat_params().detach().norm().item<double>()},
          {"speed/wps", tokens_since_log / std::max(elapsed, 1e-9)},
          {"speed/curr_iter_time", step_seconds},
      };
      if (config.optim.z_loss > 0) record["loss/z"] = z_sum / config.grad_acc_steps;
      for (size_t i = 0; i < group_names.size(); ++i) record["grad_norm/" + group_names[i]] = gn[i];
      if (probe) {
        for (size_t i = 0; i < probes.attn_logit_max.size(); ++i) {
          record[absl::StrCat("probe/layers.", i, ".attn_logit_max")] = probes.attn_logit_max[i];
        }
        record["probe/output_logsumexp"] = probes.output_logsumexp_mean;
      }
      if (!noise_scale.empty()) {
        // Tokens (B_simple of McCandlish et al.); JSON has no NaN, so only finite values.
        const std::pair<const char*, double> gns[] = {
            {"optim/noise_scale", noise_scale.noise_scale()},
            {"optim/gns_grad_sq", noise_scale.grad_sq()},
            {"optim/gns_trace", noise_scale.trace()},
        };
        for (const auto& [key, value] : gns) {
          if (std::isfinite(value)) record[key] = value;
        }
      }
      if (absl::Status s = emit(std::move(record)); !s.ok()) return s;
      spdlog::info("step {:>6}/{}  loss {:.4f}  grad {:.3e}  lr {:.3e}  wps {:.0f}", global_step,
                   config.steps, loss_value, grad_norm, lr, tokens_since_log / std::max(elapsed, 1e-9));
      tokens_since_log = 0;
      last_log = Clock::now();
    }
    if (config.eval.every > 0 && global_step % config.eval.every == 0) {
      absl::StatusOr<double> val = Evaluate(config, model, device, comm.get());
      if (!val.ok()) return val.status();
      if (absl::Status s = emit({{"global_step", global_step}, {"loss/val", *val}}); !s.ok()) return s;
      if (writer) spdlog::info("step {:>6}  val loss {:.4f}", global_step, *val);
      last_eval = global_step;
    }
    if (config.checkpoint.every > 0 && global_step % config.checkpoint.every == 0) {
      if (writer) {
        absl::StatusOr<std::string> path = save();
        if (!path.ok()) return path.status();
        last_checkpoint = *path;
        // A worker reports it to sweepd, so that a requeued attempt resumes from here.
        if (absl::Status s = emit({{"event", "checkpoint"},
                                   {"global_step", global_step},
                                   {"checkpoint", *path}});
            !s.ok()) {
          return s;
        }
      }
      last_saved = global_step;
    }
    if (stop_agreed && progress.step < config.steps) {
      // Some rank was signalled before this step's all-reduce: all stop after this step.
      // Rank 0 writes the checkpoint (unless this step's is already written); every rank
      // waits for it, so none reports a preemption whose checkpoint is missing.
      const int sig = g_stop_signal.load();  // 0 here: only another rank was signalled.
      absl::StatusOr<std::string> path = last_checkpoint;
      if (writer && last_saved != progress.step) path = save();
      if (absl::Status s = agree(path.ok(), "the preemption checkpoint"); !s.ok()) {
        return path.ok() ? s : path.status();
      }
      if (writer) {
        spdlog::warn("signal {}: checkpoint {} written, all {} ranks stop at step {}", sig, *path,
                     world_size, progress.step);
        if (absl::Status s = emit_preempted(sig, *path); !s.ok()) return s;
      } else {
        spdlog::warn("stopping at step {} with the other ranks", progress.step);
      }
      return TrainOutcome::kPreempted;
    }
  }

  nlohmann::json done = {{"event", "completed"}, {"global_step", progress.step}};
  if (has_val && last_eval != progress.step) {
    absl::StatusOr<double> val = Evaluate(config, model, device, comm.get());
    if (!val.ok()) return val.status();
    if (absl::Status s = emit({{"global_step", progress.step}, {"loss/val", *val}}); !s.ok()) return s;
    if (writer) spdlog::info("final val loss {:.4f}", *val);
  }
  if (writer && last_saved != progress.step) {
    absl::StatusOr<std::string> path = save();
    if (!path.ok()) {
      (void)agree(false, "the final checkpoint");
      return path.status();
    }
    last_checkpoint = *path;
  }
  if (absl::Status s = agree(true, "the final checkpoint"); !s.ok()) return s;
  done["checkpoint"] = last_checkpoint;
  if (absl::Status s = emit(std::move(done)); !s.ok()) return s;
  return TrainOutcome::kCompleted;
}

}  // namespace sweep::trainer
