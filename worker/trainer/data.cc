// Implementation of data.h: Lingua's byte tokenizer, sources read document by document, and
// a packed, shuffled, resumable batch stream.
//
// Structure
//   * SplitMix64: the only source of randomness (source choice and shuffling). Its whole state
//     is one uint64, so it is stored in DataState as is; its output and the bounded draws
//     below are defined here, not by the standard library, so batches are the same on every
//     platform.
//   * SourceStream: one source's token stream. It reads its files line by line (never the
//     whole corpus), encodes one document at a time and wraps to the first file at the end.
//     Its position is (file, byte offset where the current document starts, line number there,
//     tokens of that document already consumed, epoch).
//   * BatchIteratorImpl: fills a buffer of windows (choosing a source per window), permutes it
//     (training only) and emits it batch by batch. State() records the positions and RNG state
//     at the start of the current buffer plus the number of batches already emitted; Restore()
//     re-reads that buffer from the saved positions, permutes it again and skips those batches.
//
// Not thread-safe: one iterator per thread.
#include "worker/trainer/data.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace sweep::trainer {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

// DataState JSON: {"format": kStateFormat, "version": kStateVersion, "split": "train"|"val",
// "args": {...}, "rng": uint64, "emitted": n, "positions": [{"file", "offset", "line", "token",
// "epoch"}, ...]} (one position per source, in config order).
constexpr char kStateFormat[] = "sweep.data_state";
constexpr int64_t kStateVersion = 1;

// Validation mixes sources with this fixed seed, so every trial sees the same tokens.
constexpr uint64_t kValidationSeed = 0x76616c6964617465ULL;  // "validate"

// Largest shuffle buffer accepted, in tokens (32 GiB of int64).
constexpr uint64_t kMaxBufferTokens = uint64_t{1} << 32;

// SplitMix64 (Steele, Lea and Flood, 2014): a 64-bit counter passed through a mixing function.
// Fully defined by its state, which makes it trivial to checkpoint.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t state) : state_(state) {}

  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

  // Uniform in [0, n) for n > 0, without modulo bias: draws below 2^64 mod n are rejected so
  // that the accepted range is a multiple of n.
  uint64_t Below(uint64_t n) {
    const uint64_t threshold = (0 - n) % n;
    for (;;) {
      const uint64_t r = Next();
      if (r >= threshold) return r % n;
    }
  }

  // Uniform in [0, 1) with 53 random bits.
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

  uint64_t state() const { return state_; }

 private:
  uint64_t state_;
};

bool IsBlank(absl::string_view line) {
  return std::all_of(line.begin(), line.end(), [](char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
  });
}

