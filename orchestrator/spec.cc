#include "orchestrator/spec.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string_view>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "worker/trainer/config.h"
#include "yaml-cpp/eventhandler.h"
#include "yaml-cpp/yaml.h"

namespace sweep::orchestrator {
namespace {

using trainer::YamlWhere;

absl::Status Error(const std::string& where, const std::string& key, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", key, ": ", what));
}

// `text` for a one-line error message: at most `max` bytes of it (a hostile value can be a
// megabyte), control characters escaped.
std::string Clip(const std::string& text, size_t max = 80) {
  size_t cut = std::min(text.size(), max);
  while (cut > 0 && cut < text.size() && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) {
    --cut;  // Not inside a UTF-8 sequence.
  }
  std::string out;
  for (size_t i = 0; i < cut; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c == 0x7F) {
      absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
    } else {
      out += static_cast<char>(c);
    }
  }
  if (cut < text.size()) absl::StrAppend(&out, "... (", text.size(), " bytes)");
  return out;
}

// "a map", "a list", "null" or the scalar quoted (clipped).
std::string YamlDescribe(const YAML::Node& node) {
  if (node.IsScalar()) return absl::StrCat("'", Clip(node.Scalar()), "'");
  return trainer::YamlDescribe(node);
}

// An error message of at most a few kilobytes: the start (file:line:column: key: why) and the
// end (e.g. the trial key) of a longer one, so that an echoed value cannot make it huge.
absl::Status ClipMessage(const absl::Status& s) {
  constexpr size_t kMax = 2048;
  if (s.ok() || s.message().size() <= kMax) return s;
  const absl::string_view m = s.message();
  return absl::Status(s.code(), absl::StrCat(m.substr(0, kMax / 2), " ... (", m.size() - kMax,
                                             " bytes cut) ... ", m.substr(m.size() - kMax / 2)));
}

// --- The text, before yaml-cpp sees it (its parser recurses, follows aliases, accepts NUL
// bytes and an unclosed quote). Columns count characters, as yaml-cpp's marks do. ---

std::string At(const std::string& origin, int64_t line, int64_t column) {
  return absl::StrCat(origin, ":", line + 1, ":", column + 1);
}

// Length of the UTF-8 sequence at `p` (1 to 4 bytes), or 0 when it is not valid UTF-8
// (truncated, overlong, a surrogate, or above U+10FFFF).
size_t Utf8Length(const unsigned char* p, size_t left) {
  const unsigned char c = p[0];
  if (c < 0x80) return 1;
  size_t n;
  uint32_t code;
  if ((c & 0xE0) == 0xC0) {
    n = 2;
    code = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3;
    code = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4;
    code = c & 0x07;
  } else {
    return 0;
  }
  if (left < n) return 0;
  for (size_t i = 1; i < n; ++i) {
    if ((p[i] & 0xC0) != 0x80) return 0;
    code = (code << 6) | (p[i] & 0x3F);
  }
  constexpr uint32_t kSmallest[] = {0, 0, 0x80, 0x800, 0x10000};
  if (code < kSmallest[n] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return 0;
  return n;
}

// A spec is UTF-8 text: no NUL, no control characters other than tab, CR and LF.
absl::Status CheckEncoding(const std::string& text, const std::string& origin) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  int64_t line = 0, column = 0;
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = bytes[i];
    if (c == '\n') {
      ++line;
      column = 0;
      ++i;
      continue;
    }
    if (c == 0) {
      return Error(At(origin, line, column), "invalid YAML", "NUL byte (a spec is UTF-8 text)");
    }
    if ((c < 0x20 && c != '\t' && c != '\r') || c == 0x7F) {
      return Error(At(origin, line, column), "invalid YAML",
                   absl::StrCat("control character 0x", absl::Hex(c, absl::kZeroPad2),
                                " (a spec is UTF-8 text)"));
    }
    const size_t n = Utf8Length(bytes + i, text.size() - i);
    if (n == 3 && i > 0 && c == 0xEF && bytes[i + 1] == 0xBB && bytes[i + 2] == 0xBF) {
      return Error(
          At(origin, line, column), "invalid YAML",
          "byte order mark (U+FEFF) inside the text (only the first character may be one)");
    }
    if (n == 0) {
      return Error(At(origin, line, column), "invalid YAML",
                   absl::StrCat("byte 0x", absl::Hex(c, absl::kZeroPad2),
                                " is not UTF-8 (a spec is UTF-8 text)"));
    }
    i += n;
    ++column;
  }
  return absl::OkStatus();
}

