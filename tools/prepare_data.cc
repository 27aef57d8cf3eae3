// sweep-prepare-data: writes a corpus in Lingua's layout, the layout the trainer reads
// (worker/trainer/data.h):
//
//   <out>/<name>/<name>.chunk.00.jsonl   training documents, one {"text": ...} per line
//   <out>/<name>/<name>.val.jsonl        held-out documents (every N-th), none of them in the
//                                        chunk file
//
// Subcommands
//   kjv   The King James Bible from the Debian package bible-kjv (`bible 'gen1:1-rev22:21'`
//         prints it: a heading line such as "Genesis 1" between blank lines, then verses
//         "  1 In the beginning ..." wrapped over several lines). One document per chapter:
//         the heading on the first line, then one verse per line, without its number, its
//         wrapped lines joined with single spaces:
//           Genesis 1\nIn the beginning God created the heaven and the earth.\nAnd the ...
//         1189 chapters; with the default --val-every 40, chapters 40, 80, ..., 1160 (29) are
//         held out.
//   text  A plain text file whose documents are separated by blank lines (lines made only of
//         whitespace); a document's lines are kept, joined with '\n'.
//
// Files are written to a temporary name and renamed, so a reader never sees half a file.
// Exit status: 0 on success, 1 on an error (message on stderr), CLI11's codes for bad usage.
#include <stdio.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "worker/trainer/config.h"

namespace sweep {
namespace {

namespace fs = std::filesystem;

constexpr char kBibleCommand[] = "bible 'gen1:1-rev22:21'";

struct Document {
  std::string text;
  int64_t line = 0;  // Where it starts in the input, for error messages.
};

bool IsBlank(absl::string_view line) {
  return line.find_first_not_of(" \t\r\n\f\v") == absl::string_view::npos;
}

absl::string_view Trim(absl::string_view s) {
  const size_t begin = s.find_first_not_of(" \t\r");
  if (begin == absl::string_view::npos) return {};
  return s.substr(begin, s.find_last_not_of(" \t\r") - begin + 1);
}

// Splits `text` into lines without their '\n' (and without a trailing '\r').
std::vector<absl::string_view> Lines(absl::string_view text) {
  std::vector<absl::string_view> lines;
  while (!text.empty()) {
    const size_t end = text.find('\n');
    absl::string_view line = text.substr(0, end);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    if (end == absl::string_view::npos) break;
    text.remove_prefix(end + 1);
  }
  return lines;
}

// Output of `command`, which must exit with status 0.
absl::StatusOr<std::string> RunCommand(const char* command) {
  FILE* pipe = popen(command, "r");
  if (pipe == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot run `", command, "`: ", strerror(errno)));
  }
  std::string out;
  char buffer[1 << 16];
  size_t n = 0;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  const int status = pclose(pipe);
  if (status != 0) {
    return absl::UnavailableError(absl::StrCat(
        "`", command, "` failed (", WIFEXITED(status) ? WEXITSTATUS(status) : status,
        "); install the Debian package bible-kjv, or pass the text with --input FILE"));
  }
  return out;
}

// The contents of `path`; "-" reads standard input.
absl::StatusOr<std::string> ReadInput(const std::string& path) {
  std::ostringstream out;
  if (path == "-") {
    out << std::cin.rdbuf();
    if (std::cin.bad()) return absl::DataLossError("cannot read standard input");
    return out.str();
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  out << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return out.str();
}

// "Genesis 1", "1 Kings 12", "Song of Solomon 3": a name, a space, a chapter number.
bool IsChapterHeading(absl::string_view line) {
  const size_t space = line.rfind(' ');
  if (space == absl::string_view::npos || space == 0 || space + 1 == line.size()) return false;
  const absl::string_view number = line.substr(space + 1);
  return number.find_first_not_of("0123456789") == absl::string_view::npos;
}

// A verse's first line: spaces, the verse number, a space, text. Sets *text to the text.
bool IsVerseStart(absl::string_view line, absl::string_view* text) {
  const size_t digits = line.find_first_not_of(' ');
  if (digits == 0 || digits == absl::string_view::npos) return false;
  const size_t after = line.find_first_not_of("0123456789", digits);
  if (after == digits || after == absl::string_view::npos || line[after] != ' ') return false;
  *text = Trim(line.substr(after));
  return true;
}

// Parses the output of `bible` into one document per chapter (see the top of the file).
absl::StatusOr<std::vector<Document>> ParseKjv(absl::string_view text, const std::string& origin) {
  std::vector<Document> chapters;
  std::string heading;
  std::vector<std::string> verses;
  int64_t heading_line = 0;
  auto finish_chapter = [&]() -> absl::Status {
    if (heading.empty()) return absl::OkStatus();
    if (verses.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ":", heading_line, ": chapter \"", heading, "\" has no verses"));
    }
    Document chapter{heading, heading_line};
    for (const std::string& verse : verses) absl::StrAppend(&chapter.text, "\n", verse);
    chapters.push_back(std::move(chapter));
    verses.clear();
    return absl::OkStatus();
  };
  bool after_blank = true;
  int64_t line_number = 0;
  for (const absl::string_view line : Lines(text)) {
    ++line_number;
    if (IsBlank(line)) {
      after_blank = true;
      continue;
    }
    absl::string_view verse;
    if (after_blank && line[0] != ' ') {
      if (!IsChapterHeading(line)) {
        return absl::InvalidArgumentError(absl::StrCat(
            origin, ":", line_number, ": expected a chapter heading such as \"Genesis 1\", got \"",
            line, "\" (is this the output of `", kBibleCommand, "`?)"));
      }
      absl::Status s = finish_chapter();
      if (!s.ok()) return s;
      heading = std::string(line);
      heading_line = line_number;
    } else if (heading.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ":", line_number,
                       ": text before the first chapter heading (is this the output of `",
                       kBibleCommand, "`?)"));
    } else if (IsVerseStart(line, &verse)) {
      verses.emplace_back(verse);
    } else if (verses.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ":", line_number, ": expected a verse (\"  1 text\")"));
    } else {
      absl::StrAppend(&verses.back(), " ", Trim(line));
    }
    after_blank = false;
  }
  absl::Status s = finish_chapter();
  if (!s.ok()) return s;
  if (chapters.empty()) return absl::InvalidArgumentError(absl::StrCat(origin, ": no chapters"));
  return chapters;
}