bool EndsWith(absl::string_view s, absl::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

const char* SplitName(Split split) { return split == Split::kTrain ? "train" : "val"; }

enum class SourceKind {
  kJsonl,  // One JSON object per line, the document in "text" or "content".
  kText,   // Documents separated by blank lines.
};

// A position in one source's token stream. The document being consumed starts at byte `offset`
// of files[file] (with `line` lines before it); `token` of its tokens were already consumed.
// Seeking to a position and reading on yields the same tokens as the stream that produced it.
struct StreamPos {
  size_t file = 0;
  uint64_t offset = 0;
  int64_t line = 0;
  int64_t token = 0;
  int64_t epoch = 0;
};

// One source's endless token stream. Movable, not copyable (it owns an open file).
class SourceStream {
 public:
  SourceStream(std::string name, SourceKind kind, std::vector<std::string> files, bool add_bos,
               bool add_eos)
      : name_(std::move(name)),
        kind_(kind),
        files_(std::move(files)),
        add_bos_(add_bos),
        add_eos_(add_eos) {}
  SourceStream(SourceStream&&) = default;
  SourceStream& operator=(SourceStream&&) = default;

  // A stream over the same files, at the start.
  SourceStream Fresh() const { return SourceStream(name_, kind_, files_, add_bos_, add_eos_); }

  const std::string& name() const { return name_; }
  const std::vector<std::string>& files() const { return files_; }

  StreamPos Position() const {
    StreamPos pos = doc_start_;
    pos.token = static_cast<int64_t>(doc_pos_);
    return pos;
  }

  // Moves to `pos` (file < files().size()). Fails if the files no longer match the position
  // (shorter file, or a shorter document than pos.token).
  absl::Status Seek(const StreamPos& pos) {
    CloseFile();
    file_ = pos.file;
    offset_ = pos.offset;
    line_ = pos.line;
    epoch_ = pos.epoch;
    doc_.clear();
    doc_pos_ = 0;
    doc_start_ = Cursor();
    empty_wraps_ = 0;
    if (pos.token == 0) return absl::OkStatus();
    absl::Status s = ReadDocument();
    if (!s.ok()) return s;
    if (doc_start_.file != pos.file || doc_start_.offset != pos.offset ||
        static_cast<uint64_t>(pos.token) > doc_.size()) {
      return absl::FailedPreconditionError(
          absl::StrCat("data source '", name_, "': ", files_[pos.file], ":", pos.line + 1,
                       ": the document there no longer matches the saved data position (the "
                       "files changed since the checkpoint)"));
    }
    doc_pos_ = static_cast<size_t>(pos.token);
    return absl::OkStatus();
  }

  // Loads the first document, so that unreadable files and bad first lines fail early. Call
  // it at most once, on a stream at the start.
  absl::Status Prime() { return ReadDocument(); }

  // Writes the next `n` tokens of the stream to out[0..n), starting new epochs as needed.
  absl::Status Take(size_t n, int64_t* out) {
    while (n > 0) {
      if (doc_pos_ == doc_.size()) {
        absl::Status s = ReadDocument();
        if (!s.ok()) return s;
        continue;
      }
      const size_t k = std::min(n, doc_.size() - doc_pos_);
      std::memcpy(out, doc_.data() + doc_pos_, k * sizeof(int64_t));
      doc_pos_ += k;
      out += k;
      n -= k;
    }
    return absl::OkStatus();
  }

 private:
  StreamPos Cursor() const {
    StreamPos pos;
    pos.file = file_;
    pos.offset = offset_;
    pos.line = line_;
    pos.epoch = epoch_;
    return pos;
  }

  void CloseFile() {
    if (in_.is_open()) in_.close();
    in_.clear();
  }

  absl::Status OpenFile() {
    const std::string& path = files_[file_];
    std::error_code ec;
    const uint64_t size = fs::file_size(path, ec);
    if (ec) {
      return absl::NotFoundError(
          absl::StrCat("data source '", name_, "': cannot read ", path, ": ", ec.message()));
    }
    if (offset_ > size) {
      return absl::FailedPreconditionError(absl::StrCat(
          "data source '", name_, "': ", path, " has ", size,
          " bytes, less than the saved data position ", offset_, " (the file changed)"));
    }
    in_.open(path, std::ios::binary);
    if (!in_.is_open()) {
      return absl::NotFoundError(absl::StrCat("data source '", name_, "': cannot open ", path));
    }
    in_.seekg(static_cast<std::streamoff>(offset_));
    if (!in_) {
      return absl::DataLossError(absl::StrCat("data source '", name_, "': cannot seek in ", path));
    }
    return absl::OkStatus();
  }

  // Reads the next line of the open file into `line` (without '\n'); *got is false at the end.
  absl::Status ReadLine(std::string* line, bool* got) {
    *got = false;
    if (!std::getline(in_, *line)) {
      if (in_.bad()) {
        return absl::DataLossError(absl::StrCat("data source '", name_, "': read error in ",
                                                files_[file_], " after line ", line_));
      }
      return absl::OkStatus();
    }
    offset_ += line->size() + (in_.eof() ? 0 : 1);
    ++line_;
    *got = true;
    return absl::OkStatus();
  }

  absl::Status LineError(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(files_[file_], ":", line_, ": ", what));
  }

  // Reads the next non-empty JSON line of the open file; *found is false at its end.
  absl::Status ReadJsonlDocument(std::string* text, bool* found) {
    *found = false;
    std::string line;
    for (;;) {
      bool got = false;
      absl::Status s = ReadLine(&line, &got);
      if (!s.ok() || !got) return s;
      if (IsBlank(line)) continue;
      const Json doc = Json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (doc.is_discarded()) return LineError("not a valid JSON line");
      if (!doc.is_object()) return LineError("expected a JSON object with a \"text\" field");
      auto it = doc.find("text");
      if (it == doc.end()) it = doc.find("content");
      if (it == doc.end()) return LineError("no \"text\" or \"content\" field");
      if (!it->is_string()) {
        return LineError(absl::StrCat("\"", it.key(), "\" is not a string"));
      }
      *text = it->get_ref<const std::string&>();
      *found = true;
      return absl::OkStatus();
    }
  }

  // Reads the next blank-line separated paragraph of the open file (lines joined with '\n',
  // a trailing '\r' dropped from each line); *found is false at its end.
  absl::Status ReadTextDocument(std::string* text, bool* found) {
    *found = false;
    text->clear();
    std::string line;
    for (;;) {
      bool got = false;
      absl::Status s = ReadLine(&line, &got);
      if (!s.ok()) return s;
      if (!got) return absl::OkStatus();
      if (IsBlank(line)) {
        if (*found) return absl::OkStatus();
        continue;
      }
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (*found) text->push_back('\n');
      text->append(line);
      *found = true;
    }
  }

  // Loads the next document into doc_ (possibly with no tokens), moving to the next file and
  // the next epoch at the ends. A whole pass without a single token is an error.
  absl::Status ReadDocument() {
    doc_.clear();
    doc_pos_ = 0;
    std::string text;
    for (;;) {
      doc_start_ = Cursor();
      if (!in_.is_open()) {
        absl::Status s = OpenFile();
        if (!s.ok()) return s;
      }
      bool found = false;
      absl::Status s = kind_ == SourceKind::kJsonl ? ReadJsonlDocument(&text, &found)
                                                   : ReadTextDocument(&text, &found);
      if (!s.ok()) return s;
      if (found) {
        ByteTokenizer::Encode(text, add_bos_, add_eos_, &doc_);
        if (!doc_.empty()) empty_wraps_ = 0;
        return absl::OkStatus();
      }
      CloseFile();
      offset_ = 0;
      line_ = 0;
      if (++file_ == files_.size()) {
        file_ = 0;
        ++epoch_;
        // Two wraps in a row without a token: a full pass found nothing.
        if (++empty_wraps_ >= 2) {
          return absl::FailedPreconditionError(absl::StrCat("data source '", name_,
                                                            "' has no text (", files_.size(),
                                                            " file(s), first ", files_[0], ")"));
        }
      }
    }
  }

  std::string name_;
  SourceKind kind_;
  std::vector<std::string> files_;  // Full paths, in reading order.
  bool add_bos_;
  bool add_eos_;

  // Read cursor: the next line is at byte offset_ of files_[file_] (line line_ + 1).
  std::ifstream in_;
  size_t file_ = 0;
  uint64_t offset_ = 0;
  int64_t line_ = 0;
  int64_t epoch_ = 0;

  // The current document's tokens, the first doc_pos_ of which were consumed, and where it
  // started.
  std::vector<int64_t> doc_;
  size_t doc_pos_ = 0;
  StreamPos doc_start_;

  int empty_wraps_ = 0;  // Wraps since the last document with tokens.
};