// A lexical pass over YAML's structure (quotes, comments, block scalars, flow brackets, block
// indentation and `- `/`? `/`: ` indicators, anchors, tags and aliases), so that text nested
// far deeper than the limit or with too many aliases is refused before yaml-cpp's recursive
// parser reads it. Its depth is a lower bound of the document's (give or take the first
// level), so it never refuses what the exact check on the parsed document (CheckTree) would
// accept; it also refuses a quoted string that is never closed, which yaml-cpp accepts.
absl::Status CheckStructure(const std::string& text, const std::string& origin,
                            const SpecLimits& limits) {
  auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\r'; };
  auto flow_indicator = [](char c) {
    return c == ',' || c == '[' || c == ']' || c == '{' || c == '}';
  };
  std::vector<size_t> indents;  // Open block levels: their indentation, innermost last.
  int flow = 0;                 // Open `[` and `{`.
  int aliases = 0;
  char quote = 0;  // Inside a quoted scalar: its quote character.
  int64_t quote_line = 0;
  size_t quote_line_start = 0, quote_offset = 0;  // Where it opened, in bytes.
  int64_t block_scalar_parent = -1;  // Inside a `|` or `>` scalar: its parent's indentation.
  int64_t line_no = 0;
  // "file:line:column" of byte `i` of the line that starts at byte `line_start`. Columns count
  // characters (UTF-8 continuation bytes are skipped); computed only for an error, as a line
  // can be a megabyte long.
  auto position = [&](int64_t line, size_t line_start, size_t i) {
    int64_t column = 0;
    for (size_t k = 0; k < i; ++k) {
      column += (static_cast<unsigned char>(text[line_start + k]) & 0xC0) != 0x80;
    }
    return At(origin, line, column);
  };
  for (size_t start = 0; start <= text.size(); ++line_no) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string_view line(text.data() + start, end - start);
    const size_t line_start = start;
    start = end + 1;
    auto where = [&](size_t i) { return position(line_no, line_start, i); };
    size_t indent = 0;
    while (indent < line.size() && line[indent] == ' ') ++indent;
    size_t first = indent;
    while (first < line.size() && blank(line[first])) ++first;
    const bool empty = first == line.size();
    if (block_scalar_parent >= 0) {
      if (empty || static_cast<int64_t>(indent) > block_scalar_parent) continue;
      block_scalar_parent = -1;
    }
    size_t i = 0;
    if (quote == 0 && flow == 0) {
      if (empty || line[first] == '#') continue;
      if ((line.substr(0, 3) == "---" || line.substr(0, 3) == "...") &&
          (line.size() == 3 || blank(line[3]))) {
        indents.clear();  // A document marker.
        i = 3;
      } else {
        while (!indents.empty() && indents.back() >= indent) indents.pop_back();
        indents.push_back(indent);
        i = indent;
      }
    }
    int depth = static_cast<int>(indents.size());
    // The first level may be a flow collection on a line of its own: allow it one more.
    auto too_deep = [&] { return flow + depth > limits.max_depth + 1; };
    auto deep_error = [&](size_t at) {
      return Error(where(at), "spec",
                   absl::StrCat("nested deeper than ", limits.max_depth, " levels"));
    };
    if (too_deep()) return deep_error(i);
    bool token_start = true;  // A node may start here.
    bool after_node = false;  // Just after a quoted scalar, alias or flow collection.
    for (; i < line.size(); ++i) {
      const char c = line[i];
      if (quote == '"') {
        if (c == '\\') {
          ++i;
        } else if (c == '"') {
          quote = 0;
          token_start = false;
          after_node = true;
        }
        continue;
      }
      if (quote == '\'') {
        if (c == '\'' && i + 1 < line.size() && line[i + 1] == '\'') {
          ++i;
        } else if (c == '\'') {
          quote = 0;
          token_start = false;
          after_node = true;
        }
        continue;
      }
      const char next = i + 1 < line.size() ? line[i + 1] : ' ';
      if (c == '#' && (i == 0 || blank(line[i - 1]))) break;  // A comment.
      if (blank(c)) continue;
      if (token_start) {
        if (c == '"' || c == '\'') {
          quote = c;
          quote_line = line_no;
          quote_line_start = line_start;
          quote_offset = i;
          continue;
        }
        if (c == '[' || c == '{') {
          ++flow;
          if (too_deep()) return deep_error(i);
          continue;
        }
        if (c == '*') {
          if (++aliases > limits.max_aliases) {
            return Error(where(i), "spec",
                         absl::StrCat("more than ", limits.max_aliases, " aliases"));
          }
          while (i + 1 < line.size() && !blank(line[i + 1]) && !flow_indicator(line[i + 1])) ++i;
          token_start = false;
          after_node = true;
          continue;
        }
        if (c == '&' || c == '!') {  // An anchor or a tag: the node follows.
          while (i + 1 < line.size() && !blank(line[i + 1]) &&
                 (flow == 0 || !flow_indicator(line[i + 1]))) {
            ++i;
          }
          continue;
        }
        if (flow == 0 && (c == '-' || c == '?' || c == ':') && blank(next)) {
          ++depth;  // A block sequence entry or complex key on this line: one level more.
          if (too_deep()) return deep_error(i);
          continue;
        }
        if (flow == 0 && (c == '|' || c == '>')) {
          block_scalar_parent = static_cast<int64_t>(indent);
          break;
        }
        token_start = false;  // A plain scalar.
      }
      if (flow > 0 && (c == '[' || c == '{')) {
        ++flow;
        if (too_deep()) return deep_error(i);
        token_start = true;
        after_node = false;
        continue;
      }
      if (flow > 0 && (c == ']' || c == '}')) {
        --flow;
        after_node = true;
        continue;
      }
      if (flow > 0 && c == ',') {
        token_start = true;
        after_node = false;
        continue;
      }
      if (c == ':' && (blank(next) || (flow > 0 && (after_node || flow_indicator(next))))) {
        token_start = true;
        after_node = false;
        continue;
      }
      after_node = false;
    }
  }
  if (quote != 0) {
    return Error(position(quote_line, quote_line_start, quote_offset), "invalid YAML",
                 absl::StrCat("the quoted string that starts here (", std::string(1, quote),
                              ") is never closed"));
  }
  return absl::OkStatus();
}

// The parsed document, every alias followed: at most max_depth levels (so an alias cycle is
// refused too), at most max_nodes nodes, and maps whose keys are scalars and distinct.
struct TreeCheck {
  const std::string& origin;
  const SpecLimits& limits;
  int64_t nodes = 0;

