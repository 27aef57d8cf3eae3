// Tests for worker/trainer/data.h on real files in a temporary folder.
#include "worker/trainer/data.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

#ifndef ASSERT_OK
#define ASSERT_OK(expr)                                     \
  do {                                                      \
    const absl::Status assert_ok_status = (expr);           \
    ASSERT_TRUE(assert_ok_status.ok()) << assert_ok_status; \
  } while (0)
#endif

namespace sweep::trainer {
namespace {

namespace fs = std::filesystem;
using Tokens = std::vector<int64_t>;

constexpr int64_t kBos = ByteTokenizer::kBosId;
constexpr int64_t kEos = ByteTokenizer::kEosId;

// [BOS] text [EOS] for each document, concatenated: the token stream of one epoch.
Tokens EncodeAll(const std::vector<std::string>& docs, bool add_bos = true, bool add_eos = true) {
  Tokens out;
  for (const std::string& doc : docs) ByteTokenizer::Encode(doc, add_bos, add_eos, &out);
  return out;
}

// The first n tokens of `epoch` repeated forever.
Tokens Cycle(const Tokens& epoch, size_t n) {
  Tokens out;
  while (out.size() < n) out.push_back(epoch[out.size() % epoch.size()]);
  return out;
}

std::string JsonlLines(const std::vector<std::string>& docs) {
  std::string out;
  for (const std::string& doc : docs) out += "{\"text\": \"" + doc + "\"}\n";
  return out;
}

class DataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::path(::testing::TempDir()) / "data_test_XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    root_ = pattern;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  // Writes root_/relative, creating folders.
  std::string Write(const std::string& relative, const std::string& content) {
    const fs::path path = fs::path(root_) / relative;
    fs::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary) << content;
    return path.string();
  }

  DataArgs Args(std::vector<std::pair<std::string, double>> sources, int batch_size = 1,
                int seq_len = 7, int prefetch_size = 1) const {
    DataArgs args;
    args.root_dir = root_;
    args.sources = std::move(sources);
    args.batch_size = batch_size;
    args.seq_len = seq_len;
    args.prefetch_size = prefetch_size;
    return args;
  }

  static std::unique_ptr<BatchIterator> OpenOrDie(const DataArgs& args, uint64_t seed,
                                                  Split split) {
    absl::StatusOr<std::unique_ptr<BatchIterator>> it = BatchIterator::Open(args, seed, split);
    EXPECT_TRUE(it.ok()) << it.status();
    return it.ok() ? *std::move(it) : nullptr;
  }

  // `n` batches, concatenated.
  static Tokens Take(BatchIterator* it, int n) {
    Tokens all, batch;
    for (int i = 0; i < n; ++i) {
      const absl::Status s = it->Next(&batch);
      EXPECT_TRUE(s.ok()) << s;
      if (!s.ok()) break;
      all.insert(all.end(), batch.begin(), batch.end());
    }
    return all;
  }

  // Opens `args` and reads one batch; the first error of the two, or OK.
  static absl::Status OpenAndRead(const DataArgs& args, Split split) {
    absl::StatusOr<std::unique_ptr<BatchIterator>> it = BatchIterator::Open(args, 1, split);
    if (!it.ok()) return it.status();
    Tokens batch;
    return (*it)->Next(&batch);
  }

  // The stream as read with batch_size 1 and prefetch 1 (no effective shuffle): n windows,
  // concatenated.
  Tokens Stream(DataArgs args, Split split, int n) const {
    args.batch_size = 1;
    args.prefetch_size = 1;
    std::unique_ptr<BatchIterator> it = OpenOrDie(args, 1, split);
    return it ? Take(it.get(), n) : Tokens();
  }

  std::string root_;
};

