// Transcripts of the differential tests: the same seeded SysV call sequence run against the kernel and against
// dipc prints one line per call; the two must be identical.
#pragma once

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

namespace dipc::test {

inline std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> v;
  std::istringstream is(s);
  for (std::string l; std::getline(is, l);) v.push_back(l);
  return v;
}

// "ids 1 2 3 4" -> {"1", ..., "4"}; {} if the output does not start with "ids".
inline std::vector<std::string> parse_ids(const std::string& out) {
  std::istringstream is(out);
  std::string word;
  std::vector<std::string> ids;
  is >> word;
  if (word != "ids") return {};
  while (is >> word) ids.push_back(word);
  return ids;
}

// The first line where the transcripts differ, with `context` calls before it, or "" when identical.
inline std::string first_divergence(const std::vector<std::string>& k, const std::vector<std::string>& d,
                                    size_t context = 8) {
  size_t n = std::max(k.size(), d.size());
  for (size_t i = 0; i < n; ++i) {
    std::string kl = i < k.size() ? k[i] : "<no line: the kernel transcript ended>";
    std::string dl = i < d.size() ? d[i] : "<no line: the dipc transcript ended>";
    if (kl == dl) continue;
    std::ostringstream os;
    os << "first divergence at line " << i << ":\n  kernel: " << kl << "\n  dipc:   " << dl << "\ncontext:\n";
    for (size_t j = i >= context ? i - context : 0; j < i; ++j) os << "  " << k[j] << "\n";
    return os.str();
  }
  return "";
}

}  // namespace dipc::test