  absl::Status Walk(const YAML::Node& node, const std::string& key, int depth) {
    const std::string name = key.empty() ? "spec" : key;
    if (++nodes > limits.max_nodes) {
      return Error(YamlWhere(origin, node), name,
                   absl::StrCat("the spec has more than ", limits.max_nodes,
                                " values with its aliases expanded"));
    }
    if (!node.IsMap() && !node.IsSequence()) return absl::OkStatus();
    if (depth > limits.max_depth) {
      return Error(YamlWhere(origin, node), name,
                   absl::StrCat("nested deeper than ", limits.max_depth, " levels"));
    }
    if (node.IsSequence()) {
      for (const auto& item : node) {
        if (absl::Status s = Walk(item, key, depth + 1); !s.ok()) return s;
      }
      return absl::OkStatus();
    }
    std::map<std::string, YAML::Mark> seen;
    for (const auto& entry : node) {
      if (!entry.first.IsScalar()) {
        return Error(YamlWhere(origin, entry.first), name,
                     absl::StrCat("keys must be scalars, got ", YamlDescribe(entry.first)));
      }
      // Keys name the path in messages; sequence items keep their parent's.
      const std::string child = depth > 8     ? name
                                : key.empty() ? Clip(entry.first.Scalar())
                                              : key + "." + Clip(entry.first.Scalar());
      auto [it, inserted] = seen.emplace(entry.first.Scalar(), entry.first.Mark());
      if (!inserted) {
        return Error(YamlWhere(origin, entry.first), child,
                     absl::StrCat("listed twice (first at line ", it->second.line + 1, ", column ",
                                  it->second.column + 1, ")"));
      }
      if (absl::Status s = Walk(entry.second, child, depth + 1); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
};

// Where each document starts. YAML::LoadAll cannot be used: on some text (a ',' at the top
// level) yaml-cpp makes no progress and returns empty documents until memory runs out.
class DocumentStarts : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override { marks.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

  std::vector<YAML::Mark> marks;
};

// The first character that is neither blank nor in a comment, for "cannot parse this" errors.
std::string FirstToken(const std::string& text, const std::string& origin) {
  int64_t line = 0, column = 0;
  bool comment = false;
  for (const char c : text) {
    if (c == '\n') {
      ++line;
      column = 0;
      comment = false;
      continue;
    }
    if (!comment && c == '#') comment = true;
    if (!comment && c != ' ' && c != '\t' && c != '\r') {
      return absl::StrCat(At(origin, line, column), ": invalid YAML: unexpected '",
                          Clip(std::string(1, c)), "'");
    }
    column += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  }
  return absl::StrCat(origin, ": invalid YAML");
}

// A line that starts with "---" or "..." (a document marker).
bool HasDocumentMarker(const std::string& text) {
  for (size_t start = 0; start < text.size();) {
    if (text.compare(start, 3, "---") == 0 || text.compare(start, 3, "...") == 0) {
      const char next = start + 3 < text.size() ? text[start + 3] : '\n';
      if (next == '\n' || next == ' ' || next == '\t' || next == '\r') return true;
    }
    const size_t newline = text.find('\n', start);
    if (newline == std::string::npos) break;
    start = newline + 1;
  }
  return false;
}

absl::Status YamlError(const std::string& origin, const YAML::Exception& e) {
  return absl::InvalidArgumentError(absl::StrCat(origin, ":", e.mark.line + 1, ":",
                                                 e.mark.column + 1, ": invalid YAML: ", e.msg));
}

// YAML text to one checked document (see SpecLimits). Errors name `origin` and the position.
absl::StatusOr<YAML::Node> LoadDocument(const std::string& text, const std::string& origin,
                                        const SpecLimits& limits) {
  if (absl::Status s = CheckEncoding(text, origin); !s.ok()) return s;
  if (absl::Status s = CheckStructure(text, origin, limits); !s.ok()) return s;
  YAML::Node root;
  try {
    root = YAML::Load(text);  // The first document.
    // One document: a second one is refused. A block map runs to the end of the text unless a
    // document marker ends it; anything else is parsed again as events, two documents at most.
    if (!root.IsMap() || root.Style() != YAML::EmitterStyle::Block || HasDocumentMarker(text)) {
      std::istringstream in(text);
      YAML::Parser parser(in);
      DocumentStarts starts;
      if (parser.HandleNextDocument(starts) && parser.HandleNextDocument(starts)) {
        if (starts.marks[1].pos <= starts.marks[0].pos) {  // No progress: not YAML.
          return absl::InvalidArgumentError(FirstToken(text, origin));
        }
        return Error(At(origin, starts.marks[1].line, starts.marks[1].column), "spec",
                     "a second YAML document starts here (a spec is one document)");
      }
    }
  } catch (const YAML::Exception& e) {
    return YamlError(origin, e);
  }
  TreeCheck check{origin, limits};
  if (absl::Status s = check.Walk(root, "", 1); !s.ok()) return s;
  return root;
}

// The trainer's type name for each dotted key ("an integer", "a number", ...).
const std::map<std::string, std::string>& TrainerKeyTypes() {
  static const auto* types = [] {
    auto* m = new std::map<std::string, std::string>();
    trainer::TrainConfig config;
    trainer::ForEachConfigField(config, [&](const char* key, trainer::FieldRef ref) {
      (*m)[key] = trainer::FieldTypeName(ref);
    });
    return m;
  }();
  return *types;
}

std::string ShortestDouble(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  return ec == std::errc() ? std::string(buf, end) : absl::StrCat(v);
}

bool ParseDouble(const std::string& text, double* out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  *out = std::strtod(text.c_str(), &end);
  return errno == 0 && end != nullptr && *end == '\0';
}

bool ParseInt(const std::string& text, int64_t* out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  *out = std::strtoll(text.c_str(), &end, 10);
  return errno == 0 && end != nullptr && *end == '\0';
}

// Canonical text of a scalar for `key`, so equal values give equal trial keys. `type` is the
// trainer's type name, or empty for command trainers (then numbers are still normalised).
absl::StatusOr<std::string> Canonical(const std::string& text, const std::string& type,
                                      const std::string& where, const std::string& key) {
  int64_t i;
  double d;
  if (type == "an integer") {
    if (ParseInt(text, &i)) return absl::StrCat(i);
    if (ParseDouble(text, &d) && std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) {
      return absl::StrCat(static_cast<int64_t>(d));
    }
    return Error(where, key, absl::StrCat("expected an integer, got '", Clip(text), "'"));
  }
  if (type == "a number") {
    if (!ParseDouble(text, &d)) {
      return Error(where, key, absl::StrCat("expected a number, got '", Clip(text), "'"));
    }
    return ShortestDouble(d);
  }
  if (type == "a boolean (true or false)") {
    if (text == "true" || text == "True") return std::string("true");
    if (text == "false" || text == "False") return std::string("false");
    return Error(where, key, absl::StrCat("expected true or false, got '", Clip(text), "'"));
  }
  if (type.empty()) {  // Free-form (command trainer): normalise what looks like a number.
    if (ParseInt(text, &i)) return absl::StrCat(i);
    if (ParseDouble(text, &d)) return ShortestDouble(d);
  }
  return text;
}

struct Reader {
  const std::string& origin;

  absl::StatusOr<std::string> String(const YAML::Node& node, const std::string& key) const {
    if (!node.IsScalar()) {
      return Error(YamlWhere(origin, node), key, absl::StrCat("expected a string, got ", YamlDescribe(node)));
    }
    return node.Scalar();
  }
  // An integer in [min, max]; the fields stored as `int` pass max = INT_MAX.
  absl::StatusOr<int64_t> Int(const YAML::Node& node, const std::string& key, int64_t min,
                              int64_t max = INT64_MAX) const {
    int64_t v;
    if (!node.IsScalar() || !ParseInt(node.Scalar(), &v)) {
      return Error(YamlWhere(origin, node), key, absl::StrCat("expected an integer, got ", YamlDescribe(node)));
    }
    if (v < min) return Error(YamlWhere(origin, node), key, absl::StrCat("must be >= ", min, ", got ", v));
    if (v > max)
      return Error(YamlWhere(origin, node), key, absl::StrCat("must be <= ", max, ", got ", v));
    return v;
  }
  absl::StatusOr<double> Number(const YAML::Node& node, const std::string& key) const {
    double v;
    if (!node.IsScalar() || !ParseDouble(node.Scalar(), &v) || !std::isfinite(v)) {
      return Error(YamlWhere(origin, node), key, absl::StrCat("expected a finite number, got ", YamlDescribe(node)));
    }
    return v;
  }
  // Refuses keys of `map` outside `allowed`.
  absl::Status OnlyKeys(const YAML::Node& map, const std::string& key,
                        const std::set<std::string>& allowed) const {
    if (!map.IsMap()) {
      return Error(YamlWhere(origin, map), key, absl::StrCat("expected a map, got ", YamlDescribe(map)));
    }
    for (const auto& entry : map) {
      const std::string name = entry.first.Scalar();
      if (allowed.count(name) == 0) {
        return Error(
            YamlWhere(origin, entry.first), key.empty() ? Clip(name) : key + "." + Clip(name),
            absl::StrCat("unknown key (expected one of ", absl::StrJoin(allowed, ", "), ")"));
      }
    }
    return absl::OkStatus();
  }
};

// "optim.lr", "data.tokenizer.path": parts of letters, digits, '_' and '-', at most 256 bytes.
bool IsDottedKey(const std::string& key) {
  if (key.empty() || key.size() > 256) return false;
  for (const absl::string_view part : absl::StrSplit(key, '.')) {
    if (part.empty()) return false;
    for (const char c : part) {
      if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') return false;
    }
  }
  return true;
}

// A sweep's name is a folder of every worker's workdir and of `sweepctl run`'s runs/: letters,
// digits, '_', '-' and '.', not starting with '.' or '-', at most 128 bytes.
bool IsSafeName(const std::string& name) {
  if (name.empty() || name.size() > 128 || name[0] == '.' || name[0] == '-') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
  });
}

// The variables a command template may use (worker/resources.h ExpandCommand): an unknown
// ${name} or an unterminated "${" is refused at submit instead of failing every trial.
constexpr const char* kCommandVariables[] = {"config", "trial_dir", "params",  "gpus", "threads",
                                             "resume", "trial_id",  "attempt", "sweep"};

absl::Status CheckCommandArgument(const std::string& arg, const std::string& where) {
  for (size_t i = 0; i + 1 < arg.size(); ++i) {
    if (arg[i] != '$') continue;
    if (arg[i + 1] == '$') {
      ++i;
      continue;
    }
    if (arg[i + 1] != '{') continue;  // A lone "$" is kept as it is.
    const size_t close = arg.find('}', i + 2);
    if (close == std::string::npos) {
      return Error(where, "trainer.command",
                   absl::StrCat("unterminated \"${\" in \"", Clip(arg), "\""));
    }
    const std::string name = arg.substr(i + 2, close - i - 2);
    if (std::find(std::begin(kCommandVariables), std::end(kCommandVariables), name) ==
        std::end(kCommandVariables)) {
      std::vector<std::string> known;
      for (const char* v : kCommandVariables) known.push_back(absl::StrCat("${", v, "}"));
      return Error(where, "trainer.command",
                   absl::StrCat("unknown variable ${", Clip(name),
                                "} (known: ", absl::StrJoin(known, " "), "; $$ is a literal $)"));
    }
    i = close;
  }
  return absl::OkStatus();
}

absl::Status ParseParameter(const Reader& r, const YAML::Node& key_node, const YAML::Node& body,
                            bool builtin, int64_t max_values, ParameterSpec* p) {
  p->key = key_node.Scalar();
  p->where = YamlWhere(r.origin, key_node);
  const std::string name = "parameters." + Clip(p->key);
  std::string type;
  // The key becomes a path in the trial's config and a column of the sweep's SQL view.
  if (!IsDottedKey(p->key)) {
    return Error(p->where, name,
                 "expected a dotted key of letters, digits, '_' and '-' (e.g. optim.lr)");
  }
  if (builtin) {
    auto it = TrainerKeyTypes().find(p->key);
    if (it == TrainerKeyTypes().end()) {
      return Error(p->where, name, "not a trainer key (see docs/trainer.md for the keys)");
    }
    type = it->second;
    if (type == "a map of source name to weight") {
      return Error(p->where, name, "maps cannot be swept; sweep a scalar key");
    }
  }
  if (absl::Status s = r.OnlyKeys(body, name, {"values", "value", "min", "max", "distribution", "q"});
      !s.ok()) {
    return s;
  }
  const YAML::Node values = body["values"], value = body["value"];
  const YAML::Node min = body["min"], max = body["max"];
  const int kinds = (values ? 1 : 0) + (value ? 1 : 0) + ((min || max) ? 1 : 0);
  if (kinds != 1) {
    return Error(p->where, name, "expected exactly one of `values: [...]`, `value: x` or `min:`/`max:`");
  }
  std::set<std::string> seen;
  auto add_value = [&](const YAML::Node& v) -> absl::Status {
    if (!v.IsScalar()) {
      return Error(YamlWhere(r.origin, v), name, absl::StrCat("values must be scalars, got ", YamlDescribe(v)));
    }
    absl::StatusOr<std::string> c = Canonical(v.Scalar(), type, YamlWhere(r.origin, v), name);
    if (!c.ok()) return c.status();
    if (!seen.insert(*c).second) {
      return Error(YamlWhere(r.origin, v), name,
                   absl::StrCat("value ", Clip(*c), " is listed twice"));
    }
    p->values.push_back(*c);
    return absl::OkStatus();
  };
  if (values) {
    if (!values.IsSequence()) {
      return Error(YamlWhere(r.origin, values), name + ".values", absl::StrCat("expected a list, got ", YamlDescribe(values)));
    }
    if (values.size() == 0) return Error(YamlWhere(r.origin, values), name + ".values", "empty list: nothing to sweep");
    if (static_cast<int64_t>(values.size()) > max_values) {
      return Error(YamlWhere(r.origin, values), name + ".values",
                   absl::StrCat(values.size(), " values; the limit is ", max_values,
                                " (the most trials a sweep may have)"));
    }
    for (const auto& v : values) {
      if (absl::Status s = add_value(v); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  if (value) return add_value(value);

  if (!min || !max) return Error(p->where, name, "a range needs both min and max");
  if (type != "" && type != "an integer" && type != "a number") {
    return Error(p->where, name, absl::StrCat("a min/max range needs a numeric key; this one is ", type));
  }
  p->is_range = true;
  absl::StatusOr<double> lo = r.Number(min, name + ".min");
  if (!lo.ok()) return lo.status();
  absl::StatusOr<double> hi = r.Number(max, name + ".max");
  if (!hi.ok()) return hi.status();
  p->min = *lo;
  p->max = *hi;
  if (p->max < p->min) return Error(YamlWhere(r.origin, max), name + ".max", "must be >= min");
  std::string dist = type == "an integer" ? "int_uniform" : "uniform";
  if (const YAML::Node d = body["distribution"]) {
    absl::StatusOr<std::string> text = r.String(d, name + ".distribution");
    if (!text.ok()) return text.status();
    dist = *text;
  }
  if (dist == "uniform") {
    p->distribution = Distribution::kUniform;
  } else if (dist == "log_uniform" || dist == "log_uniform_values") {
    p->distribution = Distribution::kLogUniform;
    if (p->min <= 0) return Error(YamlWhere(r.origin, min), name + ".min", "log_uniform needs min > 0");
  } else if (dist == "int_uniform") {
    p->distribution = Distribution::kIntUniform;
    if (std::ceil(p->min) > std::floor(p->max)) {
      return Error(p->where, name, "int_uniform range holds no integer");
    }
  } else if (dist == "q_uniform") {
    p->distribution = Distribution::kQUniform;
  } else {
    return Error(YamlWhere(r.origin, body["distribution"]), name + ".distribution",
                 absl::StrCat("expected uniform, log_uniform, int_uniform or q_uniform; got '",
                              Clip(dist), "'"));
  }
  if (const YAML::Node q = body["q"]) {
    absl::StatusOr<double> qv = r.Number(q, name + ".q");
    if (!qv.ok()) return qv.status();
    if (*qv <= 0) return Error(YamlWhere(r.origin, q), name + ".q", "must be > 0");
    p->q = *qv;
  }
  // Draws become integers exactly only up to 2^53 (and int64 overflows beyond 2^63).
  constexpr double kMaxExactInteger = 9007199254740992.0;
  if ((type == "an integer" || p->distribution == Distribution::kIntUniform) &&
      (std::fabs(p->min) > kMaxExactInteger || std::fabs(p->max) > kMaxExactInteger)) {
    return Error(p->where, name, "an integer range must lie within +-9007199254740992 (2^53)");
  }
  return absl::OkStatus();
}

absl::Status ParseEarlyTerminate(const Reader& r, const YAML::Node& node,
                                 std::vector<EarlyTerminateRule>* rules) {
  std::vector<YAML::Node> items;
  if (node.IsSequence()) {
    for (const auto& item : node) items.push_back(item);
  } else {
    items.push_back(node);
  }
  for (const YAML::Node& item : items) {
    if (absl::Status s = r.OnlyKeys(item, "early_terminate", {"type", "min_steps", "eta", "max_steps"});
        !s.ok()) {
      return s;
    }
    EarlyTerminateRule rule;
    if (!item["type"]) {
      return Error(YamlWhere(r.origin, item), "early_terminate.type", "missing (divergence, asha or hyperband)");
    }
    absl::StatusOr<std::string> type = r.String(item["type"], "early_terminate.type");
    if (!type.ok()) return type.status();
    if (*type != "divergence" && *type != "asha" && *type != "hyperband") {
      return Error(YamlWhere(r.origin, item["type"]), "early_terminate.type",
                   absl::StrCat("expected divergence, asha or hyperband; got '", Clip(*type), "'"));
    }
    rule.type = *type;
    if (item["min_steps"]) {
      absl::StatusOr<int64_t> v = r.Int(item["min_steps"], "early_terminate.min_steps", 1);
      if (!v.ok()) return v.status();
      rule.min_steps = *v;
    } else if (rule.type != "divergence") {
      return Error(YamlWhere(r.origin, item), "early_terminate.min_steps", absl::StrCat("required for ", rule.type));
    }
    if (item["eta"]) {
      absl::StatusOr<double> v = r.Number(item["eta"], "early_terminate.eta");
      if (!v.ok()) return v.status();
      if (*v <= 1) return Error(YamlWhere(r.origin, item["eta"]), "early_terminate.eta", "must be > 1");
      rule.eta = *v;
    }
    if (item["max_steps"]) {
      absl::StatusOr<int64_t> v = r.Int(item["max_steps"], "early_terminate.max_steps", 1);
      if (!v.ok()) return v.status();
      rule.max_steps = *v;
      if (rule.type != "divergence" && rule.max_steps <= rule.min_steps) {
        return Error(
            YamlWhere(r.origin, item["max_steps"]), "early_terminate.max_steps",
            absl::StrCat("must be > min_steps (", rule.min_steps, "), got ", rule.max_steps));
      }
    }
    rules->push_back(rule);
  }
  return absl::OkStatus();
}

absl::Status ParseDetection(const Reader& r, const YAML::Node& node, DetectionOptions* out) {
  if (absl::Status s = r.OnlyKeys(node, "detection",
                                  {"window", "z", "min_values", "initial_steps", "loss_margin",
                                   "grad_norm_factor", "consecutive"});
      !s.ok()) {
    return s;
  }
  struct IntKey {
    const char* key;
    int* field;
    int64_t min;
  } ints[] = {{"window", &out->window, 2},
              {"min_values", &out->min_values, 2},
              {"initial_steps", &out->initial_steps, 1},
              {"consecutive", &out->consecutive, 1}};
  for (const IntKey& k : ints) {
    if (!node[k.key]) continue;
    absl::StatusOr<int64_t> v = r.Int(node[k.key], absl::StrCat("detection.", k.key), k.min);
    if (!v.ok()) return v.status();
    if (*v > 1'000'000) {
      return Error(YamlWhere(r.origin, node[k.key]), absl::StrCat("detection.", k.key),
                   "must be <= 1000000");
    }
    *k.field = static_cast<int>(*v);
  }
  struct NumberKey {
    const char* key;
    double* field;
    double min;
    bool strict;  // > min rather than >= min
  } numbers[] = {{"z", &out->z, 0, true},
                 {"loss_margin", &out->loss_margin, 0, false},
                 {"grad_norm_factor", &out->grad_norm_factor, 1, false}};
  for (const NumberKey& k : numbers) {
    if (!node[k.key]) continue;
    const std::string key = absl::StrCat("detection.", k.key);
    absl::StatusOr<double> v = r.Number(node[k.key], key);
    if (!v.ok()) return v.status();
    if (k.strict ? *v <= k.min : *v < k.min) {
      return Error(YamlWhere(r.origin, node[k.key]), key,
                   absl::StrCat("must be ", k.strict ? "> " : ">= ", k.min, ", got ", *v));
    }
    *k.field = *v;
  }
  if (out->min_values > out->window) {
    return Error(YamlWhere(r.origin, node), "detection.min_values",
                 absl::StrCat("must be <= window (", out->window, "), got ", out->min_values));
  }
  return absl::OkStatus();
}

// splitmix64: tiny, portable and fully determined by its seed.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }  // [0, 1)
  uint64_t Below(uint64_t n) {  // Unbiased integer in [0, n).
    const uint64_t limit = -n % n;
    for (;;) {
      const uint64_t x = Next();
      if (x >= limit) return x % n;
    }
  }

 private:
  uint64_t state_;
};

absl::StatusOr<std::string> Sample(const ParameterSpec& p, Rng& rng) {
  if (!p.is_range) return p.values[rng.Below(p.values.size())];
  const auto& types = TrainerKeyTypes();
  const auto it = types.find(p.key);
  const bool integer = it != types.end() && it->second == "an integer";
  double v = 0;
  switch (p.distribution) {
    case Distribution::kUniform:
      v = p.min + (p.max - p.min) * rng.Uniform();
      break;
    case Distribution::kLogUniform:
      v = std::exp(std::log(p.min) + (std::log(p.max) - std::log(p.min)) * rng.Uniform());
      break;
    case Distribution::kIntUniform: {
      const int64_t lo = static_cast<int64_t>(std::ceil(p.min));
      const int64_t hi = static_cast<int64_t>(std::floor(p.max));
      if (hi < lo) return Error(p.where, "parameters." + p.key, "int_uniform range holds no integer");
      return absl::StrCat(lo + static_cast<int64_t>(rng.Below(static_cast<uint64_t>(hi - lo + 1))));
    }
    case Distribution::kQUniform:
      v = std::round((p.min + (p.max - p.min) * rng.Uniform()) / p.q) * p.q;
      break;
  }
  if (integer) return absl::StrCat(static_cast<int64_t>(std::llround(v)));
  return ShortestDouble(v);
}

// A command trainer's parameter value read as YAML ("{fortunes: 1.0}" is a map), checked as
// a spec is.
absl::StatusOr<YAML::Node> ParseValue(const ParameterSpec& p, const std::string& value,
                                      const SpecLimits& limits) {
  absl::StatusOr<YAML::Node> parsed = LoadDocument(value, "value", limits);
  if (!parsed.ok()) {
    return Error(
        p.where, "parameters." + p.key,
        absl::StrCat("value '", Clip(value), "' is not usable YAML: ", parsed.status().message()));
  }
  return parsed;
}

// Sets a dotted key in a YAML map (for command trainers' Lingua-layout configs).
void SetDotted(YAML::Node root, const std::string& key, const YAML::Node& value) {
  std::vector<std::string> parts = absl::StrSplit(key, '.');
  YAML::Node node = root;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    if (!node[parts[i]] || !node[parts[i]].IsMap()) node[parts[i]] = YAML::Node(YAML::NodeType::Map);
    node.reset(node[parts[i]]);
  }
  node[parts.back()] = value;
}

// At most how many distinct values a random search can draw for `p` (INT64_MAX: unbounded).
int64_t DistinctValues(const ParameterSpec& p) {
  if (!p.is_range) return static_cast<int64_t>(p.values.size());
  if (p.min == p.max) return 1;
  auto it = TrainerKeyTypes().find(p.key);
  const bool integer = it != TrainerKeyTypes().end() && it->second == "an integer";
  double count = INFINITY;
  if (p.distribution == Distribution::kIntUniform) {
    count = std::floor(p.max) - std::ceil(p.min) + 1;
  } else if (p.distribution == Distribution::kQUniform) {
    count = (p.max - p.min) / p.q + 2;  // Multiples of q within [min - q/2, max + q/2).
  }
  if (integer) count = std::min(count, p.max - p.min + 2);  // Draws are rounded.
  return count < 9e18 ? std::max<int64_t>(1, static_cast<int64_t>(count)) : INT64_MAX;
}

// The size of a random search's space, saturating at INT64_MAX.
int64_t DistinctConfigurations(const SweepSpec& spec) {
  int64_t size = 1;
  for (const ParameterSpec& p : spec.parameters) {
    const int64_t n = DistinctValues(p);
    if (n > 0 && size > INT64_MAX / n) return INT64_MAX;
    size *= n;
  }
  return size;
}

}  // namespace

int64_t GridSize(const SweepSpec& spec) {
  if (spec.method != SearchMethod::kGrid) return 0;
  int64_t size = 1;
  for (const ParameterSpec& p : spec.parameters) {
    const int64_t n = static_cast<int64_t>(p.values.size());
    if (n > 0 && size > INT64_MAX / n) return INT64_MAX;
    size *= n;
  }
  return size;
}

// ParseSweepSpec without the bound on the error message's size.
static absl::StatusOr<SweepSpec> ParseUnclipped(const std::string& text, const std::string& origin,
                                                const SpecLimits& limits) {
  if (text.size() > limits.max_spec_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": spec is ", text.size(),
                                                   " bytes; the limit is ", limits.max_spec_bytes));
  }
  absl::StatusOr<YAML::Node> document = LoadDocument(text, origin, limits);
  if (!document.ok()) return ClipMessage(document.status());
  const YAML::Node root = *document;
  const Reader r{origin};
  if (!root.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(YamlWhere(origin, root),
                                                   ": expected a sweep spec (a map with name, "
                                                   "method, base, parameters), got ",
                                                   YamlDescribe(root)));
  }
  if (absl::Status s = r.OnlyKeys(
          root, "",
          {"name", "description", "method", "run_cap", "seed", "metric", "trainer", "base",
           "parameters", "early_terminate", "detection", "resources", "max_attempts", "parallel"});
      !s.ok()) {
    return s;
  }
  SweepSpec spec;
  spec.origin = origin;
  spec.source_text = text;
  auto require = [&](const char* key) -> absl::Status {
    if (!root[key]) return Error(YamlWhere(origin, root), key, "missing");
    return absl::OkStatus();
  };
  for (const char* key : {"name", "method", "parameters"}) {
    if (absl::Status s = require(key); !s.ok()) return s;
  }
  absl::StatusOr<std::string> name = r.String(root["name"], "name");
  if (!name.ok()) return name.status();
  if (name->empty()) return Error(YamlWhere(origin, root["name"]), "name", "must not be empty");
  if (!IsSafeName(*name)) {
    return Error(YamlWhere(origin, root["name"]), "name",
                 absl::StrCat("expected at most 128 letters, digits, '_', '-' and '.', not "
                              "starting with '.' or '-' (it names folders), got '",
                              Clip(*name), "'"));
  }
  spec.name = *name;
  if (root["description"]) {
    absl::StatusOr<std::string> d = r.String(root["description"], "description");
    if (!d.ok()) return d.status();
    spec.description = *d;
  }

  absl::StatusOr<std::string> method = r.String(root["method"], "method");
  if (!method.ok()) return method.status();
  if (*method == "grid") {
    spec.method = SearchMethod::kGrid;
  } else if (*method == "random") {
    spec.method = SearchMethod::kRandom;
  } else {
    return Error(YamlWhere(origin, root["method"]), "method",
                 absl::StrCat("expected grid or random, got '", Clip(*method), "'"));
  }
  if (spec.method == SearchMethod::kRandom) {
    if (absl::Status s = require("run_cap"); !s.ok()) return s;
    absl::StatusOr<int64_t> cap = r.Int(root["run_cap"], "run_cap", 1);
    if (!cap.ok()) return cap.status();
    if (*cap > limits.max_trials) {
      return Error(YamlWhere(origin, root["run_cap"]), "run_cap",
                   absl::StrCat(*cap, " trials is above the limit of ", limits.max_trials));
    }
    spec.run_cap = *cap;
  } else if (root["run_cap"]) {
    return Error(YamlWhere(origin, root["run_cap"]), "run_cap", "only for method: random");
  }
  if (root["seed"]) {
    absl::StatusOr<int64_t> seed = r.Int(root["seed"], "seed", 0);
    if (!seed.ok()) return seed.status();
    spec.seed = static_cast<uint64_t>(*seed);
  }

  if (const YAML::Node metric = root["metric"]) {
    if (absl::Status s = r.OnlyKeys(metric, "metric", {"name", "goal"}); !s.ok()) return s;
    if (metric["name"]) {
      absl::StatusOr<std::string> m = r.String(metric["name"], "metric.name");
      if (!m.ok()) return m.status();
      if (m->empty() || m->size() > 256) {
        return Error(YamlWhere(origin, metric["name"]), "metric.name",
                     "expected a metric name of 1 to 256 bytes, e.g. loss/val");
      }
      spec.metric_name = *m;
    }
    if (metric["goal"]) {
      absl::StatusOr<std::string> goal = r.String(metric["goal"], "metric.goal");
      if (!goal.ok()) return goal.status();
      if (*goal != "minimize" && *goal != "maximize") {
        return Error(YamlWhere(origin, metric["goal"]), "metric.goal",
                     absl::StrCat("expected minimize or maximize, got '", Clip(*goal), "'"));
      }
      spec.minimize = *goal == "minimize";
    }
  }

  if (const YAML::Node t = root["trainer"]) {
    if (t.IsScalar()) {
      if (t.Scalar() != "builtin") {
        return Error(
            YamlWhere(origin, t), "trainer",
            absl::StrCat("expected builtin or {command: [...]}, got '", Clip(t.Scalar()), "'"));
      }
    } else {
      if (absl::Status s = r.OnlyKeys(t, "trainer", {"command"}); !s.ok()) return s;
      const YAML::Node command = t["command"];
      if (!command || !command.IsSequence() || command.size() == 0) {
        return Error(YamlWhere(origin, command ? command : t), "trainer.command",
                     "expected a non-empty list of arguments, e.g. [python, -m, apps.main.train, "
                     "\"config=${config}\"]");
      }
      for (const auto& arg : command) {
        absl::StatusOr<std::string> a = r.String(arg, "trainer.command");
        if (!a.ok()) return a.status();
        if (spec.command.empty() && a->empty()) {
          return Error(YamlWhere(origin, arg), "trainer.command", "the program must not be empty");
        }
        if (absl::Status s = CheckCommandArgument(*a, YamlWhere(origin, arg)); !s.ok()) return s;
        spec.command.push_back(*a);
      }
    }
  }

  const YAML::Node base = root["base"];
  if (base && !base.IsMap() && !base.IsNull()) {
    return Error(YamlWhere(origin, base), "base",
                 absl::StrCat("expected a trainer config (a map), got ", YamlDescribe(base)));
  }
  if (base) {
    YAML::Emitter out;
    out << base;
    spec.base_yaml = out.c_str();
  }

  const YAML::Node params = root["parameters"];
  if (!params.IsMap() || params.size() == 0) {
    return Error(YamlWhere(origin, params), "parameters",
                 "expected a map of dotted keys, e.g. {optim.lr: {values: [1e-3, 3e-3]}}");
  }
  if (static_cast<int64_t>(params.size()) > limits.max_parameters) {
    return Error(YamlWhere(origin, params), "parameters",
                 absl::StrCat(params.size(), " parameters; the limit is ", limits.max_parameters));
  }
  for (const auto& entry : params) {
    ParameterSpec p;
    if (absl::Status s =
            ParseParameter(r, entry.first, entry.second, spec.builtin(), limits.max_trials, &p);
        !s.ok()) {
      return s;
    }
    if (p.is_range && spec.method == SearchMethod::kGrid) {
      return Error(p.where, "parameters." + p.key,
                   "a min/max range cannot be a grid axis; list `values:` or use method: random");
    }
    spec.parameters.push_back(std::move(p));
  }
  if (spec.method == SearchMethod::kGrid && GridSize(spec) > limits.max_trials) {
    return Error(YamlWhere(origin, params), "parameters",
                 absl::StrCat("the grid has ",
                              GridSize(spec) == INT64_MAX ? std::string("too many")
                                                          : absl::StrCat(GridSize(spec)),
                              " points; the limit is ", limits.max_trials));
  }
  // Each trial stores its own config, `base` with its parameters: a large base times many
  // trials would fill the database (and take long to expand).
  const int64_t trial_count = spec.method == SearchMethod::kGrid ? GridSize(spec) : spec.run_cap;
  if (static_cast<double>(spec.base_yaml.size()) * static_cast<double>(trial_count) >
      static_cast<double>(limits.max_config_bytes)) {
    return Error(YamlWhere(origin, base), "base",
                 absl::StrCat(trial_count, " trials of this ", spec.base_yaml.size(),
                              "-byte base would store more than ", limits.max_config_bytes >> 20,
                              " MiB of configs (the limit)"));
  }

  if (const YAML::Node et = root["early_terminate"]) {
    if (absl::Status s = ParseEarlyTerminate(r, et, &spec.early_terminate); !s.ok()) return s;
  }
  if (const YAML::Node detection = root["detection"]) {
    if (absl::Status s = ParseDetection(r, detection, &spec.detection); !s.ok()) return s;
  }
  if (const YAML::Node res = root["resources"]) {
    if (absl::Status s = r.OnlyKeys(res, "resources",
                                    {"gpus_per_trial", "cpu_slots_per_trial", "ranks_per_trial"});
        !s.ok()) {
      return s;
    }
    if (res["gpus_per_trial"]) {
      absl::StatusOr<int64_t> v =
          r.Int(res["gpus_per_trial"], "resources.gpus_per_trial", 0, INT_MAX);
      if (!v.ok()) return v.status();
      spec.gpus_per_trial = static_cast<int>(*v);
    }
    if (res["cpu_slots_per_trial"]) {
      absl::StatusOr<int64_t> v =
          r.Int(res["cpu_slots_per_trial"], "resources.cpu_slots_per_trial", 1, INT_MAX);
      if (!v.ok()) return v.status();
      spec.cpu_slots_per_trial = static_cast<int>(*v);
    }
    // Data-parallel trials: one process (rank) per GPU on GPUs, ranks_per_trial of them on
    // CPU. Each CPU rank occupies cpu_slots_per_trial slots (what a one-rank trial occupies).
    if (spec.gpus_per_trial > 0) spec.ranks_per_trial = spec.gpus_per_trial;
    if (res["ranks_per_trial"]) {
      absl::StatusOr<int64_t> v =
          r.Int(res["ranks_per_trial"], "resources.ranks_per_trial", 1, kMaxRanksPerTrial);
      if (!v.ok()) return v.status();
      if (spec.gpus_per_trial > 0 && *v != spec.gpus_per_trial) {
        return Error(YamlWhere(origin, res["ranks_per_trial"]), "resources.ranks_per_trial",
                     absl::StrCat("a GPU trial runs one rank per GPU: with gpus_per_trial ",
                                  spec.gpus_per_trial, " it is ", spec.gpus_per_trial,
                                  " (or leave it out), got ", *v));
      }
      spec.ranks_per_trial = static_cast<int>(*v);
    }
    if (spec.gpus_per_trial == 0 &&
        static_cast<int64_t>(spec.ranks_per_trial) * spec.cpu_slots_per_trial > INT_MAX) {
      return Error(YamlWhere(origin, res), "resources",
                   absl::StrCat("ranks_per_trial x cpu_slots_per_trial = ",
                                static_cast<int64_t>(spec.ranks_per_trial) * spec.cpu_slots_per_trial,
                                " CPU slots per trial; the limit is ", INT_MAX));
    }
  }
  if (root["max_attempts"]) {
    absl::StatusOr<int64_t> v = r.Int(root["max_attempts"], "max_attempts", 1, INT_MAX);
    if (!v.ok()) return v.status();
    spec.max_attempts = static_cast<int>(*v);
  }
  if (root["parallel"]) {
    absl::StatusOr<int64_t> v = r.Int(root["parallel"], "parallel", 0, INT_MAX);
    if (!v.ok()) return v.status();
    spec.parallel = static_cast<int>(*v);
  }

  // Every trial must be a valid trainer config: expand now so a bad grid point is refused at
  // submit, with the parameter's position.
  absl::StatusOr<std::vector<TrialSpec>> trials = ExpandSweep(spec, limits);
  if (!trials.ok()) return trials.status();
  return spec;
}