TEST(ByteTokenizerTest, EncodesUtf8BytesAndSpecialIds) {
  const struct {
    std::string text;
    bool bos, eos;
    Tokens expected;
  } cases[] = {
      {"", false, false, {}},
      {"", true, true, {kBos, kEos}},
      {"Hi", true, false, {kBos, 'H', 'i'}},
      {"Hi", false, true, {'H', 'i', kEos}},
      {"\xc3\xa9", true, true, {kBos, 0xc3, 0xa9, kEos}},                  // é
      {"\xe6\x97\xa5", false, false, {0xe6, 0x97, 0xa5}},                  // 日
      {"a\xf0\x9f\x98\x80", false, false, {'a', 0xf0, 0x9f, 0x98, 0x80}},  // a😀
      {std::string("\0\xff", 2), false, false, {0, 255}},
  };
  EXPECT_EQ(ByteTokenizer::kVocabSize, 258);
  for (const auto& c : cases) {
    Tokens ids = {42};  // Encode appends.
    ByteTokenizer::Encode(c.text, c.bos, c.eos, &ids);
    Tokens expected = {42};
    expected.insert(expected.end(), c.expected.begin(), c.expected.end());
    EXPECT_EQ(ids, expected) << c.text;
    ids.erase(ids.begin());
    EXPECT_EQ(ByteTokenizer::Decode(ids), c.text);
  }
}

TEST(ByteTokenizerTest, DecodeDropsSpecialIds) {
  EXPECT_EQ(ByteTokenizer::Decode({kBos, 'a', kEos, kBos, 'b', kEos}), "ab");
}

TEST(ResolveSourcePathTest, JoinsRelativeNamesKeepsAbsoluteOnes) {
  DataArgs args;
  args.root_dir = "/data/root";
  EXPECT_EQ(ResolveSourcePath(args, "kjv"), "/data/root/kjv");
  EXPECT_EQ(ResolveSourcePath(args, "web/part1"), "/data/root/web/part1");
  EXPECT_EQ(ResolveSourcePath(args, "/elsewhere/x.txt"), "/elsewhere/x.txt");
  args.root_dir.clear();
  EXPECT_EQ(ResolveSourcePath(args, "kjv"), (fs::path(DefaultDataRoot()) / "kjv").string());
}

TEST_F(DataTest, JsonlReadsTextOrContentInSortedFileOrder) {
  // Files are read in name order; *.val.jsonl and other files are not training data.
  Write("c/b.jsonl", "{\"content\": \"B1\"}\n\n{\"text\": \"B2\", \"content\": \"no\"}\n");
  Write("c/a.jsonl", "{\"text\": \"A1\", \"id\": 3}\n   \n{\"text\": \"\\u00e9\\n\"}");
  Write("c/c.val.jsonl", "{\"text\": \"V1\"}\n");
  Write("c/notes.txt", "ignored\n");
  const Tokens epoch = EncodeAll({"A1", "\xc3\xa9\n", "B1", "B2"});
  EXPECT_EQ(Stream(Args({{"c", 1.0}}), Split::kTrain, 5), Cycle(epoch, 5 * 8));
  EXPECT_EQ(Stream(Args({{"c", 1.0}}), Split::kVal, 2), Cycle(EncodeAll({"V1"}), 2 * 8));
}

TEST_F(DataTest, BadLinesNameFileAndLine) {
  const struct {
    std::string content;
    std::string where;  // Expected in the message.
  } cases[] = {
      {"not json\n", "bad.jsonl:1: not a valid JSON line"},
      {"{\"text\": \"ok\"}\n\n{\"text\": \"ok\"\n", "bad.jsonl:3: not a valid JSON line"},
      {"{\"text\": \"ok\"}\n[1, 2]\n", "bad.jsonl:2: expected a JSON object"},
      {"{\"title\": \"x\"}\n", "bad.jsonl:1: no \"text\" or \"content\" field"},
      {"{\"text\": 3}\n", "bad.jsonl:1: \"text\" is not a string"},
  };
  int i = 0;
  for (const auto& c : cases) {
    const std::string source = absl::StrCat("bad", i++);
    Write(source + "/bad.jsonl", c.content);
    const absl::Status s = OpenAndRead(Args({{source, 1.0}}, 4, 64), Split::kTrain);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), c.where)) << s;
  }
}

