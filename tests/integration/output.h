// Reading what the test programs and tools print: `name=value` lines (also behind dipc-launch's "[node:rank] "
// prefix), a peer's state in `dipc status`, whole files.
#pragma once

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace dipc::test {

// A line without dipc-launch's "[node:rank] " prefix, if it has one.
inline std::string unprefixed(const std::string& line) {
  if (line.empty() || line[0] != '[') return line;
  size_t e = line.find("] ");
  return e == std::string::npos ? line : line.substr(e + 2);
}

// "name=value" -> value of the last such line ("" if none).
inline std::string field(const std::string& out, const std::string& name) {
  std::istringstream is(out);
  std::string line, v;
  while (std::getline(is, line)) {
    line = unprefixed(line);
    if (line.rfind(name + "=", 0) == 0) v = line.substr(name.size() + 1);
  }
  return v;
}

// Values of every "name=value" line, in order.
inline std::vector<std::string> fields(const std::string& out, const std::string& name) {
  std::istringstream is(out);
  std::string line;
  std::vector<std::string> v;
  while (std::getline(is, line)) {
    line = unprefixed(line);
    if (line.rfind(name + "=", 0) == 0) v.push_back(line.substr(name.size() + 1));
  }
  return v;
}

// A peer's line in `dipc status`: "  node3 (id 3, 10.77.x.3:7450) up" -> "up".
inline std::string peer_state(const std::string& status, int node) {
  std::istringstream is(status);
  std::string line, prefix = "  node" + std::to_string(node) + " (id " + std::to_string(node) + ",";
  while (std::getline(is, line))
    if (line.rfind(prefix, 0) == 0) return line.substr(line.rfind(' ') + 1);
  return "<node" + std::to_string(node) + " not listed>";
}

inline std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace dipc::test