// Finds the files of source `name` at `path` for `split`.
absl::StatusOr<SourceStream> OpenSource(const DataArgs& args, const std::string& name,
                                        Split split) {
  const std::string path = ResolveSourcePath(args, name);
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) {
    return absl::UnavailableError(
        absl::StrCat("data source '", name, "': cannot access ", path, ": ", ec.message()));
  }
  if (!fs::exists(status)) {
    return absl::NotFoundError(
        absl::StrCat("data source '", name, "': ", path,
                     " does not exist (tools/setup.sh prepares the bundled corpus, kjv; "
                     "sweep-prepare-data prepares others)"));
  }
  if (fs::is_regular_file(status) && EndsWith(path, ".txt")) {
    if (split == Split::kVal) {
      return absl::FailedPreconditionError(absl::StrCat(
          "data source '", name, "': ", path,
          " is a .txt file, which has no validation split (`sweep-prepare-data text FILE "
          "--name NAME` turns it into a folder with one)"));
    }
    return SourceStream(name, SourceKind::kText, {path}, args.add_bos, args.add_eos);
  }
  if (!fs::is_directory(status)) {
    return absl::InvalidArgumentError(
        absl::StrCat("data source '", name, "': ", path,
                     " is neither a folder of .jsonl chunks nor a .txt file"));
  }
  std::vector<std::string> names;
  for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string file = it->path().filename().string();
    if (!EndsWith(file, ".jsonl")) continue;
    std::error_code type_ec;
    if (!fs::is_regular_file(it->path(), type_ec)) continue;
    if (EndsWith(file, ".val.jsonl") == (split == Split::kVal)) names.push_back(file);
  }
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("data source '", name, "': cannot list ", path, ": ", ec.message()));
  }
  if (names.empty()) {
    return absl::FailedPreconditionError(
        split == Split::kVal
            ? absl::StrCat("data source '", name, "': ", path,
                           " has no validation split (no *.val.jsonl file)")
            : absl::StrCat("data source '", name, "': ", path,
                           " has no training files (*.jsonl other than *.val.jsonl)"));
  }
  std::sort(names.begin(), names.end());
  std::vector<std::string> files;
  for (const std::string& file : names) files.push_back((fs::path(path) / file).string());
  return SourceStream(name, SourceKind::kJsonl, std::move(files), args.add_bos, args.add_eos);
}