TEST_F(DataTest, MissingSourceNamesPathAndSetup) {
  const absl::Status s = OpenAndRead(Args({{"kjv", 1.0}}), Split::kTrain);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(s.message(), (fs::path(root_) / "kjv").string())) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "tools/setup.sh")) << s;
}

TEST_F(DataTest, InvalidArgsAreRefused) {
  Write("c/a.jsonl", JsonlLines({"x"}));
  const struct {
    std::string key;
    void (*change)(DataArgs*);
  } cases[] = {
      {"data.sources.c", [](DataArgs* a) { a->sources[0].second = 0; }},
      {"data.sources", [](DataArgs* a) { a->sources.clear(); }},
      {"data.batch_size", [](DataArgs* a) { a->batch_size = 0; }},
      {"data.seq_len", [](DataArgs* a) { a->seq_len = -1; }},
      {"data.prefetch_size", [](DataArgs* a) { a->prefetch_size = 0; }},
      {"data.tokenizer", [](DataArgs* a) { a->tokenizer = "tiktoken"; }},
  };
  for (const auto& c : cases) {
    DataArgs args = Args({{"c", 1.0}});
    c.change(&args);
    const absl::Status s = BatchIterator::Open(args, 1, Split::kTrain).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.key;
    EXPECT_TRUE(absl::StrContains(s.message(), c.key)) << s;
  }
}

TEST_F(DataTest, ValidationWindowsTileTheStream) {
  const std::vector<std::string> docs = {"In the beginning", "", "x", "God created the heaven",
                                         "and the earth."};
  Write("c/c.val.jsonl", JsonlLines(docs));
  const int batch = 2, seq_len = 7, batches = 9;  // 144 tokens: more than two epochs.
  std::unique_ptr<BatchIterator> it =
      OpenOrDie(Args({{"c", 1.0}}, batch, seq_len, /*prefetch_size=*/4), 7, Split::kVal);
  ASSERT_NE(it, nullptr);
  Tokens all, tokens;
  for (int i = 0; i < batches; ++i) {
    ASSERT_OK(it->Next(&tokens));
    ASSERT_EQ(tokens.size(), static_cast<size_t>(batch * (seq_len + 1)));
    all.insert(all.end(), tokens.begin(), tokens.end());
  }
  EXPECT_EQ(all, Cycle(EncodeAll(docs), all.size()));
  EXPECT_EQ(it->Epoch(), 2);
  // Validation does not depend on the seed.
  std::unique_ptr<BatchIterator> other =
      OpenOrDie(Args({{"c", 1.0}}, batch, seq_len, 4), 99, Split::kVal);
  EXPECT_EQ(Take(other.get(), batches), all);
}

TEST_F(DataTest, BosEosFlags) {
  Write("c/a.jsonl", JsonlLines({"ab", "c"}));
  const struct {
    bool bos, eos;
  } cases[] = {{true, true}, {true, false}, {false, true}, {false, false}};
  for (const auto& c : cases) {
    DataArgs args = Args({{"c", 1.0}}, 1, 3);
    args.add_bos = c.bos;
    args.add_eos = c.eos;
    EXPECT_EQ(Stream(args, Split::kTrain, 3), Cycle(EncodeAll({"ab", "c"}, c.bos, c.eos), 12))
        << c.bos << c.eos;
  }
}

TEST_F(DataTest, TrainingShufflesWindowsWithinABuffer) {
  std::vector<std::string> docs;
  for (int i = 0; i < 40; ++i) docs.push_back(absl::StrCat("document number ", i, "."));
  Write("c/a.jsonl", JsonlLines(docs));
  const int batch = 3, seq_len = 5, prefetch = 4, window = seq_len + 1;
  const DataArgs args = Args({{"c", 1.0}}, batch, seq_len, prefetch);
  const Tokens stream = Stream(args, Split::kTrain, 2 * batch * prefetch);
  std::unique_ptr<BatchIterator> it = OpenOrDie(args, 123, Split::kTrain);
  const Tokens shuffled = Take(it.get(), 2 * prefetch);
  ASSERT_EQ(shuffled.size(), stream.size());
  EXPECT_NE(shuffled, stream);
  // Each buffer of batch * prefetch windows is a permutation of the same windows of the stream.
  const size_t buffer_tokens = batch * prefetch * window;
  for (size_t start = 0; start < stream.size(); start += buffer_tokens) {
    std::vector<Tokens> expected, got;
    for (size_t w = start; w < start + buffer_tokens; w += window) {
      expected.emplace_back(stream.begin() + w, stream.begin() + w + window);
      got.emplace_back(shuffled.begin() + w, shuffled.begin() + w + window);
    }
    EXPECT_NE(got, expected);
    std::sort(expected.begin(), expected.end());
    std::sort(got.begin(), got.end());
    EXPECT_EQ(got, expected) << "buffer at token " << start;
  }
}

