#include "worker/trainer/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace sweep::trainer {
namespace fs = std::filesystem;
namespace {

constexpr char kStateFile[] = "state.bin";
constexpr char kTrainStateFile[] = "train_state.json";

absl::Status ErrnoError(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

// Writes `data` to `path` and fsyncs it.
absl::Status WriteFileSynced(const std::string& path, const std::string& data) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot create", path);
  size_t written = 0;
  while (written < data.size()) {
    const ssize_t n = ::write(fd, data.data() + written, data.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      absl::Status s = ErrnoError("cannot write", path);  // e.g. ENOSPC: disk full.
      ::close(fd);
      return s;
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    absl::Status s = ErrnoError("cannot fsync", path);
    ::close(fd);
    return s;
  }
  if (::close(fd) != 0) return ErrnoError("cannot close", path);
  return absl::OkStatus();
}

void SyncDir(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

nlohmann::json Layout(const Transformer& model) {
  nlohmann::json layout = nlohmann::json::array();
  for (const ParamInfo& p : model.params()) layout.push_back({{"name", p.name}, {"shape", p.shape}});
  return layout;
}

bool IsComplete(const fs::path& dir) {
  std::error_code ec;
  return fs::is_regular_file(dir / kCheckpointCompleteMarker, ec);
}

// Complete checkpoint folders (10-digit names) under `dir`, oldest first.
std::vector<fs::path> CompleteCheckpoints(const fs::path& dir) {
  std::vector<fs::path> found;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() != 10 || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
    if (IsComplete(it->path())) found.push_back(it->path());
  }
  std::sort(found.begin(), found.end());
  return found;
}

}  // namespace

absl::StatusOr<std::string> SaveCheckpoint(const std::string& checkpoints_dir,
                                           Transformer& model, AdamW& optimizer,
                                           const TrainProgress& progress,
                                           const TrainConfig& config, int keep) {
  std::error_code ec;
  fs::create_directories(checkpoints_dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create ", checkpoints_dir, ": ", ec.message()));
  }
  const std::string name = absl::StrFormat("%010d", progress.step);
  const fs::path final_dir = fs::path(checkpoints_dir) / name;
  const fs::path tmp_dir = fs::path(checkpoints_dir) / (".tmp-" + name);
  fs::remove_all(tmp_dir, ec);
  fs::create_directories(tmp_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", tmp_dir.string(), ": ", ec.message()));

  // Tensors: a LibTorch archive behind our own header.
  std::string payload;
  try {
    torch::serialize::OutputArchive archive;
    archive.write("params", model.flat_params().detach().cpu());
    archive.write("exp_avg", optimizer.exp_avg().cpu());
    archive.write("exp_avg_sq", optimizer.exp_avg_sq().cpu());
    archive.write("adam_step", torch::tensor({optimizer.step()}, torch::kInt64));
    archive.write("cpu_rng_state", at::detail::getDefaultCPUGenerator().get_state());
    if (progress.noise_scale.count > 0) {
      archive.write("gns_ema", torch::tensor({progress.noise_scale.grad_sq,
                                              progress.noise_scale.trace,
                                              static_cast<double>(progress.noise_scale.count)},
                                             torch::kDouble));
    }
    std::ostringstream stream;
    archive.save_to(stream);
    payload = stream.str();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("cannot serialise checkpoint: ", e.what_without_backtrace()));
  }
  const std::string state = EncodeStateHeader(payload) + payload;
  const std::string train_state =
      EncodeTrainState({progress.step, progress.total_tokens, progress.data.json, Layout(model)});
  const std::pair<const char*, std::string> files[] = {
      {kStateFile, state},
      {kTrainStateFile, train_state},
      {"config.yaml", TrainConfigToYaml(config)},
      {kCheckpointCompleteMarker, absl::StrCat("step ", progress.step, "\n")},
  };
  for (const auto& [file, contents] : files) {
    absl::Status s = WriteFileSynced((tmp_dir / file).string(), contents);
    if (!s.ok()) {
      fs::remove_all(tmp_dir, ec);
      return s;
    }
  }
  SyncDir(tmp_dir.string());
  // Replace an older folder of the same step (a resumed run saving that step again).
  if (fs::exists(final_dir, ec)) {
    const fs::path old_dir = fs::path(checkpoints_dir) / (".old-" + name);
    fs::remove_all(old_dir, ec);
    fs::rename(final_dir, old_dir, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot move aside ", final_dir.string(), ": ", ec.message()));
    fs::rename(tmp_dir, final_dir, ec);
    fs::remove_all(old_dir);
  } else {
    fs::rename(tmp_dir, final_dir, ec);
  }
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot rename ", tmp_dir.string(), " to ",
                                            final_dir.string(), ": ", ec.message()));
  }
  SyncDir(checkpoints_dir);

  if (keep > 0) {
    std::vector<fs::path> complete = CompleteCheckpoints(checkpoints_dir);
    for (size_t i = 0; i + keep < complete.size(); ++i) fs::remove_all(complete[i], ec);
  }
  return final_dir.string();
}