absl::StatusOr<SweepSpec> ParseSweepSpec(const std::string& text, const std::string& origin,
                                         const SpecLimits& limits) {
  absl::StatusOr<SweepSpec> spec = ParseUnclipped(text, origin, limits);
  if (!spec.ok()) return ClipMessage(spec.status());
  return spec;
}

absl::StatusOr<SweepSpec> LoadSweepSpec(const std::string& path, const SpecLimits& limits) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open sweep spec"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ParseSweepSpec(buffer.str(), path, limits);
}

absl::StatusOr<std::vector<TrialSpec>> ExpandSweep(const SweepSpec& spec,
                                                   const SpecLimits& limits) {
  // Parameter value choices, one vector of indices/values per trial.
  std::vector<std::vector<std::string>> choices;
  if (spec.method == SearchMethod::kGrid) {
    const int64_t size = GridSize(spec);
    if (size > limits.max_trials) {
      return absl::InvalidArgumentError(absl::StrCat(spec.origin, ": parameters: the grid has ",
                                                     size, " points; the limit is ",
                                                     limits.max_trials));
    }
    for (int64_t index = 0; index < size; ++index) {
      std::vector<std::string> values(spec.parameters.size());
      int64_t rest = index;  // Last parameter varies fastest.
      for (size_t i = spec.parameters.size(); i-- > 0;) {
        const auto& v = spec.parameters[i].values;
        values[i] = v[static_cast<size_t>(rest % static_cast<int64_t>(v.size()))];
        rest /= static_cast<int64_t>(v.size());
      }
      choices.push_back(std::move(values));
    }
  } else {
    Rng rng(spec.seed);
    std::set<std::vector<std::string>> seen;
    const int64_t max_draws = spec.run_cap * 100;
    // A space smaller than run_cap is exhausted long before max_draws: stop there.
    const int64_t wanted = std::min(spec.run_cap, DistinctConfigurations(spec));
    for (int64_t draw = 0; draw < max_draws && static_cast<int64_t>(choices.size()) < wanted;
         ++draw) {
      std::vector<std::string> values;
      for (const ParameterSpec& p : spec.parameters) {
        absl::StatusOr<std::string> v = Sample(p, rng);
        if (!v.ok()) return v.status();
        values.push_back(*v);
      }
      if (seen.insert(values).second) choices.push_back(std::move(values));
    }
  }

  // `base` from the original text, so that its errors carry the spec file's positions.
  YAML::Node base;
  std::string base_origin = spec.origin;
  if (!spec.source_text.empty()) {
    absl::StatusOr<YAML::Node> root = LoadDocument(spec.source_text, spec.origin, limits);
    if (!root.ok()) return ClipMessage(root.status());
    if (root->IsMap()) base = (*root)["base"];
  } else if (!spec.base_yaml.empty()) {
    base_origin += " (base)";
    absl::StatusOr<YAML::Node> root = LoadDocument(spec.base_yaml, base_origin, limits);
    if (!root.ok()) return ClipMessage(root.status());
    base = *root;
  }
  // A command trainer's values, each parsed (and checked) once, not once per trial.
  std::map<std::pair<size_t, std::string>, YAML::Node> parsed_values;
  std::vector<TrialSpec> trials;
  trials.reserve(choices.size());
  for (const std::vector<std::string>& values : choices) {
    TrialSpec trial;
    std::vector<trainer::ConfigOverride> overrides;
    for (size_t i = 0; i < values.size(); ++i) {
      const ParameterSpec& p = spec.parameters[i];
      trial.params.emplace_back(p.key, values[i]);
      overrides.push_back({p.key, values[i], absl::StrCat(p.where, ": parameters.", p.key, "=", values[i])});
    }
    std::sort(trial.params.begin(), trial.params.end());
    std::vector<std::string> parts;
    for (const auto& [key, value] : trial.params) parts.push_back(absl::StrCat(key, "=", value));
    trial.trial_key = absl::StrJoin(parts, ",");
    if (spec.builtin()) {
      absl::StatusOr<trainer::TrainConfig> config =
          trainer::ParseTrainConfigNode(base, base_origin, overrides);
      if (!config.ok()) {
        return ClipMessage(absl::InvalidArgumentError(
            absl::StrCat(config.status().message(), " [trial ", trial.trial_key, "]")));
      }
      trial.config_yaml = trainer::TrainConfigToYaml(*config);
    } else {
      YAML::Node config = base ? YAML::Clone(base) : YAML::Node(YAML::NodeType::Map);
      for (size_t i = 0; i < values.size(); ++i) {
        auto [it, inserted] = parsed_values.try_emplace({i, values[i]});
        if (inserted) {
          absl::StatusOr<YAML::Node> value = ParseValue(spec.parameters[i], values[i], limits);
          if (!value.ok()) return ClipMessage(value.status());
          it->second = *value;
        }
        SetDotted(config, spec.parameters[i].key, YAML::Clone(it->second));
      }
      YAML::Emitter out;
      out << config;
      trial.config_yaml = std::string(out.c_str()) + "\n";
    }
    trials.push_back(std::move(trial));
  }
  return trials;
}