// Windows of a 4-window buffer: each lands in each place about equally often over many seeds
// (an off-by-one Fisher-Yates, for one, never leaves a window in place).
TEST_F(DataTest, ShuffleIsUniform) {
  Write("c/a.jsonl", JsonlLines({"0123456789abcdef"}));  // 18 tokens: windows 0-3 differ.
  const DataArgs args = Args({{"c", 1.0}}, 1, /*seq_len=*/3, /*prefetch_size=*/4);
  const Tokens stream = Stream(args, Split::kTrain, 4);
  int count[4][4] = {};  // [place][window]
  const int seeds = 2000;
  for (int seed = 0; seed < seeds; ++seed) {
    std::unique_ptr<BatchIterator> it = OpenOrDie(args, seed, Split::kTrain);
    const Tokens shuffled = Take(it.get(), 4);
    for (int place = 0; place < 4; ++place) {
      for (int window = 0; window < 4; ++window) {
        count[place][window] +=
            std::equal(shuffled.begin() + 4 * place, shuffled.begin() + 4 * place + 4,
                       stream.begin() + 4 * window);
      }
    }
  }
  for (int place = 0; place < 4; ++place) {
    for (int window = 0; window < 4; ++window) {
      EXPECT_NEAR(count[place][window], seeds / 4, 100) << place << " " << window;
    }
  }
}

// Pins the RNG and the order of draws: batches saved in checkpoints by earlier builds must
// come out the same (a change here needs a new DataState version).
TEST_F(DataTest, ShuffleOrderIsPinned) {
  Write("c/a.jsonl", JsonlLines({"abcdefgh"}));  // Windows of 2: BOS a, b c, d e, f g, h EOS.
  const DataArgs args = Args({{"c", 1.0}}, 1, /*seq_len=*/1, /*prefetch_size=*/5);
  std::unique_ptr<BatchIterator> it = OpenOrDie(args, 42, Split::kTrain);
  EXPECT_EQ(Take(it.get(), 5), Tokens({'b', 'c', 'd', 'e', kBos, 'a', 'h', kEos, 'f', 'g'}));

  // Source choice: one draw per window.
  Write("x/a.jsonl", JsonlLines({"x"}));
  Write("y/a.jsonl", JsonlLines({"y"}));
  DataArgs mixed = Args({{"x", 0.5}, {"y", 0.5}}, 1, /*seq_len=*/1, /*prefetch_size=*/1);
  mixed.add_bos = false;
  mixed.add_eos = false;
  it = OpenOrDie(mixed, 42, Split::kTrain);
  EXPECT_EQ(ByteTokenizer::Decode(Take(it.get(), 12)), "yyxxxxxxxxyyxxyyxxyyxxxx");
}