absl::StatusOr<std::string> FindLatestCheckpoint(const std::string& path) {
  const fs::path p(path);
  std::error_code ec;
  if (!fs::is_directory(p, ec)) {
    return absl::NotFoundError(absl::StrCat(path, ": no such checkpoint folder"));
  }
  if (IsComplete(p)) return p.string();
  for (const fs::path& dir : {p, p / "checkpoints"}) {
    std::vector<fs::path> complete = CompleteCheckpoints(dir);
    if (!complete.empty()) return complete.back().string();
  }
  return absl::NotFoundError(absl::StrCat(path, ": holds no complete checkpoint"));
}

absl::Status LoadCheckpoint(const std::string& checkpoint_dir, Transformer& model,
                            AdamW& optimizer, TrainProgress* progress) {
  const fs::path dir(checkpoint_dir);
  if (!IsComplete(dir)) {
    return absl::FailedPreconditionError(
        absl::StrCat(checkpoint_dir, ": incomplete checkpoint (no ", kCheckpointCompleteMarker,
                     " marker)"));
  }
  absl::StatusOr<std::string> meta_text = ReadFile((dir / kTrainStateFile).string());
  if (!meta_text.ok()) return meta_text.status();
  absl::StatusOr<TrainStateFile> meta =
      ParseTrainState(*meta_text, absl::StrCat(checkpoint_dir, "/", kTrainStateFile), checkpoint_dir);
  if (!meta.ok()) return meta.status();
  if (meta->layout != Layout(model)) {
    return absl::FailedPreconditionError(absl::StrCat(
        checkpoint_dir, ": checkpoint was written for a different model (parameter names or "
                        "shapes differ); check model.* in the config"));
  }

  absl::StatusOr<std::string> state = ReadFile((dir / kStateFile).string());
  if (!state.ok()) return state.status();
  absl::StatusOr<std::string_view> payload =
      CheckStateFile(*state, absl::StrCat(checkpoint_dir, "/", kStateFile));
  if (!payload.ok()) return payload.status();
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(payload->data(), payload->size());
    torch::Tensor params, exp_avg, exp_avg_sq, adam_step, rng;
    archive.read("params", params);
    archive.read("exp_avg", exp_avg);
    archive.read("exp_avg_sq", exp_avg_sq);
    archive.read("adam_step", adam_step);
    archive.read("cpu_rng_state", rng);
    torch::NoGradGuard no_grad;
    model.flat_params().copy_(params);
    optimizer.exp_avg().copy_(exp_avg);
    optimizer.exp_avg_sq().copy_(exp_avg_sq);
    optimizer.set_step(adam_step.item<int64_t>());
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    generator.set_state(rng);
    torch::Tensor gns;
    progress->noise_scale = {};
    if (archive.try_read("gns_ema", gns)) {
      if (gns.scalar_type() != torch::kDouble || gns.numel() != 3) {
        return absl::DataLossError(absl::StrCat(checkpoint_dir, ": gns_ema is not 3 doubles"));
      }
      const double* v = gns.data_ptr<double>();
      progress->noise_scale = {v[0], v[1], static_cast<int64_t>(v[2])};
    }
  } catch (const c10::Error& e) {
    return absl::DataLossError(
        absl::StrCat(checkpoint_dir, ": cannot read tensors: ", e.what_without_backtrace()));
  }
  progress->step = meta->step;
  progress->total_tokens = meta->total_tokens;
  progress->data.json = meta->data_state;
  return absl::OkStatus();
}

}  // namespace sweep::trainer
