#include "worker/trainer/checkpoint_format.h"

#include <climits>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sweep::trainer {
namespace {

constexpr char kMagic[8] = {'S', 'W', 'P', 'C', 'K', 'P', 'T', '\0'};

absl::Status NotACheckpoint(const std::string& where, const std::string& why = "") {
  return absl::DataLossError(
      absl::StrCat(where, ": not a sweep checkpoint", why.empty() ? "" : " (" + why + ")"));
}

// An integer field (missing: 0). Floats are refused: this format writes integers.
absl::Status ReadInteger(const nlohmann::json& meta, const char* key, const std::string& where,
                         int64_t* out) {
  auto it = meta.find(key);
  if (it == meta.end()) {
    *out = 0;
    return absl::OkStatus();
  }
  if (it->is_number_unsigned()) {
    const uint64_t v = it->get<uint64_t>();
    if (v > static_cast<uint64_t>(INT64_MAX))
      return NotACheckpoint(where, absl::StrCat(key, " is out of range"));
    *out = static_cast<int64_t>(v);
    return absl::OkStatus();
  }
  if (!it->is_number_integer())
    return NotACheckpoint(where, absl::StrCat(key, " is not an integer"));
  *out = it->get<int64_t>();
  return absl::OkStatus();
}

// The format version as the original reader took it (a number, truncated to unsigned), or
// nothing when it is not a number in range.
bool ReadVersion(const nlohmann::json& meta, uint32_t* version) {
  auto it = meta.find("version");
  if (it == meta.end()) {
    *version = 0;
    return true;
  }
  if (it->is_number_unsigned()) {
    const uint64_t v = it->get<uint64_t>();
    if (v > UINT32_MAX) return false;
    *version = static_cast<uint32_t>(v);
    return true;
  }
  if (it->is_number_float()) {
    const double v = it->get<double>();
    if (!(v >= 0 && v < 4294967296.0)) return false;
    *version = static_cast<uint32_t>(v);
    return true;
  }
  return false;  // Negative, or not a number.
}

}  // namespace

uint64_t Fnv1a(const char* data, size_t size) {
  uint64_t hash = 1469598103934665603ull;
  for (size_t i = 0; i < size; ++i) {
    hash ^= static_cast<unsigned char>(data[i]);
    hash *= 1099511628211ull;
  }
  return hash;
}

std::string EncodeStateHeader(std::string_view payload) {
  std::string header(kCheckpointHeaderSize, '\0');
  const uint32_t version = kCheckpointFormatVersion;
  const uint64_t size = payload.size();
  const uint64_t checksum = Fnv1a(payload.data(), payload.size());
  std::memcpy(&header[0], kMagic, 8);
  std::memcpy(&header[8], &version, 4);
  std::memcpy(&header[12], &size, 8);
  std::memcpy(&header[20], &checksum, 8);
  return header;
}

absl::StatusOr<std::string_view> CheckStateFile(std::string_view contents,
                                                const std::string& where) {
  if (contents.size() < kCheckpointHeaderSize || std::memcmp(contents.data(), kMagic, 8) != 0) {
    return absl::DataLossError(absl::StrCat(where, ": bad magic number"));
  }
  uint32_t version;
  uint64_t size, checksum;
  std::memcpy(&version, contents.data() + 8, 4);
  std::memcpy(&size, contents.data() + 12, 8);
  std::memcpy(&checksum, contents.data() + 20, 8);
  if (version != kCheckpointFormatVersion || size != contents.size() - kCheckpointHeaderSize ||
      checksum != Fnv1a(contents.data() + kCheckpointHeaderSize, size)) {
    return absl::DataLossError(
        absl::StrCat(where, ": truncated or corrupted (size/checksum mismatch)"));
  }
  return contents.substr(kCheckpointHeaderSize);
}

std::string EncodeTrainState(const TrainStateFile& state) {
  const nlohmann::json train_state = {
      {"format", "sweep-checkpoint"},
      {"version", kCheckpointFormatVersion},
      {"step", state.step},
      {"total_tokens", state.total_tokens},
      {"data_state", state.data_state},
      {"layout", state.layout},
  };
  return train_state.dump(2) + "\n";
}

absl::StatusOr<TrainStateFile> ParseTrainState(std::string_view text, const std::string& where,
                                               const std::string& dir) {
  const nlohmann::json meta = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (meta.is_discarded() || !meta.is_object()) return NotACheckpoint(where);
  auto format = meta.find("format");
  if (format == meta.end() || !format->is_string() ||
      format->get_ref<const std::string&>() != "sweep-checkpoint") {
    return NotACheckpoint(where);
  }
  uint32_t version = 0;
  if (!ReadVersion(meta, &version) || version != kCheckpointFormatVersion) {
    auto it = meta.find("version");
    std::string shown =
        it == meta.end() ? "0" : it->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (shown.size() > 40) shown = shown.substr(0, 40) + "...";
    return absl::FailedPreconditionError(absl::StrCat(dir, ": checkpoint format version ", shown,
                                                      ", this build reads version ",
                                                      kCheckpointFormatVersion));
  }
  TrainStateFile out;
  if (absl::Status s = ReadInteger(meta, "step", where, &out.step); !s.ok()) return s;
  if (absl::Status s = ReadInteger(meta, "total_tokens", where, &out.total_tokens); !s.ok())
    return s;
  if (auto it = meta.find("data_state"); it != meta.end()) {
    if (!it->is_string()) return NotACheckpoint(where, "data_state is not a string");
    out.data_state = it->get<std::string>();
  }
  if (auto it = meta.find("layout"); it != meta.end()) out.layout = *it;
  return out;
}

}  // namespace sweep::trainer