// Reads json[key] into *out; false if it is missing or has another type.
bool GetUint(const Json& json, const char* key, uint64_t* out) {
  const auto it = json.find(key);
  if (it == json.end() || !it->is_number_unsigned()) return false;
  *out = it->get<uint64_t>();
  return true;
}

bool GetNonNegative(const Json& json, const char* key, int64_t* out) {
  uint64_t value = 0;
  if (!GetUint(json, key, &value) ||
      value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return false;
  }
  *out = static_cast<int64_t>(value);
  return true;
}

class BatchIteratorImpl final : public BatchIterator {
 public:
  BatchIteratorImpl(const DataArgs& args, uint64_t seed, Split split,
                    std::vector<SourceStream> sources)
      : args_(args),
        split_(split),
        window_(static_cast<size_t>(args.seq_len) + 1),
        batch_(static_cast<size_t>(args.batch_size)),
        batches_per_buffer_(split == Split::kTrain ? static_cast<size_t>(args.prefetch_size) : 1),
        cumulative_weights_(CumulativeWeights(args)),
        cursor_(std::move(sources), split == Split::kTrain ? seed : kValidationSeed) {}

  // After an error (a bad line, an unreadable file) the position is unspecified: Restore() a
  // saved state before reading on.
  absl::Status Next(std::vector<int64_t>* tokens) override {
    if (tokens == nullptr) return absl::InvalidArgumentError("Next: tokens is null");
    if (!cursor_.filled || cursor_.emitted == batches_per_buffer_) {
      absl::Status s = Fill(&cursor_);
      if (!s.ok()) return s;
    }
    tokens->resize(batch_ * window_);
    for (size_t row = 0; row < batch_; ++row) {
      const size_t window = cursor_.order[cursor_.emitted * batch_ + row];
      std::memcpy(tokens->data() + row * window_, cursor_.buffer.data() + window * window_,
                  window_ * sizeof(int64_t));
    }
    ++cursor_.emitted;
    return absl::OkStatus();
  }

  DataState State() const override {
    const Resume resume = CurrentResume();
    Json positions = Json::array();
    for (size_t i = 0; i < resume.positions.size(); ++i) {
      const StreamPos& pos = resume.positions[i];
      positions.push_back({
          {"file", fs::path(cursor_.sources[i].files()[pos.file]).filename().string()},
          {"offset", pos.offset},
          {"line", pos.line},
          {"token", pos.token},
          {"epoch", pos.epoch},
      });
    }
    const Json state = {
        {"format", kStateFormat},
        {"version", kStateVersion},
        {"split", SplitName(split_)},
        {"args", ArgsJson()},
        {"rng", resume.rng},
        {"emitted", resume.emitted},
        {"positions", std::move(positions)},
    };
    return DataState{state.dump(-1, ' ', false, Json::error_handler_t::replace)};
  }