TEST_F(DataTest, SameSeedSameBatchesOtherSeedOtherBatches) {
  std::vector<std::string> docs;
  for (int i = 0; i < 30; ++i) docs.push_back(absl::StrCat("line ", i, " of the corpus"));
  Write("c/a.jsonl", JsonlLines(docs));
  Write("d/a.jsonl", JsonlLines({"other source", "more text here"}));
  const DataArgs args = Args({{"c", 2.0}, {"d", 1.0}}, 4, 9, 3);
  const Tokens a = Take(OpenOrDie(args, 5, Split::kTrain).get(), 10);
  const Tokens b = Take(OpenOrDie(args, 5, Split::kTrain).get(), 10);
  const Tokens c = Take(OpenOrDie(args, 6, Split::kTrain).get(), 10);
  EXPECT_EQ(a.size(), 10u * 4 * 10);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST_F(DataTest, RestoreResumesExactly) {
  std::vector<std::string> docs;
  for (int i = 0; i < 25; ++i) docs.push_back(absl::StrCat("sentence ", i, " with words"));
  Write("c/a.jsonl", JsonlLines(docs));
  Write("c/b.jsonl", JsonlLines({"second file", "of the source"}));
  Write("c/v.val.jsonl", JsonlLines({"held out", "text"}));
  Write("d.txt", "paragraph one\nstill one\n\nparagraph two\n");
  const struct {
    const char* name;
    DataArgs args;
    Split split;
    int before;  // Batches read before State().
  } cases[] = {
      {"fresh", Args({{"c", 1.0}}, 2, 7, 3), Split::kTrain, 0},
      {"mid buffer", Args({{"c", 1.0}}, 2, 7, 3), Split::kTrain, 1},
      {"buffer end", Args({{"c", 1.0}}, 2, 7, 3), Split::kTrain, 3},
      {"after epochs", Args({{"c", 1.0}}, 2, 7, 3), Split::kTrain, 50},
      {"two sources", Args({{"c", 0.6}, {"d.txt", 0.4}}, 3, 5, 4), Split::kTrain, 6},
      {"validation", Args({{"c", 1.0}}, 2, 7, 3), Split::kVal, 5},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    std::unique_ptr<BatchIterator> original = OpenOrDie(c.args, 11, c.split);
    ASSERT_NE(original, nullptr);
    Take(original.get(), c.before);
    const DataState state = original->State();
    const int64_t epoch = original->Epoch();
    const Tokens expected = Take(original.get(), 7);

    // A fresh iterator, opened with another seed (the state carries the RNG).
    std::unique_ptr<BatchIterator> resumed = OpenOrDie(c.args, 12, c.split);
    ASSERT_OK(resumed->Restore(state));
    EXPECT_EQ(resumed->Epoch(), epoch);
    EXPECT_EQ(resumed->State().json, state.json);
    EXPECT_EQ(Take(resumed.get(), 7), expected);

    // Restoring rewinds an iterator that has moved on.
    ASSERT_OK(original->Restore(state));
    EXPECT_EQ(Take(original.get(), 7), expected);
  }
}

TEST_F(DataTest, RestoreRefusesOtherArgs) {
  Write("c/a.jsonl", JsonlLines({"some text for the state test", "and more"}));
  Write("c/v.val.jsonl", JsonlLines({"held out"}));
  Write("d/a.jsonl", JsonlLines({"other"}));
  const DataArgs base = Args({{"c", 1.0}}, 2, 7, 3);
  std::unique_ptr<BatchIterator> it = OpenOrDie(base, 1, Split::kTrain);
  Take(it.get(), 1);
  const DataState state = it->State();
  const struct {
    std::string key;
    void (*change)(DataArgs*);
  } cases[] = {
      {"data.seq_len", [](DataArgs* a) { a->seq_len = 8; }},
      {"data.batch_size", [](DataArgs* a) { a->batch_size = 3; }},
      {"data.prefetch_size", [](DataArgs* a) { a->prefetch_size = 4; }},
      {"data.add_bos", [](DataArgs* a) { a->add_bos = false; }},
      {"data.add_eos", [](DataArgs* a) { a->add_eos = false; }},
      {"data.sources",
       [](DataArgs* a) {
         a->sources.push_back({"d", 1.0});
       }},
      {"data.sources", [](DataArgs* a) { a->sources[0].second = 2.0; }},
  };
  for (const auto& c : cases) {
    DataArgs args = base;
    c.change(&args);
    std::unique_ptr<BatchIterator> other = OpenOrDie(args, 1, Split::kTrain);
    const absl::Status s = other->Restore(state);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << c.key << ": " << s;
    EXPECT_TRUE(absl::StrContains(s.message(), c.key)) << s;
  }
  std::unique_ptr<BatchIterator> val = OpenOrDie(base, 1, Split::kVal);
  const absl::Status s = val->Restore(state);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "train split")) << s;
}