std::string EarlyTerminateToJson(const std::vector<EarlyTerminateRule>& rules) {
  nlohmann::json out = nlohmann::json::array();
  for (const EarlyTerminateRule& rule : rules) {
    nlohmann::json item = {{"type", rule.type}};
    if (rule.type != "divergence") {
      item["min_steps"] = rule.min_steps;
      item["eta"] = rule.eta;
      item["max_steps"] = rule.max_steps;
    }
    out.push_back(item);
  }
  return out.dump();
}

absl::StatusOr<std::vector<EarlyTerminateRule>> EarlyTerminateFromJson(const std::string& json) {
  const nlohmann::json in = nlohmann::json::parse(json, nullptr, false);
  if (!in.is_array()) return absl::InvalidArgumentError("early_terminate: expected a JSON array");
  std::vector<EarlyTerminateRule> rules;
  try {
    for (const nlohmann::json& item : in) {
      EarlyTerminateRule rule;
      rule.type = item.at("type").get<std::string>();
      rule.min_steps = item.value("min_steps", int64_t{0});
      rule.eta = item.value("eta", 3.0);
      rule.max_steps = item.value("max_steps", int64_t{0});
      rules.push_back(rule);
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("early_terminate: ", e.what()));
  }
  return rules;
}

std::string DetectionToJson(const DetectionOptions& o) {
  return nlohmann::json{{"window", o.window},           {"z", o.z},
                        {"min_values", o.min_values},   {"initial_steps", o.initial_steps},
                        {"loss_margin", o.loss_margin}, {"grad_norm_factor", o.grad_norm_factor},
                        {"consecutive", o.consecutive}}
      .dump();
}

absl::StatusOr<DetectionOptions> DetectionFromJson(const std::string& json) {
  const nlohmann::json in = nlohmann::json::parse(json, nullptr, false);
  if (!in.is_object()) return absl::InvalidArgumentError("detection: expected a JSON object");
  DetectionOptions o;
  try {
    o.window = in.value("window", o.window);
    o.z = in.value("z", o.z);
    o.min_values = in.value("min_values", o.min_values);
    o.initial_steps = in.value("initial_steps", o.initial_steps);
    o.loss_margin = in.value("loss_margin", o.loss_margin);
    o.grad_norm_factor = in.value("grad_norm_factor", o.grad_norm_factor);
    o.consecutive = in.value("consecutive", o.consecutive);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("detection: ", e.what()));
  }
  return o;
}

}  // namespace sweep::orchestrator