  absl::Status Restore(const DataState& state) override {
    try {
      return RestoreOrError(state);
    } catch (const Json::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat("data state: ", e.what()));
    }
  }

  // The largest epoch among the sources' saved positions (see State()): the most-read source
  // decides, since repeated data is what the number warns about.
  int64_t Epoch() const override {
    int64_t epoch = 0;
    for (const StreamPos& pos : CurrentResume().positions) epoch = std::max(epoch, pos.epoch);
    return epoch;
  }

 private:
  // Everything that moves as batches are read.
  struct Cursor {
    Cursor(std::vector<SourceStream> sources_in, uint64_t rng_state)
        : sources(std::move(sources_in)), rng(rng_state) {}

    std::vector<SourceStream> sources;
    SplitMix64 rng;
    // windows_per_buffer windows of window_ tokens each, emitted batch by batch in `order`.
    std::vector<int64_t> buffer;
    std::vector<uint32_t> order;
    bool filled = false;
    size_t emitted = 0;  // Batches of the buffer returned so far.
    // The source positions and RNG state from which the buffer was read.
    std::vector<StreamPos> buffer_start;
    uint64_t buffer_start_rng = 0;
  };

  // What State() saves: re-reading from `positions` with `rng` and skipping `emitted` batches
  // continues the stream exactly.
  struct Resume {
    std::vector<StreamPos> positions;
    uint64_t rng = 0;
    size_t emitted = 0;
  };

  static std::vector<double> CumulativeWeights(const DataArgs& args) {
    std::vector<double> cumulative;
    double total = 0;
    for (const auto& source : args.sources) cumulative.push_back(total += source.second);
    return cumulative;
  }

  size_t windows_per_buffer() const { return batches_per_buffer_ * batch_; }

  Resume CurrentResume() const {
    Resume resume;
    if (cursor_.filled && cursor_.emitted < batches_per_buffer_) {
      resume.positions = cursor_.buffer_start;
      resume.rng = cursor_.buffer_start_rng;
      resume.emitted = cursor_.emitted;
    } else {
      for (const SourceStream& source : cursor_.sources) {
        resume.positions.push_back(source.Position());
      }
      resume.rng = cursor_.rng.state();
    }
    return resume;
  }

  // A source index drawn with the configured weights (no draw with a single source).
  size_t ChooseSource(SplitMix64* rng) const {
    if (cumulative_weights_.size() == 1) return 0;
    const double u = rng->Uniform() * cumulative_weights_.back();
    for (size_t i = 0; i < cumulative_weights_.size(); ++i) {
      if (u < cumulative_weights_[i]) return i;
    }
    return cumulative_weights_.size() - 1;
  }

  // Reads the next buffer of windows into `cursor` and, for training, permutes it
  // (Fisher-Yates with unbiased bounded draws).
  absl::Status Fill(Cursor* cursor) const {
    cursor->buffer_start.clear();
    for (const SourceStream& source : cursor->sources) {
      cursor->buffer_start.push_back(source.Position());
    }
    cursor->buffer_start_rng = cursor->rng.state();
    cursor->filled = false;
    const size_t windows = windows_per_buffer();
    cursor->buffer.resize(windows * window_);
    for (size_t w = 0; w < windows; ++w) {
      const size_t source = ChooseSource(&cursor->rng);
      absl::Status s = cursor->sources[source].Take(window_, &cursor->buffer[w * window_]);
      if (!s.ok()) return s;
    }
    cursor->order.resize(windows);
    std::iota(cursor->order.begin(), cursor->order.end(), uint32_t{0});
    if (split_ == Split::kTrain) {
      for (size_t i = windows - 1; i > 0; --i) {
        std::swap(cursor->order[i], cursor->order[cursor->rng.Below(i + 1)]);
      }
    }
    cursor->filled = true;
    cursor->emitted = 0;
    return absl::OkStatus();
  }

  // The arguments that shape the stream; a state restores only onto equal ones.
  Json ArgsJson() const {
    Json sources = Json::array();
    for (const auto& [name, weight] : args_.sources) sources.push_back({name, weight});
    return {
        {"seq_len", args_.seq_len},
        {"batch_size", args_.batch_size},
        {"prefetch_size", args_.prefetch_size},
        {"add_bos", args_.add_bos},
        {"add_eos", args_.add_eos},
        {"tokenizer", args_.tokenizer},
        {"sources", std::move(sources)},
    };
  }

  absl::Status RestoreOrError(const DataState& data_state) {
    const Json state = Json::parse(data_state.json, nullptr, /*allow_exceptions=*/false);
    if (state.is_discarded() || !state.is_object()) {
      return absl::InvalidArgumentError("data state is not a JSON object");
    }
    const auto format = state.find("format");
    if (format == state.end() || *format != kStateFormat) {
      return absl::InvalidArgumentError(
          absl::StrCat("data state: \"format\" is not \"", kStateFormat, "\""));
    }
    const auto version = state.find("version");
    if (version == state.end() || !version->is_number_integer() || *version != kStateVersion) {
      return absl::InvalidArgumentError(
          absl::StrCat("data state: version ", version == state.end() ? "(none)" : version->dump(),
                       " is not supported (this build reads version ", kStateVersion, ")"));
    }
    const auto split = state.find("split");
    const auto args = state.find("args");
    uint64_t rng = 0;
    int64_t emitted = 0;
    const auto positions = state.find("positions");
    if (split == state.end() || !split->is_string() || args == state.end() || !args->is_object() ||
        !GetUint(state, "rng", &rng) || !GetNonNegative(state, "emitted", &emitted) ||
        positions == state.end() || !positions->is_array()) {
      return absl::InvalidArgumentError(
          "data state: expected \"split\", \"args\", \"rng\", \"emitted\" and \"positions\"");
    }
    if (*split != SplitName(split_)) {
      return absl::FailedPreconditionError(
          absl::StrCat("data state belongs to the ", split->get<std::string>(),
                       " split, not to the ", SplitName(split_), " split"));
    }
    const Json expected_args = ArgsJson();
    for (const auto& [key, value] : expected_args.items()) {
      const auto saved = args->find(key);
      if (saved == args->end() || *saved != value) {
        return absl::FailedPreconditionError(
            absl::StrCat("data state was saved with data.", key, "=",
                         saved == args->end() ? "(none)" : saved->dump(), " but this run has data.",
                         key, "=", value.dump(), "; resume with the same data settings"));
      }
    }
    if (static_cast<uint64_t>(emitted) >= batches_per_buffer_) {
      return absl::InvalidArgumentError(
          absl::StrCat("data state: emitted=", emitted, " is not below ", batches_per_buffer_));
    }
    if (positions->size() != cursor_.sources.size()) {
      return absl::InvalidArgumentError(absl::StrCat("data state has ", positions->size(),
                                                     " source positions, expected ",
                                                     cursor_.sources.size()));
    }

    Cursor restored({}, rng);
    for (size_t i = 0; i < cursor_.sources.size(); ++i) {
      const Json& saved = (*positions)[i];
      SourceStream source = cursor_.sources[i].Fresh();
      StreamPos pos;
      const auto file = saved.is_object() ? saved.find("file") : saved.end();
      if (!saved.is_object() || file == saved.end() || !file->is_string() ||
          !GetUint(saved, "offset", &pos.offset) || !GetNonNegative(saved, "line", &pos.line) ||
          !GetNonNegative(saved, "token", &pos.token) ||
          !GetNonNegative(saved, "epoch", &pos.epoch)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "data state: positions[", i,
            "] needs \"file\" (a name) and non-negative \"offset\", \"line\", \"token\", "
            "\"epoch\""));
      }
      const std::vector<std::string>& files = source.files();
      const auto found = std::find_if(files.begin(), files.end(), [&](const std::string& path) {
        return fs::path(path).filename().string() == file->get_ref<const std::string&>();
      });
      if (found == files.end()) {
        return absl::FailedPreconditionError(
            absl::StrCat("data source '", source.name(), "': the saved position is in ",
                         file->get<std::string>(), ", which is no longer there"));
      }
      pos.file = static_cast<size_t>(found - files.begin());
      absl::Status s = source.Seek(pos);
      if (!s.ok()) return s;
      restored.sources.push_back(std::move(source));
    }
    if (emitted > 0) {
      absl::Status s = Fill(&restored);
      if (!s.ok()) return s;
      restored.emitted = static_cast<size_t>(emitted);
    }
    cursor_ = std::move(restored);
    return absl::OkStatus();
  }

  const DataArgs args_;
  const Split split_;
  const size_t window_;              // seq_len + 1 tokens.
  const size_t batch_;               // Windows per batch.
  const size_t batches_per_buffer_;  // Training: prefetch_size; validation: 1.
  const std::vector<double> cumulative_weights_;
  Cursor cursor_;
};