TEST_F(DataTest, RestoreRejectsMalformedStates) {
  Write("c/a.jsonl", JsonlLines({"text for malformed states"}));
  const DataArgs args = Args({{"c", 1.0}}, 1, 3, 2);
  std::unique_ptr<BatchIterator> it = OpenOrDie(args, 1, Split::kTrain);
  Take(it.get(), 1);
  const std::string good = it->State().json;
  const Tokens expected = Take(it.get(), 3);
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string out = good;
    const size_t at = out.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    if (at != std::string::npos) out.replace(at, from.size(), to);
    return out;
  };
  const struct {
    std::string name;
    std::string json;
  } cases[] = {
      {"empty", ""},
      {"not json", "checkpoint"},
      {"array", "[1, 2]"},
      {"no format", "{}"},
      {"version 2", replace("\"version\":1", "\"version\":2")},
      {"version string", replace("\"version\":1", "\"version\":\"1\"")},
      {"negative rng", replace("\"rng\":", "\"rng\":-")},
      {"emitted too large", replace("\"emitted\":1", "\"emitted\":2")},
      {"no positions", replace("\"positions\"", "\"position\"")},
      {"two positions", replace("\"positions\":[", "\"positions\":[{},")},
      {"bad position", replace("\"offset\":", "\"offset\":-")},
  };
  for (const auto& c : cases) {
    const absl::Status s = it->Restore(DataState{c.json});
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.name << ": " << s;
  }
  // A failed Restore leaves the iterator usable where it was... and the good state still works.
  ASSERT_OK(it->Restore(DataState{good}));
  EXPECT_EQ(Take(it.get(), 3), expected);
}

TEST_F(DataTest, RestoreNoticesChangedFiles) {
  Write("c/a.jsonl", JsonlLines({"a fairly long first document", "second"}));
  const DataArgs args = Args({{"c", 1.0}}, 1, 3, 1);
  std::unique_ptr<BatchIterator> it = OpenOrDie(args, 1, Split::kTrain);
  Take(it.get(), 3);
  const DataState state = it->State();
  Write("c/a.jsonl", JsonlLines({"short"}));
  std::unique_ptr<BatchIterator> other = OpenOrDie(args, 1, Split::kTrain);
  EXPECT_EQ(other->Restore(state).code(), absl::StatusCode::kFailedPrecondition);
  fs::rename(fs::path(root_) / "c/a.jsonl", fs::path(root_) / "c/b.jsonl");
  std::unique_ptr<BatchIterator> renamed = OpenOrDie(args, 1, Split::kTrain);
  const absl::Status s = renamed->Restore(state);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "a.jsonl")) << s;
}

TEST_F(DataTest, EpochWrapsAroundATinyCorpus) {
  Write("tiny/a.jsonl", "{\"text\": \"ab\"}\n");  // 4 tokens per epoch.
  std::unique_ptr<BatchIterator> it =
      OpenOrDie(Args({{"tiny", 1.0}}, 1, /*seq_len=*/2, 1), 3, Split::kTrain);
  const Tokens epoch = {kBos, 'a', 'b', kEos};
  const struct {
    Tokens window;
    int64_t epoch_after;
  } steps[] = {
      {{kBos, 'a', 'b'}, 0}, {{kEos, kBos, 'a'}, 1}, {{'b', kEos, kBos}, 2},
      {{'a', 'b', kEos}, 2}, {{kBos, 'a', 'b'}, 3},
  };
  EXPECT_EQ(it->Epoch(), 0);
  Tokens tokens;
  for (const auto& step : steps) {
    ASSERT_OK(it->Next(&tokens));
    EXPECT_EQ(tokens, step.window);
    EXPECT_EQ(it->Epoch(), step.epoch_after);
  }
}