// Documents separated by blank lines; a document's lines are joined with '\n'. The same rule
// as the trainer's .txt sources.
std::vector<Document> SplitDocuments(absl::string_view text) {
  std::vector<Document> docs;
  bool in_doc = false;
  int64_t line_number = 0;
  for (const absl::string_view line : Lines(text)) {
    ++line_number;
    if (IsBlank(line)) {
      in_doc = false;
    } else if (in_doc) {
      absl::StrAppend(&docs.back().text, "\n", line);
    } else {
      docs.push_back(Document{std::string(line), line_number});
      in_doc = true;
    }
  }
  return docs;
}

// Writes `docs` as JSON lines to `path` through a temporary file in the same folder.
// *bytes receives the number of text bytes written.
absl::Status WriteJsonl(const fs::path& path, const std::vector<const Document*>& docs,
                        const std::string& origin, uint64_t* bytes) {
  std::string out;
  *bytes = 0;
  for (const Document* doc : docs) {
    try {
      out += nlohmann::json{{"text", doc->text}}.dump();
    } catch (const nlohmann::json::exception&) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ":", doc->line,
                       ": the document is not valid UTF-8 (convert the file, e.g. with iconv)"));
    }
    out += '\n';
    *bytes += doc->text.size();
  }
  const fs::path temp =
      path.parent_path() / absl::StrCat(".", path.filename().string(), ".tmp.", getpid());
  FILE* file = fopen(temp.c_str(), "wb");
  if (file == nullptr) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create ", temp.string(), ": ", strerror(errno)));
  }
  const bool written = fwrite(out.data(), 1, out.size(), file) == out.size() && fflush(file) == 0 &&
                       fsync(fileno(file)) == 0;
  const int saved_errno = errno;
  if (fclose(file) != 0 || !written) {
    std::error_code ignored;
    fs::remove(temp, ignored);
    return absl::DataLossError(absl::StrCat("cannot write ", temp.string(), ": ",
                                            strerror(written ? errno : saved_errno)));
  }
  std::error_code ec;
  fs::rename(temp, path, ec);
  if (ec) {
    fs::remove(temp, ec);
    return absl::DataLossError(
        absl::StrCat("cannot rename ", temp.string(), " to ", path.string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

// Writes <out>/<name>/<name>.chunk.00.jsonl and, if val_every > 0, <name>.val.jsonl with
// documents val_every, 2 * val_every, ... (1-based). Prints a one-line summary; `unit` names
// a document in it ("chapters").
absl::Status WriteCorpus(const std::vector<Document>& docs, const std::string& out,
                         const std::string& name, int val_every, const std::string& origin,
                         const char* unit) {
  std::vector<const Document*> train, val;
  for (size_t i = 0; i < docs.size(); ++i) {
    const bool held_out = val_every > 0 && (i + 1) % static_cast<size_t>(val_every) == 0;
    (held_out ? val : train).push_back(&docs[i]);
  }
  if (val_every > 0 && val.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": only ", docs.size(), " ", unit, ", so --val-every ", val_every,
                     " holds none out; pass a smaller --val-every, or 0 for no validation split"));
  }
  if (train.empty()) return absl::InvalidArgumentError(absl::StrCat(origin, ": no ", unit));

  const fs::path dir = fs::path(out) / name;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create ", dir.string(), ": ", ec.message()));
  }
  const fs::path train_path = dir / (name + ".chunk.00.jsonl");
  const fs::path val_path = dir / (name + ".val.jsonl");
  uint64_t train_bytes = 0, val_bytes = 0;
  absl::Status s = WriteJsonl(train_path, train, origin, &train_bytes);
  if (!s.ok()) return s;
  if (val_every > 0) {
    s = WriteJsonl(val_path, val, origin, &val_bytes);
    if (!s.ok()) return s;
  } else if (fs::remove(val_path, ec)) {
    // A validation file from an earlier run would overlap the training data now.
    std::cout << "removed " << val_path.string() << " (--val-every 0)\n";
  }
  std::cout << name << ": " << train.size() << " " << unit << " (" << train_bytes
            << " bytes of text) in " << train_path.string() << "; " << val.size() << " validation "
            << unit << " (" << val_bytes << " bytes)"
            << (val_every > 0 ? " in " + val_path.string() : std::string()) << "\n";
  return absl::OkStatus();
}