absl::Status ValidateArgs(const DataArgs& args) {
  if (args.tokenizer != "bytes") {
    return absl::InvalidArgumentError(absl::StrCat(
        "data.tokenizer: only \"bytes\" (Lingua's byte tokenizer) is supported, got \"",
        args.tokenizer, "\""));
  }
  if (args.sources.empty()) return absl::InvalidArgumentError("data.sources: no source given");
  for (const auto& [name, weight] : args.sources) {
    if (!(weight > 0) || !std::isfinite(weight)) {
      return absl::InvalidArgumentError(
          absl::StrCat("data.sources.", name, ": the weight must be > 0, got ", weight));
    }
  }
  if (args.batch_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("data.batch_size: must be > 0, got ", args.batch_size));
  }
  if (args.seq_len <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("data.seq_len: must be > 0, got ", args.seq_len));
  }
  if (args.prefetch_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("data.prefetch_size: must be > 0, got ", args.prefetch_size));
  }
  const uint64_t windows = static_cast<uint64_t>(args.batch_size) * args.prefetch_size;
  if (windows > std::numeric_limits<uint32_t>::max() ||
      windows * (static_cast<uint64_t>(args.seq_len) + 1) > kMaxBufferTokens) {
    return absl::InvalidArgumentError(
        "data.prefetch_size: the shuffle buffer (prefetch_size * batch_size * (seq_len + 1) "
        "tokens) is too large");
  }
  return absl::OkStatus();
}

}  // namespace