TEST_F(DataTest, EmptyCorpusIsAnError) {
  Write("empty/a.jsonl", "\n\n");
  Write("blank.txt", "\n  \n");
  Write("nofiles/readme.md", "no chunks here");
  const struct {
    std::string source;
    absl::StatusCode code;
    std::string message;
  } cases[] = {
      {"empty", absl::StatusCode::kFailedPrecondition, "has no text"},
      {"blank.txt", absl::StatusCode::kFailedPrecondition, "has no text"},
      {"nofiles", absl::StatusCode::kFailedPrecondition, "no training files"},
  };
  for (const auto& c : cases) {
    const absl::Status s = OpenAndRead(Args({{c.source, 1.0}}), Split::kTrain);
    EXPECT_EQ(s.code(), c.code) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), c.message)) << s;
  }
}

TEST_F(DataTest, TextFileDocumentsAreSeparatedByBlankLines) {
  const struct {
    std::string content;
    std::vector<std::string> docs;
  } cases[] = {
      {"one\n", {"one"}},
      {"one\ntwo\n\nthree", {"one\ntwo", "three"}},
      {"\n\n  first\n\n\n \t\nsecond\nline\n\n", {"  first", "second\nline"}},
      {"crlf\r\nfile\r\n\r\nnext\r\n", {"crlf\nfile", "next"}},
      {"caf\xc3\xa9\n", {"caf\xc3\xa9"}},
  };
  int i = 0;
  for (const auto& c : cases) {
    const std::string name = absl::StrCat("t", i++, ".txt");
    Write(name, c.content);
    const Tokens epoch = EncodeAll(c.docs);
    const int windows = static_cast<int>(epoch.size()) * 2;  // Two epochs of 4-token windows.
    EXPECT_EQ(Stream(Args({{name, 1.0}}, 1, 3), Split::kTrain, windows), Cycle(epoch, windows * 4))
        << c.content;
  }
}

TEST_F(DataTest, AbsoluteTextSource) {
  const std::string path = Write("sub/own.txt", "mine\n");
  DataArgs args = Args({{path, 1.0}}, 1, 5);
  args.root_dir = "/nonexistent";
  EXPECT_EQ(Stream(args, Split::kTrain, 1), Cycle(EncodeAll({"mine"}), 6));
}

TEST_F(DataTest, ValidationSplitMissingIsAClearError) {
  Write("own.txt", "text\n");
  Write("c/a.jsonl", JsonlLines({"train only"}));
  const struct {
    std::string source;
    std::string message;
  } cases[] = {
      {"own.txt", "has no validation split"},
      {"c", "has no validation split (no *.val.jsonl file)"},
  };
  for (const auto& c : cases) {
    const absl::Status s = OpenAndRead(Args({{c.source, 1.0}}), Split::kVal);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), c.message)) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "'" + c.source + "'")) << s;
  }
}

TEST_F(DataTest, SourcesAreMixedByWeight) {
  // Source a holds only 'a' bytes, source b only 'b' bytes: each window shows its source.
  Write("a/x.jsonl", JsonlLines({std::string(1000, 'a'), std::string(77, 'a')}));
  Write("b/x.jsonl", JsonlLines({std::string(500, 'b')}));
  DataArgs args = Args({{"a", 0.75}, {"b", 0.25}}, 8, 15, 16);
  args.add_bos = false;
  args.add_eos = false;
  std::unique_ptr<BatchIterator> it = OpenOrDie(args, 2024, Split::kTrain);
  int from_a = 0, windows = 0;
  Tokens tokens;
  for (int step = 0; step < 500; ++step) {
    ASSERT_OK(it->Next(&tokens));
    for (size_t w = 0; w < tokens.size(); w += 16, ++windows) {
      const int64_t first = tokens[w];
      ASSERT_TRUE(std::all_of(tokens.begin() + w, tokens.begin() + w + 16,
                              [&](int64_t t) { return t == first; }));
      from_a += first == 'a';
    }
  }
  ASSERT_EQ(windows, 4000);
  EXPECT_NEAR(static_cast<double>(from_a) / windows, 0.75, 0.03);
}

}  // namespace
}  // namespace sweep::trainer