absl::Status CheckName(const std::string& name) {
  if (name.empty() || name[0] == '.' || name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("--name \"", name, "\": expected a plain folder name such as \"mycorpus\""));
  }
  return absl::OkStatus();
}

absl::Status CheckValEvery(int val_every) {
  if (val_every == 1 || val_every < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--val-every ", val_every, ": expected 0 (no validation split) or at least 2"));
  }
  return absl::OkStatus();
}

absl::Status PrepareKjv(const std::string& input, const std::string& out, int val_every) {
  absl::Status s = CheckValEvery(val_every);
  if (!s.ok()) return s;
  absl::StatusOr<std::string> text = input.empty() ? RunCommand(kBibleCommand) : ReadInput(input);
  if (!text.ok()) return text.status();
  const std::string origin = input.empty()  ? std::string("`bible`")
                             : input == "-" ? std::string("<stdin>")
                                            : input;
  absl::StatusOr<std::vector<Document>> chapters = ParseKjv(*text, origin);
  if (!chapters.ok()) return chapters.status();
  return WriteCorpus(*chapters, out, "kjv", val_every, origin, "chapters");
}

absl::Status PrepareText(const std::string& input, const std::string& name, const std::string& out,
                         int val_every) {
  absl::Status s = CheckValEvery(val_every);
  if (s.ok()) s = CheckName(name);
  if (!s.ok()) return s;
  absl::StatusOr<std::string> text = ReadInput(input);
  if (!text.ok()) return text.status();
  return WriteCorpus(SplitDocuments(*text), out, name, val_every, input == "-" ? "<stdin>" : input,
                     "documents");
}

}  // namespace
}  // namespace sweep

int main(int argc, char** argv) {
  CLI::App app{
      "Writes a text corpus in Lingua's layout (<out>/<name>/<name>.chunk.00.jsonl with one\n"
      "{\"text\": ...} document per line, and <name>.val.jsonl with every N-th document held\n"
      "out), which sweep-train reads as data.sources: {<name>: 1.0}.",
      "sweep-prepare-data"};
  app.require_subcommand(1);
  app.footer(
      "Examples:\n"
      "  sweep-prepare-data kjv                      # the bundled corpus, from `bible`\n"
      "  sweep-prepare-data kjv --input kjv.txt --out /data/sweep\n"
      "  sweep-prepare-data text notes.txt --name notes --val-every 20");

  std::string out = sweep::trainer::DefaultDataRoot();
  int val_every = 40;
  auto add_common = [&](CLI::App* sub) {
    sub->add_option("--out", out,
                    "Data root: the corpus goes to <out>/<name>/ (default: $SWEEP_DATA_DIR, "
                    "else $XDG_DATA_HOME/sweep/data, else ~/.local/share/sweep/data)")
        ->capture_default_str();
    sub->add_option("--val-every", val_every,
                    "Hold out documents N, 2N, 3N, ... as the validation split (0: none)")
        ->capture_default_str();
  };

  std::string kjv_input;
  CLI::App* kjv = app.add_subcommand(
      "kjv",
      "The King James Bible, one chapter per document (heading line, then one verse per line "
      "without verse numbers); runs `bible 'gen1:1-rev22:21'` (Debian package bible-kjv) "
      "unless --input is given");
  kjv->add_option("--input", kjv_input,
                  "Read this file (the output of `bible 'gen1:1-rev22:21'`) instead; - for stdin");
  add_common(kjv);

  std::string text_input, name;
  CLI::App* text =
      app.add_subcommand("text", "A plain text file whose documents are separated by blank lines");
  text->add_option("FILE", text_input, "The text file (UTF-8); - for stdin")->required();
  text->add_option("--name", name, "Corpus name: the folder under --out and the files' prefix")
      ->required();
  add_common(text);

  CLI11_PARSE(app, argc, argv);

  const absl::Status s = kjv->parsed() ? sweep::PrepareKjv(kjv_input, out, val_every)
                                       : sweep::PrepareText(text_input, name, out, val_every);
  if (!s.ok()) {
    std::cerr << "sweep-prepare-data: " << s.message() << "\n";
    return 1;
  }
  return 0;
}