void ByteTokenizer::Encode(std::string_view text, bool add_bos, bool add_eos,
                           std::vector<int64_t>* out) {
  out->reserve(out->size() + text.size() + add_bos + add_eos);
  if (add_bos) out->push_back(kBosId);
  for (const char c : text) out->push_back(static_cast<unsigned char>(c));
  if (add_eos) out->push_back(kEosId);
}

// Ids outside 0-255 (BOS, EOS, anything invalid) are dropped.
std::string ByteTokenizer::Decode(const std::vector<int64_t>& ids) {
  std::string text;
  text.reserve(ids.size());
  for (const int64_t id : ids) {
    if (id >= 0 && id < 256) text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
  }
  return text;
}

std::string ResolveSourcePath(const DataArgs& args, const std::string& source) {
  const fs::path path(source);
  if (path.is_absolute()) return source;
  const std::string root = args.root_dir.empty() ? DefaultDataRoot() : args.root_dir;
  return (fs::path(root) / path).string();
}

absl::StatusOr<std::unique_ptr<BatchIterator>> BatchIterator::Open(const DataArgs& args,
                                                                   uint64_t seed, Split split) {
  absl::Status s = ValidateArgs(args);
  if (!s.ok()) return s;
  std::vector<SourceStream> sources;
  for (const auto& source : args.sources) {
    absl::StatusOr<SourceStream> stream = OpenSource(args, source.first, split);
    if (!stream.ok()) return stream.status();
    s = stream->Prime();
    if (!s.ok()) return s;
    sources.push_back(*std::move(stream));
  }
  return std::unique_ptr<BatchIterator>(
      new BatchIteratorImpl(args, seed, split, std::move(sources)));
}

}  // namespace sweep::trainer
